r"""Posterior densities and KL: log q(z|x) of the diagonal Gaussian encoder, its entropy, KL to
the prior, and the prior p(z) these are measured against (:func:`resolve_prior`)."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.distributions import Distribution, Independent, Normal

from edvae.errors import EdvaeError
from edvae.estimator_names import KL_METHODS
from edvae.estimators.checks import check_finite, check_float, check_inputs, check_posterior, own_rows
from edvae.priors.base import distribution_of

PriorLike = Distribution | nn.Module | Callable[[], Distribution]
"""A ``Distribution`` with ``event_shape == (D,)``, or a module/callable returning one."""

LOG_2PI = math.log(2.0 * math.pi)


def resolve_prior(prior: PriorLike, dim: int | None = None) -> Distribution:
    """The prior distribution p(z) behind ``prior``: :func:`edvae.priors.distribution_of`.

    ``prior`` is a ``torch.distributions.Distribution`` or, following zuko's lazy-distribution
    convention, an ``nn.Module`` (or any callable) whose call returns one with
    ``batch_shape == ()``; with ``dim`` given, the event shape must be ``(dim,)``.
    """
    return distribution_of(prior, dim)


def per_dimension_log_prob(prior: Distribution, z: Tensor) -> Tensor | None:
    """(R, D) per-dimension log p_d(z_d) when the prior is a product over dimensions."""
    if not isinstance(prior, Independent) or prior.reinterpreted_batch_ndims != 1:
        return None
    return prior.base_dist.log_prob(z)


def factorised_log_prob(prior: PriorLike, z: Tensor) -> Tensor | None:
    r"""(R, D) per-dimension log p_d(z_id) when the prior is a product over dimensions,
    p(z) = prod_d p_d(z_d) (an ``Independent`` distribution over one batch dimension), else None."""
    return per_dimension_log_prob(resolve_prior(prior, z.shape[1]), z)


def own_posteriors(
    z: Tensor, mu: Tensor, logvar: Tensor, *, row_offset: int = 0, validate: bool = True
) -> tuple[Tensor, Tensor]:
    r"""The posterior parameters the rows of ``z`` were drawn from: rows o .. o + R - 1 of
    ``mu`` and ``logvar`` (o = ``row_offset``), each (R, D), once the shapes are checked (and,
    with ``validate``, that z, mu and logvar are finite: one host synchronisation)."""
    check_inputs(z, mu, logvar, validate)
    return own_rows(mu, logvar, z.shape[0], row_offset)


def log_posterior(z: Tensor, mu: Tensor, logvar: Tensor, *, row_offset: int = 0, validate: bool = True) -> Tensor:
    r"""Log-density of each row under its own posterior, shape (R,).

    log q(z_i | x_{i+o}) = -1/2 sum_d [ (z_id - mu_{i+o,d})^2 / sigma^2_{i+o,d}
                                         + log sigma^2_{i+o,d} + log 2 pi ],  o = row_offset.
    """
    mu_r, logvar_r = own_posteriors(z, mu, logvar, row_offset=row_offset, validate=validate)
    return log_normal_diag(z, mu_r, logvar_r)


def log_normal_diag(z: Tensor, mu: Tensor, logvar: Tensor) -> Tensor:
    r"""log N(z; mu, diag exp(logvar)) = -1/2 sum_d [(z_d - mu_d)^2 e^{-logvar_d} + logvar_d + log 2 pi]."""
    return -0.5 * ((z - mu).square() * torch.exp(-logvar) + logvar + LOG_2PI).sum(-1)


def posterior_entropy(logvar: Tensor) -> Tensor:
    r"""Analytic entropy of each diagonal Gaussian posterior, shape (B,).

    H[q(z|x_j)] = sum_d 1/2 log(2 pi e sigma^2_jd).
    """
    return 0.5 * (logvar + (LOG_2PI + 1.0)).sum(-1)


def kl_divergence(
    mu: Tensor,
    logvar: Tensor,
    prior: PriorLike,
    z: Tensor | None = None,
    *,
    method: str = "auto",
    validate: bool = True,
) -> Tensor:
    r"""KL(q(z|x_j) || p(z)) for every posterior, shape (B,).

    ``method="analytic"`` uses the closed form registered in ``torch.distributions`` for
    (Independent(Normal), prior) and raises if there is none; ``"mc"`` uses the Monte Carlo
    estimate log q(z_j|x_j) - log p(z_j) at ``z`` (drawn with ``rsample`` when ``z`` is None),
    averaged over samples when ``z`` has shape (S, B, D); ``"auto"`` is analytic where
    registered and Monte Carlo otherwise.
    """
    if method not in KL_METHODS:
        raise EdvaeError(f"method={method!r} is unknown; use one of {', '.join(KL_METHODS)}.")
    check_posterior(mu, logvar)
    if z is not None and (not isinstance(z, Tensor) or z.shape[-2:] != mu.shape or z.dim() > 3):
        shape = tuple(z.shape) if isinstance(z, Tensor) else type(z).__name__
        raise EdvaeError(
            f"z has shape {shape} but mu has shape {tuple(mu.shape)}; pass one sample per "
            "posterior, (B, D), or S of them, (S, B, D)."
        )
    if z is None:
        check_finite(validate, mu=mu, logvar=logvar)
    else:
        check_float("z", z)
        check_finite(validate, z=z, mu=mu, logvar=logvar)
    p = resolve_prior(prior, mu.shape[1])
    if method != "mc":
        closed_form = _analytic_kl(mu, logvar, p)
        if closed_form is not None:
            return closed_form
        if method == "analytic":
            raise EdvaeError(
                f"method='analytic' but torch.distributions registers no KL between a "
                f"diagonal Gaussian and {type(p).__name__}; use method='auto' or 'mc'."
            )
    if z is None:
        z = Independent(Normal(mu, torch.exp(0.5 * logvar), validate_args=False), 1).rsample()
    kl = log_normal_diag(z, mu, logvar) - p.log_prob(z)
    return kl.mean(0) if z.dim() == 3 else kl


def _analytic_kl(mu: Tensor, logvar: Tensor, prior: Distribution) -> Tensor | None:
    """The closed-form KL(N(mu, diag exp(logvar)) || prior) per row, or None if torch registers
    none. A diagonal Gaussian prior takes :func:`_kl_diagonal_normals` directly."""
    scale = torch.exp(0.5 * logvar)
    if (
        type(prior) is Independent
        and type(prior.base_dist) is Normal
        and prior.reinterpreted_batch_ndims == 1
        and prior.batch_shape == ()
    ):
        return _kl_diagonal_normals(mu, scale, prior.base_dist.loc, prior.base_dist.scale)
    q = Independent(Normal(mu, scale, validate_args=False), 1)
    try:
        return torch.distributions.kl_divergence(q, prior).expand(mu.shape[0])
    except NotImplementedError:
        return None


def _kl_diagonal_normals(mu: Tensor, scale: Tensor, loc: Tensor, prior_scale: Tensor) -> Tensor:
    r"""KL(N(mu, diag scale^2) || N(loc, diag prior_scale^2)) per row, shape (B,):

        sum_d 1/2 [ r_d + ((mu_d - loc_d) / prior_scale_d)^2 - 1 - log r_d ],
        r_d = (scale_d / prior_scale_d)^2,

    the closed form ``torch.distributions.kl_divergence`` registers, in the same operations
    (same rounding) without building distribution objects on the training step."""
    var_ratio = (scale / prior_scale).pow(2)
    t1 = ((mu - loc) / prior_scale).pow(2)
    return (0.5 * (var_ratio + t1 - 1 - var_ratio.log())).sum(-1)
