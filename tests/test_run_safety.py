"""A run folder is never lost, written by two processes, resumed dishonestly or read from a bad checkpoint.

Regressions of issue 21 (items 1-4): ``--overwrite`` that deleted the old run before the new one
was checked; no lock on a run folder or a study's --out; ``--resume --set train.lr=...``
silently dropped; ``evaluate`` of an unfinished run without a word; forged or damaged
checkpoints and data files that ended in a traceback or trained on from a wrong state; a full
disk during a checkpoint that ended in a traceback.
"""

from __future__ import annotations

import copy
import errno
import json
import math
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import edvae.checkpoint
from cli_helpers import assert_one_line_error, invoke
from edvae.checkpoint import CHECKPOINT_NAME, load_checkpoint
from edvae.errors import EdvaeError
from edvae.training import load_data, train
from edvae.training.run_dir import LOCK_NAME, RunLock

TINY = """\
name = "tiny"
[data]
name = "complex"
options = { n_train = 256, n_val = 128, n_test = 128 }
[model]
latent_dim = 2
hidden = [16]
prior = "true"
[train]
epochs = 1
batch_size = 64
lr = 1e-3
progress = false
log_every = 2
"""


@pytest.fixture
def run(tmp_path) -> Path:
    """A finished tiny run (4 steps), and its config file beside it."""
    (tmp_path / "tiny.toml").write_text(TINY)
    result = invoke("train", tmp_path / "tiny.toml", "--out", tmp_path / "run")
    assert result.exit_code == 0, result.stderr
    return tmp_path / "run"


def _snapshot(run_dir: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(run_dir.iterdir()) if p.is_file() and p.name != LOCK_NAME}


# ----------------------------------------------------------------------------- 1. check before you destroy


def test_a_failed_overwrite_leaves_the_old_run_as_it_was(run, tmp_path, poison_objective):
    """Regression: --overwrite deleted the run before the new inputs were checked."""
    before = _snapshot(run)
    config = tmp_path / "tiny.toml"
    np.save(tmp_path / "nan.npy", np.full((300, 4), np.nan, dtype="float32"))
    np.save(tmp_path / "prior_nan.npy", np.full((300, 2), np.nan, dtype="float32"))
    cases = [
        (["--data", tmp_path / "nan.npy", "--set", "data.options={}"], "NaN", 2),
        (["--prior", f"samples:{tmp_path / 'prior_nan.npy'}"], "NaN or Inf", 2),
        (["--set", "train.batch_size=10000"], "exceeds the 256 training examples", 2),
        (["--set", "train.lr=1e5"], "the run already in", 1),  # diverges at step 2
    ]
    for args, message, code in cases:
        line = assert_one_line_error(invoke("train", config, "--out", run, "--overwrite", *args), message, code)
        assert _snapshot(run) == before, line
        assert not any(p.name.startswith(".run.") for p in tmp_path.iterdir()), "the staging folder is left"
    calls = poison_objective("reconstruction", lambda n: n == 2)  # the objective, not the lr, fails at step 2
    line = assert_one_line_error(invoke("train", config, "--out", run, "--overwrite"), "became non-finite at step 2", 1)
    assert f"the run already in {run} is unchanged" in line and calls["n"] == 2
    assert _snapshot(run) == before


def test_a_full_disk_at_the_first_checkpoint_of_an_overwrite_keeps_the_old_run(run, tmp_path, monkeypatch):
    before = _snapshot(run)

    def full(obj, path):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(edvae.checkpoint, "save_atomic", full)
    line = assert_one_line_error(
        invoke("train", tmp_path / "tiny.toml", "--out", run, "--overwrite"), "no space left on device", 1
    )
    assert f"the run already in {run} is unchanged" in line
    assert _snapshot(run) == before


def test_a_successful_overwrite_replaces_the_run_and_keeps_the_users_files(run, tmp_path):
    (run / "notes.txt").write_text("mine")
    old = load_checkpoint(run)
    result = invoke("train", tmp_path / "tiny.toml", "--out", run, "--overwrite", "--set", "train.seed=7")
    assert result.exit_code == 0, result.stderr
    new = load_checkpoint(run)
    assert new["config"]["train"]["seed"] == 7 and old["config"]["train"]["seed"] == 0
    assert (run / "notes.txt").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run", "tiny.toml"]
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 3  # 2 logged steps and 1 validation


# ----------------------------------------------------------------------------- 2. one writer per run folder

_HOLD = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)
fcntl.flock(fd, fcntl.LOCK_EX)
os.ftruncate(fd, 0); os.write(fd, str(os.getpid()).encode())
print("held", flush=True)
time.sleep(120)
"""


def _hold_lock(folder: Path) -> subprocess.Popen:
    """Another process holding ``folder``'s lock, as a live ``edvae train`` does."""
    holder = subprocess.Popen([sys.executable, "-c", _HOLD, str(folder / LOCK_NAME)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
    return holder


def test_a_live_writer_refuses_a_second_one_naming_its_pid_and_a_dead_ones_lock_is_taken_over(run, tmp_path):
    before = _snapshot(run)
    holder = _hold_lock(run)
    try:
        config = tmp_path / "tiny.toml"
        for args in (
            ["train", "--resume", run, "--set", "train.epochs=2"],
            ["train", config, "--out", run, "--overwrite"],
        ):
            line = assert_one_line_error(invoke(*args), f"is in use by another edvae train (pid {holder.pid})")
            assert f"kill {holder.pid}" in line
            assert _snapshot(run) == before
        fresh = tmp_path / "fresh"
        fresh.mkdir()
        other = _hold_lock(fresh)
        try:
            assert_one_line_error(invoke("train", config, "--out", fresh), f"(pid {other.pid})")
            (fresh / "metrics.jsonl").write_text("")  # the logs of a live run before its first checkpoint
            line = assert_one_line_error(
                invoke("train", "--resume", fresh), f"still starting or training (pid {other.pid})"
            )
            assert "stopped before its first checkpoint" not in line  # regression: blamed on a failed run
        finally:
            other.kill()
            other.wait()
        assert not (fresh / CHECKPOINT_NAME).exists()
        evaluated = invoke("evaluate", run, "--iwae-samples", "2", "--no-true-ll", "--json")
        assert evaluated.exit_code == 0 and "warning" not in evaluated.stderr  # a finished run: nothing to say
    finally:
        holder.kill()
        holder.wait()
    result = invoke("train", "--resume", run, "--set", "train.epochs=2")  # the dead holder's lock is taken over
    assert result.exit_code == 0, result.stderr
    assert load_checkpoint(run)["step"] == 8
    assert (run / LOCK_NAME).read_text().strip() == str(os.getpid())


def test_two_studies_on_one_out_folder_the_second_is_refused(tmp_path):
    out = tmp_path / "study"
    with RunLock(out, what="edvae reproduce"):
        line = assert_one_line_error(
            invoke("reproduce", "--out", out, "--quick", "--seeds", "1", "--workers", "1"),
            f"is in use by another edvae reproduce (pid {os.getpid()})",
        )
    assert "wait for it to finish" in line
    assert sorted(p.name for p in out.iterdir()) == [LOCK_NAME]  # nothing was run


def test_evaluate_says_when_a_run_is_unfinished(tmp_path, tiny_config):
    config = tiny_config(train={"epochs": 2})
    train(config, tmp_path / "run", stop_at_step=3)
    args = ["evaluate", tmp_path / "run", "--iwae-samples", "2", "--no-true-ll", "--json"]
    result = invoke(*args)
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["completed"] is False
    warning = result.stderr.strip().splitlines()
    assert len(warning) == 1 and warning[0].startswith("warning: ") and "is an unfinished run" in warning[0]
    assert "step 3, epoch 0 of 2" in warning[0] and "edvae train --resume" in warning[0]
    holder = _hold_lock(tmp_path / "run")
    try:
        assert f"still training (pid {holder.pid})" in invoke(*args).stderr
    finally:
        holder.kill()
        holder.wait()
    train(config, tmp_path / "run", resume=True)
    result = invoke(*args)
    assert "completed" not in json.loads(result.stdout) and result.stderr == ""


# ----------------------------------------------------------------------------- 3. honest resume rules


def test_resume_changes_the_learning_rate_and_records_it(run):
    """Regression: --set train.lr=... on --resume exited 0 and trained on with the stored lr."""
    result = invoke("train", "--resume", run, "--set", "train.epochs=2", "--set", "train.lr=0.0005")
    assert result.exit_code == 0, result.stderr
    state = load_checkpoint(run)
    assert [g["lr"] for g in state["optimizer"]["param_groups"]] == [0.0005]
    assert state["config"]["train"]["lr"] == 0.0005 and state["step"] == 8
    expected = [
        {"step": 4, "key": "train.epochs", "from": 1, "to": 2},
        {"step": 4, "key": "train.lr", "from": 0.001, "to": 0.0005},
    ]
    assert state["changes"] == expected
    assert json.loads((run / "config.json").read_text())["changes"] == expected
    result = invoke("train", "--resume", run, "--set", "train.epochs=3", "--set", "train.grad_clip=1")
    assert result.exit_code == 0, result.stderr
    assert load_checkpoint(run)["changes"] == [*expected, {"step": 8, "key": "train.epochs", "from": 2, "to": 3}] + [
        {"step": 8, "key": "train.grad_clip", "from": None, "to": 1.0}
    ]


def test_a_cosine_schedule_follows_a_new_learning_rate_from_the_step_it_changes(tmp_path, tiny_config):
    config = tiny_config(train={"epochs": 2, "lr_schedule": "cosine", "lr": 1e-3})
    train(config, tmp_path / "run", stop_at_step=5)
    changed = config.model_copy(update={"train": config.train.model_copy(update={"lr": 4e-4})})
    train(changed, tmp_path / "run", resume=True, stop_at_step=11)
    state = load_checkpoint(tmp_path / "run")
    total = 2 * (512 // 64)
    assert state["optimizer"]["param_groups"][0]["lr"] == pytest.approx(4e-4 * (1 + math.cos(math.pi * 11 / total)) / 2)
    assert state["changes"] == [{"step": 5, "key": "train.lr", "from": 1e-3, "to": 4e-4}]


@pytest.mark.parametrize(
    "setting", ["train.batch_size=32", "train.seed=3", "train.lr_schedule=cosine", "train.grad_accum_steps=2"]
)
def test_resume_refuses_settings_that_change_what_the_run_is(run, setting):
    """Regression: these were dropped silently (exit 0, the stored value used)."""
    before = _snapshot(run)
    key = setting.split("=")[0]
    line = assert_one_line_error(
        invoke("train", "--resume", run, "--set", "train.epochs=2", "--set", setting), f"with {key}="
    )
    assert "changes what the run is" in line
    assert _snapshot(run) == before


def test_the_python_api_refuses_a_resume_with_another_model_or_data(tmp_path, tiny_config):
    config = tiny_config(train={"epochs": 2})
    train(config, tmp_path / "run", stop_at_step=2)
    for other in (
        tiny_config(model={"hidden": [16]}),
        tiny_config(data={"seed": 5}),
        tiny_config(objective={"kind": "elbo"}),
    ):
        with pytest.raises(EdvaeError, match="changes what the run is"):
            train(other, tmp_path / "run", resume=True)
    assert load_checkpoint(tmp_path / "run")["step"] == 2


# ----------------------------------------------------------------------------- 4. checkpoints validated as data


def _forge(state: dict, change) -> dict:
    forged = copy.deepcopy(state)
    change(forged)
    return forged


def _set(key, value):
    return lambda s: s.__setitem__(key, value)


def _drop(key):
    return lambda s: s.pop(key)


def _first_moment(shape):
    def change(s):
        entry = next(iter(s["optimizer"]["state"].values()))
        entry["exp_avg"] = torch.zeros(shape)

    return change


def _optimizer_entry(change):
    return lambda s: change(next(iter(s["optimizer"]["state"].values())))


def _optimizer_group(key, value):
    return lambda s: s["optimizer"]["param_groups"][0].__setitem__(key, value)


def _weight_dtype(s):
    name = next(iter(s["model"]))
    s["model"][name] = s["model"][name].double()


FORGED = [
    ("string step", _set("step", "4"), "'step' is invalid (input should be a valid integer; got '4')"),
    ("negative step", _set("step", -4), "'step' is invalid (input should be greater than or equal to 0"),
    ("negative epoch", _set("epoch", -1), "'epoch' is invalid"),
    ("bool completed", _set("completed", "no"), "'completed' is invalid"),
    ("missing step", _drop("step"), "the entry 'step' is missing"),
    ("missing rng", _drop("rng"), "cannot be resumed: it holds no rng"),
    ("missing optimizer", _drop("optimizer"), "cannot be resumed: it holds no optimizer"),
    ("rng not tensors", _set("rng", {"torch": 1, "numpy": [], "python": [], "noise": 2}), "'rng."),
    ("NaN seconds", _set("train_seconds", float("nan")), "'train_seconds' is invalid"),
    ("string seconds", _set("train_seconds", "3"), "'train_seconds' is invalid"),
    ("string validation value", _set("last_validation", {"loss": "1"}), "'last_validation.loss' is invalid"),
    ("position off", _set("step", 3), "its position (step 3, epoch 1, batch 0, 0 skipped) does not add up"),
    ("moment of another shape", _first_moment((3, 3)), "optimizer state 'exp_avg' of parameter"),
    ("moment missing", _optimizer_entry(lambda e: e.pop("exp_avg")), "not the tensors exp_avg, exp_avg_sq, step"),
    ("moment not a tensor", _optimizer_entry(lambda e: e.__setitem__("exp_avg_sq", 1.0)), "exp_avg_sq: float"),
    ("scalar moment", _optimizer_entry(lambda e: e.__setitem__("exp_avg", torch.tensor(0.0))), "has shape ()"),
    ("NaN step count", _optimizer_entry(lambda e: e.__setitem__("step", torch.tensor(math.nan))), "'step' of param"),
    ("betas of three", _optimizer_group("betas", [0, 0, 99]), "the optimizer's setting 'betas' in"),
    ("eps not a number", _optimizer_group("eps", {}), "the optimizer's setting 'eps' in"),
    ("negative weight decay", _optimizer_group("weight_decay", -1.0), "the optimizer's setting 'weight_decay'"),
    ("weights of another dtype", _weight_dtype, "torch.float64, the model's is torch.float32"),
    ("model weights missing", _set("model", {}), "do not fit the model"),
]


@pytest.mark.parametrize("case, change, message", FORGED, ids=[c[0] for c in FORGED])
def test_forged_checkpoints_end_in_one_line_naming_the_file(run, case, change, message):
    """Regression: a missing key or a string step was a traceback, a negative step trained on."""
    state = load_checkpoint(run)
    torch.save(_forge(state, change), run / CHECKPOINT_NAME)
    line = assert_one_line_error(invoke("train", "--resume", run, "--set", "train.epochs=2"), message)
    assert str(run) in line
    resumable_only = ("missing rng", "missing optimizer", "rng not tensors", "position off", "moment of another shape")
    resumable_only += ("moment missing", "moment not a tensor", "scalar moment", "NaN step count")
    resumable_only += ("betas of three", "eps not a number", "negative weight decay")
    if case not in (
        *resumable_only,
        "NaN seconds",
        "string seconds",
        "string validation value",
    ):  # evaluation reads the model and the position only
        assert str(run) in assert_one_line_error(
            invoke("evaluate", run, "--iwae-samples", "2", "--no-true-ll"), message
        )


def test_evaluate_of_a_checkpoint_without_training_time_leaves_it_out(run):
    """Regression: a checkpoint whose train_seconds is None (allowed: earlier versions) was a
    TypeError in evaluate; it is evaluated, without a train_seconds metric."""
    state = load_checkpoint(run)
    state["train_seconds"] = None
    torch.save(state, run / CHECKPOINT_NAME)
    result = invoke("evaluate", run, "--iwae-samples", "2", "--no-true-ll", "--json")
    assert result.exit_code == 0, result.stderr
    metrics = json.loads(result.stdout)
    assert "train_seconds" not in metrics and math.isfinite(metrics["elbo"])


def test_a_full_disk_during_a_checkpoint_ends_in_one_line_and_keeps_the_last_one(run, monkeypatch):
    """Regression: OSError ENOSPC from the atomic save was a traceback (train and resume)."""
    good = (run / CHECKPOINT_NAME).read_bytes()

    def full(obj, path):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(edvae.checkpoint, "save_atomic", full)
    line = assert_one_line_error(
        invoke("train", "--resume", run, "--set", "train.epochs=2"), "no space left on device writing", 1
    )
    assert f"the last good checkpoint in {run} is kept" in line
    assert f"free space and resume with: edvae train --resume {run}" in line
    assert (run / CHECKPOINT_NAME).read_bytes() == good
    fresh = run.parent / "fresh"
    line = assert_one_line_error(
        invoke("train", run.parent / "tiny.toml", "--out", fresh), "no space left on device writing", 1
    )
    assert "no checkpoint was written" in line and "start the run again" in line


class _Foreign:
    pass


@pytest.mark.parametrize(
    "write, message",
    [
        (lambda p: torch.save([1, 2, 3], p), "is not edvae data"),
        (lambda p: torch.save({"train": torch.zeros(3)}, p), "is not edvae data"),
        (lambda p: p.write_bytes(pickle.dumps(_Foreign())), "objects other than tensors"),
        (lambda p: p.write_bytes(b"\x80\x04garbage"), "is damaged or not edvae data"),
    ],
    ids=["a list", "a dict without splits", "a pickled object", "truncated"],
)
def test_a_damaged_data_pt_ends_in_one_line_naming_it(tmp_path, tiny_config, write, message):
    config = tiny_config(train={"epochs": 1})
    train(config, tmp_path / "run", data=load_data(config))
    write(tmp_path / "run" / "data.pt")
    (tmp_path / "run" / "data.json").unlink()  # else the changed hash is refused first (a run from before hashes)
    for args in (["evaluate", tmp_path / "run", "--iwae-samples", "2"], ["train", "--resume", tmp_path / "run"]):
        line = assert_one_line_error(invoke(*args), message)
        assert "data.pt" in line
