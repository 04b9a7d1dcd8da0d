r"""Gathering the batch across processes for the aggregate-posterior estimators.

Under data parallelism each of W processes holds a shard of R = B / W examples of the global
batch of B. The estimators of log q(z_i) need every posterior q(z|x_j) of the global batch, so
each process gathers the **columns** (mu, logvar) of all processes with an autograd-aware
all-gather, while its **rows** (its own z_i) stay local; ``row_offset = rank * R`` says where
they sit in the global batch (see :func:`edvae.estimators.log_aggregate_posterior`).

Gradients. Let L_r be process r's loss (a mean over its R rows) and L = (1/W) sum_r L_r the
single-process loss on the global batch. Shard s's columns enter every L_r, so

    dL/d(mu_s, logvar_s) = (1/W) sum_r dL_r/d(mu_s, logvar_s).

The backward of :func:`gather_columns` all-reduces (sums) the gradient with respect to the
gathered (B, 2D) matrix and hands each process the block of its own shard, i.e.
sum_r dL_r/d(shard s); the process adds the gradient of its own rows, backpropagates into the
parameters, and DDP's average over processes supplies the 1/W. The result equals the
single-process gradient on the global batch.

Communication per step: forward, one all-gather of 2 * B * D floats (mu and logvar; gathering
z too would make it 3 * B * D); backward, one all-reduce of the same 2 * B * D floats.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = ["is_distributed", "rank", "world_size", "is_main_process", "gather_columns", "gather_rows"]


def is_distributed() -> bool:
    """True when a process group with more than one process is running."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    """This process's global rank r in 0..W-1 (0 without a process group)."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def world_size() -> int:
    """The number of processes W (1 without a process group)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def is_main_process() -> bool:
    """True on global rank 0 (and in a single process): the one that prints, logs and saves."""
    return rank() == 0


class _GatherRows(torch.autograd.Function):
    r"""y = [x_0; x_1; ...; x_{W-1}] (concatenated along dim 0) on every process.

    Backward: every process holds dL_r/dy; the gradient of x_s is sum_r dL_r/dy[block s],
    one all-reduce (SUM) of dL/dy, then process s keeps its block. Works on every backend
    (gloo has no reduce-scatter).
    """

    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:
        x = x.contiguous()
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x)
        ctx.rows = x.shape[0]
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        start = dist.get_rank() * ctx.rows
        return grad[start : start + ctx.rows]


def gather_rows(x: Tensor) -> Tensor:
    r"""All-gather ``x`` of shape (R, ...) from the W processes into (W * R, ...), in rank order.

    Differentiable: the gradient reaching process s is the sum over all processes of their
    gradients with respect to block s (rows s*R .. (s+1)*R - 1). Every process must pass the
    same shape. In a single process ``x`` itself is returned.
    """
    if not is_distributed():
        return x
    return _GatherRows.apply(x)


def gather_columns(mu: Tensor, logvar: Tensor) -> tuple[Tensor, Tensor, int]:
    r"""All-gather (mu, logvar) of shape (R, D) into the columns (W * R, D) of the global batch.

    Returns ``(mu_all, logvar_all, row_offset)`` with ``row_offset = rank * R``, so that this
    process's z[i] was drawn from column i + row_offset. mu and logvar travel as one (R, 2D)
    tensor: one collective of 2 * W * R * D floats. Gradients flow back to each process's own
    shard (see the module docstring). In a single process: ``(mu, logvar, 0)``.
    """
    if not is_distributed():
        return mu, logvar, 0
    d = mu.shape[1]
    gathered = gather_rows(torch.cat([mu, logvar], dim=1))
    return gathered[:, :d], gathered[:, d:], rank() * mu.shape[0]
