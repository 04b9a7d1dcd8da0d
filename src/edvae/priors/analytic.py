r"""Analytic priors: factorised families, Gaussian mixtures, the ring and the banana, and the
data set's own generating prior (``"true"``)."""

from __future__ import annotations

import math
from typing import Any, cast

import torch
from torch import Tensor, nn
from torch.distributions import (
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
from edvae.priors.base import (
    MAX_COMPONENTS,
    Prior,
    as_float_tensor,
    as_prior,
    gaussian_mixture,
    positive_float,
    positive_int,
    seeded_generator,
    shown,
    validated_samples,
)
from edvae.priors.kmeans import kmeans_centres
from edvae.priors.registry import PriorContext, names, register

__all__ = ["BananaPrior", "BananaTransform", "FactorizedPrior", "GaussianMixturePrior"]


def _flag(name: str, value: Any) -> bool:
    require(isinstance(value, bool), f"option {name} must be True or False, got {shown(value)}")
    return bool(value)


#: N(0, I) draws whose k-means centres start the means of a learned mixture prior in a model.
_MIXTURE_INIT_DRAWS = 4096


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

    def __init__(self, family: type[Distribution], dim: int, *, learnable: bool = False, **params: Any) -> None:
        super().__init__(dim)
        learnable = _flag("learnable", learnable)
        self.family = family
        self.param_names = tuple(params)
        # a class-level dict on every torch distribution (a property only on the base class)
        arg_constraints = cast("dict[str, constraints.Constraint]", family.arg_constraints)
        for name, value in params.items():
            constraint = arg_constraints.get(name)
            require(
                constraint is constraints.real or constraint is constraints.positive,
                f"{family.__name__} has no real or positive parameter {name!r}; "
                f"use one of {', '.join(arg_constraints)}",
            )
            positive = constraint is constraints.positive
            self._register(name, value, (self.dim,), positive=positive, learnable=learnable)

    def forward(self) -> Independent:
        # the parameters were checked when registered (finite; positive ones learned as logs),
        # so the distribution skips torch's per-call argument checks (host synchronisations)
        params: dict[str, Any] = {name: self._value(name) for name in self.param_names}
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

    means: Tensor
    scales: Tensor
    logits: Tensor

    def __init__(
        self,
        means: Tensor,
        scales: Tensor | float = 1.0,
        logits: Tensor | None = None,
        *,
        learnable: bool = False,
    ) -> None:
        means = as_float_tensor("means", means)
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
        return gaussian_mixture(self._value("logits"), self._value("means"), self._value("scales"))

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

    base_scale: Tensor

    def __init__(self, dim: int, *, curvature: float = 0.5, scale: float = 1.5) -> None:
        super().__init__(dim)
        require(self.dim >= 2, f"the banana prior needs dim >= 2, got dim={self.dim}")
        require(
            isinstance(curvature, (int, float)) and math.isfinite(curvature),
            f"option curvature must be a finite number, got {shown(curvature)}",
        )
        self.curvature = float(curvature)
        self.scale = positive_float("scale", scale)
        base_scale = torch.ones(self.dim)
        base_scale[0] = self.scale
        self.register_buffer("base_scale", base_scale)

    def forward(self) -> TransformedDistribution:
        base = Independent(Normal(torch.zeros_like(self.base_scale), self.base_scale), 1)
        return TransformedDistribution(base, [BananaTransform(self.curvature, self.scale**2)])

    def extra_repr(self) -> str:
        return f"dim={self.dim}, curvature={self.curvature}, scale={self.scale}"


# ---------------------------------------------------------------------------------------------
# Factories (registered in the order :func:`edvae.priors.names` lists them)


def _ring_means(n_components: int, radius: float, dim: int) -> Tensor:
    """m_k = radius (cos 2 pi k/K, sin 2 pi k/K, 0, ..., 0)."""
    angles = 2 * math.pi * torch.arange(n_components, dtype=torch.float64) / n_components
    means = torch.zeros(n_components, dim, dtype=torch.float64)
    means[:, 0], means[:, 1] = radius * angles.cos(), radius * angles.sin()
    return means.to(torch.get_default_dtype())


@register("normal")
def _normal(dim: int) -> Prior:
    """N(0, I)."""
    return FactorizedPrior(Normal, dim, loc=0.0, scale=1.0)


@register("diag_normal")
def _diag_normal(dim: int, *, loc: Any = 0.0, scale: Any = 1.0, learnable: bool = False) -> Prior:
    """N(loc, diag scale^2)."""
    return FactorizedPrior(Normal, dim, learnable=learnable, loc=loc, scale=scale)


@register("mixture")
def _mixture(
    dim: int,
    *,
    n_components: int = 8,
    init: Any = None,  # data (M, D): a tensor, an array or nested lists
    scale: Any = 1.0,
    learnable: bool = True,
    seed: int = 0,
    context: PriorContext | None = None,
) -> Prior:
    """sum_k pi_k N(m_k, diag s_k^2); m_k from k-means on ``init`` data, else seeded N(0, I).

    In a model (a ``context``) without ``init``, the data for k-means are 4096 seeded N(0, I)
    draws: K raw N(0, I) draws clump, and a mixture grown from clumped means keeps merged
    modes; the k-means centres of many draws spread the means evenly over its mass.
    """
    if init is None and context is not None:
        init = torch.randn(_MIXTURE_INIT_DRAWS, dim, generator=torch.Generator().manual_seed(0))
    k = positive_int("n_components", n_components, MAX_COMPONENTS)
    generator = seeded_generator(seed)
    if init is None:
        means = torch.randn(k, dim, generator=generator)
    else:
        data = validated_samples(init, "option init", dim)
        require(
            len(data) >= k,
            f"option init has {len(data)} rows but n_components={k}; pass at least as many data points as components",
        )
        means = kmeans_centres(data, k, generator)
    return GaussianMixturePrior(means, scale, learnable=learnable)


@register("mog_ring")
def _mog_ring(dim: int, *, n_components: int = 8, radius: float = 2.0, scale: Any = 0.3) -> Prior:
    """(1/K) sum_k N(m_k, scale^2 I), m_k on a circle of ``radius`` in dimensions (0, 1)."""
    require(dim >= 2, f"the mog_ring prior needs dim >= 2, got dim={dim}")
    means = _ring_means(
        positive_int("n_components", n_components, MAX_COMPONENTS), positive_float("radius", radius), dim
    )
    return GaussianMixturePrior(means, scale, learnable=False)


@register("banana")
def _banana(dim: int, *, curvature: float = 0.5, scale: float = 1.5) -> Prior:
    """See :class:`BananaPrior`."""
    return BananaPrior(dim, curvature=curvature, scale=scale)


@register("student_t")
def _student_t(dim: int, *, df: Any = 3.0, loc: Any = 0.0, scale: Any = 1.0, learnable: bool = False) -> Prior:
    """prod_d t_df(z_d; loc, scale)."""
    return FactorizedPrior(StudentT, dim, learnable=learnable, df=df, loc=loc, scale=scale)


@register("laplace")
def _laplace(dim: int, *, loc: Any = 0.0, scale: Any = 1.0, learnable: bool = False) -> Prior:
    """prod_d Laplace(z_d; loc, scale)."""
    return FactorizedPrior(Laplace, dim, learnable=learnable, loc=loc, scale=scale)


@register("true")
def _true(dim: int, *, context: PriorContext) -> nn.Module:
    """The data set's own generating prior p_true(z), known for synthetic data only."""
    data = context.data
    if data is None or data.ground_truth is None:
        raise EdvaeError(
            f"model.prior='true' needs synthetic data with a known prior, but data set "
            f"'{getattr(data, 'name', None)}' has none; choose one of: {', '.join(names())}"
        )
    return as_prior(data.ground_truth.prior)
