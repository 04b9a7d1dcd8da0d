"""Reading numeric arrays from files: the one reader of edvae's data files and prior samples.

* ``.npy`` (:func:`read_npy`) and ``.npz`` (:func:`read_npz`), written by ``numpy.save`` /
  ``numpy.savez``; pickled objects are never loaded.
* Delimited text (:func:`read_text_table`): one row per line, an optional header line,
  ``#`` comments and blank lines skipped, float64 values.
* MNIST idx files (:func:`read_idx`).

:func:`read_bytes` reads a file (gzipped or not) after :func:`check_data_path` has refused a
missing path, a folder, a device or a file larger than a quarter of the machine's memory. Every
problem raises :class:`~edvae.errors.EdvaeError` naming the file (``what '{path}'``), the row
where it applies, and the fix. Torch-free: the mathematics (``edvae.priors.io``) and the data
layer (``edvae.data.files``) both read through it.
"""

from __future__ import annotations

import io
import math
import os
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from edvae.errors import EdvaeError

__all__ = [
    "MISSING_SPELLINGS",
    "Table",
    "check_data_path",
    "machine_memory_bytes",
    "max_data_bytes",
    "read_bytes",
    "read_idx",
    "read_npy",
    "read_npz",
    "read_text_table",
]

# idx value types: type byte -> big-endian numpy dtype
_IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


class Table:
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


def read_bytes(path: Path, what: str = "file") -> bytes:
    """The bytes of the file at ``path`` (:func:`check_data_path` first), unpacked when gzipped
    (at most :func:`max_data_bytes`); a damaged gzip stream or an empty file is refused."""
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


def _load_numpy(raw: bytes, path: Path, kind: str, what: str) -> Any:
    magic = b"\x93NUMPY" if kind == "npy" else b"PK"
    if not raw.startswith(magic):
        raise EdvaeError(
            f"{what} '{path}' could not be read as a .{kind} file (it does not start with the {kind} signature); "
            f"write it with numpy.save{'z' if kind == 'npz' else ''} or give the file its real format's extension"
        )
    try:
        return np.load(io.BytesIO(raw), allow_pickle=False)
    except ValueError as exc:
        if "allow_pickle" in str(exc):
            raise EdvaeError(
                f"{what} '{path}' holds Python objects, not a numeric array; "
                "save a numeric array (e.g. float32) instead"
            ) from None
        reason = exc
    except (OSError, EOFError, zlib.error, KeyError) as exc:
        reason = exc  # type: ignore[assignment]
    raise EdvaeError(
        f"{what} '{path}' could not be read as a .{kind} file ({reason}); "
        f"check that it was written with numpy.save{'z' if kind == 'npz' else ''}"
    )


def _numeric(array: np.ndarray, path: Path, what: str) -> np.ndarray:
    if array.dtype == np.bool_:
        return array.astype(np.uint8)
    if not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
        raise EdvaeError(f"{what} in '{path}' has dtype {array.dtype}, not numbers; store an integer or float array")
    return array


def read_npy(raw: bytes, path: Path, what: str = "file") -> Table:
    """The array in the bytes of a ``.npy`` file (``numpy.save``): numbers only (booleans become
    0/1 bytes), never unpickled objects."""
    array = _load_numpy(raw, path, "npy", what)
    return Table(_numeric(array, path, "the array"))


def read_npz(raw: bytes, path: Path, what: str = "file") -> Table:
    """The data of a ``.npz`` archive: the array ``x`` (or ``data``, or the only one) and the
    labels ``y`` (or ``labels``) when present."""
    archive = _load_numpy(raw, path, "npz", what)
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
                f"{what} '{path}' holds arrays {', '.join(keys) or '(none)'}; store the data as 'x' (or 'data') "
                "and any labels as 'y' (or 'labels')"
            )
        if len(label_keys) > 1:
            raise EdvaeError(f"{what} '{path}' holds both 'y' and 'labels'; keep one array of labels")
        try:
            x = archive[data_key]
            labels = archive[label_keys[0]] if label_keys else None
        except (ValueError, OSError, EOFError, zlib.error) as exc:
            raise EdvaeError(f"{what} '{path}' has a damaged array ({exc}); write it again with numpy.savez") from None
    x = _numeric(x, path, f"array '{data_key}'")
    if labels is not None:
        labels = _numeric(labels, path, f"array '{label_keys[0]}'")
    return Table(x, labels=labels)


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


def read_text_table(raw: bytes, path: Path, delimiter: str, what: str = "file") -> Table:
    """A ``delimiter``-separated numeric table (float64, one row per line): ``#`` comment lines
    and blank lines skipped, an optional header line (:func:`_is_header`) kept as the column
    names; a missing value or a cell that is not a number is refused naming its line and column."""
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise EdvaeError(f"{what} '{path}' is not UTF-8 text ({exc}); save the table as plain UTF-8 CSV") from None
    entries = [
        (i + 1, line) for i, line in enumerate(text.splitlines()) if line.strip() and not line.lstrip().startswith("#")
    ]
    if not entries:
        raise EdvaeError(f"{what} '{path}' has no data rows; write one example per line")
    columns = None
    first_cells = entries[0][1].split(delimiter)
    if _is_header(first_cells):
        columns = [c.strip().strip('"').strip("'") for c in first_cells]
        entries = entries[1:]
        if not entries:
            raise EdvaeError(f"{what} '{path}' has a header line but no data rows; add one example per line below it")
    line_numbers = np.array([n for n, _ in entries])
    try:
        lines = [line for _, line in entries]
        table = np.loadtxt(lines, delimiter=delimiter, dtype=np.float64, ndmin=2, quotechar='"')
    except ValueError:
        _raise_text_error(entries, path, delimiter, len(columns) if columns else None, what)
        raise  # pragma: no cover - _raise_text_error always raises
    if columns is not None and len(columns) != table.shape[1]:
        raise EdvaeError(
            f"{what} '{path}': the header has {len(columns)} columns but line {line_numbers[0]} has {table.shape[1]}; "
            "make the header match the data"
        )
    finite = table[np.isfinite(table)]
    return Table(
        table,
        row_name=lambda i: f"line {line_numbers[i]}",
        columns=columns,
        integer_valued=bool(np.all(finite == np.round(finite))),
    )


def _raise_text_error(entries: list[tuple[int, str]], path: Path, delimiter: str, width: int | None, what: str) -> None:
    for number, line in entries:
        cells = line.split(delimiter)
        if width is None:
            width = len(cells)
        if len(cells) != width:
            raise EdvaeError(
                f"{what} '{path}': line {number} has {len(cells)} value{'s' * (len(cells) != 1)} "
                f"but earlier rows have {width}; "
                f"give every row the same number of {delimiter!r}-separated values"
            )
        for column, cell in enumerate(cells, start=1):
            if not _is_number(cell) and _cell(cell).lower() in MISSING_SPELLINGS:
                raise EdvaeError(
                    f"{what} '{path}': line {number}, column {column} holds {cell.strip()!r}, a missing value; "
                    "edvae needs every value: fill it in or remove that row"
                )
            if not _is_number(cell):
                raise EdvaeError(
                    f"{what} '{path}': line {number}, column {column} holds {cell.strip()!r}, which is not a number; "
                    "fix or remove that row (tables must be numeric apart from one header line)"
                )
    raise EdvaeError(
        f"{what} '{path}' could not be parsed as a {delimiter!r}-separated numeric table; check its format"
    )
