r"""Estimators of the aggregate posterior and of the terms of the ED-VAE decomposition.

The encoder is a diagonal Gaussian, q(z|x_j) = N(mu_j, diag exp(logvar_j)), and the aggregate
posterior over a data set of N examples is q(z) = (1/N) sum_n q(z|x_n). Every estimator here
reduces the matrix of pairwise log-densities

    L[i, j] = log q(z_i | x_j) = -1/2 sum_d [ (z_id - mu_jd)^2 exp(-logvar_jd) + logvar_jd + log 2 pi ]

(summed over the latent dimensions *before* any logsumexp) with a logsumexp over the columns j:

    log q_hat(z_i) = logsumexp_j ( log W[i, j] + L[i, j] ).

Methods (``METHODS``), for a minibatch of B posteriors out of N (``dataset_size``):

* ``"mss"``, minibatch stratified sampling (Chen et al., 2018), M = B - 1: in every row i,
  W[i, i] = 1/N, W[i, k(i)] = (N - M)/(N M) for k(i) = (i + 1) mod B, and W[i, j] = 1/M for
  the remaining B - 2 columns (i and k(i) are global indices, see ``row_offset``). Each row
  sums to 1, so log q(z_i|x_i) - log q_hat(z_i) <= log N.
* ``"mws"``, minibatch weighted sampling: W[i, j] = 1/(N B) (rows sum to 1/N; kept for
  comparison with published numbers).
* ``"batch"``, the batch as the data set: W[i, j] = 1/B. The resulting mutual information is
  InfoNCE with the encoder as critic and never exceeds log B.
* ``"full"``, evaluation: the columns are *all* N posteriors and W[i, j] = 1/N.

Distributed training: ``z`` holds the R rows of this process, ``mu`` and ``logvar`` the B
columns of the global batch, and ``z[i]`` was drawn from column ``i + row_offset``. Every
per-row value then equals the corresponding row of a single-process computation on the whole
global batch.

Memory and numerics: L is computed block by block into ONE reused workspace of at most
``2**21`` entries, block of rows by block of columns; column blocks are merged with
``logaddexp``; the (R, B) matrix and the (R, B, D) differences exist only one block at a
time. Two kernels compute a block (the precision rule: every entry that can carry weight
within 1e-3 nats of float64, tests/test_precision.py):

* float32 inputs (no float64 among z, mu, logvar) with D <= 4: direct differences in float32,
  L[i, j] = c_j - sum_d ((z_id - mu_jd) s_jd)^2 / 2 over a (D, rows, columns) scratch tensor of
  the block; no term cancels, so narrow posteriors (sigma = 1e-3) at large |mu| stay accurate.
  The estimate is float32.
* otherwise one matrix product of features, [z^2, z, 1] (R, 2D+1) times
  [-prec/2, mu prec, c] (B, 2D+1)^T with prec = exp(-logvar) and
  c_j = -1/2 sum_d (mu_jd^2 prec_jd + logvar_jd + log 2 pi), in float64 (the expanded square
  cancels; float64 keeps that error near 1e-16 * z^2 prec). The estimate is float64 inside.

All methods' weights are a constant except on at most two diagonals, so one exponential pass
over L serves several methods at once (``method=("mss", "batch")``). A custom backward (G =
softmax weights times the incoming gradient, turned into gradients of z, mu and logvar by hand)
keeps the exponentials of the forward pass when L is a single block and otherwise recomputes
each block, keeping only the (R,) result and the inputs; the extra memory is O(workspace) with
or without autograd. Gradients are first order (no double backward). Log-variances are used as
given: the encoder clamps them (``edvae.networks.LOGVAR_RANGE``).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, fields
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable
from torch.distributions import Distribution, Independent, Normal

from edvae.errors import EdvaeError
from edvae.priors.base import distribution_of

__all__ = [
    "METHODS",
    "KL_METHODS",
    "BilinearCritic",
    "Decomposition",
    "DecompositionTerms",
    "MLPCritic",
    "PriorLike",
    "dataset_decomposition",
    "dataset_decomposition_terms",
    "decompose",
    "infonce",
    "factorised_log_prob",
    "kl_divergence",
    "log_aggregate_marginals",
    "log_aggregate_posterior",
    "log_posterior",
    "mss_log_weights",
    "own_posteriors",
    "posterior_entropy",
    "resolve_prior",
]

METHODS: tuple[str, ...] = ("mss", "mws", "batch", "full")
KL_METHODS: tuple[str, ...] = ("auto", "analytic", "mc")

PriorLike = Distribution | nn.Module | Callable[[], Distribution]
"""A ``Distribution`` with ``event_shape == (D,)``, or a module/callable returning one."""

_LOG_2PI = math.log(2.0 * math.pi)
_BLOCK_ENTRIES = 1 << 21  # entries of one (rows, columns) block: 16 MiB in float64
_MAX_BLOCK_COLUMNS = 1 << 14
_ACC = torch.float64  # accumulation dtype of every log-density matrix
#: Floor of every exponent in the weighted logsumexp (arguments are <= 0 after the row maximum
#: is subtracted). Below about -708, exp in float64 returns denormals or 0 through a slow path
#: (6x slower on x86, the bulk of an ED step when posteriors are narrow); exp(-700) < 1e-304,
#: so the floor changes no sum by more than B * 1e-304 relative to its largest term.
_EXP_FLOOR = -700.0
#: The same floor in float32, whose exp turns denormal below about -87: exp(-80) < 2e-35.
_EXP_FLOOR_32 = -80.0
#: Largest latent dimension D whose float32 inputs take the direct-difference kernel
#: (:class:`_Direct`, a (rows, columns, D) scratch tensor); larger D take the float64 product.
_DIRECT_MAX_DIM = 4


# --------------------------------------------------------------------------------------------
# validation


def _check_matrix(name: str, tensor: object) -> None:
    if not isinstance(tensor, Tensor) or tensor.dim() != 2 or 0 in tensor.shape:
        shape = tuple(tensor.shape) if isinstance(tensor, Tensor) else type(tensor).__name__
        raise EdvaeError(
            f"{name} must be a non-empty 2-D tensor of shape (batch, latent_dim), got {shape}; "
            "flatten the latent code to (batch, latent_dim)."
        )
    _check_float(name, tensor)


def _check_float(name: str, tensor: Tensor) -> None:
    """Integer, boolean and complex tensors have no log-density here (a dtype check, no sync)."""
    if not tensor.is_floating_point():
        raise EdvaeError(
            f"{name} has dtype {tensor.dtype} but must be a floating-point tensor; convert it "
            f"with {name}.float() (or .double())."
        )


def _check_finite(validate: bool, **tensors: Tensor) -> None:
    """Raise if any tensor holds NaN or Inf: one host synchronisation for all of them."""
    if not validate:
        return
    flags = torch.stack([torch.isfinite(t).all() for t in tensors.values()])
    if bool(flags.all()):
        return
    bad = [name for name, ok in zip(tensors, flags.tolist(), strict=True) if not ok]
    raise EdvaeError(
        f"{' and '.join(bad)} {'contains' if len(bad) == 1 else 'contain'} NaN or Inf "
        "values; check the encoder for diverging "
        "outputs (lower the learning rate or clamp the log-variance)."
    )


def _check_posterior(mu: Tensor, logvar: Tensor) -> None:
    _check_matrix("mu", mu)
    _check_matrix("logvar", logvar)
    if mu.shape != logvar.shape:
        raise EdvaeError(
            f"logvar has shape {tuple(logvar.shape)} but mu has shape {tuple(mu.shape)}; "
            "pass the mean and log-variance of the same encoder output."
        )


def _check_inputs(z: Tensor, mu: Tensor, logvar: Tensor, validate: bool) -> None:
    _check_matrix("z", z)
    _check_posterior(mu, logvar)
    if z.shape[1] != mu.shape[1]:
        raise EdvaeError(
            f"z has latent dimension {z.shape[1]} but mu has {mu.shape[1]}; "
            "pass samples and posterior parameters of the same latent space."
        )
    _check_finite(validate, z=z, mu=mu, logvar=logvar)


def _check_rows(rows: int, columns: int, row_offset: int) -> None:
    if not (isinstance(row_offset, int) and 0 <= row_offset <= columns - rows):
        raise EdvaeError(
            f"row_offset={row_offset!r} does not fit {rows} rows of z into the {columns} columns "
            f"of mu; z[i] must be drawn from column i + row_offset, so use "
            f"0 <= row_offset <= {columns - rows}."
        )


def _check_dataset_size_type(dataset_size: object) -> None:
    if not isinstance(dataset_size, int) or isinstance(dataset_size, bool) or dataset_size < 1:
        raise EdvaeError(
            f"dataset_size={dataset_size!r} must be a positive integer, the number N of "
            "training examples; pass dataset_size=len(train_set)."
        )


def _check_dataset_size(dataset_size: int | None, batch_size: int, method: str) -> int:
    if dataset_size is None:
        raise EdvaeError(
            f"method={method!r} needs dataset_size, the number N of training examples; pass "
            "dataset_size=len(train_set) (it is never guessed from the batch size)."
        )
    _check_dataset_size_type(dataset_size)
    if dataset_size < batch_size:
        raise EdvaeError(
            f"dataset_size={dataset_size!r} is smaller than the batch size {batch_size}; pass "
            "the number of training examples N >= batch size."
        )
    return dataset_size


def _own_rows(mu: Tensor, logvar: Tensor, rows: int, row_offset: int) -> tuple[Tensor, Tensor]:
    """Posterior parameters of the rows: columns row_offset .. row_offset + rows - 1."""
    _check_rows(rows, mu.shape[0], row_offset)
    return mu[row_offset : row_offset + rows], logvar[row_offset : row_offset + rows]


def _result_dtype(*tensors: Tensor) -> torch.dtype:
    dtype = tensors[0].dtype
    for tensor in tensors[1:]:
        dtype = torch.promote_types(dtype, tensor.dtype)
    return dtype


# --------------------------------------------------------------------------------------------
# priors


def resolve_prior(prior: PriorLike, dim: int | None = None) -> Distribution:
    """The prior distribution p(z) behind ``prior``: :func:`edvae.priors.distribution_of`.

    ``prior`` is a ``torch.distributions.Distribution`` or, following zuko's lazy-distribution
    convention, an ``nn.Module`` (or any callable) whose call returns one with
    ``batch_shape == ()``; with ``dim`` given, the event shape must be ``(dim,)``.
    """
    return distribution_of(prior, dim)


def _factorised_log_prob(prior: Distribution, z: Tensor) -> Tensor | None:
    """(R, D) per-dimension log p_d(z_d) when the prior is a product over dimensions."""
    if not isinstance(prior, Independent) or prior.reinterpreted_batch_ndims != 1:
        return None
    return prior.base_dist.log_prob(z)


# --------------------------------------------------------------------------------------------
# posterior densities


def own_posteriors(
    z: Tensor, mu: Tensor, logvar: Tensor, *, row_offset: int = 0, validate: bool = True
) -> tuple[Tensor, Tensor]:
    r"""The posterior parameters the rows of ``z`` were drawn from: rows o .. o + R - 1 of
    ``mu`` and ``logvar`` (o = ``row_offset``), each (R, D), once the shapes are checked (and,
    with ``validate``, that z, mu and logvar are finite: one host synchronisation)."""
    _check_inputs(z, mu, logvar, validate)
    return _own_rows(mu, logvar, z.shape[0], row_offset)


def log_posterior(z: Tensor, mu: Tensor, logvar: Tensor, *, row_offset: int = 0, validate: bool = True) -> Tensor:
    r"""Log-density of each row under its own posterior, shape (R,).

    log q(z_i | x_{i+o}) = -1/2 sum_d [ (z_id - mu_{i+o,d})^2 / sigma^2_{i+o,d}
                                         + log sigma^2_{i+o,d} + log 2 pi ],  o = row_offset.
    """
    mu_r, logvar_r = own_posteriors(z, mu, logvar, row_offset=row_offset, validate=validate)
    return _log_normal_diag(z, mu_r, logvar_r)


def _log_normal_diag(z: Tensor, mu: Tensor, logvar: Tensor) -> Tensor:
    return -0.5 * ((z - mu).square() * torch.exp(-logvar) + logvar + _LOG_2PI).sum(-1)


def posterior_entropy(logvar: Tensor) -> Tensor:
    r"""Analytic entropy of each diagonal Gaussian posterior, shape (B,).

    H[q(z|x_j)] = sum_d 1/2 log(2 pi e sigma^2_jd).
    """
    return 0.5 * (logvar + (_LOG_2PI + 1.0)).sum(-1)


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
    _check_posterior(mu, logvar)
    if z is not None and (not isinstance(z, Tensor) or z.shape[-2:] != mu.shape or z.dim() > 3):
        shape = tuple(z.shape) if isinstance(z, Tensor) else type(z).__name__
        raise EdvaeError(
            f"z has shape {shape} but mu has shape {tuple(mu.shape)}; pass one sample per "
            "posterior, (B, D), or S of them, (S, B, D)."
        )
    if z is None:
        _check_finite(validate, mu=mu, logvar=logvar)
    else:
        _check_float("z", z)
        _check_finite(validate, z=z, mu=mu, logvar=logvar)
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
    kl = _log_normal_diag(z, mu, logvar) - p.log_prob(z)
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


# --------------------------------------------------------------------------------------------
# weights of the methods


class _Plan(NamedTuple):
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
    return _check_dataset_size(dataset_size, batch_size, "mss")


def _plan(method: str, rows: int, batch_size: int, dataset_size: int | None, row_offset: int) -> _Plan:
    """The weights of ``method`` for ``rows`` rows against ``batch_size`` columns."""
    if method not in METHODS:
        raise EdvaeError(f"method={method!r} is unknown; use one of {', '.join(METHODS)}.")
    if method == "full":
        if dataset_size is not None:
            _check_dataset_size_type(dataset_size)
            if dataset_size != batch_size:
                raise EdvaeError(
                    f"dataset_size={dataset_size!r} but method='full' treats the {batch_size} "
                    "columns of mu as the whole data set; pass all N posteriors or omit "
                    "dataset_size."
                )
        return _Plan(-math.log(batch_size))
    _check_rows(rows, batch_size, row_offset)
    if method == "batch":
        return _Plan(-math.log(batch_size))
    if method == "mws":
        n = _check_dataset_size(dataset_size, batch_size, method)
        return _Plan(-math.log(n) - math.log(batch_size))
    n, m = _check_mss(batch_size, dataset_size), batch_size - 1
    self_weight = -math.log(n)  # W[i, i] = 1/N
    stratum_weight = math.log(n - m) - math.log(n) - math.log(m)  # W[i, k(i)] = (N-M)/(NM)
    return _Plan(-math.log(m), ((0, self_weight), (1, stratum_weight)), row_offset)


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
def _diagonal_index(
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
    plan: _Plan,
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
        flat = _diagonal_index(shift, plan.row_offset, row_start, column_start, n_rows, n_columns, batch_size, device)[
            1
        ]
        where.append(flat)
        deltas.append(torch.full(flat.shape, value - plan.log_base, dtype=dtype, device=device))
    return torch.cat(where), torch.cat(deltas)


def _apply_overrides(block: Tensor, plan: _Plan, row_start: int, column_start: int, batch_size: int) -> None:
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
    plan = _plan("mss", rows, batch_size, dataset_size, row_offset)
    weights = torch.full((rows, batch_size), plan.log_base, dtype=_ACC, device=device)
    _apply_overrides(weights, plan, 0, 0, batch_size)
    return weights


# --------------------------------------------------------------------------------------------
# the one core routine: L[i, j] = log q(z_i | x_j) in blocks, reduced by a weighted logsumexp


class _Expanded:
    r"""L = a b^T in float64, a = [z^2, z, 1] (R, 2D+1), b = [-prec/2, mu prec, c] (B, 2D+1),
    prec = exp(-logvar), c_j = -1/2 sum_d (mu_jd^2 prec_jd + logvar_jd + log 2 pi): one matrix
    product per block. The expanded square cancels; float64 keeps that error near
    1e-16 z^2 prec. Gradients go through the features: grad_a = G b, grad_b = G^T a (two wide
    products), then the chain rule by hand (see :class:`_WeightedLogSumExp`)."""

    dtype = _ACC
    floor = _EXP_FLOOR

    def __init__(self, z: Tensor, mu: Tensor, logvar: Tensor) -> None:
        self.z_dtype, self.mu, self.logvar = z.dtype, mu, logvar
        z64, mu64, logvar64 = z.to(_ACC), mu.to(_ACC), logvar.to(_ACC)
        prec = torch.exp(-logvar64)
        const = -0.5 * ((mu64.square() * prec + logvar64).sum(1, keepdim=True) + mu.shape[1] * _LOG_2PI)
        self.rows = torch.cat([z64.square(), z64, torch.ones_like(z64[:, :1])], dim=1)
        self.columns = torch.cat([-0.5 * prec, mu64 * prec, const], dim=1)
        self.n_rows, self.n_columns = z.shape[0], mu.shape[0]
        self.reset()

    def reset(self) -> None:
        """Forget the gradients accumulated by a previous backward pass."""
        self.grad_rows: Tensor | None = None
        self.grad_columns: Tensor | None = None

    def workspace(self, rows: int, columns: int) -> Tensor:
        return self.rows.new_empty(rows * columns)

    def fill(self, block: Tensor, rs: slice, cs: slice, spare: Tensor) -> None:
        torch.mm(self.rows[rs], self.columns[cs].T, out=block)

    def accumulate(
        self,
        rs: slice,
        cs: slice,
        weights: Tensor,
        weight: Tensor | None,
        spare: Tensor,
        want_z: bool,
        want_columns: bool,
        single: bool,
    ) -> None:
        """Add G b to the rows' and G^T a to the columns' feature gradients for the block
        G = diag(weight) weights (weight None: G = weights)."""
        a, b = self.rows[rs], self.columns[cs]
        if want_z:  # G b as a wide product
            update = (b.T @ weights.T).T
            update = update if weight is None else update * weight
            if single:
                self.grad_rows = update
            else:
                self.grad_rows = torch.zeros_like(self.rows) if self.grad_rows is None else self.grad_rows
                self.grad_rows[rs] += update
        if want_columns:  # G^T a as a wide product
            update = ((a if weight is None else a * weight).T @ weights).T
            if single:
                self.grad_columns = update
            else:
                self.grad_columns = torch.zeros_like(self.columns) if self.grad_columns is None else self.grad_columns
                self.grad_columns[cs] += update

    def gradients(self, want_mu: bool, want_logvar: bool) -> tuple[Tensor | None, ...]:
        mu, logvar, d = self.mu, self.logvar, self.mu.shape[1]
        grad_z = grad_mu = grad_logvar = None
        if self.grad_rows is not None:  # a = [z^2, z, 1]
            z, g = self.rows[:, d : 2 * d], self.grad_rows
            grad_z = (2.0 * z * g[:, :d] + g[:, d : 2 * d]).to(self.z_dtype)
        if self.grad_columns is not None:  # b = [-prec/2, mu prec, c(mu, logvar)]
            mu64, prec = mu.to(_ACC), torch.exp(-logvar.to(_ACC))
            g = self.grad_columns
            g1, g2, g3 = g[:, :d], g[:, d : 2 * d], g[:, 2 * d :]
            if want_mu:
                grad_mu = (prec * (g2 - g3 * mu64)).to(mu.dtype)
            if want_logvar:
                inner = 0.5 * g1 - g2 * mu64 + 0.5 * g3 * mu64.square()
                grad_logvar = (prec * inner - 0.5 * g3).to(logvar.dtype)
        return grad_z, grad_mu, grad_logvar


class _Direct:
    r"""L[i, j] = c_j - sum_d v_dij^2 with the direct differences
    v_dij = (z_id - mu_jd) h_jd, h = exp(-logvar/2) / sqrt(2), c_j = -1/2 sum_d (logvar_jd +
    log 2 pi), in float32, through a (D, rows, columns) scratch tensor per block
    (D <= ``_DIRECT_MAX_DIM``; dimension-major, so every operation runs over contiguous planes).

    No term cancels: each v^2 >= 0 carries a relative error of a few float32 ulps, so
    |L32 - L| <= (D + 6) 2^-24 (sum_d v^2 + |c|) per entry (tests/test_precision.py checks the
    entries, the estimates and the gradients against float64 down to sigma = 1e-3 and at large
    offsets). Gradients, with P = G o v: grad_z_id = -2 sum_j P_dij h_jd,
    grad_mu_jd = 2 h_jd sum_i P_dij, grad_logvar_jd = sum_i (P_dij v_dij - G_ij / 2)."""

    dtype = torch.float32
    floor = _EXP_FLOOR_32

    def __init__(self, z: Tensor, mu: Tensor, logvar: Tensor) -> None:
        self.dtypes = (z.dtype, mu.dtype, logvar.dtype)
        f32 = torch.float32
        logvar32 = logvar.to(f32)
        self.z = z.to(f32).T.contiguous()  # (D, R)
        self.mu = mu.to(f32).T.contiguous()  # (D, B)
        self.half_scale = torch.exp(logvar32 * -0.5).mul_(math.sqrt(0.5)).T.contiguous()  # (D, B)
        self.const = logvar32.sum(1).add_(mu.shape[1] * _LOG_2PI).mul_(-0.5)  # (B,)
        self.dim, self.n_rows = z.shape[1], z.shape[0]
        self.n_columns = mu.shape[0]
        #: v of the single block, kept by the forward pass for the backward (else recomputed)
        self.kept: Tensor | None = None
        self.reset()

    def reset(self) -> None:
        """Forget the gradients accumulated by a previous backward pass."""
        self.grad_z: Tensor | None = None
        self.grad_mu: Tensor | None = None
        self.grad_logvar: Tensor | None = None

    def workspace(self, rows: int, columns: int) -> Tensor:
        return self.z.new_empty(rows * columns)

    def spare(self, rows: int, columns: int) -> Tensor:
        return self.z.new_empty(self.dim * rows * columns)

    def _differences(self, rs: slice, cs: slice, spare: Tensor) -> Tensor:
        rows, columns = rs.stop - rs.start, cs.stop - cs.start
        v = spare[: self.dim * rows * columns].view(self.dim, rows, columns)
        torch.sub(self.z[:, rs, None], self.mu[:, None, cs], out=v)
        return v.mul_(self.half_scale[:, None, cs])

    def fill(self, block: Tensor, rs: slice, cs: slice, spare: Tensor) -> None:
        v = self._differences(rs, cs, spare)
        torch.mul(v[0], v[0], out=block)
        for d in range(1, self.dim):
            block.addcmul_(v[d], v[d])
        torch.sub(self.const[None, cs], block, out=block)

    def accumulate(
        self,
        rs: slice,
        cs: slice,
        weights: Tensor,
        weight: Tensor | None,
        spare: Tensor,
        want_z: bool,
        want_columns: bool,
        single: bool,
    ) -> None:
        g = weights if weight is None else weights * weight
        v = self.kept if self.kept is not None else self._differences(rs, cs, spare)
        p = g * v
        h = self.half_scale[:, cs]
        if want_z:  # D matrix-vector products (a batched one is slower here)
            update = torch.stack([torch.mv(p[d], h[d]) for d in range(self.dim)]).mul_(-2.0)
            if single:
                self.grad_z = update
            else:
                self.grad_z = torch.zeros_like(self.z) if self.grad_z is None else self.grad_z
                self.grad_z[:, rs] += update
        if want_columns:
            grad_mu = p.sum(1).mul_(h).mul_(2.0)
            grad_logvar = p.mul_(v).sum(1).sub_(g.sum(0), alpha=0.5)
            if single:
                self.grad_mu, self.grad_logvar = grad_mu, grad_logvar
            else:
                if self.grad_mu is None or self.grad_logvar is None:  # (both are set together)
                    self.grad_mu, self.grad_logvar = torch.zeros_like(self.mu), torch.zeros_like(self.mu)
                self.grad_mu[:, cs] += grad_mu
                self.grad_logvar[:, cs] += grad_logvar

    def gradients(self, want_mu: bool, want_logvar: bool) -> tuple[Tensor | None, ...]:
        grads = (self.grad_z, self.grad_mu if want_mu else None, self.grad_logvar if want_logvar else None)
        return tuple(None if g is None else g.T.to(t) for g, t in zip(grads, self.dtypes, strict=True))


def _is_direct(z: Tensor, mu: Tensor, logvar: Tensor) -> bool:
    """Direct float32 differences when no input is float64 and D <= ``_DIRECT_MAX_DIM``, else
    the float64 expanded product (the precision rule: within 1e-3 nats of float64)."""
    return mu.shape[1] <= _DIRECT_MAX_DIM and _result_dtype(z, mu, logvar).itemsize <= 4


def _kernel(z: Tensor, mu: Tensor, logvar: Tensor) -> _Expanded | _Direct:
    return _Direct(z, mu, logvar) if _is_direct(z, mu, logvar) else _Expanded(z, mu, logvar)


def _blocks(
    kernel: _Expanded | _Direct, chunk_rows: int, chunk_columns: int
) -> Iterator[tuple[int, int, Tensor, Tensor]]:
    """Yield (r0, c0, block, spare) with block = L[r0:, c0:], block by block.

    Every block is a view of ONE reused workspace of chunk_rows * chunk_columns entries (the
    first block is the largest), valid until the next iteration (callers may overwrite it);
    ``spare`` is the kernel's scratch space of the same number of rows and columns."""
    n_rows, n_columns = kernel.n_rows, kernel.n_columns
    shape = (min(chunk_rows, n_rows), min(chunk_columns, n_columns))
    workspace = kernel.workspace(*shape)
    spare = kernel.spare(*shape) if isinstance(kernel, _Direct) else workspace
    for r0 in range(0, n_rows, chunk_rows):
        rs = slice(r0, min(r0 + chunk_rows, n_rows))
        for c0 in range(0, n_columns, chunk_columns):
            cs = slice(c0, min(c0 + chunk_columns, n_columns))
            block = workspace[: (rs.stop - r0) * (cs.stop - c0)].view(rs.stop - r0, cs.stop - c0)
            kernel.fill(block, rs, cs, spare)
            yield r0, c0, block, spare


class _Corrections(NamedTuple):
    r"""How the plans differ from the first: W_k = r_k W_0 everywhere except on the diagonals of
    ``entries`` (plan k, shift, c) where W_k = (r_k + c) W_0."""

    ratios: tuple[float, ...]
    entries: tuple[tuple[int, int, float], ...]


def _corrections(plans: tuple[_Plan, ...]) -> _Corrections:
    """r_k = w_k / w_0 for the base weights, and c = W_k / W_0 - r_k on every shift where plan
    0 or plan k overrides its base weight (the rows of all plans share one row_offset)."""
    first = plans[0]
    ratios = tuple(math.exp(plan.log_base - first.log_base) for plan in plans)
    entries = []
    for k, plan in enumerate(plans[1:], start=1):
        own, reference = dict(plan.overrides), dict(first.overrides)
        for shift in sorted(set(own) | set(reference)):
            log_ratio = own.get(shift, plan.log_base) - reference.get(shift, first.log_base)
            entries.append((k, shift, math.exp(log_ratio) - ratios[k]))
    return _Corrections(ratios, tuple(entries))


class _WeightedLogSumExp(torch.autograd.Function):
    r"""y_ki = logsumexp_j (L[i, j] + log W_k[i, j]), shape (K, R), for the K weight matrices
    W_k of ``plans``, with L[i, j] = log q(z_i | x_j) from a kernel (:class:`_Direct` in float32
    for small D and float32 inputs, else :class:`_Expanded` in float64); y has the kernel's
    dtype.

    ONE exponential pass serves every plan: E = exp(L + log W_0 - w_0 - t) (plan 0's overrides
    added on its diagonals, t the row maximum), s_0 = rowsum(E) and, because W_k = r_k W_0 but
    on a few diagonals (:class:`_Corrections`), s_k = r_k s_0 + sum over those entries of c E;
    y_k = log s_k + t + w_0. Column blocks are merged with ``logaddexp``. Exponents are floored
    (``_EXP_FLOOR``, ``_EXP_FLOOR_32``) to stay off exp's slow denormal path.

    Backward: G = sum_k diag(g_k / s_k) (W_k / W_0) o E = diag(alpha) E + (correction entries),
    alpha = sum_k r_k g_k / s_k, plus O(R) work on the correction diagonals (none for one
    plan); the kernel turns each block of G into gradients of z, mu and logvar. For
    :class:`_Expanded`: grad_a = G b and grad_b = G^T a, then grad_z = 2 z grad_a1 + grad_a2,
    grad_mu = prec (grad_b2 - grad_b3 mu),
    grad_logvar = prec (grad_b1 / 2 - grad_b2 mu + grad_b3 mu^2 / 2) - grad_b3 / 2.
    When the whole (R, B) matrix is one block (at most ``2**21`` entries) E and s are kept from
    the forward pass; otherwise E is recomputed block by block with t = y_0 - w_0 (so that
    s_k = exp(y_k - y_0)) and only the kernel's inputs and y are kept. The extra memory is
    O(workspace) either way.
    """

    @staticmethod
    def forward(
        ctx: Any,
        z: Tensor,
        mu: Tensor,
        logvar: Tensor,
        plans: tuple[_Plan, ...],
        chunk_rows: int,
        chunk_columns: int,
    ) -> Tensor:
        kernel = _kernel(z, mu, logvar)
        n_rows, n_columns = kernel.n_rows, kernel.n_columns
        fix = _corrections(plans)
        single = n_rows <= chunk_rows and n_columns <= chunk_columns
        keep = single and any(ctx.needs_input_grad[:3])
        out = None if single else torch.full((len(plans), n_rows), -math.inf, dtype=kernel.dtype, device=z.device)
        lowest = torch.finfo(kernel.dtype).min
        for r0, c0, block, spare in _blocks(kernel, chunk_rows, chunk_columns):
            if keep and isinstance(kernel, _Direct):
                kernel.kept = spare.view(kernel.dim, n_rows, n_columns)  # v, left intact by fill
            _apply_overrides(block, plans[0], r0, c0, n_columns)  # log W_0 - w_0
            top = block.amax(dim=1).clamp_(min=lowest)  # a row of -inf stays -inf below
            exps = block.sub_(top[:, None]).clamp_(min=kernel.floor).exp_()
            sums = _plan_sums(exps, fix, plans[0].row_offset, r0, c0, n_columns)
            value = sums.log().add_(top[None, :] + plans[0].log_base)
            if single:
                out = value
            else:
                assert out is not None  # allocated above when not single
                rs = slice(r0, r0 + block.shape[0])
                out[:, rs] = torch.logaddexp(out[:, rs], value)
        ctx.kept = (exps, sums) if keep else ()
        ctx.save_for_backward(out)
        ctx.kernel = kernel
        ctx.blocking = (plans, fix, chunk_rows, chunk_columns)
        assert out is not None  # _blocks yields at least one block
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        (out,) = ctx.saved_tensors
        kernel, kept = ctx.kernel, ctx.kept
        kernel.reset()  # backward may run more than once (retain_graph)
        plans, fix, chunk_rows, chunk_columns = ctx.blocking
        want_z, want_mu, want_logvar = ctx.needs_input_grad[:3]
        n_columns, offset = kernel.n_columns, plans[0].row_offset
        if kept:  # E and s_k from the forward pass
            shape = kept[0].shape
            spare = kernel.spare(*shape) if isinstance(kernel, _Direct) else None
            blocks: Iterator[tuple[int, int, Tensor, Any]] = iter([(0, 0, kept[0], spare)])
            scale = grad / kept[1]
        else:  # E = exp(L + log W_0 - y_0), s_k = exp(y_k - y_0)
            blocks = _blocks(kernel, chunk_rows, chunk_columns)
            scale = grad * torch.exp(out[:1] - out)
        alpha = scale[0]  # r_0 = 1
        for k in range(1, len(plans)):
            alpha = alpha + fix.ratios[k] * scale[k]
        single = bool(kept) or (kernel.n_rows <= chunk_rows and n_columns <= chunk_columns)
        for r0, c0, block, spare in blocks:
            rs, cs = slice(r0, r0 + block.shape[0]), slice(c0, c0 + block.shape[1])
            if not kept:
                _apply_overrides(block, plans[0], r0, c0, n_columns)
                block.sub_(out[0, rs, None] - plans[0].log_base).clamp_(min=kernel.floor).exp_()
            row_weight = alpha[rs, None]
            weight: Tensor | None = row_weight
            if fix.entries:  # G = diag(alpha) E + the correction entries, as one block
                weights = block * row_weight
                weight = None
                flat, exps = weights.view(-1), block.view(-1)
                for k, shift, factor in fix.entries:
                    i, where = _diagonal_index(shift, offset, r0, c0, *block.shape, n_columns, block.device)
                    coefficient = scale[k, rs] if i.numel() == block.shape[0] else scale[k, rs][i]
                    flat.index_put_((where,), torch.addcmul(flat[where], coefficient, exps[where], value=factor))
            else:  # G = diag(alpha) E: alpha scales the narrow side of each product
                weights = block
            kernel.accumulate(rs, cs, weights, weight, spare, want_z, want_mu or want_logvar, single)
        grad_z, grad_mu, grad_logvar = kernel.gradients(want_mu, want_logvar)
        return grad_z if want_z else None, grad_mu, grad_logvar, None, None, None


def _plan_sums(exps: Tensor, fix: _Corrections, row_offset: int, r0: int, c0: int, batch_size: int) -> Tensor:
    """(K, rows): s_0 = rowsum(E) and s_k = r_k s_0 + the correction entries (see
    :class:`_WeightedLogSumExp`)."""
    first = exps.sum(dim=1)
    if len(fix.ratios) == 1:
        return first[None, :]
    sums = torch.stack([first if k == 0 else first * r for k, r in enumerate(fix.ratios)])
    flat = exps.view(-1)
    for k, shift, factor in fix.entries:
        i, where = _diagonal_index(shift, row_offset, r0, c0, *exps.shape, batch_size, exps.device)
        if i.numel() == exps.shape[0]:  # one entry in every row
            sums[k].add_(flat[where], alpha=factor)
        else:
            sums[k].index_put_((i,), torch.add(sums[k][i], flat[where], alpha=factor))
    return sums


def _log_q(
    z: Tensor,
    mu: Tensor,
    logvar: Tensor,
    plan: _Plan | tuple[_Plan, ...],
    chunk_size: int | None,
) -> Tensor:
    """log q_hat(z_i) = logsumexp_j (log W[i, j] + log q(z_i | x_j)): shape (R,) for one plan,
    (K, R) for a tuple of K plans (one pass over L for all of them); float32 from the direct
    kernel, else float64 (:func:`_kernel`). Default blocks hold at most ``2**21`` entries (and
    the direct kernel's scratch (rows, columns, D) tensor as many)."""
    chunk_columns = min(mu.shape[0], _MAX_BLOCK_COLUMNS)
    if chunk_size is None:
        per_row = chunk_columns * (mu.shape[1] if _is_direct(z, mu, logvar) else 1)
        chunk_size = max(1, _BLOCK_ENTRIES // per_row)
    elif not isinstance(chunk_size, int) or chunk_size < 1:
        raise EdvaeError(f"chunk_size={chunk_size!r} must be a positive integer or None.")
    plans = (plan,) if isinstance(plan, _Plan) else plan
    out = _WeightedLogSumExp.apply(z, mu, logvar, plans, chunk_size, chunk_columns)
    return out[0] if isinstance(plan, _Plan) else out


def _log_q_marginals(z: Tensor, mu: Tensor, logvar: Tensor, plan: _Plan, chunk_size: int | None) -> Tensor:
    """log q_hat_d(z_id) for every dimension, each with its own logsumexp, shape (R, D)."""
    return torch.stack(
        [_log_q(z[:, d : d + 1], mu[:, d : d + 1], logvar[:, d : d + 1], plan, chunk_size) for d in range(z.shape[1])],
        dim=1,
    )


def log_aggregate_posterior(
    z: Tensor,
    mu: Tensor,
    logvar: Tensor,
    *,
    dataset_size: int | None = None,
    method: str | tuple[str, ...] = "mss",
    chunk_size: int | None = None,
    row_offset: int = 0,
    validate: bool = True,
) -> Tensor:
    r"""Estimate log q(z_i) of the aggregate posterior at every row of ``z``, shape (R,).

    log q_hat(z_i) = logsumexp_j ( log W[i, j] + log q(z_i | x_j) ) with W set by ``method``
    (module docstring): ``"mss"`` (needs ``dataset_size`` N >= B >= 2), ``"mws"`` (needs N),
    ``"batch"`` (W = 1/B) or ``"full"`` (the columns are all N posteriors, W = 1/N, ``z`` any
    query points and ``row_offset`` ignored). A tuple of K methods returns their K estimates,
    shape (K, R), from one pass over L (e.g. ``("mss", "batch")`` for an entropy and a mutual
    information estimated differently).

    Args:
        z: (R, D) rows; ``z[i]`` drawn from q(z | x_{i + row_offset}) except for ``"full"``.
        mu, logvar: (B, D) posterior parameters of the columns.
        dataset_size: N, the number of training examples.
        chunk_size: rows per block (default: blocks of at most 2**21 entries).
        row_offset: global batch index of row 0 (distributed training).
        validate: check for NaN/Inf (one host synchronisation); shapes are always checked.

    Differentiable in ``z``, ``mu`` and ``logvar``. Returned in the inputs' dtype, computed in
    float32 when no input is float64 and D <= 4 (direct differences, within 1e-3 nats of
    float64: module docstring), else in float64.
    """
    _check_inputs(z, mu, logvar, validate)
    methods: tuple[Any, ...] = method if isinstance(method, tuple) and method else (method,)  # () -> _plan refuses
    plans = tuple(_plan(m, z.shape[0], mu.shape[0], dataset_size, row_offset) for m in methods)
    log_q = _log_q(z, mu, logvar, plans if isinstance(method, tuple) else plans[0], chunk_size)
    return log_q.to(_result_dtype(z, mu, logvar))


def log_aggregate_marginals(
    z: Tensor,
    mu: Tensor,
    logvar: Tensor,
    *,
    dataset_size: int | None = None,
    method: str = "mss",
    chunk_size: int | None = None,
    row_offset: int = 0,
    validate: bool = True,
) -> Tensor:
    r"""Estimate log q_d(z_id) of every one-dimensional marginal of the aggregate posterior,
    shape (R, D):

        log q_hat_d(z_id) = logsumexp_j ( log W[i, j] + log q(z_id | x_j) ),

    the weights W of ``method`` (the same as :func:`log_aggregate_posterior`'s, so that
    mean_i [log q_hat(z_i) - sum_d log q_hat_d(z_id)] is the total correlation and
    mean_i [log q_hat_d(z_id) - log p_d(z_id)] the dimension-wise KL of beta-TCVAE, Chen et
    al. 2018), one logsumexp per dimension. Arguments as for :func:`log_aggregate_posterior`.
    """
    _check_inputs(z, mu, logvar, validate)
    plan = _plan(method, z.shape[0], mu.shape[0], dataset_size, row_offset)
    return _log_q_marginals(z, mu, logvar, plan, chunk_size).to(_result_dtype(z, mu, logvar))


def factorised_log_prob(prior: PriorLike, z: Tensor) -> Tensor | None:
    r"""(R, D) per-dimension log p_d(z_id) when the prior is a product over dimensions,
    p(z) = prod_d p_d(z_d) (an ``Independent`` distribution over one batch dimension), else None."""
    return _factorised_log_prob(resolve_prior(prior, z.shape[1]), z)


# --------------------------------------------------------------------------------------------
# the decomposition


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
    plan: _Plan,
    chunk_size: int | None,
    per_dimension: bool,
) -> Decomposition:
    """Shared by ``decompose`` and ``dataset_decomposition``; rows own (mu_rows, logvar_rows)."""
    dtype = _result_dtype(z, mu, logvar)
    log_q = _log_q(z, mu, logvar, plan, chunk_size)
    log_post = _log_normal_diag(z.to(_ACC), mu_rows.to(_ACC), logvar_rows.to(_ACC))
    log_p = prior.log_prob(z).to(_ACC)
    mi = (log_post - log_q).mean()
    entropy = -log_q.mean()
    cross_entropy = -log_p.mean()
    total_correlation = dimwise_kl = None
    if per_dimension:
        log_q_d = _log_q_marginals(z, mu, logvar, plan, chunk_size)
        total_correlation = (log_q - log_q_d.sum(1)).mean().to(dtype)
        log_p_d = _factorised_log_prob(prior, z)
        if log_p_d is not None:
            dimwise_kl = (log_q_d - log_p_d.to(_ACC)).mean(0).to(dtype)
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
    _check_inputs(z, mu, logvar, validate)
    p = resolve_prior(prior, mu.shape[1])
    mu_rows, logvar_rows = _own_rows(mu, logvar, z.shape[0], row_offset)
    plan = _plan(method, z.shape[0], mu.shape[0], dataset_size, row_offset)
    return _decompose(z, mu_rows, logvar_rows, mu, logvar, p, plan, chunk_size, per_dimension)


def _dataset_queries(
    mu: Tensor,
    logvar: Tensor,
    prior: PriorLike,
    num_queries: int | None,
    generator: torch.Generator | None,
    validate: bool,
) -> tuple[Distribution, Tensor, Tensor, Tensor, Tensor, _Plan]:
    """The query points of :func:`dataset_decomposition`: ``(prior, index, z, mu_rows,
    logvar_rows, plan)``, the indices and z_s drawn with ``generator`` in that order."""
    _check_posterior(mu, logvar)
    _check_finite(validate, mu=mu, logvar=logvar)
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
    return p, index, z, mu_rows, logvar_rows, _plan("full", z.shape[0], n, None, 0)


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
    log_q = _log_q(z, mu, logvar, plan, chunk_size)
    log_post = _log_normal_diag(z.to(_ACC), mu_rows.to(_ACC), logvar_rows.to(_ACC))
    log_p = p.log_prob(z).to(_ACC)
    kl = kl_divergence(mu_rows, logvar_rows, p, z, validate=False).to(_ACC)
    return DecompositionTerms(index, log_post - log_q, -log_q, -log_p, log_q - log_p, kl)


# --------------------------------------------------------------------------------------------
# InfoNCE


class BilinearCritic(nn.Module):
    r"""Bilinear critic f(x_j, z_i) = z_i^T W mu_j, scores of shape (R, B).

    ``W`` (D, D) starts at the identity. Call as ``critic(z, mu)`` with rows ``z`` (R, D) and
    columns ``mu`` (B, D).
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.eye(dim))

    def forward(self, z: Tensor, mu: Tensor) -> Tensor:
        return z @ self.weight @ mu.T


class MLPCritic(nn.Module):
    r"""Separable MLP critic f(x_j, z_i) = g(z_i)^T h(mu_j) / sqrt(k), scores (R, B).

    g and h are two-layer MLPs R^D -> R^k (``embedding`` = k). Separable critics cost one
    (R, k) x (k, B) product instead of a network evaluation per pair. h's last layer has no
    bias: a bias b would add g(z_i)^T b to every score of row i, which InfoNCE's log-softmax
    over j removes, so nothing could learn it.
    """

    def __init__(self, dim: int, hidden: int = 128, embedding: int = 32) -> None:
        super().__init__()
        self.rows = nn.Sequential(nn.Linear(dim, hidden), nn.SiLU(), nn.Linear(hidden, embedding))
        self.columns = nn.Sequential(nn.Linear(dim, hidden), nn.SiLU(), nn.Linear(hidden, embedding, bias=False))
        self.scale = embedding**-0.5

    def forward(self, z: Tensor, mu: Tensor) -> Tensor:
        return self.scale * self.rows(z) @ self.columns(mu).T


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
    (e.g. :class:`BilinearCritic`, :class:`MLPCritic`) is called as ``critic(z, mu)`` and must
    return (R, B) scores; it sees the column means only.
    """
    _check_inputs(z, mu, logvar, validate)
    if critic is not None and not callable(critic):
        raise EdvaeError(
            f"critic of type {type(critic).__name__} is not callable; pass a function or module "
            "critic(z, mu) returning (R, B) scores, or None for the encoder itself."
        )
    n_rows, batch_size = z.shape[0], mu.shape[0]
    mu_rows, logvar_rows = _own_rows(mu, logvar, n_rows, row_offset)
    dtype = _result_dtype(z, mu, logvar)
    if critic is None:
        plan = _plan("batch", n_rows, batch_size, None, row_offset)
        log_q = _log_q(z, mu, logvar, plan, chunk_size)
        log_post = _log_normal_diag(z.to(_ACC), mu_rows.to(_ACC), logvar_rows.to(_ACC))
        return (log_post - log_q).mean().to(dtype)
    scores = critic(z, mu)
    if not isinstance(scores, Tensor) or scores.shape != (n_rows, batch_size):
        shape = tuple(scores.shape) if isinstance(scores, Tensor) else type(scores).__name__
        raise EdvaeError(
            f"critic returned {shape} but must return scores of shape (R, B) = "
            f"({n_rows}, {batch_size}) for rows z and columns mu."
        )
    scores = scores.to(_ACC)
    index = torch.arange(n_rows, device=scores.device)
    positive = scores[index, index + row_offset]
    bound = (positive - torch.logsumexp(scores, dim=1)).mean() + math.log(batch_size)
    return bound.to(dtype)
