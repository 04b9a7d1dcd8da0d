r"""Reading prior samples s_1..s_K from files (``.npy``, ``.pt``, ``.csv``): ``.npy`` and
``.csv`` through :mod:`edvae.numeric_files`, the reader of data files too."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from edvae.errors import EdvaeError, require
from edvae.numeric_files import read_bytes, read_npy, read_text_table
from edvae.priors.base import validated_samples

__all__ = ["load_samples"]


def _read_pt(path: Path) -> Any:
    try:
        value = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - torch's message is about its own unpickler, not the file
        raise ValueError("it is not a tensor written by torch.save (or it holds objects other than tensors)") from None
    if not isinstance(value, Tensor):
        raise TypeError(f"it holds a {type(value).__name__}, not a tensor")
    return value


def _read_npy(path: Path) -> np.ndarray:
    return read_npy(read_bytes(path, "sample file"), path, "sample file").x


def _read_csv(path: Path) -> np.ndarray:
    return read_text_table(read_bytes(path, "sample file"), path, ",", "sample file").x


_READERS: dict[str, Callable[[Path], Any]] = {
    ".npy": _read_npy,
    ".pt": _read_pt,
    ".csv": _read_csv,
}


def load_samples(path: str | os.PathLike[str], dim: int | None = None) -> Tensor:
    r"""Read prior samples s_1..s_K from a file into a (K, D) tensor of the default dtype.

    Formats: ``.npy`` (``numpy.save``), ``.pt`` (a tensor saved with ``torch.save``) and
    ``.csv`` (comma-separated numbers, one sample per line, an optional header line). The
    samples must form a 2-D array with at least 2 rows and no NaN or Inf; with ``dim`` given,
    D must equal it. Every problem raises :class:`EdvaeError` naming the file.
    """
    require(
        isinstance(path, (str, os.PathLike)),
        f"the sample file path must be a string, got {type(path).__name__}; pass the path of a .npy, .pt or .csv file",
    )
    require(
        str(path).strip() != "",
        "the sample file path is empty; pass the path of a .npy, .pt or .csv file (as in prior='samples:PATH')",
    )
    path = Path(path)
    source = f"sample file {path}"
    require(path.is_file(), f"{source} does not exist or is not a file; check the path")
    suffix = path.suffix.lower()
    require(
        suffix in _READERS,
        f"{source} has unsupported extension {suffix or '(none)'!r}; save the samples as one of {', '.join(_READERS)}",
    )
    try:
        raw = _READERS[suffix](path)
    except EdvaeError:  # the numeric-file reader's own one line, naming the file and the row
        raise
    except Exception as exc:  # noqa: BLE001 - every reader failure is the file's problem
        raise EdvaeError(f"{source} could not be read as {suffix} ({exc}); re-save it as a (K, D) array") from None
    return validated_samples(raw, source, dim).to(torch.get_default_dtype())
