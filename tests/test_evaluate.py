"""Evaluation (:mod:`edvae.evaluate`): every metric against its definition or a known bound, on a
model trained on the digits, and the pieces of the metrics against closed forms."""

from __future__ import annotations

import math

import pytest
import torch

from edvae import evaluate as evaluate_module
from edvae import runs
from edvae.config import EvalConfig, validate_config
from edvae.evaluate import active_units, evaluate_model, evaluate_run, load_run, sliced_wasserstein
from edvae.train import train


# ----------------------------------------------------------------------------- a trained model on digits
@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("digits") / "run"
    cfg = validate_config({
        "data": {"name": "digits"},
        "model": {"latent_dim": 8, "hidden": [128]},
        "train": {"epochs": 8, "batch_size": 64, "lr": 3e-3, "progress": False},
    })
    train(cfg, run)
    return run


@pytest.fixture(scope="module")
def digits_model(digits_run):
    model, _, _, data = load_run(digits_run)
    return model, data


@pytest.fixture(scope="module")
def digits_metrics(digits_model):
    model, data = digits_model
    return {k: evaluate_model(model, data, EvalConfig(iwae_samples=k)) for k in (1, 64)}


def test_bits_per_dimension_is_nll_over_dims_ln2(digits_metrics):
    for m in digits_metrics.values():
        assert m["nll"] == pytest.approx(-m["iwae"])
        assert m["bpd"] == pytest.approx(m["nll"] / (64 * math.log(2)), rel=1e-12)
        assert 0 < m["bpd"] < 1  # a trained model beats coin flips (1 bit per pixel)


def test_iwae_bound_tightens_with_more_samples(digits_metrics):
    one, many = digits_metrics[1], digits_metrics[64]
    assert one["iwae"] == pytest.approx(one["elbo"], abs=0.5)  # K = 1: the ELBO up to MC error
    assert many["iwae"] > one["iwae"] and many["iwae"] >= many["elbo"]
    assert many["elbo"] == pytest.approx(many["reconstruction"] - many["kl"], abs=1e-9)


def test_decomposition_of_the_kl_on_real_data(digits_metrics):
    """E_x KL(q(z|x) || p(z)) = I(x; z) + KL(q(z) || p(z)) on the test split."""
    m = digits_metrics[64]
    assert m["kl"] == pytest.approx(m["mi"] + m["marginal_kl"], abs=0.05 * m["kl"] + 0.1)
    assert 0 <= m["mi"] <= math.log(180) + 1e-6  # the test split has 180 examples
    assert m["marginal_kl"] == pytest.approx(m["cross_entropy"] - m["entropy"], abs=1e-4)


def test_mse_active_units_and_probe_against_direct_computation(digits_model, digits_metrics):
    model, data = digits_model
    m = digits_metrics[64]
    with torch.inference_mode():
        mu = model.encode(data.test)[0]
        x_hat = torch.sigmoid(model.decode(mu))
    assert m["mse"] == pytest.approx(float((x_hat - data.test).square().mean()), rel=1e-5)
    assert m["active_units"] == active_units(mu) == int((mu.double().var(0) > 0.01).sum())
    assert m["probe_accuracy"] > 0.5  # chance is 0.1 on ten balanced classes


def test_the_probe_sees_training_images_as_the_model_does(digits_model, monkeypatch):
    """With dynamic binarisation the test images are binary, so the probe is fitted on binarised
    training images too (grey levels would put the fit and the score on different inputs); the
    accuracy is that of a probe fitted by hand on the same binary images."""
    from sklearn.linear_model import LogisticRegression

    from edvae import evaluate as evaluate_module

    model, data = digits_model
    assert data.binarize == "dynamic" and set(data.test.unique().tolist()) == {0.0, 1.0}
    seen = []
    real_encode = model.encode
    monkeypatch.setattr(model, "encode", lambda x: seen.append(x) or real_encode(x))
    with torch.inference_mode():
        accuracy = evaluate_module._probe_accuracy(model, data, data.test, data.test_labels, seed=5)
        fit_inputs = seen[0]
        assert fit_inputs.shape == data.train.shape and set(fit_inputs.unique().tolist()) == {0.0, 1.0}
        assert torch.equal(fit_inputs, torch.bernoulli(data.train, generator=torch.Generator().manual_seed(5)))
        probe = LogisticRegression(max_iter=2000).fit(real_encode(fit_inputs)[0].double().numpy(), data.train_labels.numpy())
        expected = probe.score(real_encode(data.test)[0].double().numpy(), data.test_labels.numpy())
    assert accuracy == pytest.approx(expected, abs=1e-12)


def test_evaluate_run_is_evaluate_model_on_the_stored_model_plus_its_training_time(digits_run, digits_model):
    """evaluate_run rebuilds the run with :func:`edvae.runs.load_run` (its old home, evaluate,
    still exports it) and adds the checkpoint's train_seconds to the metrics of evaluate_model."""
    model, data = digits_model
    run = digits_run
    assert evaluate_module.load_run is runs.load_run
    config = EvalConfig(iwae_samples=4)
    from_run = evaluate_run(run, config=config, data=data)
    direct = evaluate_model(model, data, config)
    train_seconds = from_run.pop("train_seconds")
    assert from_run == direct
    assert train_seconds == float(load_run(run, data)[2]["train_seconds"]) > 0


# ----------------------------------------------------------------------------- closed forms
def test_sliced_wasserstein_of_a_translation_is_its_length_over_root_dimension():
    """For b = a + c, every projection is shifted by theta.c, so SW_2^2 = E_theta (theta.c)^2 =
    |c|^2 / D for theta uniform on the sphere (Monte Carlo over the projections); SW(a, a) = 0."""
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(500, 4, generator=gen, dtype=torch.float64)
    c = torch.tensor([3.0, -1.0, 2.0, 0.5], dtype=torch.float64)
    sw = sliced_wasserstein(a, a + c, projections=20_000, generator=torch.Generator().manual_seed(1))
    assert sw == pytest.approx(float(c.norm()) / math.sqrt(4), rel=0.02)
    assert sliced_wasserstein(a, a, generator=gen) == 0.0


def test_active_units_counts_dimensions_whose_mean_varies():
    mu = torch.zeros(100, 3)
    mu[:, 0] = torch.linspace(-1, 1, 100)  # variance ~0.34 > 0.01
    mu[:, 1] = 0.05 * torch.linspace(-1, 1, 100)  # variance ~0.00085 < 0.01
    assert active_units(mu) == 1
    assert active_units(mu, threshold=1e-4) == 2
