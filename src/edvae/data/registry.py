"""One entry point for every data set: :func:`load_dataset`.

Each data set is a builder function whose keyword-only parameters (apart from ``seed`` and
``path``) are its options; unknown names and options are refused with the valid ones listed.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edvae.data.factors import nongaussian_factors_dataset, sprites_dataset
from edvae.data.files import load_file
from edvae.data.real import digits_dataset, mnist5k_dataset
from edvae.data.splits import DataSplits, load_stored
from edvae.data.synthetic import complex_dataset, gaussian_dataset
from edvae.errors import EdvaeError

__all__ = ["dataset_names", "dataset_options", "load_dataset"]

_BUILDERS: dict[str, Callable[..., DataSplits]] = {
    "gaussian": gaussian_dataset,
    "complex": complex_dataset,
    "digits": digits_dataset,
    "mnist5k": mnist5k_dataset,
    "file": load_file,
    "sprites": sprites_dataset,
    "nongaussian-factors": nongaussian_factors_dataset,
    "stored": load_stored,  # data a run folder holds (edvae.runs.record_data)
}
#: The data sets read from ``path``.
_READ_FROM_PATH = ("file", "stored")


def dataset_names() -> list[str]:
    """Names accepted by :func:`load_dataset`."""
    return list(_BUILDERS)


def dataset_options(name: str) -> dict[str, Any]:
    """The options of data set ``name`` with their defaults."""
    builder = _builder(name)
    return {
        p.name: p.default
        for p in inspect.signature(builder).parameters.values()
        if p.kind is inspect.Parameter.KEYWORD_ONLY and p.name not in ("seed", "path")
    }


def _builder(name: Any) -> Callable[..., DataSplits]:
    if name not in _BUILDERS:
        raise EdvaeError(f"unknown dataset {name!r}; choose one of: {', '.join(_BUILDERS)}")
    return _BUILDERS[name]


def load_dataset(
    name: str | None = None, *, seed: int = 0, path: str | Path | None = None, **options: Any
) -> DataSplits:
    """Load data set ``name`` (see :func:`dataset_names`) as train/val/test :class:`DataSplits`.

    ``seed`` fixes everything random (synthetic samples, the split permutation, static
    binarisation): the same arguments always give the same tensors. ``path`` is the data file
    for ``name="file"``; with ``name=None`` a ``path`` alone means ``"file"``. ``options`` are
    the data set's own (:func:`dataset_options`); unknown ones are refused.
    """
    if name is None:
        if path is None:
            raise EdvaeError(f"load_dataset needs a dataset name ({', '.join(_BUILDERS)}) or path=PATH to a data file")
        name = "file"
    builder = _builder(name)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise EdvaeError(f"seed must be a non-negative integer, got {seed!r}")
    valid = dataset_options(name)
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise EdvaeError(
            f"dataset {name!r} has no option {', '.join(map(repr, unknown))}; valid options: {', '.join(valid)}"
        )
    if name in _READ_FROM_PATH:
        return builder(seed=seed, path=path, **options)
    if path is not None:
        raise EdvaeError(f"path is only used by dataset 'file', not {name!r}; drop path or use name='file'")
    return builder(seed=seed, **options)
