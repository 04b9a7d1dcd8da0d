r"""Priors known only through samples s_1..s_K: a Gaussian kernel density estimate with a
cross-validated bandwidth, or a flow fitted by maximum likelihood (:func:`from_samples`)."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.distributions import Distribution, constraints

from edvae.errors import require
from edvae.priors.base import (
    Prior,
    positive_float,
    positive_int,
    seeded_generator,
    shown,
    validated_samples,
)
from edvae.priors.io import load_samples
from edvae.priors.learned import FlowPrior
from edvae.priors.registry import PriorContext, register

__all__ = ["KDEPrior", "KernelDensity", "from_samples", "scott_bandwidth"]

_CV_MAX_SAMPLES = 10_000  # bandwidth cross-validation uses at most this many samples
_CV_GRID = 2.0 ** torch.linspace(-4.0, 1.0, 16, dtype=torch.float64)  # multiples of Scott's h
_FLOW_BATCH = 512
_FLOW_LR = 2e-3


# ---------------------------------------------------------------------------------------------
# The kernel density estimate


_EXP_FLOOR = -700.0  # exp of a float64 below ~-708 takes a slow path; e^-700 ~ 1e-304 is 0 beside a sum >= 1


def _kernel_sums_and_means(
    queries: Tensor, samples: Tensor, half_precisions: Tensor, chunk_size: int | None, *, means: bool
) -> tuple[Tensor, Tensor | None]:
    r"""S[g, q] = log sum_k exp(-a_g ||z_q - s_k||^2) with a_g = 1 / (2 h_g^2), and (if ``means``)
    the kernel-weighted means m[g, q] = sum_k w_gqk s_k, w_gqk = softmax_k(-a_g ||z_q - s_k||^2).

    float64, one (chunk, chunk) block of queries x samples at a time with a running (online)
    log-sum-exp: per block, the running maximum M, sum and weighted sum are rescaled by
    exp(M_old - M_new), so memory is O(chunk^2), never O(Q * K * D). Squared distances come
    from ||z||^2 + ||s||^2 - 2 z.s, clamped at 0. Each exponent is floored at
    :data:`_EXP_FLOOR` below the running maximum, which changes no sum (the maximum's own term
    is 1) but keeps float64 exp off its slow path for narrow bandwidths.
    Shapes: ``queries`` (Q, D), ``samples`` (K, D), ``half_precisions`` (G,); returns (G, Q)
    and (G, Q, D) or None.
    """
    z, s, a = queries.to(torch.float64), samples.to(torch.float64), half_precisions.to(torch.float64)
    step = chunk_size or max(len(z), len(s), 1)
    s_blocks = list(zip(s.split(step), (s * s).sum(-1).split(step), strict=True))
    sums, weighted = [], []
    for zc in z.split(step):
        zc_sq = (zc * zc).sum(-1, keepdim=True)
        top = zc.new_full((len(a), len(zc)), -math.inf)
        total = zc.new_zeros(len(a), len(zc))
        moment = zc.new_zeros(len(a), len(zc), z.shape[-1]) if means else None
        for sc, sc_sq in s_blocks:
            sq_dist = torch.addmm(sc_sq.unsqueeze(0), zc, sc.T, alpha=-2.0).add_(zc_sq).clamp_min_(0.0)  # (q, k)
            nearest = sq_dist.amin(-1)
            for g in range(len(a)):  # in place: no autograd runs here
                new_top = torch.maximum(top[g], -a[g] * nearest)
                rescale = torch.exp(top[g] - new_top)  # 0 on the first block (top = -inf)
                w = sq_dist.mul(-a[g]).sub_(new_top.unsqueeze(-1)).clamp_min_(_EXP_FLOOR).exp_()
                total[g] = total[g] * rescale + w.sum(-1)
                if moment is not None:
                    moment[g] = moment[g] * rescale.unsqueeze(-1) + w @ sc
                top[g] = new_top
        sums.append(top + total.log())
        if moment is not None:
            weighted.append(moment / total.unsqueeze(-1))
    if not sums:
        return z.new_zeros(len(a), 0), (z.new_zeros(len(a), 0, z.shape[-1]) if means else None)
    return torch.cat(sums, dim=-1), (torch.cat(weighted, dim=-2) if means else None)


def _log_kernel_sums(queries: Tensor, samples: Tensor, bandwidths: Tensor, chunk_size: int | None) -> Tensor:
    r"""S[g, q] = log sum_k exp(-||z_q - s_k||^2 / (2 h_g^2)) for several bandwidths, no gradient
    (:func:`_kernel_sums_and_means`); ``queries`` (Q, D), ``samples`` (K, D), ``bandwidths`` (G,);
    returns (G, Q)."""
    with torch.no_grad():
        half_precision = 0.5 / bandwidths.to(torch.float64) ** 2
        return _kernel_sums_and_means(queries, samples, half_precision, chunk_size, means=False)[0]


class _KernelLogSum(torch.autograd.Function):
    r"""S(z) = log sum_k exp(-a ||z - s_k||^2), differentiable in z with the closed form

        dS/dz = -2a (z - m(z)),   m(z) = sum_k softmax_k(-a ||z - s_k||^2) s_k,

    so the backward pass is O(Q D) from the kernel-weighted means the forward pass keeps,
    instead of autograd through the (Q, K) blocks. Samples and bandwidth get no gradient (the
    KDE's are fixed buffers)."""

    @staticmethod
    def forward(ctx: Any, z: Tensor, samples: Tensor, half_precision: Tensor, chunk_size: int | None) -> Tensor:
        sums, means = _kernel_sums_and_means(z, samples, half_precision.reshape(1), chunk_size, means=True)
        assert means is not None  # means=True returns them
        ctx.save_for_backward(z, means[0], half_precision)
        return sums[0]

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, None, None, None]:
        z, means, half_precision = ctx.saved_tensors
        return grad.unsqueeze(-1) * (-2.0 * half_precision) * (z - means), None, None, None


def _kde_log_norm(dim: int, n_samples: int, bandwidth: Tensor) -> Tensor:
    """log((2 pi h^2)^(D/2) K), the normaliser of the kernel sum."""
    return dim * torch.log(bandwidth) + 0.5 * dim * math.log(2 * math.pi) + math.log(n_samples)


class KernelDensity(Distribution):
    r"""A Gaussian kernel density estimate, p_hat(z) = (1/K) sum_k N(z; s_k, h^2 I).

    log p_hat(z) = logsumexp_k(-||z - s_k||^2 / (2 h^2)) - (D/2) log(2 pi h^2) - log K,
    computed in float64 in blocks of ``chunk_size`` queries x ``chunk_size`` samples, so
    100 000 samples x 10 000 queries fit in modest memory; it is differentiable in z.
    Sampling draws a stored sample uniformly and adds h * N(0, I) noise, which is exactly
    p_hat; ``rsample`` is reparameterised in the noise.

    Bias: p_hat is the true density convolved with N(0, h^2 I), plus sampling noise. Far from
    every sample its tails are Gaussian of width h around the nearest samples, set by the
    bandwidth and the extreme samples, not by the true prior: log p_hat(z) is close to
    -min_k ||z - s_k||^2 / (2 h^2) - (D/2) log(2 pi h^2) - log K there, typically far below the
    true log-density of a heavier-tailed prior. Cross-entropies of distributions that put
    mass where no sample lies are therefore unreliable.
    """

    arg_constraints: dict[str, constraints.Constraint] = {}
    support = constraints.real_vector
    has_rsample = True

    def __init__(
        self,
        samples: Tensor,
        bandwidth: Tensor | float,
        chunk_size: int | None = 1024,
        validate_args: bool | None = None,
    ) -> None:
        self.samples = samples
        self.bandwidth = torch.as_tensor(bandwidth, dtype=samples.dtype, device=samples.device)
        self.chunk_size = chunk_size
        super().__init__(torch.Size(), samples.shape[-1:], validate_args=validate_args)

    @property
    def mean(self) -> Tensor:
        return self.samples.mean(0)

    @property
    def variance(self) -> Tensor:
        return self.samples.var(0, unbiased=False) + self.bandwidth**2

    def log_prob(self, value: Tensor) -> Tensor:
        if self._validate_args:
            self._validate_sample(value)
        dim = self.event_shape[0]
        flat = value.reshape(-1, dim)
        bandwidth = self.bandwidth.detach().to(torch.float64)
        if torch.is_grad_enabled() and flat.requires_grad:
            sums = _KernelLogSum.apply(
                flat.to(torch.float64), self.samples.detach(), 0.5 / bandwidth**2, self.chunk_size
            )
        else:  # no gradient wanted: skip the kernel-weighted means
            sums = _log_kernel_sums(flat, self.samples, bandwidth.reshape(1), self.chunk_size)[0]
        log_norm = _kde_log_norm(dim, len(self.samples), self.bandwidth.to(torch.float64))
        return (sums - log_norm).reshape(value.shape[:-1]).to(value.dtype)

    def rsample(self, sample_shape: torch.Size | Sequence[int] = ()) -> Tensor:
        shape = torch.Size(sample_shape)
        index = torch.randint(len(self.samples), shape, device=self.samples.device)
        noise = torch.randn(shape + self.event_shape, dtype=self.samples.dtype, device=self.samples.device)
        return self.samples[index] + self.bandwidth * noise


class KDEPrior(Prior):
    r"""A prior known only through samples s_1..s_K: the Gaussian KDE of :class:`KernelDensity`.

    log p(z) = logsumexp_k log N(z; s_k, h^2 I) - log K. The samples and the bandwidth h are
    buffers (they follow ``.to()`` / ``.double()``); nothing is learned.
    """

    samples: Tensor
    bandwidth: Tensor

    def __init__(self, samples: Tensor, bandwidth: float, *, chunk_size: int | None = 1024) -> None:
        samples = validated_samples(samples, "samples")
        super().__init__(samples.shape[1])
        self.register_buffer("samples", samples)
        self._register("bandwidth", bandwidth, (), positive=True, learnable=False)
        self.chunk_size = _chunk_size(chunk_size)

    def forward(self) -> KernelDensity:
        return KernelDensity(self.samples, self.bandwidth, self.chunk_size)

    def extra_repr(self) -> str:
        h = float(self.bandwidth)
        return f"dim={self.dim}, n_samples={len(self.samples)}, bandwidth={h:.4g}"


def _chunk_size(value: Any) -> int | None:
    if value is None:
        return None
    return positive_int("chunk_size", value)


def scott_bandwidth(samples: Tensor) -> float:
    r"""Scott's rule for an isotropic kernel: h = sigma_bar * K^(-1/(D+4)).

    sigma_bar is the mean over dimensions of the per-dimension sample standard deviations
    (K - 1 denominator), K the number of samples and D the dimension. The rule is optimal for
    Gaussian data; for multimodal or strongly non-isotropic samples it oversmooths (prefer
    ``bandwidth="cv"``).
    """
    samples = validated_samples(samples, "samples")
    n, dim = samples.shape
    sigma_bar = float(samples.to(torch.float64).std(0).mean())
    require(sigma_bar > 0, "the samples are all identical, so Scott's bandwidth is 0; pass a positive float bandwidth")
    return sigma_bar * n ** (-1.0 / (dim + 4))


def _cv_bandwidth(samples: Tensor, chunk_size: int | None, generator: torch.Generator) -> float:
    r"""The bandwidth on a grid h_scott * 2^[-4..1] with the best held-out log-likelihood.

    At most ``_CV_MAX_SAMPLES`` samples are used, a tenth of them (at least 1) held out; the
    chosen h is rescaled by (K_fit / K)^(1/(D+4)), Scott's rate, to the full sample count.
    """
    n, dim = samples.shape
    order = torch.randperm(n, generator=generator)[: min(n, _CV_MAX_SAMPLES)]
    n_held = max(1, len(order) // 10)
    held, fit = samples[order[:n_held]], samples[order[n_held:]]
    grid = scott_bandwidth(samples) * _CV_GRID
    sums = _log_kernel_sums(held, fit, grid, chunk_size)
    scores = (sums - _kde_log_norm(dim, len(fit), grid).unsqueeze(-1)).mean(-1)
    best = float(grid[int(scores.argmax())])
    return best * (len(fit) / n) ** (1.0 / (dim + 4))


# ---------------------------------------------------------------------------------------------
# Fitting a prior to samples


def _fit_flow(prior: FlowPrior, samples: Tensor, steps: int, generator: torch.Generator) -> None:
    r"""Maximum likelihood: Adam on -mean log p(s) over minibatches, 10% of samples held out."""
    n = len(samples)
    order = torch.randperm(n, generator=generator)
    n_held = max(1, n // 10)
    held, train = samples[order[:n_held]], samples[order[n_held:]]
    optimiser = torch.optim.Adam(prior.parameters(), lr=_FLOW_LR)
    batch = min(_FLOW_BATCH, len(train))
    with torch.enable_grad():
        for _ in range(steps):
            index = torch.randint(len(train), (batch,), generator=generator)
            loss = -prior().log_prob(train[index]).mean()
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
    with torch.no_grad():
        dist = prior()
        prior.fit_report = {
            "steps": steps,
            "n_train": len(train),
            "n_heldout": n_held,
            "train_log_likelihood": float(dist.log_prob(train).mean()),
            "heldout_log_likelihood": float(dist.log_prob(held).mean()),
        }


def from_samples(
    samples: Tensor | np.ndarray | str | os.PathLike[str],
    method: str = "kde",
    *,
    bandwidth: str | float = "cv",
    chunk_size: int | None = 1024,
    flow_steps: int = 1000,
    seed: int = 0,
) -> Prior:
    r"""A prior known only through samples s_1..s_K (a (K, D) array, or a file path).

    * ``method="kde"``: a :class:`KDEPrior`, log p(z) = logsumexp_k log N(z; s_k, h^2 I) - log K,
      with ``bandwidth`` ``"scott"`` (:func:`scott_bandwidth`), ``"cv"`` (the best held-out
      log-likelihood on a grid from h_scott/16 to 2 h_scott, seeded split) or a positive float.
      ``chunk_size`` bounds the memory of ``log_prob`` (``None``: one block).
    * ``method="flow"``: a :class:`FlowPrior` on standardised samples, fitted by maximum
      likelihood (Adam, ``flow_steps`` steps of 512-sample minibatches, seeded), 10% of the
      samples held out; the result's ``fit_report`` holds the final mean train and held-out
      log-likelihoods. ``flow_steps=0`` builds the standardised flow without fitting it
      (``fit_report`` stays ``None``), for loading fitted weights from a state dict.

    The KDE's tails are Gaussian of width h (see :class:`KernelDensity`), the flow's are set by
    its base and splines: far from every sample neither reflects the true prior.
    """
    if isinstance(samples, (str, os.PathLike)):
        samples = load_samples(samples)
    samples = validated_samples(samples, "samples")
    generator = seeded_generator(seed)
    chunk_size = _chunk_size(chunk_size)
    if method == "kde":
        if isinstance(bandwidth, str):
            require(
                bandwidth in ("scott", "cv"), f"bandwidth must be 'scott', 'cv' or a positive number, got {bandwidth!r}"
            )
            h = scott_bandwidth(samples) if bandwidth == "scott" else _cv_bandwidth(samples, chunk_size, generator)
        else:
            h = positive_float("bandwidth", bandwidth)
        return KDEPrior(samples, h, chunk_size=chunk_size)
    require(method == "flow", f"method must be 'kde' or 'flow', got {shown(method)}")
    ok = isinstance(flow_steps, (int, np.integer)) and not isinstance(flow_steps, bool)
    require(
        ok and flow_steps >= 0,
        f"flow_steps must be a non-negative integer (0: leave the flow unfitted), got {shown(flow_steps)}",
    )
    steps = int(flow_steps)
    std = samples.std(0)
    require(
        bool((std > 0).all()),
        "the samples are constant in some dimension, so no flow "
        "density exists; drop that dimension or use method='kde' with a float bandwidth",
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        prior = FlowPrior(samples.shape[1], loc=samples.mean(0), scale=std).to(samples.dtype)
    if steps:
        _fit_flow(prior, samples, steps, generator)
    return prior


def _stored_samples(state: Any, method: str, dim: int) -> Tensor | None:
    """Samples that build a prior of the shape a stored state dict holds, without the file: the
    KDE's own samples, or for a flow two points with the stored mean and positive spread (its
    loc and scale then come from the state dict). None when the state does not hold them."""
    if not isinstance(state, Mapping):
        return None
    if method == "kde":
        samples = state.get("samples")
        if isinstance(samples, Tensor) and samples.ndim == 2 and samples.shape[1] == dim and len(samples) >= 2:
            return samples.clone()
        return None
    loc, scale = state.get("loc"), state.get("scale")
    if isinstance(loc, Tensor) and isinstance(scale, Tensor) and loc.shape == scale.shape == (dim,):
        return torch.stack([loc - scale.abs() - 1, loc + scale.abs() + 1])
    return None


@register("samples", argument="path")
def _samples(
    dim: int,
    *,
    path: str | os.PathLike[str],
    method: str = "kde",
    bandwidth: str | float = "cv",
    chunk_size: int | None = 1024,
    flow_steps: int = 1000,
    seed: int = 0,
    context: PriorContext | None = None,
) -> Prior:
    """See :func:`from_samples` and :func:`load_samples`; ``"samples:PATH"`` gives ``path``.

    A context with ``fit=False`` builds the prior without fitting it (no flow training, no
    bandwidth cross-validation): the fitted values are buffers and parameters that a state
    dict restores.
    """
    stand_in = None
    if context is not None and not context.fit:
        flow_steps = 0
        bandwidth = "scott" if isinstance(bandwidth, str) and bandwidth == "cv" else bandwidth
        stand_in = _stored_samples(context.state, method, dim)
    return from_samples(
        stand_in if stand_in is not None else load_samples(path, dim=dim),
        method,
        bandwidth=bandwidth,
        chunk_size=chunk_size,
        flow_steps=flow_steps,
        seed=seed,
    )
