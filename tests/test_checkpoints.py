"""Reliability under real faults, with real processes.

* SIGKILL while a checkpoint is being written (deterministically half-way through the temporary
  file, and at random moments in a loop): the folder always holds a loadable checkpoint and
  ``edvae train --resume`` finishes the run, bit for bit as if it had never been killed.
* SIGTERM / SIGINT: the run saves at the next step boundary, exits 143 / 130 with a message
  saying how to resume, and the resumed run equals an uninterrupted one bit for bit.
* The same seed gives the same ``results.json`` (timings aside), with 1 or 2 workers.
* A malicious checkpoint (a pickle whose ``__reduce__`` runs code) is refused, never executed.
"""

from __future__ import annotations

import json
import os
import pickle
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from typer.testing import CliRunner

from edvae.checkpoint import CHECKPOINT_FORMAT, CHECKPOINT_NAME, load_checkpoint
from edvae.cli import app
from edvae.config import RunConfig
from edvae.training import METRICS_NAME, train

STEPS_PER_EPOCH = 512 // 64  # tiny_config: 512 training examples, batch size 64


def _edvae() -> list[str]:
    script = Path(sys.executable).parent / "edvae"
    return [str(script)] if script.is_file() else [sys.executable, "-m", "edvae.cli"]


def _env(**extra: str) -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", **extra}


def _toml(config: RunConfig) -> str:
    """A run config as a TOML file (sections as tables, dicts inline, None left out)."""

    def value(v: Any) -> str:
        if isinstance(v, dict):
            return "{ " + ", ".join(f"{k} = {value(x)}" for k, x in v.items() if x is not None) + " }"
        return json.dumps(v)

    lines = []
    for section, values in config.model_dump().items():
        if isinstance(values, dict):
            lines += [f"[{section}]", *(f"{k} = {value(v)}" for k, v in values.items() if v is not None)]
        else:
            lines.insert(0, f"{section} = {value(values)}")
    return "\n".join(lines) + "\n"


def _with_epochs(config: RunConfig, epochs: int) -> RunConfig:
    return config.model_copy(update={"train": config.train.model_copy(update={"epochs": epochs})})


def _wait_for(condition: Callable[[], bool], proc: subprocess.Popen, what: str, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"the process ended (code {proc.returncode}) before {what}:\n{out}\n{err}")
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.01)


def _lines(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.exists() else 0


def _assert_same_run(a: Path, b: Path) -> None:
    """Bit-identical parameters, optimiser state and logs."""
    sa, sb = load_checkpoint(a), load_checkpoint(b)
    assert sa["step"] == sb["step"] and sa["completed"] and sb["completed"]
    assert sa["model"].keys() == sb["model"].keys()
    for key in sa["model"]:
        assert torch.equal(sa["model"][key], sb["model"][key]), key
    assert (a / METRICS_NAME).read_text() == (b / METRICS_NAME).read_text()


def _resume_in_process(run: Path, epochs: int) -> None:
    result = CliRunner().invoke(app, ["train", "--resume", str(run), "--set", f"train.epochs={epochs}"])
    assert result.exit_code == 0, (result.stderr, result.exception)
    assert f"trained {epochs * STEPS_PER_EPOCH} steps" in result.stdout


# --------------------------------------------------------------------------------------------
# SIGKILL while writing checkpoints

#: Child process (one interpreter for both scenarios; each training process is a fork of it):
#: A. ``edvae train`` (the real CLI) with the checkpoint writer made to stall half-way through
#:    the temporary file of the 2nd checkpoint; killed there with SIGKILL.
#: B. training processes SIGKILLed at random moments (every other one just after its temporary
#:    checkpoint file appeared) while they write one checkpoint per step, resuming each time;
#:    after every kill the folder must hold a loadable checkpoint.
SIGKILL_CHILD = r"""
import builtins, json, os, random, signal, sys, time, traceback
from pathlib import Path

import torch

torch.set_num_threads(1)
import edvae.checkpoint as checkpoint
from edvae.checkpoint import CHECKPOINT_NAME, load_checkpoint
from edvae.config import validate_config
from edvae.training import train

args = json.loads(sys.argv[1])
report = {}


def fork(target):
    pid = os.fork()
    if pid == 0:
        try:
            target()
            os._exit(0)
        except BaseException:
            traceback.print_exc()
            os._exit(1)
    return pid


def wait_until(condition, pid, what):
    deadline = time.monotonic() + 90
    while not condition():
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            sys.exit(f"training process ended (status {status}) before {what}")
        if time.monotonic() > deadline:
            sys.exit(f"timed out waiting for {what}")
        time.sleep(0.001)


# A. a kill half-way through writing the temporary file of the 2nd checkpoint
stalled = {}


class HalfWriter:
    def __init__(self, f):
        self._f = f

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return self._f.__exit__(*exc)

    def __getattr__(self, name):
        return getattr(self._f, name)

    def write(self, data):
        data = bytes(data)
        self._f.write(data[: len(data) // 2])
        self._f.flush()
        os.fsync(self._f.fileno())
        Path(args["ready"] + ".tmp").write_text(json.dumps({"temp": self._f.name, "size": len(data)}))
        os.replace(args["ready"] + ".tmp", args["ready"])
        time.sleep(600)


def half_write_cli():
    saves = [0]

    def stalling_open(path, mode="r", *a, **k):
        f = builtins.open(path, mode, *a, **k)
        if "w" in mode:
            saves[0] += 1
            if saves[0] == 2:
                return HalfWriter(f)
        return f

    checkpoint.open = stalling_open  # save_atomic's open(): the temporary file
    from edvae.cli import main

    sys.argv = ["edvae", "train", args["toml"], "--out", args["run_a"]]
    main()


pid = fork(half_write_cli)
wait_until(
    lambda: os.path.exists(args["ready"]), pid, "the 2nd checkpoint write to stall (does save_atomic still use open()?)"
)
os.kill(pid, signal.SIGKILL)
report["A"] = {"status": os.waitpid(pid, 0)[1], **json.loads(Path(args["ready"]).read_text())}

# B. kills at random moments while checkpointing every step
run, cfg = Path(args["run_b"]), validate_config(args["config_b"])
rng = random.Random(args["seed"])
ckpt = run / CHECKPOINT_NAME
b = report["B"] = {"kills": 0, "mid_write": 0, "steps": []}


def inode():
    try:
        return os.stat(ckpt).st_ino
    except FileNotFoundError:
        return None


while b["kills"] < args["max_kills"] and b["mid_write"] < args["want_mid_write"]:
    resume, before = ckpt.exists(), inode()
    pid = fork(lambda: train(cfg, run, resume=resume, overwrite=not resume))
    wait_until(lambda: inode() != before, pid, "a new checkpoint")  # it is checkpointing now
    if b["kills"] % 2:  # every other kill aims at a write: the moment its temporary file exists
        temp = run / f".{CHECKPOINT_NAME}.tmp-{pid}"
        deadline = time.monotonic() + 5
        while not temp.exists() and time.monotonic() < deadline:
            time.sleep(0.0002)
        time.sleep(rng.uniform(0.0, 0.0005))  # a small file is written in about a millisecond
    else:
        time.sleep(rng.uniform(0.0, 0.03))
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    b["kills"] += 1
    b["mid_write"] += (run / f".{CHECKPOINT_NAME}.tmp-{pid}").exists()  # its temporary file, torn
    b["steps"].append(load_checkpoint(run)["step"])  # raises if no complete checkpoint is left
print(json.dumps(report))
"""


def test_sigkill_while_writing_checkpoints_never_loses_the_checkpoint(tmp_path, tiny_config):
    """One child interpreter runs both scenarios (one test, so that pytest-xdist runs it once)."""
    config_a = tiny_config(train={"epochs": 2, "checkpoint_every": 3})
    config_b = tiny_config(train={"epochs": 200, "checkpoint_every": 1})
    (tmp_path / "a.toml").write_text(_toml(config_a))
    (tmp_path / "child.py").write_text(SIGKILL_CHILD)
    seed = random.randrange(10**6)
    args = {
        "toml": str(tmp_path / "a.toml"),
        "run_a": str(tmp_path / "a"),
        "ready": str(tmp_path / "ready"),
        "run_b": str(tmp_path / "b"),
        "config_b": config_b.model_dump(),
        "seed": seed,
        "max_kills": 30,
        "want_mid_write": 3,
    }
    done = subprocess.run(
        [sys.executable, str(tmp_path / "child.py"), json.dumps(args)],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, f"seed {seed}:\n{done.stdout}\n{done.stderr}"
    report = json.loads(done.stdout.strip().splitlines()[-1])
    print(f"\nSIGKILL child (seed {seed}): {report}")

    # A. The kill landed half-way through the 2nd checkpoint's temporary file: a torn half, which
    # does not load; the folder still holds the previous, complete checkpoint (step 3 of 16).
    a, run = report["A"], tmp_path / "a"
    assert os.WIFSIGNALED(a["status"]) and os.WTERMSIG(a["status"]) == signal.SIGKILL
    temp = Path(a["temp"])
    assert temp.parent == run and temp.name != CHECKPOINT_NAME and temp.stat().st_size == a["size"] // 2
    with pytest.raises((RuntimeError, OSError)):  # torch's zip reader fails either way, by where the cut falls
        torch.load(temp, weights_only=True)
    state = load_checkpoint(run)
    assert state["step"] == 3 and not state["completed"]
    assert all(torch.isfinite(v).all() for v in state["model"].values())
    # --resume continues from step 3 and ends exactly where an uninterrupted run ends.
    result = CliRunner().invoke(app, ["train", "--resume", str(run)])
    assert result.exit_code == 0, (result.stderr, result.exception)
    train(config_a, tmp_path / "straight")
    _assert_same_run(run, tmp_path / "straight")

    # B. Kills at random moments: after each, a loadable checkpoint, and progress never goes back.
    b, run = report["B"], tmp_path / "b"
    steps = b["steps"]
    assert b["kills"] >= 3 and steps[0] >= 1 and b["mid_write"] >= 1
    assert steps == sorted(steps), "a kill lost checkpointed progress"
    _resume_in_process(run, load_checkpoint(run)["epoch"] + 1)
    assert load_checkpoint(run)["completed"]


# --------------------------------------------------------------------------------------------
# SIGTERM and SIGINT


def _start_then_signal(tmp_path: Path, cfg: RunConfig, sig: signal.Signals) -> tuple[Path, subprocess.CompletedProcess]:
    """Start ``edvae train`` on a long run, let it train a random few steps, send ``sig``."""
    (tmp_path / "run.toml").write_text(_toml(cfg))
    run = tmp_path / "run"
    proc = subprocess.Popen(
        [*_edvae(), "train", str(tmp_path / "run.toml"), "--out", str(run)],
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        # a logged line means the loop (and its signal handler) is running
        _wait_for(lambda: _lines(run / METRICS_NAME) >= 1, proc, "the first logged step")
        time.sleep(random.uniform(0.0, 0.3))  # an arbitrary step
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    return run, subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def _assert_graceful_stop(run: Path, done: subprocess.CompletedProcess, name: str, code: int) -> dict[str, Any]:
    state = load_checkpoint(run)
    step = state["step"]
    assert done.returncode == code, done.stderr
    assert "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1] == (
        f"stopped by {name} at step {step}; checkpoint saved in {run}. Resume with: edvae train --resume {run}"
    )
    assert step > 0 and not state["completed"]
    return state


def test_sigterm_saves_at_a_step_boundary_and_the_resumed_run_is_bit_exact(tmp_path, tiny_config):
    cfg = tiny_config(objective={"kind": "ed"}, train={"epochs": 500})
    run, done = _start_then_signal(tmp_path, cfg, signal.SIGTERM)
    state = _assert_graceful_stop(run, done, "SIGTERM", 143)
    print(f"\nSIGTERM landed at step {state['step']}")

    epochs = state["epoch"] + 2  # finish the epoch in progress and one more
    _resume_in_process(run, epochs)
    train(_with_epochs(cfg, epochs), tmp_path / "straight")
    _assert_same_run(run, tmp_path / "straight")


def test_sigint_saves_a_checkpoint_and_edvae_train_resume_finishes(tmp_path, tiny_config):
    cfg = tiny_config(objective={"kind": "elbo", "kl": "mc"}, train={"epochs": 500, "checkpoint_every": 5})
    run, done = _start_then_signal(tmp_path, cfg, signal.SIGINT)
    state = _assert_graceful_stop(run, done, "SIGINT", 130)

    epochs = state["epoch"] + 1
    _resume_in_process(run, epochs)
    final = load_checkpoint(run)
    assert final["completed"] and final["step"] == epochs * STEPS_PER_EPOCH


def test_checkpoints_hold_everything_needed_to_resume(tmp_path, tiny_config):
    cfg = tiny_config(model={"prior": "mixture"}, train={"epochs": 1, "lr_schedule": "cosine"})
    train(cfg, tmp_path / "run", stop_at_step=3)
    state = load_checkpoint(tmp_path / "run")
    assert state["format"] == CHECKPOINT_FORMAT and state["version"]
    assert RunConfig.model_validate(state["config"]) == cfg
    assert any(key.startswith("prior.") for key in state["model"])  # the learned prior's parameters
    assert state["optimizer"]["state"] and state["scheduler"]["last_epoch"] == 3
    assert {"torch", "numpy", "python", "noise"} <= set(state["rng"])
    assert (state["step"], state["epoch"], state["batch_in_epoch"]) == (3, 0, 3)
    assert not list((tmp_path / "run").glob(f".{CHECKPOINT_NAME}.tmp-*"))  # no temporary left behind


# --------------------------------------------------------------------------------------------
# determinism of studies


def _without_timings(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_timings(v) for k, v in value.items() if "seconds" not in k}
    if isinstance(value, list):
        return [_without_timings(v) for v in value]
    return value


def test_the_same_seed_gives_the_same_results_json_with_one_or_two_workers(tmp_path, tiny_config, monkeypatch):
    from edvae.experiments import RunSpec, Study, run_study

    monkeypatch.setattr("edvae.report._figures", lambda *args, **kwargs: [])  # results.json only; saves seconds

    def study() -> Study:
        runs = [
            RunSpec(
                "complex",
                "edvae",
                seed,
                tiny_config(train={"epochs": 1, "seed": seed}, eval={"iwae_samples": 20, "true_ll": False}),
            )
            for seed in (0, 1)
        ]
        return Study(name="tiny", title="tiny", description="two tiny runs", runs=runs)

    results = {}
    for name, workers in (("one worker", 1), ("two workers", 2)):
        run_study(study(), tmp_path / name, workers=workers, progress=False)
        results[name] = json.loads((tmp_path / name / "results.json").read_text())
    one, two = (_without_timings(results[name]) for name in ("one worker", "two workers"))
    assert len(one["records"]) == 2 and "elbo" in one["records"][0]["metrics"]
    assert one["records"][0]["metrics"] != one["records"][1]["metrics"]  # the seeds matter ...
    assert one["records"] == two["records"]  # ... the number of workers does not
    assert one["summary"] == two["summary"]


# --------------------------------------------------------------------------------------------
# untrusted checkpoints


class _Payload:
    """Unpickling this calls ``exec`` / ``os.system``: what a malicious checkpoint carries."""

    def __init__(self, marker: Path, how: str) -> None:
        self.marker, self.how = marker, how

    def __reduce__(self):
        if self.how == "system":
            return os.system, (f"touch '{self.marker}'",)
        return exec, (f"open({str(self.marker)!r}, 'w').write('pwned')",)


def _malicious(folder: Path, marker: Path, kind: str) -> Path:
    """A run folder whose checkpoint.pt runs code when unpickled (kind: how it is packed)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / CHECKPOINT_NAME
    if kind == "torch.save, marker inside":  # a real-looking checkpoint with one poisoned entry
        torch.save(
            {
                "format": CHECKPOINT_FORMAT,
                "config": {},
                "model": {"w": torch.zeros(2)},
                "step": 1,
                "epoch": 0,
                "completed": True,
                "extra": _Payload(marker, "exec"),
            },
            path,
        )
    elif kind == "torch.save, os.system":
        torch.save(_Payload(marker, "system"), path)
    else:  # a plain pickle, as older torch versions wrote them
        with open(path, "wb") as f:
            pickle.dump({"format": CHECKPOINT_FORMAT, "model": _Payload(marker, "exec")}, f, protocol=2)
    return folder


KINDS = ["torch.save, marker inside", "torch.save, os.system", "plain pickle"]


@pytest.mark.parametrize("kind", KINDS)
def test_the_malicious_files_would_run_code_if_loaded_unsafely(tmp_path, kind):
    """Control: the payloads are real (an unsafe load does run them)."""
    marker = tmp_path / "marker"
    folder = _malicious(tmp_path / "evil", marker, kind)
    with open(folder / CHECKPOINT_NAME, "rb") as f:
        pickle.load(f) if kind == "plain pickle" else torch.load(f, weights_only=False)
    assert marker.exists()


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("command", ["evaluate", "train --resume"])
def test_edvae_refuses_malicious_checkpoints_without_running_them(tmp_path, kind, command):
    marker = tmp_path / "marker"
    folder = _malicious(tmp_path / "evil", marker, kind)
    args = ["evaluate", str(folder)] if command == "evaluate" else ["train", "--resume", str(folder)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, (result.stderr, result.exception)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "could run code" in lines[0], result.stderr
    assert not marker.exists()
