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

import hashlib
import json
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import torch

from edvae.checkpoint import CHECKPOINT_NAME, load_checkpoint, save_atomic
from edvae.config import RunConfig
from edvae.convergence import convergence, validation_elbos
from edvae.errors import EdvaeError
from edvae.evaluate import evaluate_run, true_log_likelihoods
from edvae.experiments.study import RunSpec, Study
from edvae.model import build_model
from edvae.objective_kinds import build_objective
from edvae.report import write_report
from edvae.runs import EVALUATION_NAME, LATENTS_NAME, METRICS_NAME, load_data, load_run
from edvae.train import train

__all__ = ["RunSpec", "Study", "run_study", "run_one", "run_convergence", "preflight"]


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


def _cached_true_ll(spec: RunSpec, out_dir: Path) -> torch.Tensor | None:
    """log p_true(x_n) of every test example, computed once per data config and cached on disk."""
    if not spec.config.eval.true_ll:
        return None
    key = hashlib.sha256(json.dumps(spec.config.data.model_dump(), sort_keys=True).encode()).hexdigest()[:16]
    path = out_dir / "cache" / f"true_ll-{key}.pt"
    if path.exists() and isinstance(cached := torch.load(path, weights_only=True).get("log_p_true"), torch.Tensor):
        return cached
    data = load_data(spec.config)
    if data.ground_truth is None:
        return None
    value = true_log_likelihoods(data)
    save_atomic({"log_p_true": value, "data": spec.config.data.model_dump()}, path)
    return value


def _same_config(stored: dict[str, Any], spec: RunSpec) -> bool:
    """Whether a checkpoint's config is the run's (settings added since it was written take
    their defaults)."""
    try:
        return RunConfig.model_validate(stored).model_dump() == spec.config.model_dump()
    except ValueError:
        return False


def run_one(spec: RunSpec, out_dir: str | Path, overwrite: bool = False) -> dict[str, Any]:
    """Train and evaluate one run (reusing a finished one); returns its record."""
    run_dir = Path(out_dir) / "runs" / spec.folder
    evaluation = run_dir / EVALUATION_NAME
    done = evaluation.exists() and (run_dir / CHECKPOINT_NAME).exists() and not overwrite
    if done:
        state = load_checkpoint(run_dir)
        done = state.get("completed", False) and _same_config(state["config"], spec)
    if not done:
        # The study owns its run folders: continue a matching interrupted run, else start afresh.
        resume = (
            not overwrite
            and (run_dir / CHECKPOINT_NAME).exists()
            and _same_config(load_checkpoint(run_dir)["config"], spec)
        )
        train(spec.config, run_dir, resume=resume, overwrite=not resume)
        metrics = evaluate_run(run_dir, true_ll=_cached_true_ll(spec, Path(out_dir)))
        _save_latents(run_dir, spec)
        evaluation.write_text(json.dumps(metrics, indent=2) + "\n")
    metrics = json.loads(evaluation.read_text())
    record = {"dataset": spec.dataset, "model": spec.model, "seed": spec.seed, "metrics": metrics, "run_dir": str(run_dir)}
    return record | run_convergence(run_dir)


def run_convergence(run_dir: str | Path) -> dict[str, Any]:
    """``{"converged", "improvement", "window"}`` of a run folder's validation-ELBO history
    (:func:`edvae.convergence.convergence`; not converged when the run logged no validation)."""
    path = Path(run_dir) / METRICS_NAME
    return convergence(validation_elbos(path) if path.exists() else [])


def _worker(args: tuple[RunSpec, str, bool]) -> dict[str, Any]:
    torch.set_num_threads(1)
    return run_one(*args)


def preflight(study: Study) -> None:
    """Build the data and model of every distinct run config once, so that a bad data set,
    prior or network setting fails before any training starts."""

    datasets: dict[str, Any] = {}
    seen: set[str] = set()
    for spec in study.runs:
        data_key = json.dumps(spec.config.data.model_dump(), sort_keys=True)
        key = data_key + json.dumps([spec.config.model.model_dump(), spec.config.objective.model_dump()], sort_keys=True)
        if key in seen:
            continue
        seen.add(key)
        if data_key not in datasets:
            datasets[data_key] = load_data(spec.config)
        model = build_model(spec.config.model, datasets[data_key], fit_prior=False)  # a check: fitting waits for training
        build_objective(spec.config.objective, datasets[data_key].train.shape[0]).setup(model)  # e.g. its critic


def run_study(study: Study, out_dir: str | Path, *, workers: int = 2, overwrite: bool = False, progress: bool = True) -> dict[str, Any]:
    """Run every run of ``study`` and write the report into ``out_dir``; returns results.json's content."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise EdvaeError(f"--out {out_dir} is a file; choose a folder")
    out_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    if study.prepare is not None:
        study.prepare(study, out_dir)
    preflight(study)
    for spec in study.runs:
        spec.config = spec.config.model_copy(update={"train": spec.config.train.model_copy(update={"progress": False, "threads": 1})})
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
            for record in pool.map(_worker, jobs):
                records.append(record)
                if bar is not None:
                    bar.update(1)
    if bar is not None:
        bar.close()
    return write_report(study, records, out_dir, wall_seconds=time.perf_counter() - started)
