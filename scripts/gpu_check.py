"""The checks of scripts/gpu_check.sh: edvae on one CUDA GPU, written to one JSON summary.

    python scripts/gpu_check.py --out DIR [--dry-run]

Stages (each recorded with pass/fail, its seconds and numbers; a failing stage does not stop
the others; exit 1 when any failed):

* ``cuda_tests``: ``pytest tests/test_cuda.py tests/test_device.py`` (those that exist);
* ``matrix``: one short run per prior x objective (every registered prior with the ELBO and
  the ED objective, every other objective kind and every InfoNCE critic with the true prior),
  trained and evaluated on the GPU;
* ``checkpoints``: trained on the GPU and evaluated on the CPU (and on the GPU: the metrics
  agree), trained on the CPU, stopped, and resumed on the GPU;
* ``first_losses``: the first steps' training losses on the GPU against the CPU's, same seed,
  float32 (TF32 off), relative tolerance :data:`LOSS_RTOL`;
* ``bench``: steady-state median ms per training step (vae-std and edvae at the paper's sizes,
  batch 256; the real study's MLP and the conv network, with their multiply-adds per step for
  the ``auto`` rule), GPU and CPU (one thread, as a study worker);
* ``iwae``: IWAE (K = 1000) evaluation of a conv model on MNIST-size images, GPU against two
  CPU threads.

``--dry-run`` (or ``EDVAE_GPU_CHECK_FORCE_CPU=1``) runs every stage on the CPU with tiny sizes:
how CI exercises this file.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]

#: Largest relative difference allowed between the GPU's and the CPU's training loss at each of
#: the first steps (float32 both, TF32 off; rounding differs by reduction order, ~1e-6 per step).
LOSS_RTOL = 1e-4
#: Relative difference allowed between evaluation metrics on the GPU and on the CPU (the same
#: noise, drawn on the CPU; float32 networks).
EVAL_RTOL = 1e-3


@dataclass(frozen=True)
class Sizes:
    """How big each stage is: the GPU run, or the CPU dry run."""

    n_train: int
    run_epochs: int
    iwae_matrix: int
    loss_steps: int
    bench_steps: int
    bench_cpu_steps: int
    window: int
    iwae_k: int
    iwae_examples: int
    stage_seconds: float


FULL = Sizes(512, 1, 10, 10, 400, 120, 20, 1000, 60, 90.0)
DRY = Sizes(512, 1, 5, 4, 12, 12, 4, 10, 20, 60.0)


class Check:
    """The context of one stage: the JSON record, the device, the sizes."""

    def __init__(self, out: Path, dry: bool) -> None:
        import torch

        self.out, self.dry = out, dry
        self.gpu = "cpu" if dry else "gpu"  # the accelerator the stages put on "the GPU"
        self.sizes = DRY if dry else FULL
        self.work = Path(tempfile.mkdtemp(prefix="edvae-gpu-check-"))
        self.summary: dict[str, Any] = {
            "dry_run": dry,
            "python": platform.python_version(),
            "torch": torch.__version__,
            "cuda": torch.version.cuda,
            "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
            "tf32": {
                "matmul": torch.backends.cuda.matmul.allow_tf32,
                "cudnn": torch.backends.cudnn.allow_tf32,
            },
            "tolerances": {"loss_rtol": LOSS_RTOL, "eval_rtol": EVAL_RTOL},
            "checks": {},
        }

    def stage(self, name: str, fn: Callable[[Check], dict[str, Any]]) -> None:
        started = time.perf_counter()
        try:
            record = fn(self)
            record.setdefault("ok", True)
        except Exception as err:  # a failing stage is recorded and the next one runs
            record = {"ok": False, "error": f"{type(err).__name__}: {err}", "traceback": traceback.format_exc()[-3000:]}
        record["seconds"] = round(time.perf_counter() - started, 2)
        self.summary["checks"][name] = record
        status = "PASS" if record["ok"] else "FAIL"
        print(f"[{status}] {name} ({record['seconds']:.1f} s){_headline(record)}", flush=True)
        self._write()

    def _write(self) -> None:
        self.summary["ok"] = all(c["ok"] for c in self.summary["checks"].values())
        (self.out / "gpu_check.json").write_text(json.dumps(self.summary, indent=2, default=str) + "\n")

    def config(self, variant: dict[str, Any], accelerator: str, **train: Any):
        """A short run: the synthetic ``complex`` data (2-D latent, true ring prior), MLP
        [128, 128], batch 256, no progress bars."""
        from edvae.config import validate_config
        from edvae.experiments.variants import merge

        s = self.sizes
        base = {
            "name": "gpu-check",
            "data": {"name": "complex", "options": {"n_train": s.n_train, "n_val": 256, "n_test": 256}},
            "model": {"latent_dim": 2, "hidden": [128, 128], "prior": "true"},
            "train": {"epochs": s.run_epochs, "batch_size": 256, "progress": False, "accelerator": accelerator},
            "eval": {"iwae_samples": s.iwae_matrix, "true_ll": False},
        }
        return validate_config(merge(merge(base, variant), {"train": train}))


def _headline(record: dict[str, Any]) -> str:
    keys = [k for k in ("summary", "error") if k in record]
    return "".join(f"; {record[k]}" for k in keys)


# ----------------------------------------------------------------------------- stages


def cuda_tests(check: Check) -> dict[str, Any]:
    files = [f for f in ("tests/test_cuda.py", "tests/test_device.py") if (ROOT / f).is_file()]
    if not files:
        return {"ok": True, "summary": "no CUDA test files in this checkout", "files": []}
    if check.dry:
        return {"ok": True, "summary": "not run in the dry run", "files": files}
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-x", *files]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=150)
    last = (done.stdout.strip().splitlines() or [""])[-1]
    return {"ok": done.returncode == 0, "summary": last, "files": files, "output_tail": done.stdout[-3000:]}


def _matrix_cases(check: Check) -> list[tuple[str, dict[str, Any]]]:
    """(label, config overrides): every prior with the ELBO and the ED objective, then every
    other objective kind and every critic with the true prior (dry run: a few of them)."""
    import numpy as np

    from edvae import priors
    from edvae.critics import CRITICS
    from edvae.objective_kinds import OBJECTIVES

    samples = check.work / "ring-samples.npy"
    rng = np.random.default_rng(0)
    angle = rng.uniform(0, 2 * np.pi, 2000)
    np.save(samples, np.stack([3 * np.cos(angle), 3 * np.sin(angle)], 1) + 0.3 * rng.normal(size=(2000, 2)))
    prior_specs: dict[str, dict[str, Any]] = {}
    for name in priors.names(in_model=True):
        if name == "samples":
            prior_specs["samples-kde"] = {"prior": f"samples:{samples}"}
            prior_specs["samples-flow"] = {
                "prior": f"samples:{samples}",
                "prior_options": {"method": "flow", "flow_steps": 50},
            }
        else:
            prior_specs[name] = {"prior": name}
    objectives: dict[str, dict[str, Any]] = {"elbo": {"kind": "elbo", "kl": "mc"}, "ed": {"kind": "ed"}}
    cases = [
        (f"{p}/{o}", {"model": pm, "objective": om}) for p, pm in prior_specs.items() for o, om in objectives.items()
    ]
    extra = {kind: {"kind": kind} for kind in OBJECTIVES if kind not in ("elbo", "ed")}
    extra |= {f"ed-infonce-{c}": {"kind": "ed", "mi_estimator": "infonce", "critic": c} for c in CRITICS}
    # a dimension-wise KL weight (beta-tcvae) needs a factorised prior: N(0, I) there, the ring elsewhere
    factorised = {"beta-tcvae": {"prior": "normal"}}
    cases += [
        (f"{'normal' if o in factorised else 'true'}/{o}", {"objective": om, "model": factorised.get(o, {})})
        for o, om in extra.items()
    ]
    if check.dry:
        keep = {"true/ed", "mixture/elbo", "true/ed-infonce-momentum", "samples-kde/ed"}
        cases = [c for c in cases if c[0] in keep]
    return cases


def matrix(check: Check) -> dict[str, Any]:
    from edvae.evaluate import evaluate_run
    from edvae.training import train

    results: dict[str, Any] = {}
    deadline = time.perf_counter() + check.sizes.stage_seconds
    for label, overrides in _matrix_cases(check):
        if time.perf_counter() > deadline:
            results[label] = {"ok": False, "error": "not reached within the stage's time budget"}
            continue
        run_dir = check.work / "matrix" / label.replace("/", "-")
        try:
            train(check.config(overrides, check.gpu), run_dir, overwrite=True)
            metrics = evaluate_run(run_dir, accelerator=check.gpu)
            finite = all(math.isfinite(metrics[k]) for k in ("elbo", "iwae", "mi", "marginal_kl"))
            results[label] = {"ok": finite, "elbo": metrics["elbo"], "iwae": metrics["iwae"]}
        except Exception as err:
            results[label] = {"ok": False, "error": f"{type(err).__name__}: {err}"[:500]}
    failed = [k for k, v in results.items() if not v["ok"]]
    return {
        "ok": not failed,
        "summary": f"{len(results) - len(failed)}/{len(results)} prior x objective runs trained and evaluated"
        + (f"; failed: {', '.join(failed)}" if failed else ""),
        "runs": results,
    }


def checkpoints(check: Check) -> dict[str, Any]:
    from edvae.checkpoint import load_checkpoint
    from edvae.evaluate import evaluate_run
    from edvae.training import train

    edvae_variant = {"objective": {"kind": "ed"}}
    gpu_run = check.work / "ckpt-gpu"
    train(check.config(edvae_variant, check.gpu), gpu_run, overwrite=True)
    on_cpu = evaluate_run(gpu_run, accelerator="cpu")
    on_gpu = evaluate_run(gpu_run, accelerator=check.gpu)
    keys = ("elbo", "iwae", "kl", "mi", "marginal_kl")
    differences = {k: abs(on_cpu[k] - on_gpu[k]) / max(1.0, abs(on_cpu[k])) for k in keys}
    cpu_run = check.work / "ckpt-cpu"
    config = check.config(edvae_variant, "cpu", epochs=2)
    steps_per_epoch = check.sizes.n_train // 256
    stopped = train(config, cpu_run, overwrite=True, stop_at_step=steps_per_epoch + 1)
    resumed = train(check.config(edvae_variant, check.gpu, epochs=2), cpu_run, resume=True)
    state = load_checkpoint(cpu_run)
    resumed_metrics = evaluate_run(cpu_run, accelerator="cpu")
    ok = (
        max(differences.values()) <= EVAL_RTOL
        and stopped.stopped_by == "stop_at_step"
        and resumed.completed
        and state["step"] == 2 * steps_per_epoch
        and math.isfinite(resumed_metrics["elbo"])
    )
    return {
        "ok": ok,
        "summary": f"GPU-trained evaluated on CPU vs GPU: max relative difference {max(differences.values()):.2e}; "
        f"CPU run stopped at step {stopped.step}, resumed on {check.gpu} to step {resumed.step}",
        "gpu_trained_eval_relative_difference": differences,
        "cpu_to_gpu_resume": {"stopped_at": stopped.step, "final_step": resumed.step, "elbo": resumed_metrics["elbo"]},
    }


class _LossRecorder:
    def __init__(self) -> None:
        self.losses: list[float] = []

    def on_step_end(self, objective: Any) -> None:
        self.losses.append(float(objective.loss.detach()))


def first_losses(check: Check) -> dict[str, Any]:
    from edvae.training import train

    steps = check.sizes.loss_steps
    cases = {
        "vae-std": {"model": {"prior": "normal"}, "objective": {"kind": "elbo", "kl": "auto"}},
        "edvae": {"objective": {"kind": "ed"}},
    }
    out: dict[str, Any] = {}
    for name, variant in cases.items():
        losses = {}
        for accelerator in ("cpu", check.gpu):
            recorder = _LossRecorder()
            config = check.config(variant, accelerator, epochs=10 * steps)
            train(
                config,
                check.work / f"losses-{name}-{accelerator}",
                overwrite=True,
                stop_at_step=steps,
                callbacks=[recorder],
            )
            losses[accelerator] = recorder.losses
        cpu, gpu = losses["cpu"], losses[check.gpu]
        relative = [abs(a - b) / max(1.0, abs(a)) for a, b in zip(cpu, gpu, strict=True)]
        out[name] = {"ok": max(relative) <= LOSS_RTOL, "max_relative": max(relative), "cpu": cpu, "gpu": gpu}
    worst = max(v["max_relative"] for v in out.values())
    return {
        "ok": all(v["ok"] for v in out.values()),
        "summary": f"first {steps} losses, max relative difference {worst:.2e} (tolerance {LOSS_RTOL:g})",
        **out,
    }


class _StepClock:
    """Times windows of ``window`` training steps (a device synchronisation at each window's
    end only), dropping windows that held a validation."""

    def __init__(self, window: int, device: str) -> None:
        self.window, self.device = window, device
        self.marks: list[tuple[int, float]] = []
        self.validated: set[int] = set()

    def _now(self) -> float:
        import torch

        if self.device == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter()

    def on_step_end(self, step: int) -> None:
        if step % self.window == 0:
            self.marks.append((step, self._now()))

    def on_validation_end(self, state: Any) -> None:
        self.validated.add(state.step)

    def median_ms(self) -> float:
        spans = []
        for (s0, t0), (s1, t1) in zip(self.marks[1:], self.marks[2:], strict=False):  # the first window warms up
            if not any(s0 < v <= s1 for v in self.validated):
                spans.append(1000 * (t1 - t0) / (s1 - s0))
        return statistics.median(spans) if spans else float("nan")


def _step_time(config: Any, run_dir: Path, steps: int, window: int, data: Any = None) -> float:
    from edvae.training import train

    clock = _StepClock(window, "cuda" if config.train.accelerator == "gpu" else "cpu")
    train(config, run_dir, overwrite=True, stop_at_step=steps, data=data, callbacks=[clock])
    return clock.median_ms()


def _image_data(n: int, seed: int = 0):
    """``n`` MNIST-size images (1 x 28 x 28 in [0, 1]): the mnist5k images where installed
    (repeated to ``n`` rows), else random ones."""
    import numpy as np

    from edvae.data.splits import finish

    try:
        from edvae.data.real import mnist5k_dataset

        x = np.resize(mnist5k_dataset(seed=seed).train.numpy().reshape(-1, 784), (n, 784))
        name = "mnist5k"
    except Exception:
        x = np.random.default_rng(seed).uniform(size=(n, 784)).astype(np.float32)
        name = "random 28x28 images (mnist5k not installed)"
    splits = finish(
        "array",
        x.reshape(n, 1, 28, 28),
        None,
        seed=seed,
        likelihood="bernoulli",
        binarize="dynamic",
        split=(0.8, 0.1, 0.1),
        source=name,
    )
    return splits, name


def bench(check: Check) -> dict[str, Any]:
    import torch

    from edvae.accelerator import network_macs
    from edvae.runs import load_data

    s = check.sizes
    torch.set_num_threads(1)
    rows = 256 * max(s.bench_steps // 4, 2 * s.window)  # epochs of >= 4 windows: few hold a validation
    images, image_source = _image_data(int(rows / 0.8) + 16)
    long_epochs = {"data": {"options": {"n_train": rows}}}
    cases: dict[str, tuple[dict[str, Any], Any]] = {
        "vae-std": (
            {**long_epochs, "model": {"prior": "normal"}, "objective": {"kind": "elbo", "kl": "auto"}},
            None,
        ),
        "edvae": ({**long_epochs, "objective": {"kind": "ed"}}, None),
        "real-study MLP 784-512-256 (batch 128)": (
            {"model": {"latent_dim": 16, "hidden": [512, 256], "prior": "normal"}, "objective": {"kind": "elbo"}},
            images,
        ),
        "conv 28x28": (
            {"model": {"network": "conv", "latent_dim": 16, "prior": "normal"}, "objective": {"kind": "elbo"}},
            images,
        ),
    }
    out: dict[str, Any] = {"image_data": image_source, "cpu_threads": 1, "window_steps": s.window}
    for name, (variant, data) in cases.items():
        batch = 128 if "batch 128" in name else 256
        row: dict[str, Any] = {}
        cpu_steps = s.bench_cpu_steps if data is None else 4 * s.window  # the image networks are slow on one core
        sides = [("cpu", "cpu_ms", cpu_steps)] + ([] if check.dry else [("gpu", "gpu_ms", s.bench_steps)])
        for accelerator, key, steps in sides:
            config = check.config(variant, accelerator, epochs=1000, batch_size=batch)
            row[key] = _step_time(config, check.work / f"bench-{accelerator}", steps, s.window, data)
        x_shape = (data if data is not None else load_data(config)).x_shape
        row["macs_per_step"] = batch * sum(network_macs(config.model, x_shape))
        if "gpu_ms" in row:
            row["cpu_over_gpu"] = row["cpu_ms"] / row["gpu_ms"]
        out[name] = row
    side = "cpu_ms" if check.dry else "gpu_ms"
    out["targets"] = {
        "vae_std_gpu_ms_le_1.0": out["vae-std"][side] <= 1.0,
        "edvae_over_vae_std_le_1.10": out["edvae"][side] <= 1.10 * out["vae-std"][side],
    }
    headline = ", ".join(f"{k}: {v[side]:.2f}" for k, v in out.items() if isinstance(v, dict) and side in v)
    return {"ok": True, "summary": f"ms/step on {'CPU' if check.dry else 'GPU'}: {headline}", **out}


def iwae(check: Check) -> dict[str, Any]:
    import torch

    from edvae.config import EvalConfig
    from edvae.evaluate import evaluate_run
    from edvae.training import train

    s = check.sizes
    data, source = _image_data(s.iwae_examples * 10)
    config = check.config(
        {"model": {"network": "conv", "latent_dim": 16, "prior": "normal"}, "objective": {"kind": "elbo"}},
        "cpu",
        batch_size=64,
    )
    run_dir = check.work / "iwae-conv"
    train(config, run_dir, overwrite=True, data=data)
    eval_config = EvalConfig(iwae_samples=s.iwae_k, true_ll=False)
    seconds: dict[str, float] = {}
    metrics: dict[str, dict[str, float]] = {}
    sides = ([] if check.dry else [("gpu", "gpu", 1)]) + [("cpu_2_threads", "cpu", 2)]
    for label, accelerator, threads in sides:
        torch.set_num_threads(threads)
        if accelerator == "gpu":  # warm up: CUDA context, kernels
            evaluate_run(run_dir, config=EvalConfig(iwae_samples=10, true_ll=False), accelerator="gpu")
        started = time.perf_counter()
        metrics[label] = evaluate_run(run_dir, config=eval_config, accelerator=accelerator)
        seconds[label] = time.perf_counter() - started
    n = data.test.shape[0]
    out: dict[str, Any] = {"data": source, "examples": n, "iwae_samples": s.iwae_k, "seconds": seconds}
    if "gpu" in seconds:
        out["speedup_vs_2_cpu_threads"] = seconds["cpu_2_threads"] / seconds["gpu"]
        out["target_speedup_ge_20"] = out["speedup_vs_2_cpu_threads"] >= 20
        cpu_iwae = metrics["cpu_2_threads"]["iwae"]
        out["iwae_relative_difference"] = abs(metrics["gpu"]["iwae"] - cpu_iwae) / abs(cpu_iwae)
    summary = ", ".join(f"{k} {v:.2f} s" for k, v in seconds.items())
    return {"ok": True, "summary": f"IWAE K={s.iwae_k} on {n} conv examples: {summary}", **out}


STAGES: dict[str, Callable[[Check], dict[str, Any]]] = {
    "cuda_tests": cuda_tests,
    "matrix": matrix,
    "checkpoints": checkpoints,
    "first_losses": first_losses,
    "bench": bench,
    "iwae": iwae,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.environ.get("OUT", "gpu-check-out"), help="folder of gpu_check.json")
    parser.add_argument("--dry-run", action="store_true", help="every stage on the CPU with tiny sizes")
    parser.add_argument("--only", nargs="*", choices=list(STAGES), help="run only these stages")
    args = parser.parse_args(argv)
    dry = args.dry_run or os.environ.get("EDVAE_GPU_CHECK_FORCE_CPU") == "1"
    import torch

    if not dry and not torch.cuda.is_available():
        print(
            "gpu_check: torch sees no CUDA GPU on this machine; run it on a GPU machine or pass --dry-run",
            file=sys.stderr,
        )
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    check = Check(out, dry)
    for name, fn in STAGES.items():
        if args.only is None or name in args.only:
            check.stage(name, fn)
    check._write()
    failed = [k for k, v in check.summary["checks"].items() if not v["ok"]]
    print(
        f"gpu_check: {'all checks passed' if not failed else 'FAILED: ' + ', '.join(failed)}; {out / 'gpu_check.json'}"
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
