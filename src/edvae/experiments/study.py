"""What a study is, and the pieces every study is built from.

A :class:`Study` is a named list of :class:`RunSpec` (data set label, model label, seed,
validated config) with the text and metrics of its report. A study module writes one function
``my_study(*, quick=False, seeds=None, overrides=None) -> Study`` from these pieces and registers
it in :data:`edvae.experiments.STUDIES`:

* :data:`BASE` and :data:`QUICK`: the synthetic studies' shared networks, optimiser, budget and
  evaluation, and the ``--quick`` cut of them;
* :func:`build_runs`: every (data set, model, seed) combination as a validated run;
* :func:`default_seeds` and :func:`shared_config`: the seed count and the settings a
  description quotes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edvae.budget import scaled_epochs
from edvae.config import RunConfig, validate_config
from edvae.experiments.variants import apply_variant, merge

__all__ = [
    "BASE",
    "QUICK",
    "QUICK_SEEDS",
    "SEEDS",
    "RunSpec",
    "Study",
    "build_runs",
    "default_seeds",
    "shared_config",
    "with_budget",
]

#: The synthetic studies' shared configuration: same networks, optimiser and budget for every variant.
BASE: dict[str, Any] = {
    "model": {"latent_dim": 2, "hidden": [128, 128]},
    # 160 epochs: the budget at which the paper study's runs meet the convergence criterion
    # (edvae.convergence; vae-true on complex, seed 1, gains 0.0122 nats over the last tenth of
    # 120 epochs and 0.0061 of 160; vae-true-learned, seed 0, 0.0045 of 120).
    "train": {"epochs": 160, "batch_size": 256, "lr": 2e-3, "lr_schedule": "cosine"},
    "eval": {"iwae_samples": 1000},
}

#: What ``--quick`` changes in :data:`BASE`: fewer epochs and importance samples.
QUICK: dict[str, Any] = {"train": {"epochs": 30}, "eval": {"iwae_samples": 200}}


@dataclass
class RunSpec:
    """One run of a study."""

    dataset: str
    model: str
    seed: int
    config: RunConfig

    @property
    def folder(self) -> str:
        return f"{self.dataset}-{self.model}-s{self.seed}"


@dataclass
class Study:
    """A named list of runs and how to read them."""

    name: str
    title: str
    description: str
    runs: list[RunSpec]
    metrics: list[str] = field(
        default_factory=lambda: [
            "mse",
            "kl",
            "elbo",
            "iwae",
            "ll_gap",
            "mi",
            "marginal_kl",
            "prior_swd",
            "active_units",
            "train_seconds",
        ]
    )
    notes: list[str] = field(default_factory=list)
    #: The model every other model is compared with, seed by seed (``comparisons`` in the report,
    #: :func:`edvae.stats.paired_comparisons`); None: no comparisons.
    reference: str | None = None
    #: Called as ``prepare(study, out_dir)`` by :func:`~edvae.experiments.runner.run_study` before
    #: anything is built: writes files the runs read (e.g. a prior-samples file) and may point the
    #: runs' configs at them.
    prepare: Callable[[Study, Path], object] | None = None
    #: Called as ``extra_figures(study, records, fig_dir)`` by the report after its own figures;
    #: returns the paths of the PNGs it wrote (e.g. per-model image figures, :mod:`edvae.figures`).
    extra_figures: Callable[[Study, list[dict[str, Any]], Path], list[Path]] | None = None
    #: Called as ``headline(study, comparisons)`` by the report with its paired comparisons
    #: (results.json's ``comparisons``); returns Markdown shown first in results.md, under
    #: "Headline" (a study's answer to its question, e.g. ``edvae.experiments.readings.claims_table``).
    headline: Callable[[Study, list[dict[str, Any]]], str] | None = None
    #: The models ranked for "best model per data set" (results.json's ``best``,
    #: :func:`edvae.stats.best_models`); None: every model. A diagnostic variant (e.g. the paper
    #: study's learned decoder scale, there to show what calibration changes) is left out.
    contenders: list[str] | None = None
    #: Set by :func:`with_budget`: ``{"factor": f, "epochs": [[base, scaled], ...]}`` (recorded in
    #: results.json as ``budget``); None: the study's own budget.
    budget: dict[str, Any] | None = None


def build_runs(
    base: dict[str, Any],
    datasets: dict[str, dict[str, Any]],
    models: dict[str, dict[str, Any]] | list[str],
    seeds: int,
    overrides: dict[str, Any] | None = None,
) -> list[RunSpec]:
    """Every (data set, model, seed) combination as a validated run.

    Config layers, later ones winning: ``base`` < data set < model variant < ``overrides``
    (the user's ``--set``), so a user's override applies to every run. ``models`` maps labels to
    config overrides, or lists names of :data:`edvae.experiments.variants.VARIANTS`.
    """
    model_overrides = models if isinstance(models, dict) else {m: None for m in models}
    runs = []
    for dataset, data_overrides in datasets.items():
        for model, override in model_overrides.items():
            raw = merge(base, data_overrides)
            raw = apply_variant(raw, model) if override is None else merge(raw, override)
            raw = merge(raw, overrides or {})
            for seed in range(seeds):
                cfg = validate_config(
                    merge(raw, {"name": f"{dataset}-{model}-s{seed}", "train": {"seed": seed}}),
                    source=f"study run {dataset}/{model}",
                )
                runs.append(RunSpec(dataset, model, seed, cfg))
    return runs


#: Seeds of every study's default run (enough for a paired t-interval with 4 degrees of freedom).
SEEDS = 5
#: Seeds of a ``--quick`` study.
QUICK_SEEDS = 2


def default_seeds(seeds: int | None, quick: bool, full: int = SEEDS) -> int:
    """``seeds`` when given, else :data:`QUICK_SEEDS` for a ``--quick`` study and ``full`` otherwise."""
    return seeds if seeds is not None else (QUICK_SEEDS if quick else full)


def shared_config(
    base: dict[str, Any], overrides: dict[str, Any] | None = None, dataset: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The raw settings every run of one data set gets before its model variant: ``base`` <
    ``dataset`` < ``overrides``, the layers of :func:`build_runs` (what a description quotes)."""
    return merge(merge(base, dataset or {}), overrides or {})


def with_budget(study: Study, factor: float) -> Study:
    """``study`` with every run's ``train.epochs`` E replaced by ``round(factor * E)``
    (:func:`edvae.budget.scaled_epochs`), everything else unchanged: each config is validated
    again from its dump with the new epochs, so that it equals the config the same study builds
    with ``--set train.epochs=<factor * E>`` where E is the same for every run (and a study
    folder trained that way is reused). Records ``budget`` = ``{"factor", "epochs": [[E, new
    E], ...]}`` on the returned study; its description still quotes the base budget."""
    runs, pairs = [], {}
    for spec in study.runs:
        epochs = scaled_epochs(spec.config.train.epochs, factor)
        pairs[spec.config.train.epochs] = epochs
        raw = merge(spec.config.model_dump(), {"train": {"epochs": epochs}})
        runs.append(RunSpec(spec.dataset, spec.model, spec.seed, validate_config(raw, source=f"run {spec.folder}")))
    budget = {"factor": factor, "epochs": [[base, new] for base, new in sorted(pairs.items())]}
    return dataclasses.replace(study, runs=runs, budget=budget)
