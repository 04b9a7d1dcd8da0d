r"""The base of every prior: the :class:`Prior` module, its parameter helpers, and the one
conversion of a prior-like object into a distribution p(z).

A prior is anything that yields a :class:`torch.distributions.Distribution` with
``batch_shape == ()`` and ``event_shape == (D,)``. Following zuko's lazy-distribution
convention, a prior module's ``forward()`` builds and returns that distribution, so learned
parameters live on the module and move with ``.to()`` / ``.double()``.
:func:`distribution_of` accepts all three prior-like objects (a Distribution, a module or
callable returning one, a zuko flow) and is the only place that checks them.
"""

from __future__ import annotations

import abc
import copy
import math
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.distributions import Categorical, Distribution, Independent, MixtureSameFamily, Normal, Transform
from torch.distributions.transforms import _InverseTransform

from edvae.errors import EdvaeError, require

__all__ = [
    "DistributionPrior",
    "Prior",
    "as_prior",
    "check_prior_device",
    "distribution_of",
    "distribution_tensors",
    "event_dim",
    "map_distribution_tensors",
]

MAX_COMPONENTS = 100_000  # make(): at most this many mixture components or pseudo-inputs


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
        self.dim = positive_int("dim", dim)

    @abc.abstractmethod
    def forward(self) -> Distribution:
        """Build and return the distribution p(z), event shape (D,)."""

    def extra_repr(self) -> str:
        return f"dim={self.dim}"

    def _register(self, name: str, value: Any, shape: tuple[int, ...], *, positive: bool, learnable: bool) -> None:
        """Store ``value`` broadcast to ``shape`` as a buffer, or as a learned parameter."""
        tensor = as_float_tensor(name, value)
        try:
            tensor = tensor.expand(shape).clone()
        except RuntimeError:
            raise EdvaeError(
                f"option {name} has shape {tuple(tensor.shape)}; give a number or a tensor broadcastable to {shape}"
            ) from None
        valid = bool(torch.isfinite(tensor).all()) and (not positive or bool((tensor > 0).all()))
        kind = "positive and finite" if positive else "finite"
        given = tensor.tolist() if tensor.numel() <= 8 else "a tensor"
        require(valid, f"option {name} must be {kind}, got {given}; fix its value")
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


def as_float_tensor(name: str, value: Any) -> Tensor:
    """Option ``name`` as a detached tensor, floating point (integers become the default dtype);
    a bool or a value torch cannot convert is refused in one line."""
    if isinstance(value, bool):
        raise EdvaeError(f"option {name} must be a number or a tensor, not a bool; fix its value")
    try:
        tensor = torch.as_tensor(value).detach()
    except (TypeError, ValueError, RuntimeError):
        raise EdvaeError(f"option {name} must be a number or a tensor, got {type(value).__name__}") from None
    if not tensor.is_floating_point():
        tensor = tensor.to(torch.get_default_dtype())
    return tensor


def shown(value: Any) -> str:
    """``repr(value)`` for a one-line message, or its type (and shape) if that spans lines."""
    text = repr(value)
    if "\n" not in text and len(text) <= 80:
        return text
    shape = getattr(value, "shape", None)
    return f"a {type(value).__name__}" + ("" if shape is None else f" of shape {tuple(shape)}")


def positive_int(name: str, value: Any, maximum: int | None = None) -> int:
    """``value`` as an int n >= 1 (a Python or NumPy integer, not a bool), n <= ``maximum`` when
    given; else a one-line :class:`EdvaeError` naming ``name``."""
    ok = isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value >= 1
    require(bool(ok), f"{name} must be a positive integer, got {shown(value)}")
    require(maximum is None or value <= maximum, f"{name}={value!r} is too large; use at most {maximum}")
    return int(value)


def positive_float(name: str, value: Any) -> float:
    """Option ``name`` as a finite float x > 0 (not a bool), else a one-line :class:`EdvaeError`."""
    ok = isinstance(value, (int, float, np.floating)) and not isinstance(value, bool)
    require(
        ok and math.isfinite(value) and value > 0,
        f"option {name} must be a positive number, got {shown(value)}",
    )
    return float(value)


def seeded_generator(seed: Any) -> torch.Generator:
    """A CPU ``torch.Generator`` seeded with the integer option ``seed``."""
    ok = isinstance(seed, (int, np.integer)) and not isinstance(seed, bool)
    require(ok, f"option seed must be an integer, got {shown(seed)}")
    return torch.Generator().manual_seed(int(seed))


def gaussian_mixture(logits: Tensor, means: Tensor, scales: Tensor) -> MixtureSameFamily:
    r"""p(z) = sum_k softmax(logits)_k N(z; means_k, diag scales_k^2)."""
    components = Independent(Normal(means, scales), 1)
    return MixtureSameFamily(Categorical(logits=logits), components)


def validated_samples(samples: Any, source: str, dim: int | None = None) -> Tensor:
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


# ---------------------------------------------------------------------------------------------
# Prior-like objects: the one conversion to a distribution, and the module wrapping one


# ---------------------------------------------------------------------------------------------
# The tensors inside a distribution: mapped by .to() (DistributionPrior), checked against the model


def _walk(obj: Any, fn: Callable[[Tensor], Tensor], memo: dict[int, Any]) -> Any:
    """``obj`` with every tensor t reachable through it replaced by ``fn(t)``; see
    :func:`map_distribution_tensors`. An object none of whose contents changed is returned
    itself (not copied); ``memo`` maps ``id`` of a visited object to its result, so shared
    tensors stay shared and reference cycles end."""
    key = id(obj)
    if key in memo:
        return memo[key]
    if isinstance(obj, Tensor):
        out: Any = fn(obj)
    elif isinstance(obj, nn.Module):
        for t in (*obj.parameters(), *obj.buffers()):
            fn(t)  # visited (for a check), never replaced: a module is moved by its own .to()
        out = obj
    elif isinstance(obj, (list, tuple)) and not isinstance(obj, torch.Size):
        memo[key] = obj
        items = [_walk(item, fn, memo) for item in obj]
        changed = any(a is not b for a, b in zip(items, obj, strict=True))
        out = (items if isinstance(obj, list) else type(obj)(items)) if changed else obj
    elif isinstance(obj, dict):
        memo[key] = obj
        mapped = {k: _walk(v, fn, memo) for k, v in obj.items()}
        out = mapped if any(mapped[k] is not v for k, v in obj.items()) else obj
    elif isinstance(obj, (Distribution, Transform)):
        memo[key] = obj  # a cycle back to obj (a transform and its inverse) keeps the original
        attributes = vars(obj)
        mapped = {k: _walk(v, fn, memo) for k, v in attributes.items()}
        if any(mapped[k] is not v for k, v in attributes.items()):
            out = copy.copy(obj)
            out.__dict__.update(mapped)
            if isinstance(obj, Transform):  # caches tied to the old tensors
                if not isinstance(obj, _InverseTransform):  # its _inv caches the inverse (an
                    out._inv = None  # inverse's _inv is its forward transform: mapped, kept)
                if "_cached_x_y" in attributes:
                    out._cached_x_y = (None, None)
        else:
            out = obj
    else:
        out = obj
    memo[key] = out
    return out


def map_distribution_tensors(dist: Distribution, fn: Callable[[Tensor], Tensor]) -> Distribution:
    r"""A copy of ``dist`` with every tensor inside it replaced by ``fn(t)``: what ``.to()``,
    ``.double()`` or ``.cuda()`` do to a module's buffers, applied to a distribution.

    It walks the attributes of the distribution and of every distribution and transform it
    holds (``base_dist``, ``component_distribution``, ``transforms``, ...), in lists, tuples
    and dicts, including the values torch caches lazily (``Categorical.probs`` after
    ``.logits`` was read). Objects that hold a mapped tensor are shallow copies; ``dist`` and
    everything it shares with others (a data set's ground truth) are left unchanged. A module
    inside the distribution is not moved (move it with its own ``.to()``).
    """
    return _walk(dist, fn, {})


def distribution_tensors(dist: Any) -> Iterator[Tensor]:
    """Every tensor reachable in ``dist`` by :func:`map_distribution_tensors`' walk (and the
    parameters and buffers of any module it holds), each once."""
    found: list[Tensor] = []

    def visit(t: Tensor) -> Tensor:
        found.append(t)
        return t

    _walk(dist, visit, {})
    return iter(found)


def check_prior_device(dist: Distribution, device: torch.device, prior: Any) -> None:
    r"""Raise one line if a tensor of ``dist`` (the output of ``prior``) lies on another device
    than ``device`` (the model's).

    0-d CPU tensors are allowed (torch treats them as scalars on any device). Only devices are
    compared, never values: no host synchronisation, cheap enough to run once per device.
    """
    for t in distribution_tensors(dist):
        if t.device != device and not (t.dim() == 0 and t.device.type == "cpu"):
            raise EdvaeError(
                f"the prior {type(prior).__name__} returns a distribution with tensors on {t.device} while the "
                f"model is on {device}; build its tensors as buffers/parameters so they follow .to(), or on "
                "the model's device"
            )


class DistributionPrior(Prior):
    r"""A fixed prior wrapping a ready-made distribution p(z): ``forward()`` returns it.

    The distribution's tensors follow ``.to()``, ``.double()``, ``.cuda()`` like buffers:
    each moves a copy of the distribution (:func:`map_distribution_tensors`; the distribution
    passed in, perhaps shared with a data set, is never changed). They are not buffers: the
    state dict stays empty, as the distribution is rebuilt with the module.
    """

    def __init__(self, distribution: Distribution) -> None:
        _check_distribution(distribution, "the distribution")
        super().__init__(distribution.event_shape[0])
        self.distribution = distribution

    def forward(self) -> Distribution:
        return self.distribution

    def _apply(self, fn: Callable[[Tensor], Tensor], recurse: bool = True) -> DistributionPrior:
        super()._apply(fn, recurse)
        with torch.no_grad():
            self.distribution = map_distribution_tensors(self.distribution, fn)
        return self


def distribution_of(prior: Any, dim: int | None = None) -> Distribution:
    r"""The distribution p(z) behind any prior-like object: the one conversion of the package.

    ``prior`` is a ``torch.distributions.Distribution`` (returned as it is) or, following
    zuko's lazy-distribution convention, a module or callable whose call with no arguments
    returns one (any :class:`Prior`, a zuko flow or lazy distribution). The result must have
    ``batch_shape == ()`` and ``event_shape == (D,)``, and with ``dim`` given D must equal it;
    anything else raises :class:`EdvaeError`. It only calls and checks shapes (no host
    synchronisation), so objectives call it on every step.
    """
    if isinstance(prior, Distribution):
        dist, what = prior, "the distribution"
    else:
        require(
            callable(prior),
            f"cannot use a {type(prior).__name__} as a prior; pass a torch Distribution with "
            "event_shape (D,), a module whose forward() returns one, or a name for edvae.priors.make",
        )
        try:
            dist = prior()
        except TypeError as exc:
            raise EdvaeError(
                f"the prior {type(prior).__name__} cannot be called without arguments ({exc}); "
                "its forward() must take no arguments and return a Distribution"
            ) from None
        what = (
            f"the output of {type(prior).__name__}.forward()"
            if isinstance(prior, nn.Module)
            else f"the value returned by the prior {getattr(prior, '__qualname__', 'callable')}"
        )
    _check_distribution(dist, what)
    if dim is not None and tuple(dist.event_shape) != (dim,):
        raise EdvaeError(
            f"prior has event_shape {tuple(dist.event_shape)} but mu and z have latent "
            f"dimension D={dim}; use a prior over R^{dim} (wrap per-dimension distributions "
            "in torch.distributions.Independent(..., 1))."
        )
    return dist


def _check_distribution(dist: Any, what: str) -> Distribution:
    require(
        isinstance(dist, Distribution),
        f"{what} is a {type(dist).__name__}, not a torch Distribution; return a torch.distributions.Distribution",
    )
    ok = dist.batch_shape == torch.Size() and len(dist.event_shape) == 1
    require(
        ok,
        f"{what} has batch_shape {tuple(dist.batch_shape)} and event_shape "
        f"{tuple(dist.event_shape)}, but a prior needs batch_shape () and event_shape (D,); "
        "wrap a factorised distribution as torch.distributions.Independent(base, 1)",
    )
    return dist


def as_prior(obj: Distribution | nn.Module) -> nn.Module:
    r"""Turn ``obj`` into a prior module whose ``forward()`` returns p(z).

    * a ``torch.distributions.Distribution`` with event shape (D,) is wrapped in a
      :class:`DistributionPrior` (a fixed prior);
    * a module whose ``forward()`` takes no arguments and returns such a distribution (any
      :class:`Prior`, a zuko flow or lazy distribution) is returned unchanged.

    Anything else raises :class:`EdvaeError` (checked by :func:`distribution_of`).
    """
    if isinstance(obj, Distribution):
        return DistributionPrior(obj)
    if isinstance(obj, nn.Module):
        if not isinstance(obj, Prior):
            distribution_of(obj)
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
    return distribution_of(prior).event_shape[0]
