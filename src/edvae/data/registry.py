"""One entry point for every data set: :func:`load_dataset`.

Each data set is a builder function, registered by name in :data:`DATASETS` (an
:class:`edvae.registry.Registry`), whose keyword-only parameters (apart from ``seed`` and
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
from edvae.registry import Registry

__all__ = ["DATASETS", "dataset_names", "dataset_options", "load_dataset"]

#: Every data set's builder by name; a new data set is a builder plus one line here.
DATASETS: Registry[Callable[..., DataSplits]] = Registry("dataset")
DATASETS.add("gaussian", gaussian_dataset)
DATASETS.add("complex", complex_dataset)
DATASETS.add("digits", digits_dataset)
DATASETS.add("mnist5k", mnist5k_dataset)
DATASETS.add("file", load_file)
DATASETS.add("sprites", sprites_dataset)
DATASETS.add("nongaussian-factors", nongaussian_factors_dataset)
DATASETS.add("stored", load_stored)  # data a run folder holds (edvae.provenance.record_data)
#: The data sets read from ``path``.
_READ_FROM_PATH = ("file", "stored")


def dataset_names() -> list[str]:
    """Names accepted by :func:`load_dataset`."""
    return DATASETS.names()


def dataset_options(name: str) -> dict[str, Any]:
    """The options of data set ``name`` with their defaults."""
    builder = DATASETS.get(name)
    return {
        p.name: p.default
        for p in inspect.signature(builder).parameters.values()
        if p.kind is inspect.Parameter.KEYWORD_ONLY and p.name not in ("seed", "path")
    }


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
            raise EdvaeError(f"load_dataset needs a dataset name ({', '.join(DATASETS)}) or path=PATH to a data file")
        name = "file"
    builder = DATASETS.get(name)
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
