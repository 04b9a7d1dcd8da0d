"""The data's seeded draws (:mod:`edvae.data.sampling`): per-purpose seeds and the two
binarisations, each pinned to the exact torch draws its call sites made before it existed."""

from __future__ import annotations

import pytest
import torch

from edvae.data import binarize_batch, binarize_global_batch
from edvae.data.sampling import derive_seed


def test_binarize_batch_is_one_bernoulli_draw_from_a_seed_or_a_generator():
    x = torch.rand(300, 7, generator=torch.Generator().manual_seed(3))
    by_seed = binarize_batch(x, 11)
    assert torch.equal(by_seed, torch.bernoulli(x, generator=torch.Generator().manual_seed(11)))
    assert torch.equal(by_seed, binarize_batch(x, generator=torch.Generator().manual_seed(11)))
    assert not torch.equal(by_seed, binarize_batch(x, 12))
    with torch.random.fork_rng():
        torch.manual_seed(4)
        global_draw = binarize_batch(x)
        torch.manual_seed(4)
        assert torch.equal(global_draw, torch.bernoulli(x))


@pytest.mark.parametrize("world", [1, 2, 4])
def test_global_batch_binarisation_does_not_depend_on_the_number_of_processes(world):
    """Each process keeps its rows of the uniforms drawn for the whole batch: the shards put
    together are the single-process batch, 1[u < x] with u = torch.rand(batch) from the generator."""
    batch = 8
    x = torch.rand(batch, 3, 2, generator=torch.Generator().manual_seed(0))
    u = torch.rand((batch, 3, 2), generator=torch.Generator().manual_seed(5))
    expected = (u < x).float()
    rows_per = batch // world
    shards = []
    for rank in range(world):
        rows = slice(rank * rows_per, (rank + 1) * rows_per)
        shards.append(binarize_global_batch(x[rows], torch.Generator().manual_seed(5), batch, rows))
    assert torch.equal(torch.cat(shards), expected)
    assert shards[0].dtype == x.dtype


def test_both_binarisations_have_the_law_bernoulli_of_the_grey_level():
    x = torch.full((20_000, 2), 0.3)
    x[:, 1] = 0.8
    for sample in (
        binarize_batch(x, 0),
        binarize_global_batch(x, torch.Generator().manual_seed(0), x.shape[0], slice(None)),
    ):
        assert set(sample.unique().tolist()) <= {0.0, 1.0}
        assert sample.mean(0).tolist() == pytest.approx([0.3, 0.8], abs=0.015)  # 5 standard errors
        assert torch.equal(binarize_batch(sample, 1), sample)  # binary data stay as they are


def test_derive_seed_separates_purposes_and_seeds():
    seeds = {
        derive_seed(0, "split"),
        derive_seed(0, "binarize", "val"),
        derive_seed(0, "binarize", "test"),
        derive_seed(1, "split"),
        derive_seed(2**40, "split"),
    }
    assert len(seeds) == 5 and all(0 <= s < 2**32 for s in seeds)
    assert derive_seed(7, "noise") == derive_seed(7, "noise")
