"""User data files: every format round-trips, every bad file gives an EdvaeError naming it, and
through the command line a file trains and evaluates, or is refused in one line naming the fix."""

from __future__ import annotations

import gzip
import json
import math
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from edvae.cli import app
from edvae.data import load_dataset
from edvae.errors import EdvaeError


def _idx_bytes(array: np.ndarray) -> bytes:
    """An idx file: 0x0000, type 0x08 (unsigned bytes), ndim, big-endian sizes, values."""
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(np.uint8).tobytes()


def _rows(data) -> torch.Tensor:
    return torch.cat([data.train, data.val, data.test]).reshape(len(data.train) + len(data.val) + len(data.test), -1)


def _labels(data) -> torch.Tensor:
    return torch.cat([data.train_labels, data.val_labels, data.test_labels])


@pytest.fixture()
def images() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, size=(40, 4, 5), dtype=np.uint8), rng.integers(0, 10, size=40).astype(np.uint8)


# ---------------------------------------------------------------------------- round trips
def test_npz_round_trip_keeps_rows_and_labels_together(tmp_path):
    rng = np.random.default_rng(1)
    x = rng.random((30, 6)).astype(np.float32)
    path = tmp_path / "table.npz"
    np.savez(path, x=x, y=np.arange(30))
    data = load_dataset("file", path=path, likelihood="gaussian", seed=2)
    assert data.name == "file" and data.x_shape == (6,) and data.likelihood == "gaussian"
    assert (len(data.train), len(data.val), len(data.test)) == (24, 3, 3)
    # every row comes back exactly once, with its own label
    assert torch.equal(_rows(data), torch.from_numpy(x)[_labels(data)])
    assert sorted(_labels(data).tolist()) == list(range(30))
    again = load_dataset(path=path, likelihood="gaussian", seed=2)  # name=None with a path means "file"
    assert torch.equal(again.train, data.train)
    assert not torch.equal(load_dataset(path=path, likelihood="gaussian", seed=3).train_labels, data.train_labels)


def test_npz_alternative_names(tmp_path):
    x = np.random.default_rng(2).random((12, 3))
    np.savez(tmp_path / "a.npz", data=x, labels=np.arange(12) % 3)
    np.savez(tmp_path / "b.npz", x)  # a single unnamed array (arr_0)
    a = load_dataset(path=tmp_path / "a.npz", split=(0.5, 0.25, 0.25), binarize="none")
    assert a.has_labels and sorted(_labels(a).tolist()) == sorted((np.arange(12) % 3).tolist())
    b = load_dataset(path=tmp_path / "b.npz", binarize="none")
    assert not b.has_labels and b.x_shape == (3,)


def test_npy_uint8_images_are_scaled_and_reshaped(tmp_path, images):
    pixels, _ = images
    np.save(tmp_path / "img.npy", pixels)
    data = load_dataset(path=tmp_path / "img.npy", binarize="none")
    assert data.x_shape == (4, 5) and data.info["scale"] == pytest.approx(1 / 255)
    assert torch.allclose(_rows(data).sum(), torch.tensor(pixels.sum() / 255, dtype=torch.float32), rtol=1e-5)
    shaped = load_dataset(path=tmp_path / "img.npy", x_shape=(1, 4, 5), binarize="static")
    assert shaped.x_shape == (1, 4, 5) and shaped.train.shape[1:] == (1, 4, 5)
    assert bool(((shaped.train == 0) | (shaped.train == 1)).all())
    # already-binary integer data are not divided by 255
    np.save(tmp_path / "bits.npy", (pixels > 127).astype(np.uint8))
    bits = load_dataset(path=tmp_path / "bits.npy", binarize="none")
    assert bits.info["scale"] == 1.0 and set(_rows(bits).unique().tolist()) == {0.0, 1.0}
    # raw values on request
    raw = load_dataset(path=tmp_path / "img.npy", scale=None, likelihood="gaussian")
    assert _rows(raw).max() > 1


def test_csv_with_header_and_label_column(tmp_path):
    rng = np.random.default_rng(3)
    x = rng.random((20, 3)).round(4)
    y = np.arange(20) % 4
    lines = ["a,b,label,c"] + [f"{r[0]},{r[1]},{k},{r[2]}" for r, k in zip(x, y, strict=True)]
    (tmp_path / "t.csv").write_text("\n".join(lines) + "\n")
    by_name = load_dataset(path=tmp_path / "t.csv", label_column="label", binarize="none")
    by_index = load_dataset(path=tmp_path / "t.csv", label_column=2, binarize="none")
    assert by_name.x_shape == (3,) and torch.equal(by_name.train, by_index.train)
    assert by_name.train_labels.dtype == torch.int64 and sorted(_labels(by_name).tolist()) == sorted(y.tolist())
    assert torch.allclose(_rows(by_name).sum(0), torch.tensor(x.sum(0), dtype=torch.float32), atol=1e-4)


def test_csv_without_header_integer_pixels_gzip_and_tsv(tmp_path, images):
    pixels, labels = images
    flat = np.column_stack([pixels.reshape(40, -1), labels])
    text = "\n".join(",".join(map(str, row)) for row in flat) + "\n"
    with gzip.open(tmp_path / "pix.csv.gz", "wt") as handle:
        handle.write(text)
    data = load_dataset(path=tmp_path / "pix.csv.gz", label_column=-1, x_shape=(1, 4, 5), binarize="none")
    assert data.x_shape == (1, 4, 5) and data.info["scale"] == pytest.approx(1 / 255)
    assert torch.allclose(_rows(data).sum(), torch.tensor(pixels.sum() / 255, dtype=torch.float32), rtol=1e-5)
    (tmp_path / "pix.tsv").write_text(text.replace(",", "\t"))
    tsv = load_dataset(path=tmp_path / "pix.tsv", label_column=-1, x_shape=(1, 4, 5), binarize="none")
    assert torch.equal(tsv.train, data.train) and torch.equal(tsv.train_labels, data.train_labels)


@pytest.mark.parametrize("compress", [False, True])
def test_idx_images_with_labels_file(tmp_path, images, compress):
    pixels, labels = images
    opener = gzip.compress if compress else (lambda b: b)
    suffix = ".gz" if compress else ""
    (tmp_path / f"train-images-idx3-ubyte{suffix}").write_bytes(opener(_idx_bytes(pixels)))
    (tmp_path / f"train-labels-idx1-ubyte{suffix}").write_bytes(opener(_idx_bytes(labels)))
    data = load_dataset(
        "file",
        path=tmp_path / f"train-images-idx3-ubyte{suffix}",
        labels_path=tmp_path / f"train-labels-idx1-ubyte{suffix}",
        binarize="none",
    )
    assert data.x_shape == (1, 4, 5) and data.info["format"] == "idx"
    rows, got = _rows(data).double() * 255, _labels(data)
    # each image comes back with its own label
    expected = {tuple(p.ravel().tolist()): int(k) for p, k in zip(pixels, labels, strict=True)}
    assert all(expected[tuple(r.round().int().tolist())] == int(k) for r, k in zip(rows, got, strict=True))


def test_gaussian_likelihood_accepts_any_finite_values(tmp_path):
    np.save(tmp_path / "wide.npy", np.linspace(-50, 50, 60).reshape(20, 3))
    data = load_dataset(path=tmp_path / "wide.npy", likelihood="gaussian")
    assert data.binarize == "none" and _rows(data).min() == -50


# ---------------------------------------------------------------------------- bad input
def _write(tmp_path: Path, case: str) -> tuple[Path, dict]:
    """Write the bad file of ``case``; return its path and the options to load it with."""
    good_idx = _idx_bytes(np.zeros((10, 2, 2)))
    p = tmp_path
    if case == "missing":
        return p / "nowhere.npy", {}
    if case == "empty_csv":
        (p / "empty.csv").write_bytes(b"")
        return p / "empty.csv", {}
    if case == "empty_npy_rows":
        np.save(p / "none.npy", np.zeros((0, 4)))
        return p / "none.npy", {}
    if case == "header_only":
        (p / "head.csv").write_text("a,b,c\n")
        return p / "head.csv", {}
    if case == "one_d":
        np.save(p / "flat.npy", np.zeros(10))
        return p / "flat.npy", {}
    if case == "x_shape":
        np.save(p / "rows.npy", np.zeros((10, 785)))
        return p / "rows.npy", {"x_shape": (1, 28, 28)}
    if case == "range":
        x = np.full((10, 3), 0.5)
        x[6, 1] = 3.0
        np.save(p / "range.npy", x)
        return p / "range.npy", {}
    if case == "range_csv":
        (p / "range.csv").write_text("x,y\n0.1,0.2\n0.3,7.5\n")
        return p / "range.csv", {}
    if case == "nan":
        x = np.full((10, 3), 0.5)
        x[4, 2] = np.nan
        np.save(p / "nan.npy", x)
        return p / "nan.npy", {"likelihood": "gaussian"}
    if case == "inf_csv":
        (p / "inf.csv").write_text("0.1,0.2\n0.3,inf\n0.2,0.2\n")
        return p / "inf.csv", {}
    if case == "idx_magic":
        (p / "bad-idx3-ubyte").write_bytes(b"\x12\x34" + good_idx[2:])
        return p / "bad-idx3-ubyte", {}
    if case == "idx_truncated":
        (p / "short-idx3-ubyte").write_bytes(good_idx[:-7])
        return p / "short-idx3-ubyte", {}
    if case == "labels_count":
        (p / "img-idx3-ubyte").write_bytes(good_idx)
        (p / "lab-idx1-ubyte").write_bytes(_idx_bytes(np.zeros(9)))
        return p / "img-idx3-ubyte", {"labels_path": p / "lab-idx1-ubyte"}
    if case == "labels_file_missing":
        (p / "img-idx3-ubyte").write_bytes(good_idx)
        return p / "img-idx3-ubyte", {"labels_path": p / "nolabels-idx1-ubyte"}
    if case == "labels_as_data":
        (p / "lab-idx1-ubyte").write_bytes(_idx_bytes(np.zeros(9)))
        return p / "lab-idx1-ubyte", {}
    if case == "extension":
        (p / "data.xlsx").write_bytes(b"PK")
        return p / "data.xlsx", {}
    if case == "not_a_number":
        (p / "text.csv").write_text("1,2\n3,4\n5,abc\n")
        return p / "text.csv", {}
    if case == "ragged":
        (p / "ragged.csv").write_text("0.1,0.2\n0.3\n")
        return p / "ragged.csv", {}
    if case == "npz_ambiguous":
        np.savez(p / "many.npz", a=np.zeros((5, 2)), b=np.zeros((5, 2)))
        return p / "many.npz", {}
    if case == "objects":
        np.save(p / "obj.npy", np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
        return p / "obj.npy", {}
    if case == "corrupt_npy":
        (p / "junk.npy").write_bytes(b"not an npy file at all")
        return p / "junk.npy", {}
    if case == "label_name":
        (p / "named.csv").write_text("a,b\n0.1,1\n0.2,0\n0.3,1\n")
        return p / "named.csv", {"label_column": "class"}
    if case == "label_values":
        (p / "frac.csv").write_text("0.1,1\n0.2,0.5\n0.3,1\n")
        return p / "frac.csv", {"label_column": 1}
    if case == "too_few_rows":
        np.save(p / "tiny.npy", np.zeros((2, 3)))
        return p / "tiny.npy", {}
    if case == "bad_gzip":
        (p / "broken.csv.gz").write_bytes(gzip.compress(b"0.1,0.2\n" * 50)[:30])
        return p / "broken.csv.gz", {}
    raise AssertionError(case)


BAD_FILES = {
    "missing": ["does not exist"],
    "empty_csv": ["is empty"],
    "empty_npy_rows": ["no values"],
    "header_only": ["header line but no data rows"],
    "one_d": ["1-D array", "one example per row"],
    "x_shape": ["needs 784 values", "has 785", "label_column"],
    "range": ["row 6", "outside [0, 1]", "likelihood='gaussian'", "scale"],
    "range_csv": ["line 3", "7.5", "likelihood='gaussian'"],
    "nan": ["row 4", "NaN"],
    "inf_csv": ["line 2", "Inf"],
    "idx_magic": ["magic number 0x1234", "0x00000803"],
    "idx_truncated": ["needs 56 bytes", "has 49 bytes", "download it again"],
    "labels_count": ["9 labels", "10 examples", "lab-idx1-ubyte"],
    "labels_file_missing": ["labels file", "does not exist"],
    "labels_as_data": ["labels_path"],
    "extension": ["supported", ".npy", "idx"],
    "not_a_number": ["line 3, column 2", "'abc'"],
    "ragged": ["line 2 has 1 value but earlier rows have 2"],
    "npz_ambiguous": ["holds arrays a, b", "'x'"],
    "objects": ["Python objects"],
    "corrupt_npy": ["could not be read as a .npy file"],
    "label_name": ["'class' is not a column", "a, b"],
    "label_values": ["line 2", "not a whole number"],
    "too_few_rows": ["2 examples cannot fill"],
    "bad_gzip": ["damaged gzip"],
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_bad_files_raise_an_error_naming_the_file_and_the_fix(tmp_path, case):
    path, options = _write(tmp_path, case)
    with pytest.raises(EdvaeError) as info:
        load_dataset("file", path=path, **options)
    message = str(info.value)
    name = options["labels_path"].name if case == "labels_file_missing" else path.name
    assert name in message
    for fragment in BAD_FILES[case]:
        assert fragment in message, (fragment, message)


def test_bad_loader_options(tmp_path):
    np.save(tmp_path / "ok.npy", np.full((10, 4), 0.5))
    path = tmp_path / "ok.npy"
    with pytest.raises(EdvaeError, match="needs the data file"):
        load_dataset("file")
    with pytest.raises(EdvaeError, match="dataset name"):
        load_dataset()
    with pytest.raises(EdvaeError, match="valid options: format, x_shape"):
        load_dataset(path=path, labels="y")
    with pytest.raises(EdvaeError, match="format must be one of"):
        load_dataset(path=path, format="xls")
    with pytest.raises(EdvaeError, match="scale must be"):
        load_dataset(path=path, scale=-2)
    with pytest.raises(EdvaeError, match="x_shape must be"):
        load_dataset(path=path, x_shape=(2, "two"))
    with pytest.raises(EdvaeError, match="label_column must be"):
        load_dataset(path=path, label_column=9)
    # an explicit format reads a file whatever its name
    (tmp_path / "values.dat").write_text("0.1,0.2\n0.3,0.4\n0.5,0.6\n")
    assert load_dataset(path=tmp_path / "values.dat", format="csv", binarize="none").x_shape == (2,)


# ----------------------------------------------------------------------------- user files through the CLI
TRAIN_FAST = [
    "--set",
    "train.progress=false",
    "--set",
    "train.batch_size=32",
    "--set",
    "train.epochs=3",
    "--set",
    "model.hidden=[32]",
    "--set",
    "model.latent_dim=4",
    "--set",
    "eval.iwae_samples=8",
]


def _images(n: int = 200, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Ten classes of 6x6 uint8 images: a bright bar whose position and direction give the class."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 10
    x = rng.integers(0, 40, size=(n, 6, 6))
    for i, k in enumerate(labels):
        if k < 6:
            x[i, k, :] = 255
        else:
            x[i, :, k - 4] = 255
    return x.astype(np.uint8), labels.astype(np.int64)


def _write_idx(path: Path, array: np.ndarray) -> None:
    data = _idx_bytes(array)
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)


def _cli(*args: str):
    return CliRunner().invoke(app, [str(a) for a in args])


def _train_and_evaluate(tmp_path: Path, data: Path, *extra: str) -> dict[str, float]:
    run = tmp_path / "run"
    trained = _cli("train", "--data", data, "--out", run, *TRAIN_FAST, *extra)
    assert trained.exit_code == 0, trained.output
    assert "trained 15 steps" in trained.stdout  # 200 examples, 160 train, batch 32, 3 epochs
    evaluated = _cli("evaluate", run, "--json")
    assert evaluated.exit_code == 0, evaluated.output
    return json.loads(evaluated.stdout)


def test_cli_round_trip_npz_with_labels(tmp_path):
    x, y = _images()
    np.savez(tmp_path / "bars.npz", x=x, y=y)
    m = _train_and_evaluate(tmp_path, tmp_path / "bars.npz")
    assert m["bpd"] == pytest.approx(m["nll"] / (36 * math.log(2)))
    assert 0 <= m["probe_accuracy"] <= 1 and m["active_units"] <= 4


def test_cli_round_trip_csv_with_header_label_column_and_conv(tmp_path):
    x, y = _images()
    header = ",".join([*(f"p{i}" for i in range(36)), "label"])
    rows = [",".join(map(str, [*img.ravel(), label])) for img, label in zip(x, y, strict=True)]
    (tmp_path / "bars.csv").write_text(header + "\n" + "\n".join(rows) + "\n")
    m = _train_and_evaluate(
        tmp_path,
        tmp_path / "bars.csv",
        "--set",
        "data.options.label_column=label",
        "--set",
        "data.options.x_shape=[1,6,6]",
        "--set",
        "model.network=conv",
        "--set",
        "data.options.binarize=static",
    )
    assert "probe_accuracy" in m and "bpd" in m


def test_cli_round_trip_idx_with_labels_file_and_gaussian_likelihood(tmp_path):
    x, y = _images()
    _write_idx(tmp_path / "bars-idx3-ubyte.gz", x)
    _write_idx(tmp_path / "bars-idx1-ubyte", y)
    m = _train_and_evaluate(
        tmp_path,
        tmp_path / "bars-idx3-ubyte.gz",
        "--set",
        f"data.options.labels_path={tmp_path / 'bars-idx1-ubyte'}",
        "--set",
        "data.options.likelihood=gaussian",
        "--set",
        "model.network=conv",
    )
    assert "bpd" not in m and "probe_accuracy" in m  # bits per dimension only for binary data


def _bad_files(tmp: Path) -> dict[str, tuple[Path, list[str]]]:
    """Bad file -> (path, fragments the one-line message must contain)."""
    good = np.full((30, 4), 0.5, dtype=np.float32)
    cases: dict[str, tuple[Path, list[str]]] = {}

    def npy(name: str, array: np.ndarray, *fragments: str) -> None:
        np.save(tmp / name, array)
        cases[name] = (tmp / name, list(fragments))

    nan, inf, big = good.copy(), good.copy(), good.copy()
    nan[7, 2], inf[11, 0], big[4, 3] = np.nan, -np.inf, 3.5
    npy("nan.npy", nan, "row 7", "NaN", "remove or impute")
    npy("inf.npy", inf, "row 11", "Inf", "remove or impute")
    npy("range.npy", big, "row 4", "3.5", "outside [0, 1]", "scale", "likelihood='gaussian'")
    npy("flat.npy", np.linspace(0, 1, 30), "1-D array", "one example per row")
    npy("none.npy", np.zeros((0, 4)), "no values")
    (tmp / "empty.npz").write_bytes(b"")
    cases["empty.npz"] = (tmp / "empty.npz", ["is empty"])
    (tmp / "ragged.csv").write_text("0.1,0.2\n0.3,0.4\n0.5\n")
    cases["ragged.csv"] = (tmp / "ragged.csv", ["line 3", "same number"])
    (tmp / "word.csv").write_text("0.1,0.2\n0.3,abc\n")
    cases["word.csv"] = (tmp / "word.csv", ["line 2, column 2", "'abc'", "not a number"])
    (tmp / "bad-idx3-ubyte").write_bytes(struct.pack(">IIII", 0x1234_0803, 2, 6, 6) + bytes(72))
    cases["bad-idx3-ubyte"] = (tmp / "bad-idx3-ubyte", ["magic number 0x12340803", "not an idx header"])
    (tmp / "short-idx3-ubyte").write_bytes(struct.pack(">IIII", 0x0803, 10, 6, 6) + bytes(50))
    cases["short-idx3-ubyte"] = (tmp / "short-idx3-ubyte", ["declares shape (10, 6, 6)", "truncated or corrupt"])
    return cases


BAD = [
    "nan.npy",
    "inf.npy",
    "range.npy",
    "flat.npy",
    "none.npy",
    "empty.npz",
    "ragged.csv",
    "word.csv",
    "bad-idx3-ubyte",
    "short-idx3-ubyte",
]


@pytest.mark.parametrize("name", BAD)
def test_cli_bad_user_file_is_one_line_naming_the_file_row_and_fix(tmp_path, name):
    path, fragments = _bad_files(tmp_path)[name]
    result = _cli("train", "--data", path, "--out", tmp_path / "run", "--set", "train.progress=false")
    assert result.exit_code == 2
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and str(path) in lines[0]
    for fragment in fragments:
        assert fragment in lines[0]


def test_cli_bad_shape_for_the_network_and_missing_file(tmp_path):
    np.save(tmp_path / "flat.npy", np.full((200, 36), 0.5, dtype=np.float32))
    result = _cli(
        "train", "--data", tmp_path / "flat.npy", "--out", tmp_path / "run", *TRAIN_FAST, "--set", "model.network=conv"
    )
    assert result.exit_code == 2 and "needs image data" in result.stderr and "x_shape" in result.stderr
    result = _cli(
        "train", "--data", tmp_path / "flat.npy", "--out", tmp_path / "run2", "--set", "data.options.x_shape=[1,5,5]"
    )
    assert result.exit_code == 2 and "x_shape (1, 5, 5) needs 25 values" in result.stderr and "36" in result.stderr
    result = _cli("train", "--data", tmp_path / "missing.npy", "--out", tmp_path / "run3")
    assert result.exit_code == 2 and "does not exist" in result.stderr and "missing.npy" in result.stderr
