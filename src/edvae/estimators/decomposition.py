r"""The ED-VAE decomposition of the ELBO (mutual information, entropy, cross-entropy, marginal KL,
total correlation, dimension-wise KL), of a minibatch and of a whole data set."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import NamedTuple

import torch
from torch import Tensor
from torch.distributions import Distribution

from edvae.errors import EdvaeError
from edvae.estimators.checks import ACC_DTYPE, check_finite, check_inputs, check_posterior, own_rows, result_dtype
from edvae.estimators.kernel import log_q_hat, log_q_hat_marginals
from edvae.estimators.posterior import (
    PriorLike,
    kl_divergence,
    log_normal_diag,
    per_dimension_log_prob,
    posterior_entropy,
    resolve_prior,
)
from edvae.estimators.weights import WeightPlan, weight_plan


@dataclass(frozen=True)
class Decomposition:
    r"""The ED-VAE decomposition of a batch (0-d tensors are means over rows), in nats.

    * ``mi``                = mean_i [ log q(z_i|x_i) - log q_hat(z_i) ]  (mutual information)
    * ``entropy``           = -mean_i log q_hat(z_i)                      (H[q(z)])
    * ``cross_entropy``     = -mean_i log p(z_i)                          (H[q(z), p(z)])
    * ``marginal_kl``       = cross_entropy - entropy                     (KL(q(z) || p(z)))
    * ``kl``                = mean_i KL(q(z|x_i) || p(z))  (analytic where registered)
    * ``posterior_entropy`` = mean_i sum_d 1/2 log(2 pi e sigma_id^2)
    * ``total_correlation`` = mean_i [ log q_hat(z_i) - sum_d log q_hat_d(z_id) ], each
      marginal q_hat_d with its own logsumexp and the same weights (None if not computed)
    * ``dimwise_kl`` (D,)   = mean_i [ log q_hat_d(z_id) - log p_d(z_id) ] when the prior is a
      product over dimensions (``Independent``), else None.

    Identities: ``entropy - mi = -mean_i log q(z_i|x_i)``, a Monte Carlo estimate of
    ``posterior_entropy``; ``marginal_kl = total_correlation + dimwise_kl.sum()`` for a
    factorised prior.
    """

    mi: Tensor
    entropy: Tensor
    cross_entropy: Tensor
    marginal_kl: Tensor
    kl: Tensor
    posterior_entropy: Tensor
    total_correlation: Tensor | None = None
    dimwise_kl: Tensor | None = None

    def as_dict(self) -> dict[str, float]:
        """Plain floats; ``dimwise_kl`` becomes ``dimwise_kl_0``, ``dimwise_kl_1``, ..."""
        out: dict[str, float] = {}
        for field in fields(self):
            value = getattr(self, field.name)
            if value is None:
                continue
            if value.dim() == 0:
                out[field.name] = float(value.detach())
            else:
                out.update({f"{field.name}_{d}": float(v) for d, v in enumerate(value.detach().tolist())})
        return out


def _decompose(
    z: Tensor,
    mu_rows: Tensor,
    logvar_rows: Tensor,
    mu: Tensor,
    logvar: Tensor,
    prior: Distribution,
    plan: WeightPlan,
    chunk_size: int | None,
    per_dimension: bool,
) -> Decomposition:
    """Shared by ``decompose`` and ``dataset_decomposition``; rows own (mu_rows, logvar_rows)."""
    dtype = result_dtype(z, mu, logvar)
    log_q = log_q_hat(z, mu, logvar, plan, chunk_size)
    log_post = log_normal_diag(z.to(ACC_DTYPE), mu_rows.to(ACC_DTYPE), logvar_rows.to(ACC_DTYPE))
    log_p = prior.log_prob(z).to(ACC_DTYPE)
    mi = (log_post - log_q).mean()
    entropy = -log_q.mean()
    cross_entropy = -log_p.mean()
    total_correlation = dimwise_kl = None
    if per_dimension:
        log_q_d = log_q_hat_marginals(z, mu, logvar, plan, chunk_size)
        total_correlation = (log_q - log_q_d.sum(1)).mean().to(dtype)
        log_p_d = per_dimension_log_prob(prior, z)
        if log_p_d is not None:
            dimwise_kl = (log_q_d - log_p_d.to(ACC_DTYPE)).mean(0).to(dtype)
    kl = kl_divergence(mu_rows, logvar_rows, prior, z, validate=False).mean()
    return Decomposition(
        mi=mi.to(dtype),
        entropy=entropy.to(dtype),
        cross_entropy=cross_entropy.to(dtype),
        marginal_kl=(cross_entropy - entropy).to(dtype),
        kl=kl.to(dtype),
        posterior_entropy=posterior_entropy(logvar_rows).mean().to(dtype),
        total_correlation=total_correlation,
        dimwise_kl=dimwise_kl,
    )


def decompose(
    z: Tensor,
    mu: Tensor,
    logvar: Tensor,
    prior: PriorLike,
    *,
    dataset_size: int | None = None,
    method: str = "mss",
    row_offset: int = 0,
    chunk_size: int | None = None,
    per_dimension: bool = True,
    validate: bool = True,
) -> Decomposition:
    r"""The ED-VAE decomposition of a minibatch (see :class:`Decomposition`).

    mean_i ELBO_MC(x_i) = R - mi + entropy - cross_entropy  holds exactly for every ``method``,
    because one estimate log q_hat(z_i) (``log_aggregate_posterior``) enters both ``mi`` and
    ``entropy``. ``z[i]`` must be drawn from column ``i + row_offset`` of ``mu``/``logvar``,
    also for ``method="full"``. ``per_dimension=False`` skips the D per-dimension logsumexps
    behind ``total_correlation`` and ``dimwise_kl``.
    """
    check_inputs(z, mu, logvar, validate)
    p = resolve_prior(prior, mu.shape[1])
    mu_rows, logvar_rows = own_rows(mu, logvar, z.shape[0], row_offset)
    plan = weight_plan(method, z.shape[0], mu.shape[0], dataset_size, row_offset)
    return _decompose(z, mu_rows, logvar_rows, mu, logvar, p, plan, chunk_size, per_dimension)


def _dataset_queries(
    mu: Tensor,
    logvar: Tensor,
    prior: PriorLike,
    num_queries: int | None,
    generator: torch.Generator | None,
    validate: bool,
) -> tuple[Distribution, Tensor, Tensor, Tensor, Tensor, WeightPlan]:
    """The query points of :func:`dataset_decomposition`: ``(prior, index, z, mu_rows,
    logvar_rows, plan)``, the indices and z_s drawn with ``generator`` in that order."""
    check_posterior(mu, logvar)
    check_finite(validate, mu=mu, logvar=logvar)
    p = resolve_prior(prior, mu.shape[1])
    n = mu.shape[0]
    if num_queries is not None and (not isinstance(num_queries, int) or num_queries < 1):
        raise EdvaeError(f"num_queries={num_queries!r} must be a positive integer or None.")
    # drawn on the generator's device (a CPU generator serves a model on any device), then moved
    drawn_on = mu.device if generator is None else generator.device
    if num_queries is None or num_queries >= n:
        index = torch.arange(n, device=mu.device)
    else:
        index = torch.randperm(n, generator=generator, device=drawn_on)[:num_queries].to(mu.device)
    mu_rows, logvar_rows = mu[index], logvar[index]
    noise = torch.randn(mu_rows.shape, generator=generator, dtype=mu_rows.dtype, device=drawn_on).to(mu.device)
    z = mu_rows + torch.exp(0.5 * logvar_rows) * noise
    return p, index, z, mu_rows, logvar_rows, weight_plan("full", z.shape[0], n, None, 0)


@torch.no_grad()
def dataset_decomposition(
    mu: Tensor,
    logvar: Tensor,
    prior: PriorLike,
    *,
    num_queries: int | None = None,
    generator: torch.Generator | None = None,
    chunk_size: int | None = None,
    per_dimension: bool = False,
    validate: bool = True,
) -> Decomposition:
    r"""The decomposition under the full data set, for evaluation (no gradients).

    ``mu``, ``logvar`` (N, D) are the posteriors of ALL N examples. S query indices s are the
    whole set (``num_queries`` None or >= N) or a random subset drawn with ``generator``;
    z_s ~ q(z|x_s) (also drawn with ``generator``) and

        log q(z_s) = logsumexp_n log q(z_s | x_n) - log N

    over all N posteriors, in blocks, so time is O(S N D) and extra memory O(block).
    ``per_dimension=True`` adds ``total_correlation``/``dimwise_kl`` at D times the cost.
    :func:`dataset_decomposition_terms` gives the per-query values behind the means.
    """
    p, _, z, mu_rows, logvar_rows, plan = _dataset_queries(mu, logvar, prior, num_queries, generator, validate)
    return _decompose(z, mu_rows, logvar_rows, mu, logvar, p, plan, chunk_size, per_dimension)


class DecompositionTerms(NamedTuple):
    r"""Per-query values of :func:`dataset_decomposition`, each (S,) in float64.

    For the query z_s ~ q(z|x_{index_s}): ``mi`` = log q(z_s|x_s) - log q_hat(z_s),
    ``entropy`` = -log q_hat(z_s), ``cross_entropy`` = -log p(z_s), ``marginal_kl`` =
    log q_hat(z_s) - log p(z_s) and ``kl`` = KL(q(z|x_s) || p(z)) (analytic where registered,
    else the one-sample value log q(z_s|x_s) - log p(z_s)). Their means are the fields of the
    :class:`Decomposition` drawn with the same generator state. ``mi + marginal_kl`` =
    log q(z_s|x_s) - log p(z_s) exactly, per query: log q_hat cancels, and with it its bias.
    """

    index: Tensor  # type: ignore[assignment]  # a public field name that shadows tuple.index
    mi: Tensor
    entropy: Tensor
    cross_entropy: Tensor
    marginal_kl: Tensor
    kl: Tensor


@torch.no_grad()
def dataset_decomposition_terms(
    mu: Tensor,
    logvar: Tensor,
    prior: PriorLike,
    *,
    num_queries: int | None = None,
    generator: torch.Generator | None = None,
    chunk_size: int | None = None,
    validate: bool = True,
) -> DecompositionTerms:
    r"""The per-query terms of :func:`dataset_decomposition` (same arguments, same draws), for
    Monte Carlo errors: the standard error of a term is sd_s(term_s) / sqrt(S)."""
    p, index, z, mu_rows, logvar_rows, plan = _dataset_queries(mu, logvar, prior, num_queries, generator, validate)
    log_q = log_q_hat(z, mu, logvar, plan, chunk_size)
    log_post = log_normal_diag(z.to(ACC_DTYPE), mu_rows.to(ACC_DTYPE), logvar_rows.to(ACC_DTYPE))
    log_p = p.log_prob(z).to(ACC_DTYPE)
    kl = kl_divergence(mu_rows, logvar_rows, p, z, validate=False).to(ACC_DTYPE)
    return DecompositionTerms(index, log_post - log_q, -log_q, -log_p, log_q - log_p, kl)
