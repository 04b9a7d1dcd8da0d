"""Running a study: train and evaluate every run, then write the report.

A :class:`~edvae.experiments.study.Study` is a list of
:class:`~edvae.experiments.study.RunSpec` (data set label, model label, seed, config).
Each run trains in its own folder ``OUT/runs/<dataset>-<model>-s<seed>`` and is evaluated with
the same :func:`edvae.evaluate.evaluate_model`; a run whose folder already holds a completed
checkpoint and its evaluation is reused, so an interrupted study resumes where it stopped.
Runs go to ``workers`` processes, one torch thread each (results do not depend on the number
of workers).
"""

from __future__ import annotations

import json
import multiprocessing
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import torch

from edvae.accelerator import PLACEMENT, choose_accelerator
from edvae.checkpoint import CHECKPOINT_NAME, load_checkpoint
from edvae.config import RunConfig
from edvae.convergence import convergence, validation_elbos
from edvae.errors import EdvaeError
from edvae.evaluate import cached_true_log_likelihoods, evaluate_run
from edvae.experiments.study import RunSpec, Study
from edvae.model import build_model
from edvae.objective_kinds import build_objective
from edvae.report import write_report
from edvae.runs import EVALUATION_NAME, LATENTS_NAME, METRICS_NAME, load_data, load_run
from edvae.training import train
from edvae.training.run_dir import RunLock

__all__ = ["ACTIONS", "RunSpec", "Study", "plan_run", "run_study", "run_one", "run_convergence", "preflight"]


def _save_latents(run_dir: Path, spec: RunSpec) -> None:
    """Aggregate-posterior samples and the prior's log-density on a grid, for the figures."""
    model, _, _, data = load_run(run_dir)
    with torch.inference_mode():
        gen = torch.Generator().manual_seed(spec.seed)
        mu, logvar = model.encode(data.test)
        z = mu + torch.exp(0.5 * logvar) * torch.randn(mu.shape, generator=gen)
        payload: dict[str, Any] = {"z": z, "labels": getattr(data, "test_labels", None)}
        if z.shape[1] == 2:
            lim = float(max(4.0, z.abs().quantile(0.99).item() * 1.1))
            ticks = torch.linspace(-lim, lim, 160)
            grid = torch.cartesian_prod(ticks, ticks)
            payload["grid"] = ticks
            payload["prior_log_density"] = model.prior_distribution().log_prob(grid).view(160, 160)
    torch.save(payload, run_dir / LATENTS_NAME)


def _config_differences(stored: dict[str, Any], spec: RunSpec) -> list[str]:
    """The dotted keys where a checkpoint's config differs from the run's (settings added since
    it was written take their defaults); ``["config"]`` when the stored one is no longer valid.
    Where the run executes (:data:`edvae.accelerator.PLACEMENT`: accelerator, devices, threads,
    ...) is not a difference: a study trained on the CPU is reused or resumed on a GPU."""
    try:
        old = RunConfig.model_validate(stored).model_dump()
    except ValueError:
        return ["config"]
    placement = {f"train.{key}" for key in PLACEMENT}
    return [key for key in _differences(old, spec.config.model_dump()) if key not in placement]


def _differences(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for key in sorted(set(a) | set(b)) for d in _differences(a.get(key), b.get(key), f"{prefix}{key}.")]
    return [] if a == b else [prefix.rstrip(".")]


#: What :func:`run_one` does with a run's folder (see :func:`plan_run`).
ACTIONS = ("reuse", "evaluate", "resume", "train", "refuse")


def plan_run(spec: RunSpec, out_dir: str | Path, overwrite: bool = False) -> tuple[str, list[str]]:
    """What to do with one run's folder, and the config keys that differ from the stored run's.

    * ``reuse``: a finished run (completed checkpoint and evaluation) with the same config;
    * ``evaluate``: a completed checkpoint with the same config, not yet evaluated;
    * ``resume``: an interrupted run with the same config (continued from its checkpoint);
    * ``train``: no checkpoint, an interrupted run with another config (the study owns its
      folders and starts it afresh), or ``overwrite``;
    * ``refuse``: a finished run whose config differs: never replaced without ``overwrite``.
    """
    run_dir = Path(out_dir) / "runs" / spec.folder
    if overwrite or not (run_dir / CHECKPOINT_NAME).exists():
        return "train", []
    state = load_checkpoint(run_dir)
    differences = _config_differences(state["config"], spec)
    if not state.get("completed", False):
        return ("train" if differences else "resume"), differences
    if differences:
        return "refuse", differences
    return ("reuse" if (run_dir / EVALUATION_NAME).exists() else "evaluate"), []


def run_one(spec: RunSpec, out_dir: str | Path, overwrite: bool = False) -> dict[str, Any]:
    """Train and evaluate one run (reusing a finished one, see :func:`plan_run`); returns its
    record. A finished run with another config is refused (:class:`EdvaeError`) unless ``overwrite``."""
    run_dir = Path(out_dir) / "runs" / spec.folder
    evaluation = run_dir / EVALUATION_NAME
    action, differences = plan_run(spec, out_dir, overwrite)
    if action == "refuse":
        raise EdvaeError(_refusal(run_dir, differences))
    if action in ("resume", "train"):
        train(spec.config, run_dir, resume=action == "resume", overwrite=action == "train")
    if action != "reuse":
        metrics = evaluate_run(
            run_dir,
            true_ll=cached_true_log_likelihoods(spec.config, Path(out_dir) / "cache"),
            accelerator=spec.config.train.accelerator,
        )
        _save_latents(run_dir, spec)
        evaluation.write_text(json.dumps(metrics, indent=2) + "\n")
    metrics = json.loads(evaluation.read_text())
    record = {
        "dataset": spec.dataset,
        "model": spec.model,
        "seed": spec.seed,
        "metrics": metrics,
        "run_dir": str(run_dir),
    }
    return record | run_convergence(run_dir)


def run_convergence(run_dir: str | Path) -> dict[str, Any]:
    """``{"converged", "improvement", "window"}`` of a run folder's validation-ELBO history
    (:func:`edvae.convergence.convergence`; not converged when the run logged no validation)."""
    path = Path(run_dir) / METRICS_NAME
    return convergence(validation_elbos(path) if path.exists() else [])


def _refusal(run_dir: Path, differences: list[str], others: int = 0) -> str:
    shown = ", ".join(differences[:4]) + (", ..." if len(differences) > 4 else "")
    more = f" (and {others} other finished run{'s' if others > 1 else ''})" if others else ""
    return (
        f"{run_dir}{more} holds a finished run with another config ({shown} differ); "
        f"pass --overwrite to retrain it, or choose another --out"
    )


def _worker(args: tuple[RunSpec, str, bool]) -> dict[str, Any]:
    torch.set_num_threads(1)
    return run_one(*args)


def _pool_worker(args: tuple[RunSpec, str, bool, int]) -> dict[str, Any] | None:
    """:func:`_worker` in a pool process, given the study process's pid last: None, without
    running, once that process is gone. A pool process keeps the jobs queued for it when
    ``edvae reproduce`` is killed (and a stop signal only ends its current run, with a
    checkpoint), so without this check an orphaned worker would go on training runs into the
    study folder that nobody collects."""
    spec, out_dir, overwrite, parent = args
    if os.getppid() != parent:
        return None
    return _worker((spec, out_dir, overwrite))


def preflight(study: Study) -> None:
    """Build the data and model of every distinct run config once, so that a bad data set,
    prior or network setting fails before any training starts."""

    datasets: dict[str, Any] = {}
    seen: set[str] = set()
    for spec in study.runs:
        data_key = json.dumps(spec.config.data.model_dump(), sort_keys=True)
        key = data_key + json.dumps(
            [spec.config.model.model_dump(), spec.config.objective.model_dump()], sort_keys=True
        )
        if key in seen:
            continue
        seen.add(key)
        if data_key not in datasets:
            datasets[data_key] = load_data(spec.config)
        model = build_model(
            spec.config.model, datasets[data_key], fit_prior=False
        )  # a check: fitting waits for training
        build_objective(spec.config.objective, datasets[data_key].train.shape[0]).setup(model)  # e.g. its critic


def run_study(
    study: Study,
    out_dir: str | Path,
    *,
    workers: int = 2,
    overwrite: bool = False,
    progress: bool = True,
    accelerator: str | None = None,
) -> dict[str, Any]:
    """Run every run of ``study`` and write the report into ``out_dir``; returns results.json's content.

    ``accelerator`` (``cpu``, ``gpu``, ``auto``; default: each run's ``train.accelerator``) is
    where every run trains and is evaluated. With ``gpu`` the ``workers`` processes (started
    with ``spawn``, as CUDA needs) share the one GPU, each with its own CUDA context.

    One study at a time writes ``out_dir``: the process holds its lock
    (:class:`edvae.training.run_dir.RunLock`), and each run's training holds its run folder's,
    so a second ``edvae reproduce`` on the same folder is refused with one line naming the pid
    of the first."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise EdvaeError(f"--out {out_dir} is a file; choose a folder")
    out_dir.mkdir(parents=True, exist_ok=True)
    with RunLock(out_dir, what="edvae reproduce"):
        return _run_study(
            study, out_dir, workers=workers, overwrite=overwrite, progress=progress, accelerator=accelerator
        )


def _run_study(
    study: Study, out_dir: Path, *, workers: int, overwrite: bool, progress: bool, accelerator: str | None
) -> dict[str, Any]:
    started = time.perf_counter()
    if study.prepare is not None:
        study.prepare(study, out_dir)
    preflight(study)
    placement: dict[str, Any] = {"progress": False, "threads": 1}
    if accelerator is not None:
        choose_accelerator(accelerator, 0, setting="--accelerator")  # refuses a GPU that is not there, at once
        placement["accelerator"] = accelerator
    for spec in study.runs:
        spec.config = spec.config.model_copy(update={"train": spec.config.train.model_copy(update=placement)})
    plans = [plan_run(spec, out_dir, overwrite) for spec in study.runs]
    counts = {action: sum(1 for a, _ in plans if a == action) for action in ACTIONS}
    refused = [(spec, d) for spec, (a, d) in zip(study.runs, plans, strict=True) if a == "refuse"]
    if refused:
        spec, differences = refused[0]
        raise EdvaeError(
            f"{plan_line(counts)}: nothing was run; "
            + _refusal(out_dir / "runs" / spec.folder, differences, len(refused) - 1)
        )
    if progress:
        print(plan_line(counts), file=sys.stderr)
    jobs = [(spec, str(out_dir), overwrite) for spec in study.runs]
    records: list[dict[str, Any]] = []
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(jobs), desc=f"study {study.name}", unit="run")
    if workers <= 1:
        for job in jobs:
            records.append(_worker(job))
            if bar is not None:
                bar.update(1)
    else:
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
            for record in pool.map(_pool_worker, [(*job, os.getpid()) for job in jobs]):
                assert record is not None  # None only in an orphaned pool, whose results nobody reads
                records.append(record)
                if bar is not None:
                    bar.update(1)
    if bar is not None:
        bar.close()
    result = write_report(study, records, out_dir, wall_seconds=time.perf_counter() - started, plan=counts)
    return result


def plan_line(counts: dict[str, int]) -> str:
    """``"2 runs reused, 1 trained, 0 refused"`` (evaluated-only runs count as reused, resumed as trained)."""
    reused, trained = counts["reuse"] + counts["evaluate"], counts["train"] + counts["resume"]
    return f"{reused} run{'s' if reused != 1 else ''} reused, {trained} trained, {counts['refuse']} refused"
