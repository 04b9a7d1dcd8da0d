"""Benchmarks: what the ED-VAE decomposition costs next to a plain VAE, measured side by side.

``edvae bench --out DIR`` (:func:`run_bench`) writes ``bench.json``, ``bench.md``,
``scaling.png`` and ``README-snippet.md`` into DIR.

* **Overhead of the decomposition.** Epochs of :func:`edvae.training.train` (the real training
  loop: steps, logging, validation, timed through its callbacks) for ``vae-std`` (ELBO, analytic KL, N(0, I)), ``edvae``
  (ED objective, MSS) and ``edvae-paper`` (InfoNCE mutual information, ``mi_weight=-1``), same
  networks, data and batch, on (a) the synthetic task (16-D data, 2-D latent, hidden
  [128, 128], batch 256) and (b) an MNIST-sized MLP (784-512-512, latent 16, batch 256). The
  overhead is the ratio of the median training-step time (the loop's time without the
  per-epoch validation, ``TrainResult.validation_seconds``, over its steps) to ``vae-std``'s;
  the ratio of whole epochs with their validation is reported beside it. With the prior held
  equal (N(0, I)) it is the cost of the decomposition alone, and with the synthetic data's
  true prior it includes that prior's log-density.
* **Against the peers.** Examples per second of edvae's loop, of pythae's VAE training
  (``TrainingPipeline``; skipped with a note when pythae is not installed) and of a minimal
  hand-written PyTorch loop, on the same networks, data, batch size, learning rate and epochs,
  each timed as a user runs it (set-up, per-epoch validation and what it saves included), and
  the test ELBO each reaches (the same estimator for all: a unit-variance Gaussian likelihood
  as in pythae's ``mse`` loss, analytic KL, 10 samples).
* **Scaling.** Time and peak extra memory of the MSS estimator (forward and backward) against
  the batch size B and of :func:`edvae.estimators.dataset_decomposition` against N, each point
  in a fresh subprocess (:func:`peak_memory`), with the fitted log-log slopes and a plot.
* **Profile and hygiene.** The top operators of the ED training loop (``torch.profiler``),
  host synchronisations per step, and where evaluation runs under ``torch.inference_mode``.
* **Distance to the limit.** The FLOPs of a training step (``torch.utils.flop_counter``) over
  its time, next to the machine's float32 matrix-multiply rate at the same thread count, and
  the top operators of the training steps (:mod:`edvae.bench.limits`).
* **The step against a hand-written loop.** The steady-state CPU time of one vae-std step of
  the trainer next to a minimal hand-written loop of the same shape, each run's fixed cost
  separated (:func:`edvae.bench.step.step_ratio`; ``step_ratio.ratio`` is the trainer's speed
  as a fraction of the loop's). On a CUDA machine, ms per step at batch 256, images per second
  of the conv models and the achieved fraction of the GPU's measured matmul peak
  (:func:`edvae.bench.step.gpu_steps`, the ``gpu`` section).
* **Fixed costs.** Seconds from a fresh interpreter to the first step of ``edvae train`` next
  to a bare ``import torch`` (and ``import torch, lightning_fabric``), the modules imported by
  then, and ``edvae evaluate``'s work after its imports with the true log-likelihood cached.
* **Threads.** ms per step at 1, 2 and torch's default threads, idle and next to a spinning
  CPU-bound process.
* **Correctness side by side.** The mutual information of a case with a known answer far above
  log B: edvae's MSS estimate, pythae's beta-TCVAE mutual-information term on the same tensors,
  the batch (InfoNCE) bound, and the full-data-set value. And the three beta-TCVAE terms
  (I, TC, dimension-wise KL) of a Gaussian case with closed forms, edvae's and pythae's
  estimates on the same tensors.

Every comparison runs all its sides in this process, interleaved (the order rotates every
repeat), and reports the median wall-clock and CPU seconds over the repeats and the ratio of
the medians. CPU seconds count this process only, so they are less disturbed than wall time by
other work on a shared machine; the overhead study counts them over the training loop alone (the
span of ``TrainResult.train_seconds``), the peer comparison over whole calls.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from edvae.bench.common import BENCH_FORMAT, TARGETS, machine_info
from edvae.bench.correctness import mi_correctness, tcvae_terms_correctness
from edvae.bench.limits import matmul_rate, start_up, step_limits
from edvae.bench.limits import threads as thread_table
from edvae.bench.report import readme_snippet, report_markdown
from edvae.bench.scaling import peak_memory, scaling
from edvae.bench.step import gpu_steps, step_ratio
from edvae.bench.training import hygiene, overhead, peers, profile_step
from edvae.errors import EdvaeError

__all__ = ["BENCH_FORMAT", "machine_info", "mi_correctness", "peak_memory", "run_bench", "tcvae_terms_correctness"]


def _default_threads() -> int:
    """The threads a run uses by default: ``train.threads`` of a default config, its 0 meaning
    torch's default (one per available core)."""
    from edvae.config import RunConfig

    configured = RunConfig().train.threads
    return configured or (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1))


def run_bench(
    out_dir: str | Path,
    *,
    quick: bool = False,
    threads: int = 1,
    scaling_threads: int | None = None,
    gpu: bool | None = None,
) -> dict[str, Any]:
    """Run every benchmark and write bench.json, bench.md, scaling.png and README-snippet.md.

    ``threads``: torch threads for the timed comparisons (1 keeps them steady on a shared
    machine); ``scaling_threads``: threads of the scaling subprocesses (default ``threads``;
    0: torch's default, one per core). ``gpu``: whether to add the GPU section (``gpu``:
    :func:`edvae.bench.step.gpu_steps`); by default when torch sees a CUDA device.
    """
    scaling_threads = threads if scaling_threads is None else scaling_threads
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise EdvaeError(f"--out {out_dir} is a file, not a folder; choose another output folder")
    out_dir.mkdir(parents=True, exist_ok=True)
    previous_threads = torch.get_num_threads()
    default_threads = _default_threads()
    torch.set_num_threads(threads)
    start = time.perf_counter()
    try:
        report: dict[str, Any] = {
            "format": BENCH_FORMAT,
            "quick": quick,
            "command": f"edvae bench --out {out_dir}" + (" --quick" if quick else ""),
            "machine": machine_info(threads),
            "targets": TARGETS,
        }
        with tempfile.TemporaryDirectory(prefix="edvae-bench-") as tmp:
            work = Path(tmp)
            tasks = ["synthetic"] if quick else ["synthetic", "mnist-mlp"]
            sections: dict[str, float] = {}

            def timed(name: str, run: Any) -> Any:
                started = time.perf_counter()
                report[name] = run()
                sections[name] = time.perf_counter() - started

            timed("overhead", lambda: [overhead(task, quick=quick, work=work) for task in tasks])
            timed("matmul", matmul_rate)
            timed(
                "limits",
                lambda: [
                    step_limits(t["task"], t["results"], report["matmul"], quick=quick, work=work)
                    for t in report["overhead"]
                ],
            )
            timed("step_ratio", lambda: step_ratio(quick=quick, work=work))
            if torch.cuda.is_available() if gpu is None else gpu:
                timed("gpu", lambda: gpu_steps(quick=quick, work=work))
            timed("peers", lambda: peers(quick=quick, work=work))
            timed("profile", lambda: profile_step(quick=quick, work=work))
            timed("hygiene", lambda: hygiene(work))
            timed("start_up", lambda: start_up(quick=quick, work=work))
            timed("threads", lambda: thread_table(quick=quick, work=work, default_threads=default_threads))
            timed("scaling", lambda: scaling(quick=quick, out_dir=out_dir, threads=scaling_threads))
            timed("correctness", lambda: mi_correctness(quick=quick))
            timed("tcvae_terms", lambda: tcvae_terms_correctness(quick=quick))
        report["section_seconds"] = sections
    finally:
        torch.set_num_threads(previous_threads)
    report["seconds"] = time.perf_counter() - start
    report["load_average_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    (out_dir / "bench.json").write_text(json.dumps(report, indent=2) + "\n")
    (out_dir / "bench.md").write_text(report_markdown(report))
    (out_dir / "README-snippet.md").write_text(readme_snippet(report))
    return report
