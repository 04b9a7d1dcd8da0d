"""The seeded draws the data share: per-purpose seeds and binarisation.

Binarisation turns grey levels x in [0, 1] into binary examples x_b ~ Bernoulli(x), elementwise.
Two ways of drawing it are in use, and each call site keeps its own so that no number changes:

* :func:`binarize_batch`: ``torch.bernoulli(x, generator)``: the fixed splits of
  :func:`edvae.data.splits.finish` (``static``, and ``val``/``test`` under ``dynamic``) and the
  once-binarised inputs of :mod:`edvae.evaluate`;
* :func:`binarize_global_batch`: x_b = 1[u < x] with uniforms u drawn for the whole global batch
  and sliced to this process's rows: the training loop's dynamic binarisation, whose draws do not
  depend on the number of processes.

Both have the law Bernoulli(x); from the same generator state they give different bits.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

__all__ = ["binarize_batch", "binarize_global_batch", "binarize_with_uniforms", "derive_seed"]


def derive_seed(seed: int, *keys: int | str) -> int:
    """A well-mixed 32-bit seed for one purpose (``keys``) derived from the data seed."""
    words = [int(seed) & 0xFFFFFFFF, int(seed) >> 32 & 0xFFFFFFFF]
    for key in keys:
        words.extend(key.encode() if isinstance(key, str) else [int(key)])
    return int(np.random.SeedSequence(words).generate_state(1, np.uint32)[0])


def binarize_batch(x: Tensor, generator: torch.Generator | int | None = None) -> Tensor:
    """x_b ~ Bernoulli(x) elementwise, one ``torch.bernoulli`` draw from ``generator``.

    ``generator`` may be a seed (a fresh generator seeded with it) or ``None`` (torch's global
    generator). Binary inputs come back unchanged, so binarising twice is harmless.
    """
    if isinstance(generator, int):
        generator = torch.Generator().manual_seed(generator)
    return torch.bernoulli(x, generator=generator)


def binarize_global_batch(x: Tensor, generator: torch.Generator, batch_size: int, rows: slice) -> Tensor:
    """x_b = 1[u < x] with u ~ U(0, 1) of shape ``(batch_size, *x.shape[1:])``, rows ``rows`` kept.

    ``x`` holds the rows ``rows`` of a global batch of ``batch_size`` examples; every process
    draws the uniforms of the whole batch from the same ``generator`` state, so the binary batch
    is the same whatever the number of processes. P(u < x) = x, so x_b ~ Bernoulli(x).
    """
    u = torch.rand((batch_size, *x.shape[1:]), generator=generator)[rows]
    return binarize_with_uniforms(x, u)


def binarize_with_uniforms(x: Tensor, u: Tensor) -> Tensor:
    """x_b = 1[u < x] for uniforms u ~ U(0, 1) drawn by the caller: P(u < x) = x, so
    x_b ~ Bernoulli(x) (the trainer draws u for a whole global batch and cuts it into shards
    and micro-batches)."""
    return (u.to(x.device) < x).to(x.dtype)
