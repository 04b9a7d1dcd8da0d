r"""Disentanglement metrics: how well single latent dimensions capture single known factors.

The code is the encoder's diagonal Gaussian q(z|x_n) = N(mu_n, diag exp(logvar_n)) on N
examples with known factor values v_n = (v_n1, ..., v_nK) (e.g. ``DataSplits.test_factors``
of :mod:`edvae.data.factors`).

* :func:`mutual_information_gap` (MIG, Chen et al., 2018). With the aggregate posterior of one
  dimension, q(z_j) = (1/N) sum_n q(z_j | x_n), and its restriction to the N_c examples whose
  factor k takes value c, q(z_j | v_k = c) = (1/N_c) sum_{n: v_nk = c} q(z_j | x_n),

      I(z_j; v_k) = E_n [ log q(z_nj | v_k = v_nk) - log q(z_nj) ],   z_nj ~ q(z_j | x_n),

  both log-densities by the full-data-set logsumexp estimator of
  :func:`edvae.estimators.log_aggregate_posterior` (``method="full"``) over the examples
  concerned. Then, with I_k^(1) >= I_k^(2) the two largest I(z_j; v_k) over j and H(v_k) the
  empirical entropy of factor k,

      MIG = (1/K) sum_k ( I_k^(1) - I_k^(2) ) / H(v_k)   in [0, 1] (up to estimation error).

  Factors are discrete: a factor with at most ``bins`` distinct values is used as it is; a
  continuous one is cut into ``bins`` bins of equal counts (its quantiles), so H(v_k) ~ log bins.

  What is estimated is the information under the *empirical* aggregate posterior, a mixture of
  N Gaussians. When a dimension's posteriors are much narrower than the gaps between the
  distinct means mu_nj, z_j identifies the example, and then I(z_j; v_k) = H(v_k) for every
  factor: a near-deterministic code that scatters the examples in every dimension scores 0,
  and on continuous factors a near-deterministic *copy* of v_k does too, because every other
  dimension (an independent continuous factor) also identifies the example. Evaluate on a set
  whose size N makes the spacing of the means comparable to the posterior widths, or on
  discrete factors.
* :func:`dci` (Eastwood & Williams, 2018): a random forest regresses each standardised factor on
  the standardised means mu; its impurity importances form R (D, K), R_jk = importance of z_j for
  v_k. With P_jk = R_jk / sum_k' R_jk' and rho_j = sum_k R_jk / sum_jk R_jk,

      disentanglement = sum_j rho_j (1 - H_K(P_j.)),   H_K(p) = -sum_k p_k log_K p_k,

  and completeness = (1/K) sum_k (1 - H_D(R_.k / sum_j R_jk)). Both lie in [0, 1]; a code where
  each dimension informs about exactly one factor has disentanglement 1.

No metric touches the trainer: they take tensors and return numbers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from edvae.errors import EdvaeError
from edvae.estimators import log_aggregate_posterior

__all__ = [
    "DCI",
    "MIG",
    "dci",
    "discretize_factors",
    "factor_entropy",
    "mutual_information_gap",
    "mutual_information_matrix",
]


def _check_code(mu: Tensor, logvar: Tensor | None, factors: Tensor, min_dims: int, min_factors: int) -> None:
    for name, t in (("mu", mu), ("logvar", logvar), ("factors", factors)):
        if t is None:
            continue
        if not isinstance(t, Tensor) or t.dim() != 2 or 0 in t.shape or not t.is_floating_point():
            shape = tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__
            raise EdvaeError(f"{name} must be a non-empty 2-D floating-point tensor (examples, columns), got {shape}")
        if not bool(torch.isfinite(t).all()):
            raise EdvaeError(f"{name} contains NaN or Inf values; evaluate the metric on finite codes and factors")
    if logvar is not None and logvar.shape != mu.shape:
        raise EdvaeError(f"logvar has shape {tuple(logvar.shape)} but mu has {tuple(mu.shape)}")
    if factors.shape[0] != mu.shape[0]:
        raise EdvaeError(f"factors has {factors.shape[0]} rows but mu has {mu.shape[0]}; pass one row per example")
    if mu.shape[1] < min_dims or factors.shape[1] < min_factors:
        raise EdvaeError(
            f"the metric needs at least {min_dims} latent dimensions and {min_factors} factors, "
            f"got {mu.shape[1]} and {factors.shape[1]}"
        )


def discretize_factors(factors: Tensor, bins: int = 20) -> Tensor:
    """Integer codes (N, K): a column with at most ``bins`` distinct values keeps them (coded
    0 .. n_values - 1 in increasing order); any other column is cut at its
    ``bins`` - 1 inner quantiles into ``bins`` bins of (nearly) equal counts."""
    if isinstance(bins, bool) or not isinstance(bins, int) or bins < 2:
        raise EdvaeError(f"bins={bins!r} must be an integer >= 2")
    codes = []
    for column in factors.to(torch.float64).T.contiguous():
        values, inverse = torch.unique(column, return_inverse=True)
        if values.numel() > bins:
            edges = torch.quantile(column, torch.linspace(0, 1, bins + 1, dtype=torch.float64)[1:-1])
            inverse = torch.bucketize(column, edges, right=True)
        codes.append(inverse)
    return torch.stack(codes, dim=1)


def factor_entropy(codes: Tensor) -> Tensor:
    """Empirical entropy H(v_k) = -sum_c p_c log p_c (nats) of each column of integer codes, (K,)."""
    out = []
    for column in codes.T:
        p = torch.bincount(column).to(torch.float64)
        p = p[p > 0] / column.numel()
        out.append(-(p * p.log()).sum())
    return torch.stack(out)


def _log_marginals(z: Tensor, mu: Tensor, logvar: Tensor, chunk_size: int | None) -> Tensor:
    """log q(z_nj) under (1/M) sum_m q(z_j | x_m) over the M given posteriors, per dimension, (M, D)."""
    return torch.stack(
        [
            log_aggregate_posterior(
                z[:, j : j + 1],
                mu[:, j : j + 1],
                logvar[:, j : j + 1],
                method="full",
                chunk_size=chunk_size,
                validate=False,
            )
            for j in range(z.shape[1])
        ],
        dim=1,
    )


@torch.no_grad()
def mutual_information_matrix(
    mu: Tensor,
    logvar: Tensor,
    codes: Tensor,
    *,
    generator: torch.Generator | None = None,
    chunk_size: int | None = None,
) -> Tensor:
    r"""I(z_j; v_k) in nats, (D, K), for integer factor codes (N, K) (see the module docstring):

        I_jk = mean_n [ log q(z_nj | v_k = v_nk) - log q(z_nj) ],  z_n ~ q(z | x_n) drawn once
    with ``generator`` (on the CPU, in float64). Costs O(N^2 D) per factor plus O(N^2 D) for q(z_j).
    """
    if codes.dtype != torch.int64 or codes.dim() != 2 or codes.shape[0] != mu.shape[0]:
        raise EdvaeError(
            f"codes must be int64 factor codes of shape ({mu.shape[0]}, K), got {codes.dtype} {tuple(codes.shape)}; "
            "make them with discretize_factors"
        )
    mu, logvar = mu.detach().cpu().to(torch.float64), logvar.detach().cpu().to(torch.float64)
    noise = torch.randn(mu.shape, generator=generator, dtype=torch.float64)
    z = mu + torch.exp(0.5 * logvar) * noise
    log_q = _log_marginals(z, mu, logvar, chunk_size)
    columns = []
    for column in codes.T:
        log_q_given = torch.empty_like(log_q)
        for value in torch.unique(column):
            rows = column == value
            log_q_given[rows] = _log_marginals(z[rows], mu[rows], logvar[rows], chunk_size)
        columns.append((log_q_given - log_q).mean(0))
    return torch.stack(columns, dim=1)


@dataclass(frozen=True)
class MIG:
    """The mutual information gap: ``score`` (the mean over factors), ``per_factor`` (K,) gaps
    normalised by ``factor_entropy`` (K,), and the ``mutual_information`` matrix (D, K) in nats."""

    score: float
    per_factor: Tensor
    mutual_information: Tensor
    factor_entropy: Tensor


def mutual_information_gap(
    mu: Tensor,
    logvar: Tensor,
    factors: Tensor,
    *,
    bins: int = 20,
    generator: torch.Generator | None = None,
    chunk_size: int | None = None,
) -> MIG:
    r"""MIG = (1/K) sum_k (I_k^(1) - I_k^(2)) / H(v_k) (Chen et al., 2018; module docstring).

    ``mu``, ``logvar`` (N, D): posteriors of N examples; ``factors`` (N, K): their factor values
    (discretised by :func:`discretize_factors` with ``bins``); ``generator`` draws z ~ q(z|x).
    Needs D >= 2, and refuses a factor that is constant on these examples (H(v_k) = 0).
    """
    _check_code(mu, logvar, factors, min_dims=2, min_factors=1)
    codes = discretize_factors(factors.detach().cpu(), bins)
    entropy = factor_entropy(codes)
    if bool((entropy <= 0).any()):
        k = int(torch.nonzero(entropy <= 0)[0])
        raise EdvaeError(f"factor {k} is constant on these examples, so its MIG is undefined; drop that column")
    info = mutual_information_matrix(mu, logvar, codes, generator=generator, chunk_size=chunk_size)
    top = torch.topk(info, 2, dim=0).values
    per_factor = (top[0] - top[1]) / entropy
    return MIG(float(per_factor.mean()), per_factor, info, entropy)


@dataclass(frozen=True)
class DCI:
    """DCI scores (Eastwood & Williams, 2018): ``disentanglement`` and ``completeness`` in [0, 1]
    and the ``importance`` matrix R (D, K)."""

    disentanglement: float
    completeness: float
    importance: Tensor


def _normalised_entropy(p: np.ndarray, axis: int) -> np.ndarray:
    """1 - H_b(p) along ``axis`` with the logarithm in base b = p.shape[axis]; p sums to 1 there."""
    logs = np.log(np.where(p > 0, p, 1.0))
    return 1.0 - (-(p * logs).sum(axis) / math.log(p.shape[axis]))


def dci(mu: Tensor, factors: Tensor, *, n_trees: int = 10, max_depth: int = 8, seed: int = 0) -> DCI:
    r"""DCI disentanglement and completeness of the code ``mu`` (N, D) for ``factors`` (N, K).

    One random forest (``n_trees`` trees of depth <= ``max_depth``, seeded by ``seed``) per
    factor regresses the standardised factor on the standardised code; its impurity importances
    (summing to 1 over the D dimensions) are column k of R. Scores as in the module docstring.
    Needs D >= 2 and K >= 2 (the entropies are normalised by log D and log K).
    """
    from sklearn.ensemble import RandomForestRegressor  # lazily: scikit-learn is slow to import

    _check_code(mu, None, factors, min_dims=2, min_factors=2)
    x = mu.detach().cpu().to(torch.float64).numpy()
    y = factors.detach().cpu().to(torch.float64).numpy()
    x = (x - x.mean(0)) / np.where(x.std(0) > 0, x.std(0), 1.0)
    y = (y - y.mean(0)) / np.where(y.std(0) > 0, y.std(0), 1.0)
    importance = np.zeros((x.shape[1], y.shape[1]))
    for k in range(y.shape[1]):
        forest = RandomForestRegressor(n_estimators=n_trees, max_depth=max_depth, random_state=seed, n_jobs=1)
        importance[:, k] = forest.fit(x, y[:, k]).feature_importances_
    total = importance.sum()
    if total <= 0:
        raise EdvaeError("no latent dimension predicts any factor (all importances are 0); the factors are constant")
    per_dim = importance.sum(1)
    p_dims = importance / np.where(per_dim > 0, per_dim, 1.0)[:, None]
    disentanglement = float((per_dim / total * _normalised_entropy(p_dims, axis=1)).sum())
    per_factor = importance.sum(0)
    used = per_factor > 0
    p_factors = importance[:, used] / per_factor[used]
    completeness = float(_normalised_entropy(p_factors, axis=0).mean()) if used.any() else 0.0
    return DCI(disentanglement, completeness, torch.from_numpy(importance))
