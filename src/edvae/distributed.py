"""Gathering the batch across processes for the aggregate-posterior estimators.

Under data parallelism each process holds a shard of R = B / W examples of the global batch
of B. The estimators of log q(z_i) need every posterior q(z|x_j) of the global batch, so each
process gathers the columns (mu, logvar) of all processes with an autograd-aware all-gather:
the backward pass sums every process's gradient with respect to each shard and returns it to
the shard's owner. Rows (this process's z_i) stay local, and ``row_offset = rank * R`` says
where they sit in the global batch. With gradients averaged by DDP the result equals the
single-process gradient on the global batch.

Communication per step: 2 * B * D floats gathered (mu and logvar; z stays local).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = ["is_distributed", "gather_columns"]


def is_distributed() -> bool:
    """True when a process group with more than one process is running."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def gather_columns(mu: Tensor, logvar: Tensor) -> tuple[Tensor, Tensor, int]:
    """All-gather (mu, logvar) of shape (R, D) into (W * R, D), gradients flowing back.

    Returns ``(mu_all, logvar_all, row_offset)``; in a single process the inputs and 0.
    """
    if not is_distributed():
        return mu, logvar, 0
    from torch.distributed.nn.functional import all_gather

    both = torch.cat([mu, logvar], dim=1)
    gathered = torch.cat(all_gather(both), dim=0)
    d = mu.shape[1]
    return gathered[:, :d], gathered[:, d:], dist.get_rank() * mu.shape[0]
