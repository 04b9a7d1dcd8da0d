"""The seed paper's study: traditional VAE vs ED-VAE on synthetic data with a Gaussian prior and
with a complex non-Gaussian prior (8-mode ring), compared on reconstruction MSE, KL and ELBO,
plus the measurements a reviewer asks for (IWAE, distance to the true log-likelihood, the
decomposition, prior alignment, cost)."""

from __future__ import annotations

from typing import Any

from edvae.experiments.study import BASE, QUICK, Study, build_runs, default_seeds, shared_config
from edvae.experiments.variants import merge

# BASE, QUICK and build_runs live in edvae.experiments.study; importable from here as before.
__all__ = ["BASE", "DATASETS", "MODELS", "QUICK", "paper_study", "build_runs"]

DATASETS: dict[str, dict[str, Any]] = {
    "gaussian": {"data": {"name": "gaussian"}},
    "complex": {"data": {"name": "complex"}},
}

MODELS = ["vae-std", "vae-true", "vae-true-learned", "edvae", "edvae-paper"]


def paper_study(*, quick: bool = False, seeds: int | None = None, overrides: dict[str, Any] | None = None) -> Study:
    """The main study; ``quick`` uses fewer epochs and importance samples, and 2 seeds."""
    seeds = default_seeds(seeds, quick)
    base = merge(BASE, QUICK) if quick else BASE
    shown = shared_config(base, overrides)
    return Study(
        name="paper",
        title="Traditional VAE vs ED-VAE on synthetic data with known ground truth",
        description=(
            "Data: x = g(z) + N(0, 0.1^2 I), 16-D, from a 2-D latent with a Gaussian prior ('gaussian') "
            "or an 8-mode ring ('complex'); 10000 train / 2000 test. All models share networks "
            f"({shown['model']['hidden']}), optimiser and budget ({shown['train']['epochs']} epochs); "
            "every model is evaluated on the test split with the same ELBO and IWAE estimators."
        ),
        runs=build_runs(base, DATASETS, MODELS, seeds, overrides),
        reference="vae-true",
        contenders=[m for m in MODELS if m != "vae-true-learned"],
        notes=[
            "vae-true-learned is vae-true with the decoder scale learned by gradient instead of calibrated "
            "(model.decoder_scale); it shows what calibration changes and is not ranked for the best model: "
            "its scale needs more than 100 epochs to reach the data's noise level, so its rank depends on the budget.",
        ],
    )
