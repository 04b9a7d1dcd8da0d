r"""Training objectives: the ELBO and the ED-VAE objective, each a loss plus named terms.

Both take tensors, not models: ``log_px`` (R,) = log p(x_i | z_i) for this process's rows,
``z`` (R, D) with ``z[i]`` drawn from q(z | x_{i+row_offset}), and the posterior parameters
``mu``, ``logvar`` (B, D) of the (global) batch; ``prior`` is a ``Distribution`` over R^D or a
module returning one. All quantities are batch means in nats.

Averaged over the data, the ELBO splits into (Hoffman & Johnson, 2016)

    mean_n ELBO(x_n) = R - I_q(x; z) + H[q(z)] - H[q(z), p(z)],

and the ED-VAE loss weights the three latent terms separately:

    L = -R + w_mi I_hat - w_ent H_hat[q(z)] + w_ce CE_hat.

With unit weights and one shared estimate of log q(z), L is exactly the negative Monte Carlo
ELBO, whatever the estimator. With any weight != 1 the objective is NOT an ELBO (not a bound
on log p(x)); evaluate such models with the standard ELBO.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from contextlib import nullcontext
from typing import Any, NamedTuple

import torch
from torch import Tensor

from edvae.critics import Critic, EncoderCritic
from edvae.errors import EdvaeError
from edvae.estimator_names import ENTROPY_ESTIMATORS, MI_ESTIMATORS
from edvae.estimators import (
    KL_METHODS,
    PriorLike,
    factorised_log_prob,
    infonce,
    kl_divergence,
    log_aggregate_marginals,
    log_aggregate_posterior,
    log_posterior,
    own_posteriors,
    posterior_entropy,
    resolve_prior,
)

__all__ = [
    "ENTROPY_ESTIMATORS",
    "MI_ESTIMATORS",
    "Objective",
    "decomposed_elbo",
    "ed_elbo",
    "elbo",
    "uses_aggregate_posterior",
]


class Objective(NamedTuple):
    """``loss``: 0-d tensor to minimise; ``terms``: detached 0-d tensors for logging."""

    loss: Tensor
    terms: dict[str, Tensor]


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise EdvaeError(f"{name}={value!r} is unknown; use one of {', '.join(choices)}.")


def _check_log_px(log_px: Tensor, z: Tensor) -> None:
    if not isinstance(log_px, Tensor) or log_px.dim() != 1 or log_px.shape[0] != z.shape[0]:
        shape = tuple(log_px.shape) if isinstance(log_px, Tensor) else type(log_px).__name__
        raise EdvaeError(
            f"log_px has shape {shape} but must be ({z.shape[0]},), one log p(x_i|z_i) per row "
            "of z; sum the log-likelihood over the data dimensions first."
        )
    if not log_px.is_floating_point():
        raise EdvaeError(
            f"log_px has dtype {log_px.dtype} but must be a floating-point tensor of "
            "log-likelihoods; convert it with log_px.float()."
        )


def _check_weight(name: str, value: object) -> None:
    """A weight is a finite real number or a tensor (not checked: that would sync)."""
    finite_number = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
    if not (isinstance(value, Tensor) or finite_number):
        raise EdvaeError(f"{name}={value!r} must be a finite number; pass a float such as 1.0.")


def _detached(**terms: Tensor) -> dict[str, Tensor]:
    return {name: value.detach() for name, value in terms.items()}


def uses_aggregate_posterior(
    *,
    mi_weight: float = 1.0,
    entropy_weight: float = 1.0,
    tc_weight: float = 0.0,
    dimwise_kl_weight: float = 0.0,
    mi_estimator: str = "mss",
    entropy_estimator: str = "mss",
    critic: Callable[[Tensor, Tensor], Tensor] | None = None,
    diagnostics: bool = True,
) -> bool:
    r"""Whether :func:`ed_elbo` or :func:`decomposed_elbo` with these settings evaluates log
    q_hat(z) (or its marginals), and so reads the posteriors of the whole batch (in distributed
    training: the gathered columns).

    The loss holds (w_ent - w_mi + w_tc) mean_i log q_hat(z_i) and (w_dim - w_tc) mean_i sum_d
    log q_hat_d(z_id) (:func:`decomposed_elbo`; the ED objective is w_tc = w_dim = 0). Neither is
    evaluated when both coefficients are 0, one shared estimate serves I and H (the MI estimator,
    or InfoNCE with the encoder as critic, is the entropy's) and ``diagnostics`` is False.
    """
    on_q, on_marginals = _split_coefficients(mi_weight, entropy_weight, tc_weight, dimwise_kl_weight)
    shared = _mi_method(mi_estimator, critic) == entropy_estimator
    return diagnostics or not shared or _nonzero(on_q) or _nonzero(on_marginals)


def _telescopes(mi_method: str, entropy_estimator: str, mi_weight: object, entropy_weight: object) -> bool:
    """Whether log q_hat cancels from the loss: one shared estimate at w_mi = w_ent."""
    return mi_method == entropy_estimator and mi_weight == entropy_weight


def _mi_method(mi_estimator: str, critic: object) -> str:
    """InfoNCE with the encoder as critic IS the mutual information of the "batch" estimator
    (edvae.estimators.infonce), so it shares the one pass over log q(z_i|x_j) with log q_hat."""
    encoder = critic is None or isinstance(critic, EncoderCritic)
    return "batch" if mi_estimator == "infonce" and encoder else mi_estimator


def elbo(
    log_px: Tensor,
    z: Tensor,
    mu: Tensor,
    logvar: Tensor,
    prior: PriorLike,
    *,
    kl: str = "auto",
    row_offset: int = 0,
    validate: bool = True,
) -> Objective:
    r"""The evidence lower bound, as a loss.

        ELBO = mean_i log p(x_i | z_i) - mean_i KL(q(z | x_i) || p(z)),   loss = -ELBO.

    ``kl``: ``"analytic"`` (closed form registered in ``torch.distributions``, error if none),
    ``"mc"`` (log q(z_i|x_i) - log p(z_i) at the given ``z``) or ``"auto"`` (analytic where
    registered, else Monte Carlo). Rows own columns ``row_offset ..`` of ``mu``/``logvar``.
    Terms: ``reconstruction``, ``kl``, ``elbo``, ``loss``.
    """
    _check_choice("kl", kl, KL_METHODS)
    mu_rows, logvar_rows = own_posteriors(z, mu, logvar, row_offset=row_offset, validate=validate)
    _check_log_px(log_px, z)
    p = resolve_prior(prior, z.shape[1])
    # "mc" is log q(z_i|x_i) - log p(z_i); "auto" falls back to it where no closed form exists
    kl_values = kl_divergence(mu_rows, logvar_rows, p, z, method=kl, validate=False)
    reconstruction = log_px.mean()
    kl_mean = kl_values.mean()
    value = reconstruction - kl_mean
    return Objective(-value, _detached(reconstruction=reconstruction, kl=kl_mean, elbo=value, loss=-value))


def ed_elbo(
    log_px: Tensor,
    z: Tensor,
    mu: Tensor,
    logvar: Tensor,
    prior: PriorLike,
    *,
    dataset_size: int,
    mi_weight: float = 1.0,
    entropy_weight: float = 1.0,
    cross_entropy_weight: float = 1.0,
    mi_estimator: str = "mss",
    entropy_estimator: str = "mss",
    critic: Callable[..., Tensor] | None = None,
    x: Tensor | None = None,
    row_offset: int = 0,
    chunk_size: int | None = None,
    validate: bool = True,
    diagnostics: bool = True,
) -> Objective:
    r"""The ED-VAE objective, a loss to minimise:

        L = -R + w_mi I_hat - w_ent H_hat[q(z)] + w_ce CE_hat,

    R = mean_i log p(x_i|z_i), I_hat = mean_i [log q(z_i|x_i) - log q_hat(z_i)],
    H_hat = -mean_i log q_hat(z_i), CE_hat = -mean_i log p(z_i), with log q_hat from
    ``edvae.estimators.log_aggregate_posterior`` (``entropy_estimator``) and N = ``dataset_size``.
    When ``mi_estimator == entropy_estimator`` ONE estimate of log q_hat serves both terms, so at
    unit weights L = -(R - mean_i [log q(z_i|x_i) - log p(z_i)]), the negative Monte Carlo ELBO,
    up to rounding. ``mi_estimator="infonce"`` uses :func:`edvae.estimators.infonce` (with
    ``critic`` if given: a score f(z, mu) -> (R, B), or an :class:`edvae.critics.Critic`, called
    as ``critic(z, mu, logvar, x)`` with ``x`` the rows' inputs; a negative ``mi_weight`` then
    maximises it). Any weight != 1 makes L
    something other than an ELBO: evaluate models with :func:`elbo`.

    Terms: ``reconstruction``, ``mi``, ``entropy``, ``cross_entropy``, ``marginal_kl``,
    ``posterior_entropy`` (analytic, mean over rows), ``elbo_mc`` (the batch's Monte Carlo
    ELBO), ``loss``. ``validate=False`` skips the NaN/Inf check (a host synchronisation).

    ``diagnostics=False`` skips the terms that only report: ``posterior_entropy`` and
    ``elbo_mc`` always, and ``mi``, ``entropy`` and ``marginal_kl`` when the loss needs no
    log q_hat. That is the case with ``w_mi == w_ent`` and one shared estimate: log q_hat
    cancels from L (its gradient is exactly zero), L = -R + w_mi mean_i log q(z_i|x_i) +
    w_ce CE_hat, so the estimator itself is skipped and a training step between two logged
    steps costs what an ELBO step costs. The loss is the same either way.
    """
    _check_choice("mi_estimator", mi_estimator, MI_ESTIMATORS)
    _check_choice("entropy_estimator", entropy_estimator, ENTROPY_ESTIMATORS)
    for name, weight in (
        ("mi_weight", mi_weight),
        ("entropy_weight", entropy_weight),
        ("cross_entropy_weight", cross_entropy_weight),
    ):
        _check_weight(name, weight)
    if critic is not None and mi_estimator != "infonce":
        raise EdvaeError(
            f"critic is only used by mi_estimator='infonce', not {mi_estimator!r}; drop the "
            "critic or set mi_estimator='infonce'."
        )
    shared: dict[str, Any] = dict(dataset_size=dataset_size, row_offset=row_offset, chunk_size=chunk_size)
    mi_method = _mi_method(mi_estimator, critic)
    separate = mi_method not in (entropy_estimator, "infonce")
    methods = (entropy_estimator, mi_method) if separate else entropy_estimator
    # Telescoping: with one shared estimate and w_mi = w_ent = w, log q_hat cancels from the
    # loss, L = -R + w mean_i log q(z_i|x_i) + w_ce CE_hat: its gradient is exactly zero, and
    # the estimate (computed without a graph) only reports mi, entropy and marginal_kl.
    telescoped = _telescopes(mi_method, entropy_estimator, mi_weight, entropy_weight)
    log_q = log_q_mi = None
    if diagnostics or not telescoped:
        with torch.no_grad() if telescoped else nullcontext():
            log_q_all = log_aggregate_posterior(  # also validates z, mu, logvar and row_offset
                z, mu, logvar, method=methods, validate=validate, **shared
            )
        log_q, log_q_mi = (log_q_all[0], log_q_all[1]) if separate else (log_q_all, log_q_all)
    p = resolve_prior(prior, z.shape[1])
    _check_log_px(log_px, z)
    log_q_own = log_posterior(z, mu, logvar, row_offset=row_offset, validate=validate and log_q is None)
    if mi_method == "infonce" and isinstance(critic, Critic):  # e.g. a momentum encoder and a queue
        mi = critic(z, mu, logvar, x, row_offset=row_offset, validate=False)
    elif mi_method == "infonce":  # a learned score
        mi = infonce(
            z,
            mu,
            logvar,
            critic=critic,
            row_offset=row_offset,
            chunk_size=chunk_size,
            validate=False,
        )
    else:
        mi = None if log_q_mi is None else (log_q_own - log_q_mi).mean()
    log_p = p.log_prob(z)
    reconstruction = log_px.mean()
    entropy = None if log_q is None else -log_q.mean()
    cross_entropy = -log_p.mean()
    if telescoped:
        loss = -reconstruction + mi_weight * log_q_own.mean() + cross_entropy_weight * cross_entropy
    else:
        assert mi is not None and entropy is not None  # not telescoped: log_q and log_q_mi were computed above
        loss = -reconstruction + mi_weight * mi - entropy_weight * entropy + cross_entropy_weight * cross_entropy
    terms = dict(reconstruction=reconstruction, cross_entropy=cross_entropy, loss=loss)
    if entropy is not None:
        terms.update(mi=mi, entropy=entropy, marginal_kl=cross_entropy - entropy)
    if diagnostics:
        rows = slice(row_offset, row_offset + z.shape[0])
        terms.update(
            posterior_entropy=posterior_entropy(logvar[rows]).mean(),
            elbo_mc=reconstruction - (log_q_own - log_p).mean(),
        )
    return Objective(loss, _detached(**terms))


# --------------------------------------------------------------------------------------------
# every split of the KL in one objective: ELBO surgery, ED-VAE, beta-VAE, beta-TCVAE


def _nonzero(weight: object) -> bool:
    """Whether a coefficient may be non-zero (a tensor always may: checking would sync)."""
    return isinstance(weight, Tensor) or weight != 0


def _split_coefficients(
    mi_weight: float | Tensor,
    entropy_weight: float | Tensor,
    tc_weight: float | Tensor,
    dimwise_kl_weight: float | Tensor,
) -> tuple[float | Tensor, float | Tensor]:
    """Coefficients of mean_i log q_hat(z_i) and of mean_i sum_d log q_hat_d(z_id) in the loss of
    :func:`decomposed_elbo` (0 when those estimates cancel)."""
    return entropy_weight - mi_weight + tc_weight, dimwise_kl_weight - tc_weight


def decomposed_elbo(
    log_px: Tensor,
    z: Tensor,
    mu: Tensor,
    logvar: Tensor,
    prior: PriorLike,
    *,
    dataset_size: int,
    kl_weight: float = 0.0,
    mi_weight: float = 1.0,
    entropy_weight: float = 1.0,
    cross_entropy_weight: float = 1.0,
    tc_weight: float = 0.0,
    dimwise_kl_weight: float = 0.0,
    estimator: str = "mss",
    kl: str = "auto",
    row_offset: int = 0,
    chunk_size: int | None = None,
    validate: bool = True,
    diagnostics: bool = True,
) -> Objective:
    r"""Every split of the KL term in one objective, a loss to minimise.

    Averaged over the data, the KL term of the ELBO splits three ways (Hoffman & Johnson 2016;
    ED-VAE; Chen et al. 2018, the last for a factorised prior p(z) = prod_d p_d(z_d)):

        mean_n KL(q(z|x_n) || p(z)) = I(x; z) + KL(q(z) || p(z))
                                    = I(x; z) + H[q(z), p(z)] - H[q(z)]
                                    = I(x; z) + TC(q(z)) + sum_d KL(q_d(z_d) || p_d(z_d)),

    and the loss weights every piece:

        L = -R + w_kl KL + w_mi I_hat - w_ent H_hat + w_ce CE_hat + w_tc TC_hat + w_dim sum_d KL_hat_d,

    R = mean_i log p(x_i|z_i), KL = mean_i KL(q(z|x_i) || p(z)) (``kl``: analytic where
    registered for ``"auto"``, see :func:`elbo`), I_hat = mean_i [log q(z_i|x_i) - log q_hat(z_i)],
    H_hat = -mean_i log q_hat(z_i), CE_hat = -mean_i log p(z_i),
    TC_hat = mean_i [log q_hat(z_i) - sum_d log q_hat_d(z_id)] and
    KL_hat_d = mean_i [log q_hat_d(z_id) - log p_d(z_id)], with log q_hat and the marginals
    log q_hat_d from ONE ``estimator`` (:func:`edvae.estimators.log_aggregate_posterior`,
    :func:`edvae.estimators.log_aggregate_marginals`, the same weights; N = ``dataset_size``).

    Presets: the ED objective (w_mi, w_ent, w_ce; the defaults give the negative Monte Carlo
    ELBO); beta-VAE (Higgins et al. 2017): w_kl = beta, the rest 0; beta-TCVAE (Chen et al.
    2018): w_mi = alpha, w_tc = beta, w_dim = gamma, the rest 0. Because the same estimates
    enter every term, the loss is computed in the collected form

        L = -R + w_kl KL + w_mi mean log q(z_i|x_i) + (w_ent - w_mi + w_tc) mean log q_hat(z_i)
            + (w_dim - w_tc) mean sum_d log q_hat_d(z_id) - (w_ce + w_dim) mean log p(z_i),

    and an estimate whose coefficient is 0 is not computed for the loss (its gradient is exactly
    0). So beta-TCVAE at alpha = beta = gamma = 1 IS the negative Monte Carlo ELBO,
    -mean_i [log p(x_i|z_i) + log p(z_i) - log q(z_i|x_i)], whatever the estimator, and
    beta-VAE at beta = 1 is :func:`elbo` with the same ``kl``. Any w_dim != 0 needs a factorised
    prior (the one-line error says so). Weights other than those make L something other than
    an ELBO: evaluate models with :func:`elbo`.

    Terms: ``reconstruction``, ``cross_entropy``, ``loss``, and with ``diagnostics`` also
    ``kl``, ``elbo`` (= R - KL), ``mi``, ``entropy``, ``marginal_kl``, ``total_correlation``
    and (factorised prior) ``dimwise_kl`` (summed over d). ``diagnostics=False`` computes only
    what the loss needs; the loss is the same either way.
    """
    _check_choice("estimator", estimator, ENTROPY_ESTIMATORS)
    _check_choice("kl", kl, KL_METHODS)
    weights = dict(
        kl_weight=kl_weight,
        mi_weight=mi_weight,
        entropy_weight=entropy_weight,
        cross_entropy_weight=cross_entropy_weight,
        tc_weight=tc_weight,
        dimwise_kl_weight=dimwise_kl_weight,
    )
    for name, weight in weights.items():
        _check_weight(name, weight)
    mu_rows, logvar_rows = own_posteriors(z, mu, logvar, row_offset=row_offset, validate=validate)
    _check_log_px(log_px, z)
    p = resolve_prior(prior, z.shape[1])
    log_p = p.log_prob(z)
    log_p_d = factorised_log_prob(p, z)
    if log_p_d is None and _nonzero(dimwise_kl_weight):
        raise EdvaeError(
            f"dimwise_kl_weight={dimwise_kl_weight!r} needs a prior that factorises over the latent dimensions, "
            f"p(z) = prod_d p_d(z_d), but the prior is a {type(p).__name__}; use a factorised prior (normal, "
            "diag_normal, laplace, student_t) or set dimwise_kl_weight=0."
        )
    on_q, on_marginals = _split_coefficients(mi_weight, entropy_weight, tc_weight, dimwise_kl_weight)
    shared: dict[str, Any] = dict(
        dataset_size=dataset_size, method=estimator, row_offset=row_offset, chunk_size=chunk_size, validate=False
    )
    log_q = log_q_d = kl_values = None
    if diagnostics or _nonzero(on_q):
        with nullcontext() if _nonzero(on_q) else torch.no_grad():
            log_q = log_aggregate_posterior(z, mu, logvar, **shared)
    if diagnostics or _nonzero(on_marginals):
        with nullcontext() if _nonzero(on_marginals) else torch.no_grad():
            log_q_d = log_aggregate_marginals(z, mu, logvar, **shared).sum(1)
    if diagnostics or _nonzero(kl_weight):
        kl_values = kl_divergence(mu_rows, logvar_rows, p, z, method=kl, validate=False).mean()
    log_q_own = log_posterior(z, mu_rows, logvar_rows, validate=False)
    reconstruction = log_px.mean()
    cross_entropy = -log_p.mean()
    loss = -reconstruction
    for coefficient, values in (
        (kl_weight, kl_values),
        (mi_weight, log_q_own),
        (on_q, log_q),
        (on_marginals, log_q_d),
        (-(cross_entropy_weight + dimwise_kl_weight), log_p),
    ):
        if _nonzero(coefficient):
            assert values is not None  # computed above whenever its coefficient is nonzero
            loss = loss + coefficient * values.mean()
    terms = dict(reconstruction=reconstruction, cross_entropy=cross_entropy, loss=loss)
    if diagnostics:
        assert log_q is not None and log_q_d is not None and kl_values is not None  # diagnostics computes them all
        entropy = -log_q.mean()
        terms.update(
            kl=kl_values,
            elbo=reconstruction - kl_values,
            mi=(log_q_own - log_q).mean(),
            entropy=entropy,
            marginal_kl=cross_entropy - entropy,
            total_correlation=(log_q - log_q_d).mean(),
        )
        if log_p_d is not None:
            terms["dimwise_kl"] = (log_q_d - log_p_d.sum(1)).mean()
    return Objective(loss, _detached(**terms))
