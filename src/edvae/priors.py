r"""Priors p(z) over R^D: analytic families, learned priors and priors known only by samples.

A prior is anything that yields a :class:`torch.distributions.Distribution` with
``batch_shape == ()`` and ``event_shape == (D,)``. Following zuko's lazy-distribution
convention, every prior here is an ``nn.Module`` whose ``forward()`` builds and returns that
distribution, so learned parameters live on the module, move with ``.to()`` / ``.double()``,
and are trained through the cross-entropy term H[q(z), p(z)] = -E_q(z)[log p(z)]::

    prior = make("mog_ring", dim=2)
    p = prior()                      # a torch Distribution, event_shape (2,)
    cross_entropy = -p.log_prob(z).mean()

Names (``make(name, dim, **options)``, see :func:`names`):

* ``normal``       N(0, I).
* ``diag_normal``  N(loc, diag scale^2), optionally learnable.
* ``student_t``    prod_d t_df(z_d; loc, scale), heavy-tailed.
* ``laplace``      prod_d Laplace(z_d; loc, scale).
* ``mixture``      sum_k pi_k N(m_k, diag s_k^2), learnable by default.
* ``mog_ring``     8 equal Gaussians on a circle of radius 2 in dimensions (0, 1).
* ``banana``       a volume-preserving curved warp of a Gaussian.
* ``flow``         a learnable zuko neural spline flow.
* ``vamp``         the VampPrior (1/K) sum_k q(z | u_k) with learned pseudo-inputs u_k.
* ``samples``      a prior known only by samples in a file (KDE or a fitted flow).

Priors known only through samples s_1..s_K get a density from :func:`from_samples`: a
Gaussian kernel density estimate or a flow fitted by maximum likelihood.
"""

from __future__ import annotations

import abc
import inspect
import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import zuko
from torch import Tensor, nn
from torch.distributions import (
    AffineTransform,
    Categorical,
    Distribution,
    Independent,
    Laplace,
    MixtureSameFamily,
    Normal,
    StudentT,
    Transform,
    TransformedDistribution,
    constraints,
)

from edvae.errors import EdvaeError, require

__all__ = [
    "BananaPrior",
    "BananaTransform",
    "DistributionPrior",
    "FactorizedPrior",
    "FlowPrior",
    "GaussianMixturePrior",
    "KDEPrior",
    "KernelDensity",
    "Prior",
    "VampPrior",
    "as_prior",
    "event_dim",
    "from_samples",
    "load_samples",
    "make",
    "names",
    "scott_bandwidth",
]

_CV_MAX_SAMPLES = 10_000  # bandwidth cross-validation uses at most this many samples
_CV_GRID = 2.0 ** torch.linspace(-4.0, 1.0, 16, dtype=torch.float64)  # multiples of Scott's h
_KMEANS_MAX_ROWS = 10_000  # k-means initialisation of a mixture uses at most this many rows
_FLOW_BATCH = 512
_FLOW_LR = 2e-3
_MAX_DIM = 65536  # make(): larger dimensions are refused, not allocated
_MAX_COMPONENTS = 100_000  # make(): at most this many mixture components or pseudo-inputs


# ---------------------------------------------------------------------------------------------
# The base class and the parameter helpers every family shares


class Prior(nn.Module, abc.ABC):
    r"""A prior p(z) over R^D: a module whose ``forward()`` returns the distribution.

    Attributes:
        dim: the event dimension D; ``forward()`` returns a distribution with
            ``event_shape == (D,)`` and ``batch_shape == ()``.

    Parameters are stored either as buffers (fixed) or as ``nn.Parameter`` (learned). Positive
    quantities theta > 0 are learned through their logarithm, theta = exp(log_theta), so
    gradient steps never leave the constraint.

    Priors are built in the default dtype; ``.double()`` converts every buffer and parameter,
    so a prior built in float32 and then doubled carries float32 rounding in its constants
    (about 1e-7 relative). Build it under ``torch.set_default_dtype(torch.float64)`` for
    exact float64 constants.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = _positive_int("dim", dim)

    @abc.abstractmethod
    def forward(self) -> Distribution:
        """Build and return the distribution p(z), event shape (D,)."""

    def extra_repr(self) -> str:
        return f"dim={self.dim}"

    def _register(
        self, name: str, value: Any, shape: tuple[int, ...], *, positive: bool, learnable: bool
    ) -> None:
        """Store ``value`` broadcast to ``shape`` as a buffer, or as a learned parameter."""
        tensor = _as_float_tensor(name, value)
        try:
            tensor = tensor.expand(shape).clone()
        except RuntimeError:
            raise EdvaeError(
                f"option {name} has shape {tuple(tensor.shape)}; give a number or a tensor "
                f"broadcastable to {shape}"
            ) from None
        valid = bool(torch.isfinite(tensor).all()) and (not positive or bool((tensor > 0).all()))
        kind = "positive and finite" if positive else "finite"
        shown = tensor.tolist() if tensor.numel() <= 8 else "a tensor"
        require(valid, f"option {name} must be {kind}, got {shown}; fix its value")
        if not learnable:
            self.register_buffer(name, tensor)
        elif positive:
            self.register_parameter(f"log_{name}", nn.Parameter(tensor.log()))
        else:
            self.register_parameter(name, nn.Parameter(tensor))

    def _value(self, name: str) -> Tensor:
        """The constrained value of a quantity stored by :meth:`_register`."""
        if name in self._buffers or name in self._parameters:
            return getattr(self, name)
        return getattr(self, f"log_{name}").exp()


def _as_float_tensor(name: str, value: Any) -> Tensor:
    if isinstance(value, bool):
        raise EdvaeError(f"option {name} must be a number or a tensor, not a bool; fix its value")
    try:
        tensor = torch.as_tensor(value).detach()
    except (TypeError, ValueError, RuntimeError):
        raise EdvaeError(
            f"option {name} must be a number or a tensor, got {type(value).__name__}"
        ) from None
    if not tensor.is_floating_point():
        tensor = tensor.to(torch.get_default_dtype())
    return tensor


def _shown(value: Any) -> str:
    """``repr(value)`` for a one-line message, or its type (and shape) if that spans lines."""
    text = repr(value)
    if "\n" not in text and len(text) <= 80:
        return text
    shape = getattr(value, "shape", None)
    return f"a {type(value).__name__}" + ("" if shape is None else f" of shape {tuple(shape)}")


def _positive_int(name: str, value: Any, maximum: int | None = None) -> int:
    ok = isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value >= 1
    require(ok, f"{name} must be a positive integer, got {_shown(value)}")
    require(maximum is None or value <= maximum,
            f"{name}={value!r} is too large; use at most {maximum}")
    return int(value)


def _positive_float(name: str, value: Any) -> float:
    ok = isinstance(value, (int, float, np.floating)) and not isinstance(value, bool)
    require(
        ok and math.isfinite(value) and value > 0,
        f"option {name} must be a positive number, got {_shown(value)}",
    )
    return float(value)


def _generator(seed: Any) -> torch.Generator:
    ok = isinstance(seed, (int, np.integer)) and not isinstance(seed, bool)
    require(ok, f"option seed must be an integer, got {_shown(seed)}")
    return torch.Generator().manual_seed(int(seed))


def _flag(name: str, value: Any) -> bool:
    require(isinstance(value, bool), f"option {name} must be True or False, got {_shown(value)}")
    return bool(value)


def _gaussian_mixture(logits: Tensor, means: Tensor, scales: Tensor) -> MixtureSameFamily:
    r"""p(z) = sum_k softmax(logits)_k N(z; means_k, diag scales_k^2)."""
    components = Independent(Normal(means, scales), 1)
    return MixtureSameFamily(Categorical(logits=logits), components)


# ---------------------------------------------------------------------------------------------
# Analytic families


class FactorizedPrior(Prior):
    r"""A product of one-dimensional densities, p(z) = prod_d f(z_d; theta_d).

    ``family`` is a univariate torch distribution class (``Normal``, ``StudentT``,
    ``Laplace``, ...) called with the keyword parameters, each broadcast to (D,); the result is
    wrapped in ``Independent(., 1)`` so torch's KL registry still applies (for example the
    analytic KL between diagonal Gaussians). Positive parameters (``scale``, ``df``) are
    learned as logarithms when ``learnable`` is true.

    Example:
        >>> FactorizedPrior(Normal, 3, loc=0.0, scale=1.0)().event_shape
        torch.Size([3])
    """

    def __init__(
        self, family: type[Distribution], dim: int, *, learnable: bool = False, **params: Any
    ) -> None:
        super().__init__(dim)
        learnable = _flag("learnable", learnable)
        self.family = family
        self.param_names = tuple(params)
        for name, value in params.items():
            constraint = family.arg_constraints.get(name)
            require(
                constraint is constraints.real or constraint is constraints.positive,
                f"{family.__name__} has no real or positive parameter {name!r}; "
                f"use one of {', '.join(family.arg_constraints)}",
            )
            positive = constraint is constraints.positive
            self._register(name, value, (self.dim,), positive=positive, learnable=learnable)

    def forward(self) -> Independent:
        # the parameters were checked when registered (finite; positive ones learned as logs),
        # so the distribution skips torch's per-call argument checks (host synchronisations)
        params = {name: self._value(name) for name in self.param_names}
        return Independent(self.family(**params, validate_args=False), 1, validate_args=False)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, family={self.family.__name__}"


class GaussianMixturePrior(Prior):
    r"""A diagonal Gaussian mixture, p(z) = sum_k pi_k N(z; m_k, diag s_k^2).

    The weights are pi = softmax(logits). With ``learnable`` true the logits, the means m_k
    and the log-scales log s_k are parameters, so the mixture is fitted by minimising the
    cross-entropy -E[log p(z)] on samples z. Sampling is not reparameterisable (the component
    draw is discrete); training a prior needs only ``log_prob``.

    Args:
        means: (K, D) component means m_k.
        scales: component standard deviations s_k, broadcastable to (K, D).
        logits: (K,) unnormalised log-weights; ``None`` for equal weights.
        learnable: whether logits, means and scales are parameters.
    """

    def __init__(
        self,
        means: Tensor,
        scales: Tensor | float = 1.0,
        logits: Tensor | None = None,
        *,
        learnable: bool = False,
    ) -> None:
        means = _as_float_tensor("means", means)
        require(means.dim() == 2, f"means must have shape (K, D), got {tuple(means.shape)}")
        n_components, dim = means.shape
        super().__init__(dim)
        learnable = _flag("learnable", learnable)
        logits = torch.zeros(n_components) if logits is None else logits
        self._register("means", means, (n_components, dim), positive=False, learnable=learnable)
        self._register("scales", scales, (n_components, dim), positive=True, learnable=learnable)
        self._register("logits", logits, (n_components,), positive=False, learnable=learnable)

    @property
    def n_components(self) -> int:
        """The number of components K."""
        return self._value("means").shape[0]

    def forward(self) -> MixtureSameFamily:
        return _gaussian_mixture(self._value("logits"), self._value("means"), self._value("scales"))

    def extra_repr(self) -> str:
        return f"dim={self.dim}, n_components={self.n_components}"


class BananaTransform(Transform):
    r"""The shear u -> z with z_1 = u_1, z_2 = u_2 + b (u_1^2 - c), z_d = u_d for d > 2.

    Its Jacobian is unit lower-triangular, so log|det J| = 0 and the transform preserves
    volume: a density pushed through it keeps its values, p_z(z) = p_u(u(z)). The inverse is
    u_2 = z_2 - b (z_1^2 - c).
    """

    domain = constraints.real_vector
    codomain = constraints.real_vector
    bijective = True

    def __init__(self, curvature: float, offset: float, cache_size: int = 0) -> None:
        super().__init__(cache_size=cache_size)
        self.curvature = float(curvature)
        self.offset = float(offset)

    def _shear(self, x: Tensor, sign: float) -> Tensor:
        shift = sign * self.curvature * (x[..., 0] ** 2 - self.offset)
        return torch.cat([x[..., :1], (x[..., 1] + shift).unsqueeze(-1), x[..., 2:]], dim=-1)

    def _call(self, x: Tensor) -> Tensor:
        return self._shear(x, 1.0)

    def _inverse(self, y: Tensor) -> Tensor:
        return self._shear(y, -1.0)

    def log_abs_det_jacobian(self, x: Tensor, y: Tensor) -> Tensor:
        return x.new_zeros(x.shape[:-1])

    def with_cache(self, cache_size: int = 1) -> BananaTransform:
        if self._cache_size == cache_size:
            return self
        return BananaTransform(self.curvature, self.offset, cache_size=cache_size)


class BananaPrior(Prior):
    r"""A banana: a Gaussian bent by a volume-preserving shear.

    u ~ N(0, diag(s_1^2, 1, ..., 1)) and z = T(u) with z_1 = u_1,
    z_2 = u_2 + b (u_1^2 - s_1^2), z_d = u_d for d > 2 (:class:`BananaTransform`). The shear
    has unit Jacobian determinant, so log p(z) = log N(T^{-1}(z); 0, diag(s_1^2, 1, ..., 1))
    exactly. E[z] = 0, Var z_1 = s_1^2, Var z_2 = 1 + 2 b^2 s_1^4, Cov(z_1, z_2) = 0.
    ``rsample`` is reparameterised.

    Defaults ``scale=1.5`` (s_1) and ``curvature=0.5`` (b) bend the mass visibly: at
    u_1 = +-2 s_1 the centre line lies b * 4 s_1^2 = 4.5 above its value at u_1 = 0, over four
    standard deviations of z_2 given z_1.
    """

    def __init__(self, dim: int, *, curvature: float = 0.5, scale: float = 1.5) -> None:
        super().__init__(dim)
        require(self.dim >= 2, f"the banana prior needs dim >= 2, got dim={self.dim}")
        require(
            isinstance(curvature, (int, float)) and math.isfinite(curvature),
            f"option curvature must be a finite number, got {_shown(curvature)}",
        )
        self.curvature = float(curvature)
        self.scale = _positive_float("scale", scale)
        base_scale = torch.ones(self.dim)
        base_scale[0] = self.scale
        self.register_buffer("base_scale", base_scale)

    def forward(self) -> TransformedDistribution:
        base = Independent(Normal(torch.zeros_like(self.base_scale), self.base_scale), 1)
        return TransformedDistribution(base, [BananaTransform(self.curvature, self.scale**2)])

    def extra_repr(self) -> str:
        return f"dim={self.dim}, curvature={self.curvature}, scale={self.scale}"


# ---------------------------------------------------------------------------------------------
# Learned priors: flows and the VampPrior


class FlowPrior(Prior):
    r"""A neural spline flow (zuko ``NSF``) over R^D, after a fixed affine standardisation.

    p(z) = p_flow((z - m) / s) / prod_d s_d, with p_flow the zuko flow (a N(0, I) base pushed
    through ``transforms`` autoregressive rational-quadratic spline transforms) and m, s fixed
    buffers (0 and 1 unless the flow was fitted to samples by :func:`from_samples`, which
    standardises them so the splines' bounded domain [-5, 5] covers the data). ``rsample`` is
    reparameterised. ``log_prob`` casts z to the flow's dtype first (:class:`_FlowDistribution`),
    so float64 or float16 codes are scored by a float32 flow, in float32.

    Attributes:
        flow: the zuko flow module.
        fit_report: ``None``, or for a flow fitted by :func:`from_samples` a dict with
            ``steps``, ``n_train``, ``n_heldout``, ``train_log_likelihood`` and
            ``heldout_log_likelihood`` (mean nats per sample). Not part of the state dict.
    """

    def __init__(
        self,
        dim: int,
        *,
        transforms: int = 3,
        hidden_features: Sequence[int] = (64, 64),
        loc: Tensor | float = 0.0,
        scale: Tensor | float = 1.0,
    ) -> None:
        super().__init__(dim)
        transforms = _positive_int("transforms", transforms)
        hidden = tuple(hidden_features) if isinstance(hidden_features, Sequence) else ()
        require(
            len(hidden) > 0 and all(isinstance(h, int) and h >= 1 for h in hidden),
            f"option hidden_features must be a non-empty list of positive integers, "
            f"got {_shown(hidden_features)}",
        )
        self.flow = zuko.flows.NSF(features=self.dim, transforms=transforms, hidden_features=hidden)
        self._register("loc", loc, (self.dim,), positive=False, learnable=False)
        self._register("scale", scale, (self.dim,), positive=True, learnable=False)
        self.fit_report: dict[str, float] | None = None

    def forward(self) -> TransformedDistribution:
        standardise = AffineTransform(self.loc, self.scale, event_dim=1)
        return _FlowDistribution(self.flow(), [standardise])


class _FlowDistribution(TransformedDistribution):
    r"""p(z) of a :class:`FlowPrior`: log p(z) = log p_flow((z - m) / s) - sum_d log s_d, with z
    first cast to the flow's dtype (that of m, which moves with the flow under ``.to()``), since
    the flow's layers take only their own dtype. The result is in the flow's dtype."""

    def log_prob(self, value: Tensor) -> Tensor:
        return super().log_prob(value.to(self.transforms[0].loc.dtype))


class VampPrior(Prior):
    r"""The VampPrior (Tomczak & Welling, 2018): p(z) = (1/K) sum_k q(z | u_k).

    q(z | u) = N(mu(u), diag exp(logvar(u))) is the model's encoder applied to K learned
    pseudo-inputs u_k. The pseudo-inputs are this module's only parameters: the encoder is
    held by a plain reference, not as a submodule, so its parameters stay with the model
    (``prior.parameters()`` and ``prior.state_dict()`` exclude them, ``.to()`` does not move
    them), while gradients of log p(z) still reach the encoder through ``forward()``. The
    encoder runs on the pseudo-inputs at every ``forward()``, in whatever mode (train/eval)
    the model is in.

    Args:
        dim: the latent dimension D.
        encoder: a callable mapping a batch (K, *input_shape) to ``(mu, logvar)``, each (K, D).
        pseudo_inputs: (K, *input_shape) initial pseudo-inputs (copied into a parameter).
    """

    def __init__(self, dim: int, encoder: Callable[[Tensor], Any], pseudo_inputs: Tensor) -> None:
        super().__init__(dim)
        require(callable(encoder), "option encoder must be callable, returning (mu, logvar)")
        pseudo_inputs = _as_float_tensor("init", pseudo_inputs)
        require(pseudo_inputs.dim() >= 2, "pseudo-inputs must have shape (K, *input_shape)")
        object.__setattr__(self, "encoder", encoder)  # a reference, not a submodule
        self.pseudo_inputs = nn.Parameter(pseudo_inputs.clone())

    @property
    def n_components(self) -> int:
        """The number of pseudo-inputs K."""
        return self.pseudo_inputs.shape[0]

    def forward(self) -> MixtureSameFamily:
        out = self.encoder(self.pseudo_inputs)
        shape = (self.n_components, self.dim)
        ok = (
            isinstance(out, (tuple, list))
            and len(out) == 2
            and all(isinstance(t, Tensor) and tuple(t.shape) == shape for t in out)
        )
        require(ok, f"the VampPrior's encoder must return (mu, logvar), each of shape {shape}")
        mu, logvar = out
        return _gaussian_mixture(mu.new_zeros(shape[0]), mu, (0.5 * logvar).exp())

    def extra_repr(self) -> str:
        return f"dim={self.dim}, n_components={self.n_components}"


# ---------------------------------------------------------------------------------------------
# Wrapping user objects


class DistributionPrior(Prior):
    r"""A fixed prior wrapping a ready-made distribution p(z): ``forward()`` returns it.

    The distribution's tensors are not buffers of this module: ``.to()`` and ``.double()``
    leave them unchanged, so build the distribution on the device and dtype you will use.
    """

    def __init__(self, distribution: Distribution) -> None:
        _check_distribution(distribution, "the distribution")
        super().__init__(distribution.event_shape[0])
        self.distribution = distribution

    def forward(self) -> Distribution:
        return self.distribution


def _check_distribution(dist: Any, what: str) -> Distribution:
    require(isinstance(dist, Distribution), f"{what} is a {type(dist).__name__}, not a torch "
            "Distribution; return a torch.distributions.Distribution")
    ok = dist.batch_shape == torch.Size() and len(dist.event_shape) == 1
    require(
        ok,
        f"{what} has batch_shape {tuple(dist.batch_shape)} and event_shape "
        f"{tuple(dist.event_shape)}, but a prior needs batch_shape () and event_shape (D,); "
        "wrap a factorised distribution as torch.distributions.Independent(base, 1)",
    )
    return dist


def _distribution_of(module: nn.Module) -> Distribution:
    try:
        dist = module()
    except TypeError as exc:
        raise EdvaeError(
            f"the prior module {type(module).__name__} cannot be called without arguments "
            f"({exc}); its forward() must take no arguments and return a Distribution"
        ) from None
    return _check_distribution(dist, f"the output of {type(module).__name__}.forward()")


def as_prior(obj: Distribution | nn.Module) -> nn.Module:
    r"""Turn ``obj`` into a prior module whose ``forward()`` returns p(z).

    * a ``torch.distributions.Distribution`` with event shape (D,) is wrapped in a
      :class:`DistributionPrior` (a fixed prior);
    * a module whose ``forward()`` takes no arguments and returns such a distribution (any
      :class:`Prior`, a zuko flow or lazy distribution) is returned unchanged.

    Anything else raises :class:`EdvaeError`.
    """
    if isinstance(obj, Distribution):
        return DistributionPrior(obj)
    if isinstance(obj, nn.Module):
        if not isinstance(obj, Prior):
            _distribution_of(obj)
        return obj
    raise EdvaeError(
        f"cannot use a {type(obj).__name__} as a prior; pass a torch Distribution with "
        "event_shape (D,), a module whose forward() returns one, or a name for edvae.priors.make"
    )


def event_dim(prior: nn.Module | Distribution) -> int:
    r"""The dimension D of the prior's events (``event_shape == (D,)``).

    Use it to check that a prior matches the latent dimension of a model.
    """
    if isinstance(prior, Prior):
        return prior.dim
    return as_prior(prior)().event_shape[0]  # as_prior checked the event shape


# ---------------------------------------------------------------------------------------------
# Priors known only through samples: the kernel density estimate


def _log_kernel_sums(
    queries: Tensor, samples: Tensor, bandwidths: Tensor, chunk_size: int | None
) -> Tensor:
    r"""S[g, q] = log sum_k exp(-||z_q - s_k||^2 / (2 h_g^2)), in float64 and in chunks.

    Squared distances come from ||z||^2 + ||s||^2 - 2 z.s, one (chunk, chunk) block at a time,
    with a running logsumexp over the blocks of samples; memory is O(chunk^2), never
    O(Q * K * D). ``queries`` (Q, D), ``samples`` (K, D), ``bandwidths`` (G,); returns (G, Q).
    """
    z = queries.to(torch.float64)
    s = samples.to(torch.float64)
    half_precision = 0.5 / bandwidths.to(torch.float64) ** 2
    step = chunk_size or max(len(z), len(s), 1)
    s_blocks = list(zip(s.split(step), (s * s).sum(-1).split(step)))
    rows = []
    for zc in z.split(step):
        zc_sq = (zc * zc).sum(-1, keepdim=True)
        total = None
        for sc, sc_sq in s_blocks:
            sq_dist = (zc_sq + sc_sq - 2.0 * zc @ sc.T).clamp_min(0.0)
            block = torch.stack([torch.logsumexp(-a * sq_dist, dim=-1) for a in half_precision])
            total = block if total is None else torch.logaddexp(total, block)
        rows.append(total)
    return torch.cat(rows, dim=-1) if rows else z.new_zeros(len(bandwidths), 0)


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
        sums = _log_kernel_sums(flat, self.samples, self.bandwidth.reshape(1), self.chunk_size)[0]
        log_norm = _kde_log_norm(dim, len(self.samples), self.bandwidth.to(torch.float64))
        return (sums - log_norm).reshape(value.shape[:-1]).to(value.dtype)

    def rsample(self, sample_shape: torch.Size | Sequence[int] = torch.Size()) -> Tensor:
        shape = torch.Size(sample_shape)
        index = torch.randint(len(self.samples), shape, device=self.samples.device)
        noise = torch.randn(shape + self.event_shape, dtype=self.samples.dtype,
                            device=self.samples.device)
        return self.samples[index] + self.bandwidth * noise


class KDEPrior(Prior):
    r"""A prior known only through samples s_1..s_K: the Gaussian KDE of :class:`KernelDensity`.

    log p(z) = logsumexp_k log N(z; s_k, h^2 I) - log K. The samples and the bandwidth h are
    buffers (they follow ``.to()`` / ``.double()``); nothing is learned.
    """

    def __init__(self, samples: Tensor, bandwidth: float, *, chunk_size: int | None = 1024) -> None:
        samples = _validated_samples(samples, "samples")
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
    return _positive_int("chunk_size", value)


def scott_bandwidth(samples: Tensor) -> float:
    r"""Scott's rule for an isotropic kernel: h = sigma_bar * K^(-1/(D+4)).

    sigma_bar is the mean over dimensions of the per-dimension sample standard deviations
    (K - 1 denominator), K the number of samples and D the dimension. The rule is optimal for
    Gaussian data; for multimodal or strongly non-isotropic samples it oversmooths (prefer
    ``bandwidth="cv"``).
    """
    samples = _validated_samples(samples, "samples")
    n, dim = samples.shape
    sigma_bar = float(samples.to(torch.float64).std(0).mean())
    require(sigma_bar > 0, "the samples are all identical, so Scott's bandwidth is 0; "
            "pass a positive float bandwidth")
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
# Priors known only through samples: reading, checking, fitting


def _validated_samples(samples: Any, source: str, dim: int | None = None) -> Tensor:
    """Samples as a finite (K, D) float tensor with K >= 2, or an EdvaeError about ``source``."""
    fix = "save the samples as a 2-D array of shape (K, D), one sample per row"
    try:
        if isinstance(samples, Tensor):
            array = samples.detach().to(torch.float64)
        else:
            array = torch.as_tensor(np.asarray(samples, dtype=np.float64))
    except (TypeError, ValueError, RuntimeError):
        raise EdvaeError(f"{source} does not hold numbers; {fix}") from None
    require(array.dim() == 2, f"{source} holds an array of shape {tuple(array.shape)}; {fix}")
    n, d = array.shape
    require(n >= 2, f"{source} holds {n} sample(s); provide at least 2 samples, one per row")
    require(d >= 1, f"{source} holds samples with 0 columns; {fix}")
    bad = (~torch.isfinite(array)).any(-1).nonzero().flatten().tolist()
    if bad:
        raise EdvaeError(
            f"{source} has NaN or Inf in data row {bad[0]} (0-based; {len(bad)} bad row(s) "
            "in all); remove or fix those rows"
        )
    require(
        dim is None or d == dim,
        f"{source} holds samples of dimension {d} but the latent dimension is {dim}; use "
        f"samples with {dim} columns or set the latent dimension to {d}",
    )
    dtype = samples.dtype if isinstance(samples, Tensor) and samples.is_floating_point() else None
    return array.to(dtype or torch.get_default_dtype())


def _read_csv(path: Path) -> np.ndarray:
    rows = [line for line in path.read_text().splitlines() if line.strip()]
    start = 1 if rows and not _is_numeric_row(rows[0]) else 0  # skip a header line
    if len(rows) <= start:
        return np.empty((0, 0))
    widths = [len(line.split(",")) for line in rows[start:]]
    ragged = next((i for i, w in enumerate(widths) if w != widths[0]), None)
    if ragged is not None:
        raise ValueError(f"data row {ragged} has {widths[ragged]} values but row 0 has {widths[0]}")
    return np.loadtxt(rows[start:], delimiter=",", ndmin=2, dtype=np.float64)


def _read_npy(path: Path) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except ValueError as exc:  # numpy tries to unpickle anything without the .npy header
        if "pickle" in str(exc):
            raise ValueError("it is not a numeric array written by numpy.save") from None
        raise


def _is_numeric_row(line: str) -> bool:
    try:
        [float(field) for field in line.split(",")]
    except ValueError:
        return False
    return True


def _read_pt(path: Path) -> Any:
    try:
        value = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - torch's message is about its own unpickler, not the file
        raise ValueError("it is not a tensor written by torch.save (or it holds objects other than tensors)") from None
    if not isinstance(value, Tensor):
        raise TypeError(f"it holds a {type(value).__name__}, not a tensor")
    return value


_READERS: dict[str, Callable[[Path], Any]] = {
    ".npy": _read_npy,
    ".pt": _read_pt,
    ".csv": _read_csv,
}


def load_samples(path: str | os.PathLike[str], dim: int | None = None) -> Tensor:
    r"""Read prior samples s_1..s_K from a file into a (K, D) tensor of the default dtype.

    Formats: ``.npy`` (``numpy.save``), ``.pt`` (a tensor saved with ``torch.save``) and
    ``.csv`` (comma-separated numbers, one sample per line, an optional header line). The
    samples must form a 2-D array with at least 2 rows and no NaN or Inf; with ``dim`` given,
    D must equal it. Every problem raises :class:`EdvaeError` naming the file.
    """
    require(isinstance(path, (str, os.PathLike)),
            f"the sample file path must be a string, got {type(path).__name__}; pass "
            "the path of a .npy, .pt or .csv file")
    require(str(path).strip() != "",
            "the sample file path is empty; pass the path of a .npy, .pt or .csv file "
            "(as in prior='samples:PATH')")
    path = Path(path)
    source = f"sample file {path}"
    require(path.is_file(), f"{source} does not exist or is not a file; check the path")
    suffix = path.suffix.lower()
    require(
        suffix in _READERS,
        f"{source} has unsupported extension {suffix or '(none)'!r}; save the samples as one "
        f"of {', '.join(_READERS)}",
    )
    try:
        raw = _READERS[suffix](path)
    except Exception as exc:  # noqa: BLE001 - every reader failure is the file's problem
        raise EdvaeError(
            f"{source} could not be read as {suffix} ({exc}); re-save it as a (K, D) array"
        ) from None
    return _validated_samples(raw, source, dim).to(torch.get_default_dtype())


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
    samples = _validated_samples(samples, "samples")
    generator = _generator(seed)
    chunk_size = _chunk_size(chunk_size)
    if method == "kde":
        if isinstance(bandwidth, str):
            require(bandwidth in ("scott", "cv"),
                    f"bandwidth must be 'scott', 'cv' or a positive number, got {bandwidth!r}")
            h = scott_bandwidth(samples) if bandwidth == "scott" else _cv_bandwidth(
                samples, chunk_size, generator)
        else:
            h = _positive_float("bandwidth", bandwidth)
        return KDEPrior(samples, h, chunk_size=chunk_size)
    require(method == "flow", f"method must be 'kde' or 'flow', got {_shown(method)}")
    ok = isinstance(flow_steps, (int, np.integer)) and not isinstance(flow_steps, bool)
    require(ok and flow_steps >= 0, "flow_steps must be a non-negative integer (0: leave the "
            f"flow unfitted), got {_shown(flow_steps)}")
    steps = int(flow_steps)
    std = samples.std(0)
    require(bool((std > 0).all()), "the samples are constant in some dimension, so no flow "
            "density exists; drop that dimension or use method='kde' with a float bandwidth")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        prior = FlowPrior(samples.shape[1], loc=samples.mean(0), scale=std).to(samples.dtype)
    if steps:
        _fit_flow(prior, samples, steps, generator)
    return prior


# ---------------------------------------------------------------------------------------------
# The registry


def _kmeans(data: Tensor, k: int, generator: torch.Generator) -> Tensor:
    r"""k cluster centres of ``data``: k-means (Lloyd) from greedy k-means++ seeds, best of 4.

    Seeding draws each new centre with probability proportional to the squared distance to
    the nearest centre so far, keeping the best of 2 + log k draws; 20 Lloyd steps follow, and
    of 4 restarts the one with the least within-cluster squared distance wins. At most
    ``_KMEANS_MAX_ROWS`` random rows of ``data`` are used.
    """
    data = data[torch.randperm(len(data), generator=generator)[:_KMEANS_MAX_ROWS]]
    best, best_cost = data[:k], math.inf
    for _ in range(4):
        centres = _kmeans_pp_seeds(data, k, generator)
        for _ in range(20):
            assign = torch.cdist(data, centres).argmin(1)
            counts = torch.bincount(assign, minlength=k).unsqueeze(1)
            sums = torch.zeros_like(centres).index_add_(0, assign, data)
            centres = torch.where(counts > 0, sums / counts.clamp_min(1), centres)
        cost = float(torch.cdist(data, centres).min(1).values.pow(2).sum())
        if cost < best_cost:
            best, best_cost = centres, cost
    return best


def _kmeans_pp_seeds(data: Tensor, k: int, generator: torch.Generator) -> Tensor:
    n = len(data)
    trials = 2 + int(math.log(k))
    centres = [data[int(torch.randint(n, (1,), generator=generator))]]
    nearest = ((data - centres[0]) ** 2).sum(-1)
    for _ in range(1, k):
        weights = nearest if float(nearest.sum()) > 0 else torch.ones_like(nearest)
        picks = torch.multinomial(weights, trials, replacement=True, generator=generator)
        options = [torch.minimum(nearest, ((data - data[i]) ** 2).sum(-1)) for i in picks]
        best = min(range(trials), key=lambda t: float(options[t].sum()))
        centres.append(data[int(picks[best])])
        nearest = options[best]
    return torch.stack(centres)


def _ring_means(n_components: int, radius: float, dim: int) -> Tensor:
    """m_k = radius (cos 2 pi k/K, sin 2 pi k/K, 0, ..., 0)."""
    angles = 2 * math.pi * torch.arange(n_components, dtype=torch.float64) / n_components
    means = torch.zeros(n_components, dim, dtype=torch.float64)
    means[:, 0], means[:, 1] = radius * angles.cos(), radius * angles.sin()
    return means.to(torch.get_default_dtype())


def _normal(dim: int) -> Prior:
    """N(0, I)."""
    return FactorizedPrior(Normal, dim, loc=0.0, scale=1.0)


def _diag_normal(dim: int, *, loc: Any = 0.0, scale: Any = 1.0, learnable: bool = False) -> Prior:
    """N(loc, diag scale^2)."""
    return FactorizedPrior(Normal, dim, learnable=learnable, loc=loc, scale=scale)


def _student_t(
    dim: int, *, df: Any = 3.0, loc: Any = 0.0, scale: Any = 1.0, learnable: bool = False
) -> Prior:
    """prod_d t_df(z_d; loc, scale)."""
    return FactorizedPrior(StudentT, dim, learnable=learnable, df=df, loc=loc, scale=scale)


def _laplace(dim: int, *, loc: Any = 0.0, scale: Any = 1.0, learnable: bool = False) -> Prior:
    """prod_d Laplace(z_d; loc, scale)."""
    return FactorizedPrior(Laplace, dim, learnable=learnable, loc=loc, scale=scale)


def _mixture(
    dim: int,
    *,
    n_components: int = 8,
    init: Tensor | None = None,
    scale: Any = 1.0,
    learnable: bool = True,
    seed: int = 0,
) -> Prior:
    """sum_k pi_k N(m_k, diag s_k^2); m_k from k-means on ``init`` data, else seeded N(0, I)."""
    k = _positive_int("n_components", n_components, _MAX_COMPONENTS)
    generator = _generator(seed)
    if init is None:
        means = torch.randn(k, dim, generator=generator)
    else:
        data = _validated_samples(init, "option init", dim)
        require(len(data) >= k, f"option init has {len(data)} rows but n_components={k}; "
                "pass at least as many data points as components")
        means = _kmeans(data, k, generator)
    return GaussianMixturePrior(means, scale, learnable=learnable)


def _mog_ring(dim: int, *, n_components: int = 8, radius: float = 2.0, scale: Any = 0.3) -> Prior:
    """(1/K) sum_k N(m_k, scale^2 I), m_k on a circle of ``radius`` in dimensions (0, 1)."""
    require(dim >= 2, f"the mog_ring prior needs dim >= 2, got dim={dim}")
    means = _ring_means(_positive_int("n_components", n_components, _MAX_COMPONENTS),
                        _positive_float("radius", radius), dim)
    return GaussianMixturePrior(means, scale, learnable=False)


def _banana(dim: int, *, curvature: float = 0.5, scale: float = 1.5) -> Prior:
    """See :class:`BananaPrior`."""
    return BananaPrior(dim, curvature=curvature, scale=scale)


def _flow(dim: int, *, transforms: int = 3, hidden_features: Sequence[int] = (64, 64)) -> Prior:
    """See :class:`FlowPrior`."""
    return FlowPrior(dim, transforms=transforms, hidden_features=hidden_features)


def _vamp(
    dim: int,
    *,
    encoder: Callable[[Tensor], Any],
    input_shape: Sequence[int] | None = None,
    n_components: int = 50,
    init: Tensor | None = None,
    seed: int = 0,
) -> Prior:
    """See :class:`VampPrior`; pseudo-inputs are K random rows of ``init``, else seeded N(0, I)."""
    k = _positive_int("n_components", n_components, _MAX_COMPONENTS)
    generator = _generator(seed)
    if init is None:
        require(input_shape is not None, "the vamp prior needs input_shape=(...) or init=data")
        sizes = (input_shape,) if isinstance(input_shape, int) else tuple(input_shape)
        shape = tuple(_positive_int("input_shape entries", size) for size in sizes)
        pseudo = torch.randn((k, *shape), generator=generator)
    else:
        data = _as_float_tensor("init", init)
        require(data.dim() >= 2 and len(data) >= k,
                f"option init must have shape (M, *input_shape) with M >= n_components={k}, "
                f"got {tuple(data.shape)}")
        require(input_shape is None or tuple(input_shape) == tuple(data.shape[1:]),
                f"option init has rows of shape {tuple(data.shape[1:])} but input_shape is "
                f"{tuple(input_shape or ())}; make them agree")
        keep = torch.randperm(len(data), generator=generator)[:k]
        pseudo = data if len(data) == k else data[keep]
    return VampPrior(dim, encoder, pseudo)


def _samples(
    dim: int,
    *,
    path: str | os.PathLike[str],
    method: str = "kde",
    bandwidth: str | float = "cv",
    chunk_size: int | None = 1024,
    flow_steps: int = 1000,
    seed: int = 0,
) -> Prior:
    """See :func:`from_samples` and :func:`load_samples`."""
    return from_samples(load_samples(path, dim=dim), method, bandwidth=bandwidth,
                        chunk_size=chunk_size, flow_steps=flow_steps, seed=seed)


_REGISTRY: dict[str, Callable[..., Prior]] = {
    "normal": _normal,
    "diag_normal": _diag_normal,
    "mixture": _mixture,
    "mog_ring": _mog_ring,
    "banana": _banana,
    "student_t": _student_t,
    "laplace": _laplace,
    "flow": _flow,
    "vamp": _vamp,
    "samples": _samples,
}


def names() -> list[str]:
    """The prior names :func:`make` accepts."""
    return list(_REGISTRY)


def make(name: str, dim: int = 2, **options: Any) -> Prior:
    r"""Build the prior called ``name`` over R^``dim``; ``forward()`` returns p(z).

    Options per name (defaults in brackets):

    * ``normal``: none. p(z) = N(z; 0, I).
    * ``diag_normal``: ``loc`` [0], ``scale`` [1], ``learnable`` [False].
      p(z) = prod_d N(z_d; loc_d, scale_d^2).
    * ``student_t``: ``df`` [3], ``loc`` [0], ``scale`` [1], ``learnable`` [False].
      p(z) = prod_d t_df((z_d - loc_d) / scale_d) / scale_d.
    * ``laplace``: ``loc`` [0], ``scale`` [1], ``learnable`` [False].
      p(z) = prod_d exp(-|z_d - loc_d| / scale_d) / (2 scale_d).
    * ``mixture``: ``n_components`` [8], ``init`` [None: means ~ N(0, I) seeded; else data
      (M, D) whose k-means centres start the means; recommended], ``scale`` [1, the initial
      component std],
      ``learnable`` [True], ``seed`` [0]. p(z) = sum_k pi_k N(z; m_k, diag s_k^2).
    * ``mog_ring``: ``n_components`` [8], ``radius`` [2], ``scale`` [0.3].
      p(z) = (1/K) sum_k N(z; m_k, scale^2 I), m_k = radius (cos 2 pi k/K, sin 2 pi k/K, 0..).
    * ``banana``: ``curvature`` [0.5], ``scale`` [1.5]; see :class:`BananaPrior`.
    * ``flow``: ``transforms`` [3], ``hidden_features`` [(64, 64)]; see :class:`FlowPrior`.
    * ``vamp``: ``encoder`` (required), ``input_shape``, ``n_components`` [50], ``init``
      [None: N(0, I) pseudo-inputs; else data rows], ``seed`` [0]; see :class:`VampPrior`.
    * ``samples``: ``path`` (required), ``method`` ["kde"], ``bandwidth`` ["cv"],
      ``chunk_size`` [1024], ``flow_steps`` [1000; 0: unfitted], ``seed`` [0]; see
      :func:`from_samples`.

    Unknown names, unknown options, missing required options and invalid values raise
    :class:`EdvaeError`, as do ``dim`` > 65536 and ``n_components`` > 100000 (sizes that would
    allocate gigabytes).
    """
    require(
        isinstance(name, str) and name in _REGISTRY,
        f"unknown prior name {_shown(name)}; choose one of: {', '.join(names())}",
    )
    dim = _positive_int("dim", dim, _MAX_DIM)
    factory = _REGISTRY[name]
    parameters = list(inspect.signature(factory).parameters.values())[1:]
    accepted = [p.name for p in parameters]
    unknown = sorted(set(options) - set(accepted))
    require(
        not unknown,
        f"unknown option(s) {', '.join(unknown)} for prior {name!r}; accepted options: "
        f"{', '.join(accepted) or 'none'}",
    )
    missing = [p.name for p in parameters if p.default is p.empty and p.name not in options]
    needed = ", ".join(f"{option}=..." for option in missing)
    require(not missing, f"prior {name!r} needs option(s) {', '.join(missing)}; pass {needed}")
    return factory(dim, **options)
