"""How far a training step is from the machine's limit, what a run costs before its first step
and around its model, and how a step's time depends on the thread count.

* :func:`matmul_rate`: the machine's float32 matrix-multiply rate (n^3 product, 2 n^3 FLOPs).
* :func:`step_limits`: the FLOPs of one training step (``torch.utils.flop_counter``, forward
  and backward) over its measured time, next to :func:`matmul_rate`; and the top operators of
  the training steps alone (``torch.profiler``, by self CPU time), validation excluded.
* :func:`start_up`: seconds from a fresh interpreter to the first training step of ``edvae
  train`` (the CLI's own path) next to a bare ``import torch`` and ``import torch,
  lightning_fabric``, each in a fresh subprocess, interleaved; and ``edvae evaluate`` of a
  synthetic run with the true log-likelihood cached, timed after its imports.
* :func:`threads`: ms per training step at 1, 2 and the default number of threads, on an idle
  machine and next to a competing CPU-bound process (a spinning subprocess).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from edvae.bench.common import bench_config, interleaved, load_task_data, median

#: A subprocess that reports seconds from its start to the first training step of ``edvae train``
#: (the CLI's path: argument parsing, config, imports, Fabric launch, data, model), then exits.
_FIRST_STEP = """
import sys, time, json
t0 = time.perf_counter()
import edvae.training.trainer as trainer
def first(self, indices):
    print(json.dumps({"seconds": time.perf_counter() - t0, "modules": sorted(sys.modules)}))
    sys.stdout.flush()
    raise SystemExit(0)
trainer.Trainer.train_step = first
from edvae.cli import main
sys.argv = ["edvae", "train", *sys.argv[1:]]
main()
"""

#: A subprocess that times ``edvae evaluate``'s work after its imports, the truth cached.
_EVALUATE = """
import sys, time, json
import torch
from edvae.evaluate import evaluate_run, true_log_likelihoods
from edvae.runs import load_run
run, samples = sys.argv[1], int(sys.argv[2])
truth = torch.load(sys.argv[3])
from edvae.checkpoint import load_checkpoint
from edvae.config import validate_config
t0 = time.perf_counter()
config = validate_config(load_checkpoint(run)["config"]).eval.model_copy(update={"iwae_samples": samples})
evaluate_run(run, config=config, true_ll=truth)
print(json.dumps({"seconds": time.perf_counter() - t0, "modules": sorted(sys.modules)}))
"""

#: Modules a run may avoid importing; :func:`start_up` reports which were imported by the first step.
_HEAVY = (
    "lightning_fabric",
    "torch._dynamo",
    "tensorboard",
    "tqdm",
    "sklearn",
    "scipy",
    "matplotlib",
    "zuko",
    "pandas",
)


def matmul_rate(n: int = 1024, repeats: int = 5) -> dict[str, Any]:
    """GFLOP/s of an ``n x n`` float32 product (2 n^3 FLOPs) at the current torch thread count:
    the best of ``repeats`` (the machine's rate, not disturbed by others' work)."""
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(n, n, generator=gen), torch.randn(n, n, generator=gen)
    a @ b  # warm-up
    seconds = []
    for _ in range(repeats):
        t = time.perf_counter()
        a @ b
        seconds.append(time.perf_counter() - t)
    best = min(seconds)
    return {
        "n": n,
        "threads": torch.get_num_threads(),
        "seconds_best": best,
        "seconds_median": median(seconds),
        "gflops": 2 * n**3 / best / 1e9,
    }


class _StepProbe:
    """Callback: counts the FLOPs of one extra training step (run inside ``on_train_start``) and
    profiles the next ``steps`` steps of the loop (validation and checkpoints excluded)."""

    def __init__(self, steps: int) -> None:
        self.steps, self.flops = steps, 0
        self.profile: Any = None  # a torch.profiler.profile while profiling
        self.events: list[Any] = []

    def on_train_start(self, trainer: Any) -> None:
        from torch.profiler import ProfilerActivity, profile
        from torch.utils.flop_counter import FlopCounterMode

        order = torch.randperm(trainer.x_train.shape[0], generator=torch.Generator().manual_seed(0))
        with FlopCounterMode(display=False) as counter:
            trainer.train_step(order[: trainer.tc.batch_size])
        self.flops = counter.get_total_flops()
        self.profile = profile(activities=[ProfilerActivity.CPU])
        self.profile.__enter__()
        self._first = trainer.state.step

    def on_step_end(self, step: int) -> None:
        if self.profile is not None and step == self._first + self.steps:
            self._stop()

    def on_train_end(self) -> None:
        """A run shorter than ``steps`` (its epochs ran out first) is profiled over the steps it had."""
        if self.profile is not None:
            self._stop()

    def _stop(self) -> None:
        self.profile.__exit__(None, None, None)
        self.events = [e for e in self.profile.key_averages() if not e.key.startswith("ProfilerStep")]
        self.profile = None


def step_limits(
    task: str, overhead_rows: dict[str, Any], rate: dict[str, Any], *, quick: bool, work: Path, rows: int = 12
) -> dict[str, Any]:
    """Per variant (vae-std, edvae-paper): FLOPs of a training step, achieved GFLOP/s (FLOPs over
    the overhead study's median step time) and its share of :func:`matmul_rate`; and the top
    operators of the training steps by self CPU time (profiler overhead included)."""
    from edvae.config import validate_config
    from edvae.training import train

    base, data, _ = load_task_data(task, quick)
    steps = 5 if quick else 20
    out: dict[str, Any] = {"task": task, "matmul_gflops": rate["gflops"], "variants": {}}
    for name, variant, prior in (("vae-std", "vae-std", None), ("edvae-paper", "edvae-paper", "normal")):
        # epochs enough for the probe's steps on any task (stop_at_step ends the run before)
        config = validate_config(bench_config(base, variant, prior, steps + 2))
        probe = _StepProbe(steps)
        train(
            config, work / f"limits-{task}-{name}", data=data, overwrite=True, stop_at_step=steps + 1, callbacks=[probe]
        )
        events = probe.events
        total = sum(e.self_cpu_time_total for e in events)
        ms = overhead_rows[name]["ms_per_step"]
        achieved = probe.flops / (ms / 1e3) / 1e9
        out["variants"][name] = {
            "flops_per_step": probe.flops,
            "ms_per_step": ms,
            "achieved_gflops": achieved,
            "share_of_matmul_rate": achieved / rate["gflops"],
            "profiled_steps": steps,
            "self_cpu_ms_per_step_total": total / 1e3 / steps,
            "top": [
                {
                    "name": e.key,
                    "self_cpu_ms_per_step": e.self_cpu_time_total / 1e3 / steps,
                    "share": e.self_cpu_time_total / total,
                    "calls_per_step": e.count / steps,
                }
                for e in sorted(events, key=lambda e: -e.self_cpu_time_total)[:rows]
            ],
        }
    return out


def _subprocess_json(args: list[str], env_threads: int) -> dict[str, Any]:
    import os

    env = {**os.environ, "OMP_NUM_THREADS": str(env_threads)}
    done = subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env, timeout=600)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if not lines:
        raise RuntimeError(f"bench subprocess failed: {done.stderr.strip()[-500:]}")
    return json.loads(lines[-1])


def start_up(*, quick: bool, work: Path) -> dict[str, Any]:
    """Fresh-process seconds: ``import torch``; ``import torch, lightning_fabric``; ``edvae
    train`` (synthetic task) to its first step; interleaved, medians. And the seconds of
    ``edvae evaluate``'s work after its imports (100 importance samples, true
    log-likelihood cached), in a fresh process."""
    repeats = 1 if quick else 5
    run = work / "start-up-run"  # quick: a smaller test split (the truth's quadrature is the slow part)
    train_args = [
        "-c",
        _FIRST_STEP,
        "--out",
        str(run),
        "--overwrite",
        "--set",
        "data.name=complex",
        "--set",
        "train.epochs=1",
        "--set",
        "train.progress=false",
    ]
    sides = {
        "import torch": lambda: {
            "seconds": _subprocess_json(
                [
                    "-c",
                    "import time; t = time.perf_counter(); import torch, json; "
                    "print(json.dumps({'seconds': time.perf_counter() - t}))",
                ],
                1,
            )["seconds"]
        },
        "import torch, lightning_fabric": lambda: {
            "seconds": _subprocess_json(
                [
                    "-c",
                    "import time; t = time.perf_counter(); import torch, json, lightning_fabric; "
                    "print(json.dumps({'seconds': time.perf_counter() - t}))",
                ],
                1,
            )["seconds"]
        },
        "edvae train: first step": lambda: _subprocess_json(train_args, 1),
    }
    runs = interleaved(sides, repeats)
    seconds = {name: median([o["seconds"] for o in r["out"]]) for name, r in runs.items()}
    modules = set(runs["edvae train: first step"]["out"][-1]["modules"])
    # a trained synthetic run and its cached truth, then edvae evaluate's work after imports
    from edvae.config import validate_config
    from edvae.evaluate import true_log_likelihoods
    from edvae.runs import load_data
    from edvae.training import train

    data_config = (
        {"name": "complex", "options": {"n_train": 2560, "n_val": 512, "n_test": 512}} if quick else {"name": "complex"}
    )
    config = validate_config(bench_config({"data": data_config, "train": {"progress": False}}, "vae-std", None, 1))
    train(config, run, overwrite=True)
    truth = work / "true-ll.pt"
    truth_values = true_log_likelihoods(load_data(config), "test")
    torch.save(truth_values, truth)
    evaluations = [
        _subprocess_json(["-c", _EVALUATE, str(run), "100", str(truth)], 1) for _ in range(1 if quick else 3)
    ]
    return {
        "repeats": repeats,
        "seconds": seconds,
        "first_step_after_torch_import": seconds["edvae train: first step"] - seconds["import torch"],
        "lightning_fabric_import": seconds["import torch, lightning_fabric"] - seconds["import torch"],
        "imported_by_first_step": [m for m in _HEAVY if m in modules],
        "evaluate_after_imports_seconds": median([e["seconds"] for e in evaluations]),
        "evaluate_test_examples": int(truth_values.shape[0]),
        "evaluate_imported": [m for m in _HEAVY if m in set(evaluations[-1]["modules"])],
    }


def threads(*, quick: bool, work: Path, default_threads: int) -> dict[str, Any]:
    """ms per training step (vae-std and edvae-paper) at 1, 2 and ``default_threads`` torch
    threads, idle and next to a spinning CPU-bound subprocess; each configuration in turn,
    interleaved over the repeats, the step time measured through the trainer's callbacks."""
    from edvae.config import validate_config
    from edvae.training import train

    counts = sorted({1, 2, default_threads})
    tasks = ["synthetic"] if quick else ["synthetic", "mnist-mlp"]
    steps, repeats = (8, 1) if quick else (60, 3)
    previous = torch.get_num_threads()
    table: dict[str, Any] = {}
    try:
        for task in tasks:
            base, data, _ = load_task_data(task, quick)
            for variant, prior in (("vae-std", None),) if quick else (("vae-std", None), ("edvae-paper", "normal")):
                config = validate_config(bench_config(base, variant, prior, 1))

                def timed(n: int, config: Any, task: str, data: Any) -> Callable[[], float]:
                    def run() -> float:
                        torch.set_num_threads(n)
                        clock = _StepClock(skip=3)
                        train(
                            config,
                            work / f"threads-{task}",
                            data=data,
                            overwrite=True,
                            stop_at_step=steps,
                            callbacks=[clock],
                        )
                        return 1e3 * clock.seconds / max(1, clock.steps)

                    return run

                row: dict[str, Any] = {}
                for load in ("idle", "with a competing process"):
                    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if load != "idle" else None
                    try:
                        runs = interleaved({str(n): timed(n, config, task, data) for n in counts}, repeats)
                    finally:
                        if spinner is not None:
                            spinner.kill()
                            spinner.wait()
                    row[load] = {n: median(r["out"]) for n, r in runs.items()}
                table[f"{task} / {variant}"] = row
    finally:
        torch.set_num_threads(previous)
    return {"threads": counts, "default": default_threads, "steps": steps, "repeats": repeats, "ms_per_step": table}


class _StepClock:
    """Callback: wall-clock seconds of the training steps after the first ``skip``."""

    def __init__(self, skip: int) -> None:
        self.skip, self.steps, self.seconds = skip, 0, 0.0
        self._last: float | None = None

    def on_step_end(self, step: int) -> None:
        now = time.perf_counter()
        if self._last is not None and step > self.skip:
            self.seconds += now - self._last
            self.steps += 1
        self._last = now
