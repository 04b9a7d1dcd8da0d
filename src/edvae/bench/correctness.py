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
    truth = float(
        dataset_decomposition(mu, logvar, prior, num_queries=queries, generator=torch.Generator().manual_seed(1)).mi
    )
    pythae_model = None
    try:
        from pythae.models import BetaTCVAE, BetaTCVAEConfig

        pythae_model = BetaTCVAE(
            BetaTCVAEConfig(input_dim=(1,), latent_dim=dim, alpha=1.0, beta=0.0, gamma=0.0, use_mss=True)
        )
    except ImportError:
        pass
    values: dict[str, list[float]] = {"edvae MSS": [], "edvae batch (InfoNCE bound)": [], "pythae BetaTCVAE MSS": []}
    for _ in range(n_batches):
        idx = torch.randperm(n, generator=gen)[:batch]
        m, lv = mu[idx], logvar[idx]
        z = m + sigma * torch.randn(m.shape, generator=gen, dtype=m.dtype)
        values["edvae MSS"].append(float(decompose(z, m, lv, prior, dataset_size=n, per_dimension=False).mi))
        values["edvae batch (InfoNCE bound)"].append(
            float(decompose(z, m, lv, prior, method="batch", per_dimension=False).mi)
        )
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
        "case": f"mu ~ N(0, I_{dim}), sigma = {sigma}, N = {n}, B = {batch}, {n_batches} batches, truth from {queries} "
        "query points",
        "log_B": math.log(batch),
        "log_N": math.log(n),
        "pythae": "compared" if pythae_model is not None else "not installed",
        "results": rows,
    }


#: The Gaussian case of :func:`tcvae_terms_correctness` (as in tests/test_decomposition_closed_form.py)
_TC_MAP = ((1.3, 0.0, 0.0), (0.5, 0.4, 0.0), (0.4, -0.6, 0.9))
_TC_SCALE = 0.5


def tcvae_terms_correctness(*, quick: bool) -> dict[str, Any]:
    r"""The three beta-TCVAE terms on a Gaussian case with known answers, edvae's and pythae's
    estimates on the same tensors.

    q(z|x_n) = N(A x_n, s^2 I) with x_n whitened draws (empirical mean 0, covariance I), so the
    aggregate posterior is close to N(0, Sigma), Sigma = A A^T + s^2 I, and with the prior N(0, I)

        I(x; z) = 1/2 (log det Sigma - D log s^2),   TC = 1/2 (sum_d log Sigma_dd - log det Sigma),
        sum_d KL(q_d || p_d) = sum_d 1/2 (Sigma_dd - 1 - log Sigma_dd).

    Batches of B = 64 out of N posteriors, z ~ q(z|x); edvae: :func:`edvae.estimators.decompose`
    (MSS); pythae: ``BetaTCVAE.loss_function`` with recon_x = x (its reconstruction term 0) and
    (alpha, beta, gamma) = (1, 0, 0), (0, 1, 0), (0, 0, 1): exactly its mean MI, TC and
    dimension-wise KL terms. The full-data-set estimates (all N posteriors as the columns) are
    reported beside the closed forms."""
    from torch.distributions import Independent, Normal

    from edvae.estimators import dataset_decomposition, decompose

    n, batch = (3000 if quick else 10_000), 64
    n_batches = 20 if quick else 200
    dtype = torch.float64
    a = torch.tensor(_TC_MAP, dtype=dtype)
    dim = a.shape[0]
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(n, dim, generator=gen, dtype=dtype)
    x = x - x.mean(0)
    x = x @ torch.linalg.inv(torch.linalg.cholesky(x.T @ x / n)).T
    mu = x @ a.T
    logvar = torch.full_like(mu, 2 * math.log(_TC_SCALE))
    prior = Independent(Normal(torch.zeros(dim, dtype=dtype), torch.ones(dim, dtype=dtype)), 1)
    sigma = a @ a.T + _TC_SCALE**2 * torch.eye(dim, dtype=dtype)
    diag, logdet = torch.diagonal(sigma), torch.logdet(sigma)
    closed = {
        "mi": float(0.5 * (logdet - dim * math.log(_TC_SCALE**2))),
        "tc": float(0.5 * (diag.log().sum() - logdet)),
        "dimwise_kl": float((0.5 * (diag - 1 - diag.log())).sum()),
    }
    full = dataset_decomposition(
        mu, logvar, prior, num_queries=min(n, 3000), generator=torch.Generator().manual_seed(1), per_dimension=True
    )
    pythae_models = None
    try:
        from pythae.models import BetaTCVAE, BetaTCVAEConfig

        pythae_models = {
            term: BetaTCVAE(
                BetaTCVAEConfig(input_dim=(1,), latent_dim=dim, alpha=w[0], beta=w[1], gamma=w[2], use_mss=True)
            )
            for term, w in (("mi", (1.0, 0.0, 0.0)), ("tc", (0.0, 1.0, 0.0)), ("dimwise_kl", (0.0, 0.0, 1.0)))
        }
    except ImportError:
        pass
    values: dict[str, dict[str, list[float]]] = {"edvae MSS": {t: [] for t in closed}}
    if pythae_models is not None:
        values["pythae BetaTCVAE MSS"] = {t: [] for t in closed}
    for _ in range(n_batches):
        idx = torch.randperm(n, generator=gen)[:batch]
        m, lv = mu[idx], logvar[idx]
        z = m + _TC_SCALE * torch.randn(m.shape, generator=gen, dtype=dtype)
        dec = decompose(z, m, lv, prior, dataset_size=n)
        assert dec.total_correlation is not None and dec.dimwise_kl is not None  # a factorised prior
        for term, value in (("mi", dec.mi), ("tc", dec.total_correlation), ("dimwise_kl", dec.dimwise_kl.sum())):
            values["edvae MSS"][term].append(float(value))
        if pythae_models is not None:
            zeros = torch.zeros(batch, 1, dtype=dtype)
            with torch.no_grad():
                for term, model in pythae_models.items():
                    values["pythae BetaTCVAE MSS"][term].append(
                        float(model.loss_function(zeros, zeros, m, lv, z, n)[0])
                    )
    assert full.total_correlation is not None and full.dimwise_kl is not None  # a factorised prior
    rows: dict[str, dict[str, Any]] = {
        "closed form (Gaussian q(z))": {
            t: {"mean": v, "std_over_batches": None, "error": 0.0} for t, v in closed.items()
        },
        "edvae full data set": {
            t: {"mean": float(v), "std_over_batches": None, "error": float(v) - closed[t]}
            for t, v in (("mi", full.mi), ("tc", full.total_correlation), ("dimwise_kl", full.dimwise_kl.sum()))
        },
    }
    for name, terms in values.items():
        rows[name] = {
            t: {
                "mean": statistics.fmean(v),
                "std_over_batches": statistics.pstdev(v),
                "error": statistics.fmean(v) - closed[t],
            }
            for t, v in terms.items()
        }
    return {
        "case": f"q(z|x_n) = N(A x_n, {_TC_SCALE}^2 I), D = {dim}, N = {n}, B = {batch}, {n_batches} batches, prior "
        "N(0, I)",
        "log_B": math.log(batch),
        "pythae": "compared" if pythae_models is not None else "not installed",
        "results": rows,
    }
