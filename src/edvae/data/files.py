"""A user's own data from a file: ``load_dataset("file", path=PATH, **options)``.

Formats (chosen by extension, or by the ``format`` option; any of them may be gzipped):

* ``.npy``: one array, examples along the first axis: ``(N, features)`` or ``(N, H, W)`` etc.
* ``.npz``: the data under ``x`` or ``data`` (or the only array), labels under ``y`` or
  ``labels``.
* ``.csv`` / ``.tsv``: a numeric table, one example per line, optional header line (detected:
  a first line with a cell that is neither a number nor a missing-value spelling such as ``NA``,
  ``NaN``, ``null`` or an empty cell), ``#`` comment lines and blank lines ignored; a missing
  value in a data row is refused (fill it in or drop the row).
* MNIST idx files (``*-idx3-ubyte``, ``*.idx3-ubyte``, ``*.idx``): the big-endian format of
  yann.lecun.com: magic ``0x0000TTDD`` (TT the value type, 0x08 for unsigned bytes; DD the
  number of dimensions: 0x00000803 for images, 0x00000801 for labels), DD big-endian 32-bit
  sizes, then the values. Images ``(N, H, W)`` get ``x_shape`` ``(1, H, W)``.

Options:

* ``x_shape``: reshape each example (e.g. flat 784-value rows to ``(1, 28, 28)``).
* ``label_column`` (int index, negative allowed, or header name): for tables (csv, tsv, 2-D
  npy/npz), take that column as integer labels and the rest as data.
* ``labels_path``: a separate labels file (idx1-ubyte, 1-D npy, one-column csv).
* ``scale``: ``"auto"`` (default): integer-valued data (integer dtype, idx bytes, or a CSV of
  whole numbers) with values in 0..255 and a maximum above 1 are pixel intensities and are
  divided by 255; integer data already in {0, 1} and float data are kept as they are. A
  number divides the data by it; ``None`` keeps the values unchanged.
* ``likelihood`` (``"bernoulli"``, default: values must then lie in [0, 1]; or
  ``"gaussian"``: any finite values), ``binarize`` and ``split`` as for the real data sets.
* ``delimiter``: for csv/tsv (default ``","`` / tab).

Every problem (missing, empty or corrupt file, wrong shape, non-finite or out-of-range
values, label count mismatch or labels outside [0, 2^31), unknown extension, a path that is
not a regular file, a file larger than a quarter of the machine's memory) raises :class:`~edvae.errors.EdvaeError`
naming the file, the row where it applies, and the fix.

The formats themselves are read by :mod:`edvae.numeric_files` (shared with prior sample
files); this module chooses the format and applies the options.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edvae.data.splits import MAX_LABEL, DataSplits, check_likelihood, check_split, finish
from edvae.errors import EdvaeError
from edvae.numeric_files import (
    Table,
    check_data_path,
    read_bytes,
    read_idx,
    read_npy,
    read_npz,
    read_text_table,
)

__all__ = ["FORMATS", "SUPPORTED", "load_file", "read_idx"]

FORMATS = ("npy", "npz", "csv", "tsv", "idx")
SUPPORTED = ".npy, .npz, .csv, .tsv (each optionally .gz) and MNIST idx files (*-idx3-ubyte, *.idx, optionally .gz)"
DEFAULT_SPLIT = (0.8, 0.1, 0.1)


def _detect_format(path: Path) -> str:
    name = path.name.lower()
    if name.endswith(".gz"):
        name = name[:-3]
    for ext in ("npy", "npz", "csv", "tsv"):
        if name.endswith("." + ext):
            return ext
    if re.search(r"idx\d[-_.]u?byte$|\.idx\d?$|-ubyte$", name):
        return "idx"
    raise EdvaeError(
        f"file '{path}' has an extension edvae cannot read; supported: {SUPPORTED}; "
        "rename the file or pass format='npy'|'npz'|'csv'|'tsv'|'idx'"
    )


# ---------------------------------------------------------------------------- readers
def _read_idx_table(raw: bytes, path: Path) -> Table:
    array = read_idx(raw, path)
    if array.ndim == 1:
        raise EdvaeError(
            f"file '{path}' is a 1-D idx file (labels, magic 0x00000801); pass the images file "
            "(idx3-ubyte) as path and this one as labels_path"
        )
    shape = (1, *array.shape[1:]) if array.ndim == 3 else array.shape[1:]
    return Table(array, row_name=lambda i: f"image {i} (counting from 0)", x_shape=tuple(shape))


def _read(path: Path, fmt: str, delimiter: str | None, what: str = "file") -> Table:
    raw = read_bytes(path, what)
    if fmt == "npy":
        return read_npy(raw, path)
    if fmt == "npz":
        return read_npz(raw, path)
    if fmt in ("csv", "tsv"):
        return read_text_table(raw, path, delimiter or ("\t" if fmt == "tsv" else ","))
    return _read_idx_table(raw, path) if what == "file" else Table(read_idx(raw, path, what))


# ---------------------------------------------------------------------------- helpers
def _as_labels(values: np.ndarray, path: Path, row_name: Callable[[int], str], what: str) -> np.ndarray:
    values = np.asarray(values)
    if values.ndim == 2 and values.shape[1] == 1:
        values = values[:, 0]
    if values.ndim != 1:
        raise EdvaeError(f"{what} in '{path}' have shape {values.shape}; store one integer label per example (1-D)")
    as_float = values.astype(np.float64)
    bad = ~np.isfinite(as_float) | (as_float != np.round(as_float))
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise EdvaeError(
            f"{what} in '{path}': {row_name(row)} has label {values[row].item()!r}, not a whole number; "
            "labels must be integer class indices"
        )
    out_of_range = (as_float < 0) | (as_float >= MAX_LABEL)
    if out_of_range.any():
        row = int(np.flatnonzero(out_of_range)[0])
        raise EdvaeError(
            f"{what} in '{path}': {row_name(row)} has label {values[row].item()!r}; labels must be class indices, "
            f"whole numbers from 0 to {MAX_LABEL - 1}"
        )
    return as_float.astype(np.int64)


def _split_label_column(table: Table, label_column: Any, path: Path) -> None:
    if table.x.ndim != 2:
        raise EdvaeError(
            f"label_column needs a table of rows and columns, but '{path}' holds an array of shape {table.x.shape}; "
            "drop label_column or store the labels separately (npz 'y' or labels_path)"
        )
    width = table.x.shape[1]
    if isinstance(label_column, str):
        if table.columns is None or label_column not in table.columns:
            names = ", ".join(table.columns) if table.columns else "none (the file has no header line)"
            raise EdvaeError(
                f"label_column {label_column!r} is not a column of '{path}' (columns: {names}); "
                "pass a column name from the header or an integer index"
            )
        index = table.columns.index(label_column)
    elif isinstance(label_column, int) and not isinstance(label_column, bool) and -width <= label_column < width:
        index = label_column % width
    else:
        raise EdvaeError(
            f"label_column must be a column name or an integer index in [-{width}, {width - 1}] for '{path}', "
            f"got {label_column!r}"
        )
    if width < 2:
        raise EdvaeError(f"'{path}' has a single column, so label_column {label_column!r} would leave no data")
    table.labels = _as_labels(table.x[:, index], path, table.row_name, "labels")
    table.x = np.delete(table.x, index, axis=1)
    if table.columns is not None:
        table.columns = table.columns[:index] + table.columns[index + 1 :]


def _check_x_shape(x_shape: Any, path: Path, per_row: int) -> tuple[int, ...]:
    try:
        shape = tuple(int(d) for d in x_shape)
        ok = all(float(d) == int(d) for d in x_shape) and len(shape) > 0 and min(shape) > 0
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise EdvaeError(f"x_shape must be a list of positive integers such as [1, 28, 28], got {x_shape!r}")
    if math.prod(shape) != per_row:
        raise EdvaeError(
            f"x_shape {shape} needs {math.prod(shape)} values per example but each row of '{path}' has {per_row}; "
            "pass an x_shape whose product is the row length (or label_column if one column holds the labels)"
        )
    return shape


def _scale(table: Table, scale: Any, path: Path) -> tuple[np.ndarray, float]:
    x = table.x.astype(np.float64)
    if scale is None:
        return x, 1.0
    if scale == "auto":
        finite = x[np.isfinite(x)]
        if table.integer_valued and finite.size and finite.min() >= 0 and 1 < finite.max() <= 255:
            return x / 255.0, 1 / 255
        return x, 1.0
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not (0 < scale < math.inf):
        raise EdvaeError(f"scale must be 'auto', None or a positive number to divide the data by, got {scale!r}")
    return x / float(scale), 1 / float(scale)


# ---------------------------------------------------------------------------- loader
def load_file(
    *,
    seed: int,
    path: str | Path | None,
    format: str | None = None,  # noqa: A002 - the user-facing option name
    x_shape: Sequence[int] | None = None,
    label_column: int | str | None = None,
    labels_path: str | Path | None = None,
    likelihood: str = "bernoulli",
    binarize: str | None = None,
    split: Sequence[float] = DEFAULT_SPLIT,
    scale: str | float | None = "auto",
    delimiter: str | None = None,
) -> DataSplits:
    """Load, check, scale, split and binarise the examples in the file at ``path``."""
    if path is None:
        raise EdvaeError("dataset 'file' needs the data file: pass path=PATH (.npy, .npz, .csv, .tsv or idx)")
    if not str(path).strip():
        raise EdvaeError(
            "the data file path is empty; set data.path (or --data) to a .npy, .npz, .csv, .tsv or idx file"
        )
    path = Path(path).expanduser()
    check_data_path(path)
    source = f"file '{path}'"
    if format is not None and format not in FORMATS:
        raise EdvaeError(f"format must be one of {', '.join(FORMATS)}, got {format!r}")
    fmt = format or _detect_format(path)
    likelihood, binarize = check_likelihood(likelihood, binarize, source)
    split = check_split(split, source)
    if delimiter is not None and (not isinstance(delimiter, str) or len(delimiter) != 1):
        raise EdvaeError(f"delimiter must be a single character such as ',' or ';', got {delimiter!r}")

    table = _read(path, fmt, delimiter)
    if table.x.ndim < 2:
        raise EdvaeError(
            f"{source} holds a {table.x.ndim}-D array of shape {table.x.shape}; store one example per row, "
            "as a 2-D (examples, features) or an image (examples, height, width) array"
        )
    if table.x.shape[0] == 0 or table.x[0].size == 0:
        raise EdvaeError(f"{source} holds an array of shape {table.x.shape} with no values; write the examples into it")
    if label_column is not None:
        if table.labels is not None:
            raise EdvaeError(f"{source} already holds labels (npz 'y'/'labels'), so drop label_column")
        _split_label_column(table, label_column, path)
    elif table.labels is not None:
        table.labels = _as_labels(table.labels, path, table.row_name, "labels")
    if labels_path is not None:
        if table.labels is not None:
            raise EdvaeError(f"{source} already has labels (from the file or label_column), so drop labels_path")
        lpath = Path(labels_path).expanduser()
        check_data_path(lpath, "labels file")
        ltable = _read(lpath, _detect_format(lpath), None, what="labels file")
        table.labels = _as_labels(ltable.x, lpath, ltable.row_name, "labels")
        if len(table.labels) != table.x.shape[0]:
            raise EdvaeError(
                f"labels file '{lpath}' has {len(table.labels)} labels but {source} has {table.x.shape[0]} examples; "
                "pass the labels file that belongs to this data"
            )
    if table.labels is not None and len(table.labels) != table.x.shape[0]:
        raise EdvaeError(
            f"{source} has {len(table.labels)} labels for {table.x.shape[0]} examples; store one label per example"
        )

    per_row = math.prod(table.x.shape[1:])
    shape = _check_x_shape(x_shape, path, per_row) if x_shape is not None else (table.x_shape or table.x.shape[1:])
    x, factor = _scale(table, scale, path)
    x = x.reshape(x.shape[0], *shape)
    range_fix = (
        "scale the values into [0, 1] (e.g. scale=255 for 0..255 pixels stored as floats, or scale=<maximum>) "
        "or pass likelihood='gaussian'"
    )
    return finish(
        "file",
        x,
        table.labels,
        seed=seed,
        likelihood=likelihood,
        binarize=binarize,
        split=split,
        source=source,
        info={"path": str(path), "format": fmt, "scale": factor},
        row_name=table.row_name,
        range_fix=range_fix,
    )
