"""Which examples each step and each process sees: the seeded epoch order and its shards."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["epoch_order", "micro_batch_rows", "rank_indices", "shard_rows"]


def epoch_order(n: int, seed: int, epoch: int) -> Tensor:
    """The seeded permutation of the n training examples that epoch ``epoch`` visits (int64, (n,)).

    Global batch k of the epoch is ``order[k*B:(k+1)*B]``; the last n mod B examples are dropped.
    """
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))


def shard_rows(batch_size: int, world: int, rank: int) -> slice:
    """Rows ``[rank*R, (rank+1)*R)``, R = batch_size / world, of a global batch: process ``rank``'s shard."""
    per_rank = batch_size // world
    return slice(rank * per_rank, (rank + 1) * per_rank)


def micro_batch_rows(batch_size: int, micro_batches: int, world: int, rank: int) -> list[slice]:
    """Process ``rank``'s rows of each of the ``micro_batches`` consecutive micro-batches of a
    global batch (M = batch_size / micro_batches rows each): rows ``j*M + shard_rows(M)`` of
    micro-batch j. With one micro-batch, ``[shard_rows(batch_size, world, rank)]``."""
    size = batch_size // micro_batches
    shard = shard_rows(size, world, rank)
    return [slice(j * size + shard.start, j * size + shard.stop) for j in range(micro_batches)]


def rank_indices(n: int, batch_size: int, seed: int, epoch: int, rank: int, world: int) -> Tensor:
    """The training examples process ``rank`` of ``world`` sees in an epoch, shape (n // B, R).

    Row k is its shard of global batch k. Over the ranks the shards are disjoint and cover the
    first (n // B) * B examples of :func:`epoch_order`: no example is seen twice in an epoch.
    """
    order = epoch_order(n, seed, epoch)
    batches = n // batch_size
    return order[: batches * batch_size].view(batches, batch_size)[:, shard_rows(batch_size, world, rank)]
