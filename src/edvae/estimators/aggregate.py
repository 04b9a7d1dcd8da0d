r"""The aggregate posterior: estimates of log q(z_i) and of its one-dimensional marginals
log q_d(z_id) from a batch (or all N) of posteriors, with the weights of a method."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from edvae.estimators.checks import check_inputs, result_dtype
from edvae.estimators.kernel import log_q_hat, log_q_hat_marginals
from edvae.estimators.weights import weight_plan


def log_aggregate_posterior(
    z: Tensor,
    mu: Tensor,
    logvar: Tensor,
    *,
    dataset_size: int | None = None,
    method: str | tuple[str, ...] = "mss",
    chunk_size: int | None = None,
    row_offset: int = 0,
    validate: bool = True,
) -> Tensor:
    r"""Estimate log q(z_i) of the aggregate posterior at every row of ``z``, shape (R,).

    log q_hat(z_i) = logsumexp_j ( log W[i, j] + log q(z_i | x_j) ) with W set by ``method``
    (:mod:`edvae.estimators`): ``"mss"`` (needs ``dataset_size`` N >= B >= 2), ``"mws"`` (needs N),
    ``"batch"`` (W = 1/B) or ``"full"`` (the columns are all N posteriors, W = 1/N, ``z`` any
    query points and ``row_offset`` ignored). A tuple of K methods returns their K estimates,
    shape (K, R), from one pass over L (e.g. ``("mss", "batch")`` for an entropy and a mutual
    information estimated differently).

    Args:
        z: (R, D) rows; ``z[i]`` drawn from q(z | x_{i + row_offset}) except for ``"full"``.
        mu, logvar: (B, D) posterior parameters of the columns.
        dataset_size: N, the number of training examples.
        chunk_size: rows per block (default: blocks of at most 2**21 entries).
        row_offset: global batch index of row 0 (distributed training).
        validate: check for NaN/Inf (one host synchronisation); shapes are always checked.

    Differentiable in ``z``, ``mu`` and ``logvar``. Returned in the inputs' dtype, computed in
    float32 when no input is float64 and D <= 4 (direct differences, within 1e-3 nats of
    float64: :mod:`edvae.estimators.kernel`), else in float64.
    """
    check_inputs(z, mu, logvar, validate)
    # () -> weight_plan refuses
    methods: tuple[Any, ...] = method if isinstance(method, tuple) and method else (method,)
    plans = tuple(weight_plan(m, z.shape[0], mu.shape[0], dataset_size, row_offset) for m in methods)
    log_q = log_q_hat(z, mu, logvar, plans if isinstance(method, tuple) else plans[0], chunk_size)
    return log_q.to(result_dtype(z, mu, logvar))


def log_aggregate_marginals(
    z: Tensor,
    mu: Tensor,
    logvar: Tensor,
    *,
    dataset_size: int | None = None,
    method: str = "mss",
    chunk_size: int | None = None,
    row_offset: int = 0,
    validate: bool = True,
) -> Tensor:
    r"""Estimate log q_d(z_id) of every one-dimensional marginal of the aggregate posterior,
    shape (R, D):

        log q_hat_d(z_id) = logsumexp_j ( log W[i, j] + log q(z_id | x_j) ),

    the weights W of ``method`` (the same as :func:`log_aggregate_posterior`'s, so that
    mean_i [log q_hat(z_i) - sum_d log q_hat_d(z_id)] is the total correlation and
    mean_i [log q_hat_d(z_id) - log p_d(z_id)] the dimension-wise KL of beta-TCVAE, Chen et
    al. 2018), one logsumexp per dimension. Arguments as for :func:`log_aggregate_posterior`.
    """
    check_inputs(z, mu, logvar, validate)
    plan = weight_plan(method, z.shape[0], mu.shape[0], dataset_size, row_offset)
    return log_q_hat_marginals(z, mu, logvar, plan, chunk_size).to(result_dtype(z, mu, logvar))
