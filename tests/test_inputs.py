"""Bad inputs end in one line naming the real cause (issue 21, items 5-7): config values, data
files, labels, bounds on memory and runs, the Python API, publish, caches and prior files."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from cli_helpers import assert_one_line_error, invoke
from edvae.errors import EdvaeError

TINY = [
    "--set",
    "train.epochs=1",
    "--set",
    "train.batch_size=16",
    "--set",
    "train.progress=false",
    "--set",
    "data.options.likelihood=gaussian",
    "--set",
    "model.hidden=[8]",
]


@pytest.fixture
def data_file(tmp_path) -> Path:
    path = tmp_path / "x.npy"
    np.save(path, np.random.default_rng(0).normal(size=(80, 3)).astype(np.float32))
    return path


# ----------------------------------------------------------------------------- configs
def test_toml_dates_anywhere_are_refused_naming_the_key(tmp_path):
    for i, body in enumerate(
        ['when = 1979-05-27T07:32:00Z\n[data]\nname = "gaussian"', "[model]\nhidden = [07:32:00]"]
    ):
        path = tmp_path / f"c{i}.toml"
        path.write_text(body + "\n")
        key = "when" if i == 0 else "model.hidden"
        assert_one_line_error(invoke("train", path, "--out", tmp_path / "run"), f"'{key}' holds a TOML date/time")
    assert_one_line_error(invoke("train", "--out", tmp_path / "run", "--set", "name=1979-05-27"), "'name' holds a TOML")
    assert not (tmp_path / "run").exists()


def test_an_array_of_tables_is_named_with_its_file_not_as_a_set_error(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text("[[train]]\nepochs = 1\n")
    line = assert_one_line_error(invoke("train", path, "--out", tmp_path / "run", "--set", "train.epochs=2"), str(path))
    assert "[[train]]" in line and "--set" not in line


def test_dash_h_is_help_on_every_command():
    for command in ("train", "evaluate", "reproduce", "publish", "bench"):
        result = invoke(command, "-h")
        assert result.exit_code == 0 and "Usage" in result.stdout, (command, result.stderr)


# ----------------------------------------------------------------------------- data files
def test_a_csv_first_row_with_na_is_a_data_row_with_a_missing_value(tmp_path):
    from edvae.data.files import load_file

    rows = np.random.default_rng(0).normal(size=(30, 3))
    text = "\n".join(",".join(f"{v:.6f}" for v in row) for row in rows)
    path = tmp_path / "na.csv"
    path.write_text("NA" + text[text.index(",") :] + "\n")  # first cell missing: not a header
    with pytest.raises(EdvaeError, match="line 1, column 1 holds 'NA', a missing value"):
        load_file(seed=0, path=path, likelihood="gaussian")
    path.write_text("a,b,c\n" + text + "\n")  # a real header: every row is used
    data = load_file(seed=0, path=path, likelihood="gaussian")
    assert len(data.train) + len(data.val) + len(data.test) == 30
    path.write_text(",b,c\n" + text + "\n")  # an empty cell beside names is still a header
    data = load_file(seed=0, path=path, likelihood="gaussian")
    assert len(data.train) + len(data.val) + len(data.test) == 30


def test_data_paths_are_checked_before_reading(tmp_path, monkeypatch):
    import edvae.data.files as files

    assert_one_line_error(invoke("train", "--data", "/dev/zero", "--out", tmp_path / "r", *TINY), "not a regular file")
    assert_one_line_error(invoke("train", "--data", tmp_path, "--out", tmp_path / "r", *TINY), "is a directory")
    result = invoke("train", "--set", "data.name=file", "--set", 'data.path=""', "--out", tmp_path / "r", *TINY)
    assert_one_line_error(result, "data.path is empty")
    big = tmp_path / "big.npy"
    np.save(big, np.zeros((100, 10), np.float32))
    import edvae.numeric_files

    monkeypatch.setattr(edvae.numeric_files, "machine_memory_bytes", lambda: 4 * 1000)  # reads at most 1000 bytes
    with pytest.raises(EdvaeError, match="more than edvae reads on this machine"):
        files.load_file(seed=0, path=big, likelihood="gaussian")
    packed = tmp_path / "big.csv.gz"
    import gzip

    packed.write_bytes(gzip.compress(b"0,1\n" * 1000))  # 80 bytes packed, 4000 unpacked
    with pytest.raises(EdvaeError, match="unpacks to more than"):
        files.load_file(seed=0, path=packed, likelihood="gaussian")


@pytest.mark.parametrize("label", [-1, 1e12, 2**31])
def test_labels_are_class_indices_in_range(tmp_path, label):
    path = tmp_path / "lab.npz"
    np.savez(path, x=np.zeros((40, 2), np.float32), y=np.full(40, label))
    assert_one_line_error(invoke("train", "--data", path, "--out", tmp_path / "r", *TINY), "whole numbers from 0 to")
    from edvae.data import DataSplits

    x = torch.zeros(4, 2)
    bad = torch.tensor([0, 1, 2, int(label)])
    with pytest.raises(EdvaeError, match="class indices"):
        DataSplits("t", x, x, x, (2,), "gaussian", "none", bad, bad, bad)


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("inputs")
    data = tmp / "x.npy"
    np.save(data, np.random.default_rng(0).normal(size=(80, 3)).astype(np.float32))
    result = invoke("train", "--data", data, "--out", tmp / "run", *TINY)
    assert result.exit_code == 0, result.stderr
    return tmp / "run"


def test_evaluating_on_data_of_another_width_names_the_data(run, tmp_path):
    other = tmp_path / "w2.npy"
    np.save(other, np.zeros((40, 2), np.float32))
    line = assert_one_line_error(invoke("evaluate", run, "--data", other, "--no-true-ll"), "examples of shape (2,)")
    assert "damaged" not in line


def test_resuming_after_the_data_moved_gives_a_fix_that_works(tmp_path, data_file):
    assert invoke("train", "--data", data_file, "--out", tmp_path / "run", *TINY).exit_code == 0
    moved = tmp_path / "moved.npy"
    data_file.rename(moved)
    line = assert_one_line_error(invoke("train", "--resume", tmp_path / "run", "--set", "train.epochs=2"), "ln -s")
    assert "--data" not in line
    data_file.symlink_to(moved)  # the fix it gives
    result = invoke("train", "--resume", tmp_path / "run", "--set", "train.epochs=2")
    assert result.exit_code == 0, result.stderr


def test_huge_data_values_are_named_not_the_learning_rate(tmp_path):
    path = tmp_path / "huge.npy"
    np.save(path, (np.random.default_rng(0).normal(size=(80, 3)) * 1e30).astype(np.float32))
    line = assert_one_line_error(invoke("train", "--data", path, "--out", tmp_path / "r", *TINY), "|x| = ")
    assert "not the learning rate" in line and "Lower train.lr" not in line


def test_a_diverging_but_finite_validation_elbo_gets_a_warning(tmp_path, capfd):
    from edvae.training.guards import divergence_warning

    assert divergence_warning(-5.0, -400.0, 3) is None  # 80x worse: not yet
    assert "diverging" in divergence_warning(-5.0, -600.0, 3)
    assert divergence_warning(-0.001, -50.0, 2) is None  # at least 1 nat of scale
    import edvae

    class Blow:  # after the first validation, push the means far out: the KL grows by orders
        def on_validation_end(self, trainer, state):
            if state.epoch == 0:
                with torch.no_grad():
                    for p in state.model.encoder.parameters():
                        p.mul_(1e3)

    x = np.random.default_rng(0).normal(size=(80, 3)).astype(np.float32)
    overrides = {"train.batch_size": 16, "train.progress": False, "model.hidden": [8]}
    edvae.fit(x, tmp_path / "run", epochs=2, likelihood="gaussian", overrides=overrides, callbacks=[Blow()])
    assert "orders of magnitude worse" in capfd.readouterr().err


# ----------------------------------------------------------------------------- bounds
def test_bounds_are_checked_before_any_work(run, tmp_path):
    line = assert_one_line_error(
        invoke("reproduce", "--quick", "--seeds", 10**20, "--out", tmp_path / "s"), "lower --seeds"
    )
    assert not (tmp_path / "s").exists() and "runs" in line
    result = invoke("train", "--data", tmp_path / "none.npy", "--out", tmp_path / "r", *TINY)
    assert result.exit_code == 2
    assert_one_line_error(invoke("evaluate", run, "--iwae-samples", 10**12, "--no-true-ll"), "lower --iwae-samples")
    data = tmp_path / "x.npy"
    np.save(data, np.zeros((40, 3), np.float32))
    result = invoke("train", "--data", data, "--out", tmp_path / "r", *TINY, "--set", "model.hidden=[65536, 65536]")
    assert_one_line_error(result, "narrower layers")


def test_a_missing_node_ends_the_rendezvous_with_one_line(tmp_path, data_file):
    result = invoke(
        "train", "--data", data_file, "--out", tmp_path / "r", *TINY, "--num-nodes", 2, "--set",
        "train.rendezvous_timeout=2",
    )  # fmt: skip
    assert_one_line_error(result, "did not all join within train.rendezvous_timeout=2 s")


def test_a_missing_node_prints_only_the_error_line_from_the_command(tmp_path, data_file):
    """The real command (its own process, Lightning's logging configured as a user meets it):
    Lightning's "Initializing distributed" info line must not precede the one-line error."""
    command = [
        sys.executable, "-m", "edvae.cli", "train", "--data", str(data_file), "--out", str(tmp_path / "r"),
        *map(str, TINY), "--num-nodes", "2", "--set", "train.rendezvous_timeout=2",
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "did not all join" in lines[0], done.stderr


# ----------------------------------------------------------------------------- Python API
@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"callbacks": 5}, "callbacks must be a list"),
        ({"callbacks": [object()]}, "has none of the methods"),
        ({"split": (0.9, 0.1)}, "three positive"),
        ({"split": (1, 0, 0)}, "three positive"),
    ],
)
def test_fit_refuses_bad_callbacks_and_degenerate_splits(tmp_path, kwargs, expected):
    import edvae

    x = np.zeros((40, 3), np.float32)
    with pytest.raises(EdvaeError, match=expected):
        edvae.fit(x, tmp_path / "run", epochs=1, likelihood="gaussian", **kwargs)
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


# ----------------------------------------------------------------------------- publish
def test_publish_checks_everything_before_writing(tmp_path):
    results = tmp_path / "out"
    results.mkdir()
    docs = tmp_path / "docs"
    source = next(Path(__file__).parent.parent.joinpath("docs", "results").glob("*.json"))
    (results / "results.json").write_text('{"records": ')
    assert_one_line_error(invoke("publish", results, "--name", "x", "--docs", docs), "is not a results file")
    (results / "results.json").write_text("[1, 2]")
    assert_one_line_error(invoke("publish", results, "--name", "x", "--docs", docs), "is not a results file")
    (results / "results.json").write_text(source.read_text())
    assert_one_line_error(invoke("publish", results, "--name", "..", "--docs", docs), "--name must start with")
    readme = tmp_path / "README.md"
    assert_one_line_error(invoke("publish", results, "--name", "x", "--docs", docs, "--readme", readme), "not found")
    readme.write_text("# no block\n")
    assert_one_line_error(
        invoke("publish", results, "--name", "x", "--docs", docs, "--readme", readme), "has no block showing x"
    )
    assert not docs.exists()
    readme.write_text("<!-- results:x -->\n<!-- /results:x -->\n")
    assert invoke("publish", results, "--name", "x", "--docs", docs, "--readme", readme).exit_code == 0
    assert (docs / "x.md").is_file() and "<!-- results:x -->\n\n" in readme.read_text()
    assert invoke("publish", results, "--name", "y", "--docs", docs, "--readme", "").exit_code == 0


# ----------------------------------------------------------------------------- caches and prior files
def test_a_wrong_or_corrupt_true_ll_cache_is_recomputed(tmp_path, monkeypatch):
    from edvae.config import validate_config
    from edvae.data import GroundTruth
    from edvae.evaluate import cached_true_log_likelihoods

    calls = []
    original = GroundTruth.true_log_likelihood

    def counted(self, *args, **kwargs):
        calls.append(1)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(GroundTruth, "true_log_likelihood", counted)
    cfg = validate_config(
        {"data": {"name": "gaussian", "options": {"n_train": 8, "n_val": 4, "n_test": 4, "latent_dim": 1}}}
    )
    first = cached_true_log_likelihoods(cfg, tmp_path)
    (path,) = tmp_path.glob("true_ll-*.pt")
    assert torch.equal(cached_true_log_likelihoods(cfg, tmp_path), first) and len(calls) == 1
    stored = torch.load(path)
    for damage in ({"log_p_true": torch.zeros_like(first)}, {**stored, "log_p_true": torch.zeros_like(first)}, None):
        if damage is None:
            path.write_bytes(b"not a cache")
        else:
            torch.save(damage, path)
        assert torch.equal(cached_true_log_likelihoods(cfg, tmp_path), first)
    assert len(calls) == 4


@pytest.mark.parametrize("method", ["kde", "flow"])
def test_a_samples_prior_is_recorded_by_absolute_path_and_hash_and_never_needed_again(tmp_path, monkeypatch, method):
    samples = tmp_path / "prior" / "s.npy"
    samples.parent.mkdir()
    np.save(samples, np.random.default_rng(1).normal(size=(64, 2)))
    monkeypatch.chdir(samples.parent)
    options = ["--set", f'model.prior_options={{method="{method}", flow_steps=2}}'] if method == "flow" else []
    args = ["--set", "model.latent_dim=2", *options, "--prior", "samples:s.npy"]
    result = invoke("train", "--data", _write_data(tmp_path), "--out", tmp_path / "run", *TINY, *args)
    assert result.exit_code == 0, result.stderr
    record = json.loads((tmp_path / "run" / "data.json").read_text())["prior_samples"]
    assert record["path"] == str(samples.resolve()) and len(record["sha256"]) == 64
    stored = json.loads((tmp_path / "run" / "config.json").read_text())
    assert stored["model"]["prior"] == f"samples:{samples.resolve()}"
    before = invoke("evaluate", tmp_path / "run", "--json", "--no-true-ll")
    assert before.exit_code == 0, before.stderr
    samples.unlink()  # and from another folder
    monkeypatch.chdir(tmp_path)
    after = invoke("evaluate", tmp_path / "run", "--json", "--no-true-ll")
    assert after.exit_code == 0, after.stderr
    assert json.loads(after.stdout) == json.loads(before.stdout)
    assert invoke("train", "--resume", tmp_path / "run", "--set", "train.epochs=2").exit_code == 0


def _write_data(tmp_path: Path) -> Path:
    path = tmp_path / "x.npy"
    np.save(path, np.random.default_rng(0).normal(size=(80, 3)).astype(np.float32))
    return path
