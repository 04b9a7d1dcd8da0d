"""The disentanglement study: ED-VAE beside beta-VAE and beta-TCVAE on data with known factors.

Data (generated offline from a seed, :mod:`edvae.data.factors`):

* ``sprites``: dSprites-like binary 16x16 images, factors shape (3), scale (6), orientation
  (40), position x and y (8 each); a seeded subset of the grid, split 80/10/10; Bernoulli
  likelihood;
* ``nongaussian-factors``: 16-D vectors x = g(v) + N(0, 0.1^2 I) of 4 independent
  non-Gaussian factors (uniform, bimodal, Laplace, exponential), so a N(0, I) prior is
  misspecified; Gaussian likelihood.

Models, all with the N(0, I) prior, the same networks, optimiser and budget (the objectives of
:mod:`edvae.experiments.variants` and :mod:`edvae.objective_kinds`):

* ``vae``: the ELBO (analytic KL), the reference of the paired comparisons;
* ``beta-vae``: beta-VAE, beta = 4 on the whole KL (Higgins et al. 2017, their dSprites setting);
* ``beta-tcvae``: beta-TCVAE, I + 6 TC + sum_d KL(q_d || p_d) with MSS (Chen et al. 2018:
  alpha = gamma = 1, beta = 6);
* ``edvae``: the ED objective at unit weights with one shared MSS estimator (equal to the
  Monte-Carlo ELBO: a control for the estimator);
* ``edvae-paper``: InfoNCE mutual information maximised (weight -1) plus entropy and
  cross-entropy.

Every model is evaluated with :func:`edvae.evaluate.evaluate_model` on the test split: MIG,
DCI disentanglement and completeness, the total correlation and dimension-wise KL of the
aggregate posterior, ELBO, IWAE, KL, MI, KL(q(z) || p(z)), MSE and active units. The report
adds latent traversals (and reconstructions, samples, the aggregate posterior) per model.
"""

from __future__ import annotations

from typing import Any

from edvae.experiments.real import real_figures
from edvae.experiments.study import Study, build_runs, default_seeds, shared_config
from edvae.experiments.variants import VARIANTS, merge

__all__ = ["BASE", "DATASETS", "METRICS", "MODELS", "disentangle_study"]

#: Shared by every run. Sized so that the whole study (5 seeds) fits 30 minutes on 2 cores.
BASE: dict[str, Any] = {
    "model": {"network": "mlp", "hidden": [256, 256], "prior": "normal"},
    "train": {"batch_size": 128, "lr": 1e-3, "lr_schedule": "cosine"},
    "eval": {"iwae_samples": 100},
}

#: Per data set: the data, the latent size (more dimensions than factors) and the budget.
DATASETS: dict[str, dict[str, Any]] = {
    "sprites": {
        "data": {"name": "sprites", "options": {"size": 16, "n": 5000}},
        "model": {"latent_dim": 8},
        "train": {"epochs": 40},
    },
    "nongaussian-factors": {
        "data": {"name": "nongaussian-factors", "options": {"n_train": 5000, "n_val": 1000, "n_test": 1000}},
        "model": {"latent_dim": 6, "hidden": [128, 128]},
        "train": {"epochs": 40},
    },
}

_QUICK_EPOCHS = 8

#: Model label -> variant of :data:`edvae.experiments.variants.VARIANTS` (its objective).
_VARIANT_OF = {
    "vae": "vae-std",
    "beta-vae": "beta-vae",
    "beta-tcvae": "beta-tcvae",
    "edvae": "edvae",
    "edvae-paper": "edvae-paper",
}

#: Model label -> config overrides: each variant's objective, every model with the N(0, I) prior.
MODELS: dict[str, dict[str, Any]] = {
    label: {"model": {"prior": "normal"}, "objective": VARIANTS[variant]["objective"]}
    for label, variant in _VARIANT_OF.items()
}

METRICS = [
    "mig",
    "dci",
    "dci_completeness",
    "elbo",
    "iwae",
    "kl",
    "mi",
    "marginal_kl",
    "tc",
    "dimwise_kl",
    "mse",
    "active_units",
    "train_seconds",
]


def disentangle_study(
    *, quick: bool = False, seeds: int | None = None, overrides: dict[str, Any] | None = None
) -> Study:
    """The disentanglement study; ``quick`` trains fewer epochs (2 seeds by default)."""
    seeds = default_seeds(seeds, quick, full=5)
    datasets = {
        name: merge(spec, {"train": {"epochs": _QUICK_EPOCHS}}) if quick else spec for name, spec in DATASETS.items()
    }
    shown = {name: shared_config(BASE, overrides, spec) for name, spec in datasets.items()}
    budget = "; ".join(
        f"{name}: MLP {raw['model']['hidden']}, {raw['model']['latent_dim']}-D latent, {raw['train']['epochs']} epochs"
        for name, raw in shown.items()
    )
    return Study(
        name="disentangle",
        title="Disentanglement: VAE, beta-VAE, beta-TCVAE and ED-VAE on data with known factors",
        description=(
            "Data: dSprites-like 16x16 binary sprites (5000 images; factors shape, scale, orientation, position x, y) "
            "and 16-D vectors of 4 independent non-Gaussian factors (5000 train). Every model has the N(0, I) prior "
            f"and the same networks, Adam with a cosine schedule and batch 128 ({budget}). beta-VAE: beta = 4 "
            "(Higgins et al. 2017); beta-TCVAE: alpha = gamma = 1, beta = 6, MSS (Chen et al. 2018); edvae: ED "
            "objective at unit weights (the Monte-Carlo ELBO); edvae-paper: InfoNCE MI maximised. Test-split metrics: "
            f"MIG, DCI, TC and dimension-wise KL of q(z), ELBO, IWAE ({shown['sprites']['eval']['iwae_samples']} "
            "samples)."
        ),
        runs=build_runs(BASE, datasets, MODELS, seeds, overrides),
        metrics=list(METRICS),
        notes=[
            "mig: mutual information gap (Chen et al. 2018), factors with more than 20 values cut into 20 quantile "
            "bins; dci: DCI disentanglement (Eastwood & Williams 2018), random forests on posterior means.",
            "tc, dimwise_kl: total correlation and summed dimension-wise KL of the test split's aggregate posterior "
            "(full-data-set estimator), the split I + TC + sum_d KL_d of beta-TCVAE.",
            "edvae equals vae in expectation (the same N(0, I) prior, only the KL estimator differs).",
            "beta = 4 is Higgins et al.'s setting for 64x64 dSprites (4096 pixels); on 256 pixels the same beta weighs "
            "the KL 16 times more per pixel (their normalised beta_norm = beta M / N), so beta-VAE may switch off "
            "units here.",
        ],
        reference="vae",
        extra_figures=real_figures,
    )
