"""The mutual information of a case with a known answer far above log B, estimated side by side."""

from __future__ import annotations

import math
import statistics
from typing import Any

import torch


def mi_correctness(*, quick: bool) -> dict[str, Any]:
    """Mutual information far above log B with a known answer, estimated side by side.

    mu_n ~ N(0, I_3), sigma = 0.01, N posteriors; the truth is the full-data-set estimate
    (:func:`edvae.estimators.dataset_decomposition`); the minibatch estimates average random
    batches of B = 64 with z ~ q(z|x)."""
    from torch.distributions import Independent, Normal

    from edvae.estimators import dataset_decomposition, decompose

    n, dim, sigma, batch = (10_000 if quick else 100_000), 3, 0.01, 64
    n_batches, queries = (20, 2000) if quick else (200, 10_000)
    gen = torch.Generator().manual_seed(0)
    mu = torch.randn(n, dim, generator=gen, dtype=torch.float64)
    logvar = torch.full_like(mu, 2 * math.log(sigma))
    prior = Independent(Normal(torch.zeros(dim, dtype=torch.float64), torch.ones(dim, dtype=torch.float64)), 1)
    truth = float(dataset_decomposition(mu, logvar, prior, num_queries=queries, generator=torch.Generator().manual_seed(1)).mi)
    pythae_model = None
    try:
        from pythae.models import BetaTCVAE, BetaTCVAEConfig

        pythae_model = BetaTCVAE(BetaTCVAEConfig(input_dim=(1,), latent_dim=dim, alpha=1.0, beta=0.0, gamma=0.0, use_mss=True))
    except ImportError:
        pass
    values: dict[str, list[float]] = {"edvae MSS": [], "edvae batch (InfoNCE bound)": [], "pythae BetaTCVAE MSS": []}
    for _ in range(n_batches):
        idx = torch.randperm(n, generator=gen)[:batch]
        m, lv = mu[idx], logvar[idx]
        z = m + sigma * torch.randn(m.shape, generator=gen, dtype=m.dtype)
        values["edvae MSS"].append(float(decompose(z, m, lv, prior, dataset_size=n, per_dimension=False).mi))
        values["edvae batch (InfoNCE bound)"].append(float(decompose(z, m, lv, prior, method="batch", per_dimension=False).mi))
        if pythae_model is not None:
            # pythae's own loss with alpha=1, beta=gamma=0 and recon_x == x: exactly its mean MI term
            x = torch.zeros(batch, 1, dtype=m.dtype)
            with torch.no_grad():
                loss = pythae_model.loss_function(x, x, m, lv, z, n)[0]
            values["pythae BetaTCVAE MSS"].append(float(loss))
    rows = {"truth (full data set)": {"mi": truth, "std_over_batches": None, "bias": 0.0}}
    for name, vals in values.items():
        if vals:
            mean = statistics.fmean(vals)
            rows[name] = {"mi": mean, "std_over_batches": statistics.pstdev(vals), "bias": mean - truth}
    return {
        "case": f"mu ~ N(0, I_{dim}), sigma = {sigma}, N = {n}, B = {batch}, {n_batches} batches, truth from {queries} query points",
        "log_B": math.log(batch),
        "log_N": math.log(n),
        "pythae": "compared" if pythae_model is not None else "not installed",
        "results": rows,
    }


