r"""InfoNCE: the contrastive lower bound on I(x; z), with the encoder as its default critic or any
score function ``critic(z, mu)`` (the learned critics live in :mod:`edvae.critics`)."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from edvae.errors import EdvaeError
from edvae.estimators.checks import ACC_DTYPE, check_inputs, own_rows, result_dtype
from edvae.estimators.kernel import log_q_hat
from edvae.estimators.posterior import log_normal_diag
from edvae.estimators.weights import weight_plan


def infonce(
    z: Tensor,
    mu: Tensor,
    logvar: Tensor,
    *,
    critic: Callable[[Tensor, Tensor], Tensor] | None = None,
    row_offset: int = 0,
    chunk_size: int | None = None,
    validate: bool = True,
) -> Tensor:
    r"""InfoNCE lower bound on I(x; z), a 0-d tensor that never exceeds log B.

        I_NCE = mean_i [ f(x_{i+o}, z_i) - logsumexp_j f(x_j, z_i) + log B ],  o = row_offset.

    By default the critic is the encoder itself, f(x_j, z_i) = log q(z_i | x_j); the bound then
    equals the mutual information of ``decompose(..., method="batch")``. A learned ``critic``
    (e.g. :class:`edvae.critics.BilinearCritic`, :class:`edvae.critics.MLPCritic`) is called as
    ``critic(z, mu)`` and must return (R, B) scores; it sees the column means only.
    """
    check_inputs(z, mu, logvar, validate)
    if critic is not None and not callable(critic):
        raise EdvaeError(
            f"critic of type {type(critic).__name__} is not callable; pass a function or module "
            "critic(z, mu) returning (R, B) scores, or None for the encoder itself."
        )
    n_rows, batch_size = z.shape[0], mu.shape[0]
    mu_rows, logvar_rows = own_rows(mu, logvar, n_rows, row_offset)
    dtype = result_dtype(z, mu, logvar)
    if critic is None:
        plan = weight_plan("batch", n_rows, batch_size, None, row_offset)
        log_q = log_q_hat(z, mu, logvar, plan, chunk_size)
        log_post = log_normal_diag(z.to(ACC_DTYPE), mu_rows.to(ACC_DTYPE), logvar_rows.to(ACC_DTYPE))
        return (log_post - log_q).mean().to(dtype)
    scores = critic(z, mu)
    if not isinstance(scores, Tensor) or scores.shape != (n_rows, batch_size):
        shape = tuple(scores.shape) if isinstance(scores, Tensor) else type(scores).__name__
        raise EdvaeError(
            f"critic returned {shape} but must return scores of shape (R, B) = "
            f"({n_rows}, {batch_size}) for rows z and columns mu."
        )
    scores = scores.to(ACC_DTYPE)
    index = torch.arange(n_rows, device=scores.device)
    positive = scores[index, index + row_offset]
    bound = (positive - torch.logsumexp(scores, dim=1)).mean() + math.log(batch_size)
    return bound.to(dtype)
