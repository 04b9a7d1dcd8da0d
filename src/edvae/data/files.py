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
"""

from __future__ import annotations

import io
import math
import os
import re
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edvae.data.splits import MAX_LABEL, DataSplits, check_likelihood, check_split, finish
from edvae.errors import EdvaeError

__all__ = ["FORMATS", "SUPPORTED", "load_file", "read_idx"]

FORMATS = ("npy", "npz", "csv", "tsv", "idx")
SUPPORTED = ".npy, .npz, .csv, .tsv (each optionally .gz) and MNIST idx files (*-idx3-ubyte, *.idx, optionally .gz)"
DEFAULT_SPLIT = (0.8, 0.1, 0.1)

# idx value types: type byte -> big-endian numpy dtype
_IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


class _Table:
    """What a reader found: data (N, ...), optional labels, row naming, column names."""

    def __init__(
        self,
        x: np.ndarray,
        *,
        labels: np.ndarray | None = None,
        row_name: Callable[[int], str] | None = None,
        columns: list[str] | None = None,
        integer_valued: bool | None = None,
        x_shape: tuple[int, ...] | None = None,
    ) -> None:
        self.x, self.labels, self.columns = x, labels, columns
        self.row_name = row_name or (lambda i: f"row {i} (counting from 0)")
        self.integer_valued = np.issubdtype(x.dtype, np.integer) if integer_valued is None else integer_valued
        self.x_shape = x_shape


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


def machine_memory_bytes() -> int:
    """The machine's physical memory in bytes (``sysconf``; 16 GiB where it cannot be read)."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (AttributeError, ValueError, OSError):  # pragma: no cover - not POSIX
        return 16 << 30


def max_data_bytes() -> int:
    """The largest data file edvae reads: a quarter of the machine's memory (uncompressed), since
    a file of B bytes becomes arrays of several times B while it is parsed, scaled and split."""
    return machine_memory_bytes() // 4


def check_data_path(path: Path, what: str = "file") -> None:
    """Refuse, before reading, a path that is missing, a directory, not a regular file (a device
    such as /dev/zero, a pipe) or larger than :func:`max_data_bytes`."""
    if not path.exists():
        raise EdvaeError(f"{what} '{path}' does not exist; check the path")
    if path.is_dir():
        raise EdvaeError(f"{what} '{path}' is a directory; pass the path of a data file inside it")
    if not path.is_file():
        raise EdvaeError(f"{what} '{path}' is not a regular file (a device, pipe or socket); pass a data file")
    size, limit = path.stat().st_size, max_data_bytes()
    if size > limit:
        raise EdvaeError(
            f"{what} '{path}' has {size / 2**30:.1f} GiB, more than edvae reads on this machine "
            f"({limit / 2**30:.1f} GiB, a quarter of its memory); use a subset of the data"
        )


def _read_bytes(path: Path, what: str = "file") -> bytes:
    check_data_path(path, what)
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        limit = max_data_bytes()
        try:
            inflater = zlib.decompressobj(wbits=31)
            raw = inflater.decompress(raw, limit + 1)
            if len(raw) > limit:
                raise EdvaeError(
                    f"{what} '{path}' unpacks to more than {limit / 2**30:.1f} GiB, more than edvae reads on this "
                    "machine (a quarter of its memory); use a subset of the data"
                )
            if not inflater.eof:
                raise zlib.error("the compressed stream ends early")
        except (OSError, EOFError, zlib.error) as exc:
            raise EdvaeError(f"{what} '{path}' is a damaged gzip file ({exc}); download or write it again") from None
    if not raw:
        raise EdvaeError(f"{what} '{path}' is empty; write the data into it or pass another file")
    return raw


# ---------------------------------------------------------------------------- readers
def read_idx(raw: bytes, path: Path, what: str = "file") -> np.ndarray:
    """Parse the bytes of an idx file (MNIST format) into an array of its declared shape."""
    if len(raw) < 4:
        raise EdvaeError(
            f"{what} '{path}' has {len(raw)} bytes, too few for an idx header; it is truncated or not an idx file"
        )
    magic = int.from_bytes(raw[:4], "big")
    type_code, ndim = raw[2], raw[3]
    if raw[0] != 0 or raw[1] != 0 or type_code not in _IDX_TYPES or ndim == 0:
        raise EdvaeError(
            f"{what} '{path}' starts with magic number 0x{magic:08X}, not an idx header "
            "(0x00000803 for images, 0x00000801 for labels); check that it is an uncompressed or gzipped idx file"
        )
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise EdvaeError(
            f"{what} '{path}' declares {ndim} dimensions but ends inside the header "
            f"(expected at least {header} bytes, got {len(raw)}); the file is truncated, download it again"
        )
    dims = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(_IDX_TYPES[type_code])
    expected = header + math.prod(dims) * dtype.itemsize
    if len(raw) != expected:
        raise EdvaeError(
            f"{what} '{path}' declares shape {dims} of {dtype.name} values, which needs {expected} bytes, "
            f"but the file has {len(raw)} bytes; it is truncated or corrupt, download it again"
        )
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(dims).astype(dtype.newbyteorder("="))


def _read_idx_table(raw: bytes, path: Path) -> _Table:
    array = read_idx(raw, path)
    if array.ndim == 1:
        raise EdvaeError(
            f"file '{path}' is a 1-D idx file (labels, magic 0x00000801); pass the images file "
            "(idx3-ubyte) as path and this one as labels_path"
        )
    shape = (1, *array.shape[1:]) if array.ndim == 3 else array.shape[1:]
    return _Table(array, row_name=lambda i: f"image {i} (counting from 0)", x_shape=tuple(shape))


def _load_numpy(raw: bytes, path: Path, kind: str) -> Any:
    magic = b"\x93NUMPY" if kind == "npy" else b"PK"
    if not raw.startswith(magic):
        raise EdvaeError(
            f"file '{path}' could not be read as a .{kind} file (it does not start with the {kind} signature); "
            f"write it with numpy.save{'z' if kind == 'npz' else ''} or pass the format it really has"
        )
    try:
        return np.load(io.BytesIO(raw), allow_pickle=False)
    except ValueError as exc:
        if "allow_pickle" in str(exc):
            raise EdvaeError(
                f"file '{path}' holds Python objects, not a numeric array; save a numeric array (e.g. float32) instead"
            ) from None
        reason = exc
    except (OSError, EOFError, zlib.error, KeyError) as exc:
        reason = exc  # type: ignore[assignment]
    raise EdvaeError(
        f"file '{path}' could not be read as a .{kind} file ({reason}); "
        f"check that it was written with numpy.save{'z' if kind == 'npz' else ''}"
    )


def _numeric(array: np.ndarray, path: Path, what: str) -> np.ndarray:
    if array.dtype == np.bool_:
        return array.astype(np.uint8)
    if not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
        raise EdvaeError(f"{what} in '{path}' has dtype {array.dtype}, not numbers; store an integer or float array")
    return array


def _read_npy(raw: bytes, path: Path) -> _Table:
    array = _load_numpy(raw, path, "npy")
    return _Table(_numeric(array, path, "the array"))


def _read_npz(raw: bytes, path: Path) -> _Table:
    archive = _load_numpy(raw, path, "npz")
    with archive:
        keys = list(archive.files)
        label_keys = [k for k in ("y", "labels") if k in keys]
        if "x" in keys:
            data_key = "x"
        elif "data" in keys:
            data_key = "data"
        elif len(keys) - len(label_keys) == 1:
            data_key = next(k for k in keys if k not in label_keys)
        else:
            raise EdvaeError(
                f"file '{path}' holds arrays {', '.join(keys) or '(none)'}; store the data as 'x' (or 'data') "
                "and any labels as 'y' (or 'labels')"
            )
        if len(label_keys) > 1:
            raise EdvaeError(f"file '{path}' holds both 'y' and 'labels'; keep one array of labels")
        try:
            x = archive[data_key]
            labels = archive[label_keys[0]] if label_keys else None
        except (ValueError, OSError, EOFError, zlib.error) as exc:
            raise EdvaeError(f"file '{path}' has a damaged array ({exc}); write it again with numpy.savez") from None
    x = _numeric(x, path, f"array '{data_key}'")
    if labels is not None:
        labels = _numeric(labels, path, f"array '{label_keys[0]}'")
    return _Table(x, labels=labels)


#: Spellings of a missing value (compared lower-case, quotes and blanks stripped): a first row
#: holding them is a data row with a missing value (refused), not a header.
MISSING_SPELLINGS = frozenset({"", "na", "n/a", "nan", "null", "none", "#n/a", "?", "-", "missing"})


def _cell(cell: str) -> str:
    return cell.strip().strip('"').strip("'").strip()


def _is_header(cells: list[str]) -> bool:
    """A first row is a header when one of its cells is neither a number nor a missing-value
    spelling (:data:`MISSING_SPELLINGS`): ``NA,1.5`` is a data row, ``x,y`` a header."""
    return any(not _is_number(c) and _cell(c).lower() not in MISSING_SPELLINGS for c in cells)


def _is_number(cell: str) -> bool:
    try:
        float(cell.strip().strip('"').strip("'"))
    except ValueError:
        return False
    return True


def _read_text_table(raw: bytes, path: Path, delimiter: str) -> _Table:
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise EdvaeError(f"file '{path}' is not UTF-8 text ({exc}); save the table as plain UTF-8 CSV") from None
    entries = [
        (i + 1, line) for i, line in enumerate(text.splitlines()) if line.strip() and not line.lstrip().startswith("#")
    ]
    if not entries:
        raise EdvaeError(f"file '{path}' has no data rows; write one example per line")
    columns = None
    first_cells = entries[0][1].split(delimiter)
    if _is_header(first_cells):
        columns = [c.strip().strip('"').strip("'") for c in first_cells]
        entries = entries[1:]
        if not entries:
            raise EdvaeError(f"file '{path}' has a header line but no data rows; add one example per line below it")
    line_numbers = np.array([n for n, _ in entries])
    try:
        lines = [line for _, line in entries]
        table = np.loadtxt(lines, delimiter=delimiter, dtype=np.float64, ndmin=2, quotechar='"')
    except ValueError:
        _raise_text_error(entries, path, delimiter, len(columns) if columns else None)
        raise  # pragma: no cover - _raise_text_error always raises
    if columns is not None and len(columns) != table.shape[1]:
        raise EdvaeError(
            f"file '{path}': the header has {len(columns)} columns but line {line_numbers[0]} has {table.shape[1]}; "
            "make the header match the data"
        )
    finite = table[np.isfinite(table)]
    return _Table(
        table,
        row_name=lambda i: f"line {line_numbers[i]}",
        columns=columns,
        integer_valued=bool(np.all(finite == np.round(finite))),
    )


def _raise_text_error(entries: list[tuple[int, str]], path: Path, delimiter: str, width: int | None) -> None:
    for number, line in entries:
        cells = line.split(delimiter)
        if width is None:
            width = len(cells)
        if len(cells) != width:
            raise EdvaeError(
                f"file '{path}': line {number} has {len(cells)} value{'s' * (len(cells) != 1)} "
                f"but earlier rows have {width}; "
                f"give every row the same number of {delimiter!r}-separated values"
            )
        for column, cell in enumerate(cells, start=1):
            if not _is_number(cell) and _cell(cell).lower() in MISSING_SPELLINGS:
                raise EdvaeError(
                    f"file '{path}': line {number}, column {column} holds {cell.strip()!r}, a missing value; "
                    "edvae needs every value: fill it in or remove that row"
                )
            if not _is_number(cell):
                raise EdvaeError(
                    f"file '{path}': line {number}, column {column} holds {cell.strip()!r}, which is not a number; "
                    "fix or remove that row (tables must be numeric apart from one header line)"
                )
    raise EdvaeError(f"file '{path}' could not be parsed as a {delimiter!r}-separated numeric table; check its format")


def _read(path: Path, fmt: str, delimiter: str | None, what: str = "file") -> _Table:
    raw = _read_bytes(path, what)
    if fmt == "npy":
        return _read_npy(raw, path)
    if fmt == "npz":
        return _read_npz(raw, path)
    if fmt in ("csv", "tsv"):
        return _read_text_table(raw, path, delimiter or ("\t" if fmt == "tsv" else ","))
    return _read_idx_table(raw, path) if what == "file" else _Table(read_idx(raw, path, what))


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


def _split_label_column(table: _Table, label_column: Any, path: Path) -> None:
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


def _scale(table: _Table, scale: Any, path: Path) -> tuple[np.ndarray, float]:
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
