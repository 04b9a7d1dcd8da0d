r"""Learned priors: a neural spline flow and the VampPrior."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import zuko
from torch import Tensor, nn
from torch.distributions import AffineTransform, MixtureSameFamily, TransformedDistribution

from edvae.errors import EdvaeError, require
from edvae.priors.base import (
    MAX_COMPONENTS,
    Prior,
    as_float_tensor,
    gaussian_mixture,
    positive_int,
    seeded_generator,
    shown,
)
from edvae.priors.registry import PriorContext, register

__all__ = ["FlowPrior", "VampPrior"]


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

    loc: Tensor
    scale: Tensor

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
        transforms = positive_int("transforms", transforms)
        hidden = tuple(hidden_features) if isinstance(hidden_features, Sequence) else ()
        require(
            len(hidden) > 0 and all(isinstance(h, int) and h >= 1 for h in hidden),
            f"option hidden_features must be a non-empty list of positive integers, got {shown(hidden_features)}",
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
        standardise = self.transforms[0]  # FlowPrior.forward puts its AffineTransform(loc, scale) first
        assert isinstance(standardise, AffineTransform) and isinstance(standardise.loc, Tensor)
        return super().log_prob(value.to(standardise.loc.dtype))


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

    encoder: Callable[[Tensor], Any]

    def __init__(self, dim: int, encoder: Callable[[Tensor], Any], pseudo_inputs: Tensor) -> None:
        super().__init__(dim)
        require(callable(encoder), "option encoder must be callable, returning (mu, logvar)")
        pseudo_inputs = as_float_tensor("init", pseudo_inputs)
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
        return gaussian_mixture(mu.new_zeros(shape[0]), mu, (0.5 * logvar).exp())

    def extra_repr(self) -> str:
        return f"dim={self.dim}, n_components={self.n_components}"


# ---------------------------------------------------------------------------------------------
# Factories


@register("flow")
def _flow(dim: int, *, transforms: int = 3, hidden_features: Sequence[int] = (64, 64)) -> Prior:
    """See :class:`FlowPrior`."""
    return FlowPrior(dim, transforms=transforms, hidden_features=hidden_features)


@register("vamp")
def _vamp(
    dim: int,
    *,
    encoder: Callable[[Tensor], Any] | None = None,
    input_shape: int | Sequence[int] | None = None,
    n_components: int = 50,
    init: Any = None,  # data rows (M, *input_shape): a tensor, an array or nested lists
    seed: int = 0,
    context: PriorContext | None = None,
) -> Prior:
    """See :class:`VampPrior`; pseudo-inputs are K random rows of ``init``, else seeded N(0, I).

    In a model (a ``context`` with data), the encoder and input shape are the model's and,
    without ``init``, the pseudo-inputs start at K training rows drawn by a generator seeded 0.
    """
    k = positive_int("n_components", n_components, MAX_COMPONENTS)
    if context is not None and context.data is not None:
        encoder = context.encoder if encoder is None else encoder
        input_shape = tuple(context.data.x_shape) if input_shape is None else input_shape
        if init is None:
            train = context.data.train
            rows = torch.randperm(train.shape[0], generator=torch.Generator().manual_seed(0))[:k]
            init = train[rows].clone()
    if encoder is None:
        raise EdvaeError("prior 'vamp' needs option(s) encoder; pass encoder=...")
    generator = seeded_generator(seed)
    sizes = None if input_shape is None else (input_shape,) if isinstance(input_shape, int) else tuple(input_shape)
    if init is None:
        if sizes is None:
            raise EdvaeError("the vamp prior needs input_shape=(...) or init=data")
        shape = tuple(positive_int("input_shape entries", size) for size in sizes)
        pseudo = torch.randn((k, *shape), generator=generator)
    else:
        data = as_float_tensor("init", init)
        require(
            data.dim() >= 2 and len(data) >= k,
            f"option init must have shape (M, *input_shape) with M >= n_components={k}, got {tuple(data.shape)}",
        )
        require(
            sizes is None or sizes == tuple(data.shape[1:]),
            f"option init has rows of shape {tuple(data.shape[1:])} but input_shape is {sizes}; make them agree",
        )
        keep = torch.randperm(len(data), generator=generator)[:k]
        pseudo = data if len(data) == k else data[keep]
    return VampPrior(dim, encoder, pseudo)
