r"""The one core routine: L[i, j] = log q(z_i | x_j) in blocks, reduced by a weighted
logsumexp (:class:`_WeightedLogSumExp`, with its hand-written backward).

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

import math
from collections.abc import Iterator
from typing import Any, NamedTuple

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from edvae.errors import EdvaeError
from edvae.estimators.checks import ACC_DTYPE, result_dtype
from edvae.estimators.posterior import LOG_2PI
from edvae.estimators.weights import WeightPlan, apply_weight_overrides, diagonal_index

_BLOCK_ENTRIES = 1 << 21  # entries of one (rows, columns) block: 16 MiB in float64
_MAX_BLOCK_COLUMNS = 1 << 14
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


class _Expanded:
    r"""L = a b^T in float64, a = [z^2, z, 1] (R, 2D+1), b = [-prec/2, mu prec, c] (B, 2D+1),
    prec = exp(-logvar), c_j = -1/2 sum_d (mu_jd^2 prec_jd + logvar_jd + log 2 pi): one matrix
    product per block. The expanded square cancels; float64 keeps that error near
    1e-16 z^2 prec. Gradients go through the features: grad_a = G b, grad_b = G^T a (two wide
    products), then the chain rule by hand (see :class:`_WeightedLogSumExp`)."""

    dtype = ACC_DTYPE
    floor = _EXP_FLOOR

    def __init__(self, z: Tensor, mu: Tensor, logvar: Tensor) -> None:
        self.z_dtype, self.mu, self.logvar = z.dtype, mu, logvar
        z64, mu64, logvar64 = z.to(ACC_DTYPE), mu.to(ACC_DTYPE), logvar.to(ACC_DTYPE)
        prec = torch.exp(-logvar64)
        const = -0.5 * ((mu64.square() * prec + logvar64).sum(1, keepdim=True) + mu.shape[1] * LOG_2PI)
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
            mu64, prec = mu.to(ACC_DTYPE), torch.exp(-logvar.to(ACC_DTYPE))
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
        self.const = logvar32.sum(1).add_(mu.shape[1] * LOG_2PI).mul_(-0.5)  # (B,)
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
    return mu.shape[1] <= _DIRECT_MAX_DIM and result_dtype(z, mu, logvar).itemsize <= 4


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


def _corrections(plans: tuple[WeightPlan, ...]) -> _Corrections:
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
        plans: tuple[WeightPlan, ...],
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
            apply_weight_overrides(block, plans[0], r0, c0, n_columns)  # log W_0 - w_0
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
                apply_weight_overrides(block, plans[0], r0, c0, n_columns)
                block.sub_(out[0, rs, None] - plans[0].log_base).clamp_(min=kernel.floor).exp_()
            row_weight = alpha[rs, None]
            weight: Tensor | None = row_weight
            if fix.entries:  # G = diag(alpha) E + the correction entries, as one block
                weights = block * row_weight
                weight = None
                flat, exps = weights.view(-1), block.view(-1)
                for k, shift, factor in fix.entries:
                    i, where = diagonal_index(shift, offset, r0, c0, *block.shape, n_columns, block.device)
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
        i, where = diagonal_index(shift, row_offset, r0, c0, *exps.shape, batch_size, exps.device)
        if i.numel() == exps.shape[0]:  # one entry in every row
            sums[k].add_(flat[where], alpha=factor)
        else:
            sums[k].index_put_((i,), torch.add(sums[k][i], flat[where], alpha=factor))
    return sums


def log_q_hat(
    z: Tensor,
    mu: Tensor,
    logvar: Tensor,
    plan: WeightPlan | tuple[WeightPlan, ...],
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
    plans = (plan,) if isinstance(plan, WeightPlan) else plan
    out = _WeightedLogSumExp.apply(z, mu, logvar, plans, chunk_size, chunk_columns)
    return out[0] if isinstance(plan, WeightPlan) else out


def log_q_hat_marginals(z: Tensor, mu: Tensor, logvar: Tensor, plan: WeightPlan, chunk_size: int | None) -> Tensor:
    """log q_hat_d(z_id) for every dimension, each with its own logsumexp, shape (R, D)."""
    return torch.stack(
        [
            log_q_hat(z[:, d : d + 1], mu[:, d : d + 1], logvar[:, d : d + 1], plan, chunk_size)
            for d in range(z.shape[1])
        ],
        dim=1,
    )
