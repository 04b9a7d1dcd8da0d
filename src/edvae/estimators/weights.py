r"""The weights W[i, j] of the methods (MSS, MWS, batch, full; :mod:`edvae.estimators`): a
constant per method except on at most two diagonals (:class:`WeightPlan`), applied to a block of
log q(z_i|x_j) by one indexed add."""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator
from typing import NamedTuple

import torch
from torch import Tensor

from edvae.errors import EdvaeError
from edvae.estimators.checks import ACC_DTYPE, check_dataset_size, check_dataset_size_type, check_rows

METHODS: tuple[str, ...] = ("mss", "mws", "batch", "full")


class WeightPlan(NamedTuple):
    r"""log W[i, j] = ``log_base``, except log W[i, (g + shift) mod B] = ``value`` for each
    (shift, value) in ``overrides``, with g = i + ``row_offset`` the global row index."""

    log_base: float
    overrides: tuple[tuple[int, float], ...] = ()
    row_offset: int = 0


def _check_mss(batch_size: int, dataset_size: int | None) -> int:
    if batch_size < 2:
        raise EdvaeError(
            f"batch size {batch_size} (rows of mu) is too small for method='mss', which needs "
            "the sample itself plus at least one other; use a batch size of at least 2."
        )
    return check_dataset_size(dataset_size, batch_size, "mss")


def weight_plan(method: str, rows: int, batch_size: int, dataset_size: int | None, row_offset: int) -> WeightPlan:
    """The weights of ``method`` for ``rows`` rows against ``batch_size`` columns."""
    if method not in METHODS:
        raise EdvaeError(f"method={method!r} is unknown; use one of {', '.join(METHODS)}.")
    if method == "full":
        if dataset_size is not None:
            check_dataset_size_type(dataset_size)
            if dataset_size != batch_size:
                raise EdvaeError(
                    f"dataset_size={dataset_size!r} but method='full' treats the {batch_size} "
                    "columns of mu as the whole data set; pass all N posteriors or omit "
                    "dataset_size."
                )
        return WeightPlan(-math.log(batch_size))
    check_rows(rows, batch_size, row_offset)
    if method == "batch":
        return WeightPlan(-math.log(batch_size))
    if method == "mws":
        n = check_dataset_size(dataset_size, batch_size, method)
        return WeightPlan(-math.log(n) - math.log(batch_size))
    n, m = _check_mss(batch_size, dataset_size), batch_size - 1
    self_weight = -math.log(n)  # W[i, i] = 1/N
    stratum_weight = math.log(n - m) - math.log(n) - math.log(m)  # W[i, k(i)] = (N-M)/(NM)
    return WeightPlan(-math.log(m), ((0, self_weight), (1, stratum_weight)), row_offset)


def _diagonal_runs(
    shift: int,
    row_offset: int,
    row_start: int,
    column_start: int,
    n_rows: int,
    n_columns: int,
    batch_size: int,
) -> Iterator[tuple[slice, slice]]:
    """(local rows, local columns) of the entries (g, (g + shift) mod B) in a block.

    Local row i of the block at (row_start, column_start) is global row g = i + row_start +
    row_offset; its entry sits in global column (g + shift) mod B, i.e. local column i + k with
    k = s - column_start, s = (row_start + row_offset + shift) mod B, while i + s < B, and
    i + k - B after the wrap (i + s < 2B because rows <= B). So the entries lie on at most two
    diagonals of the block: entry m of a run is (rows.start + m, columns.start + m).
    """
    k = (row_start + row_offset + shift) % batch_size - column_start
    for offset in (k, k - batch_size):
        first_row, first_column = max(0, -offset), max(0, offset)
        length = min(n_rows - first_row, n_columns - first_column)
        if length > 0:
            yield slice(first_row, first_row + length), slice(first_column, first_column + length)


@functools.lru_cache(maxsize=256)
def diagonal_index(
    shift: int,
    row_offset: int,
    row_start: int,
    column_start: int,
    n_rows: int,
    n_columns: int,
    batch_size: int,
    device: torch.device,
) -> tuple[Tensor, Tensor]:
    """The entries of :func:`_diagonal_runs` as index tensors on ``device`` (cached; never
    modify them): (local rows i, in increasing order, and flat positions i * n_columns + j in
    the block). Each row holds at most one entry, so ``rows`` covers the block's rows exactly
    when it has ``n_rows`` entries."""
    runs = list(_diagonal_runs(shift, row_offset, row_start, column_start, n_rows, n_columns, batch_size))
    rows = torch.cat([torch.arange(r.start, r.stop) for r, _ in runs] or [torch.zeros(0, dtype=torch.long)])
    columns = torch.cat([torch.arange(c.start, c.stop) for _, c in runs] or [torch.zeros(0, dtype=torch.long)])
    order = torch.argsort(rows)
    rows, columns = rows[order], columns[order]
    return rows.to(device), (rows * n_columns + columns).to(device)


@functools.lru_cache(maxsize=64)
def _override_index(
    plan: WeightPlan,
    row_start: int,
    column_start: int,
    n_rows: int,
    n_columns: int,
    batch_size: int,
    device: torch.device,
    dtype: torch.dtype,
) -> tuple[Tensor, Tensor]:
    """(flat positions, value - log_base) of every override of ``plan`` in a block (cached)."""
    where, deltas = [torch.zeros(0, dtype=torch.long, device=device)], [torch.zeros(0, dtype=dtype, device=device)]
    for shift, value in plan.overrides:
        flat = diagonal_index(shift, plan.row_offset, row_start, column_start, n_rows, n_columns, batch_size, device)[1]
        where.append(flat)
        deltas.append(torch.full(flat.shape, value - plan.log_base, dtype=dtype, device=device))
    return torch.cat(where), torch.cat(deltas)


def apply_weight_overrides(block: Tensor, plan: WeightPlan, row_start: int, column_start: int, batch_size: int) -> None:
    """Turn log_base into the override values in a contiguous block holding
    ``... + log_base``: one indexed add."""
    if plan.overrides:
        where, deltas = _override_index(
            plan, row_start, column_start, *block.shape, batch_size, block.device, block.dtype
        )
        block.view(-1).index_add_(0, where, deltas)


def mss_log_weights(
    batch_size: int,
    dataset_size: int,
    *,
    row_offset: int = 0,
    rows: int | None = None,
    device: torch.device | None = None,
) -> Tensor:
    r"""Log-weights log W of minibatch stratified sampling, shape (rows, batch_size), float64.

    With M = B - 1 and global row index g = i + row_offset: W[i, g] = 1/N,
    W[i, (g + 1) mod B] = (N - M)/(N M), and 1/M in the other B - 2 columns; each row sums
    to 1. ``rows`` defaults to ``batch_size - row_offset``. Built by the same code that
    ``log_aggregate_posterior(method="mss")`` applies to each block of L.
    """
    rows = batch_size - row_offset if rows is None else rows
    plan = weight_plan("mss", rows, batch_size, dataset_size, row_offset)
    weights = torch.full((rows, batch_size), plan.log_base, dtype=ACC_DTYPE, device=device)
    apply_weight_overrides(weights, plan, 0, 0, batch_size)
    return weights
