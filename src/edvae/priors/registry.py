r"""Priors by name: an open registry of factories ``(dim, **options) -> Prior``.

A factory is registered with :func:`register` and built with :func:`make`; the options it
accepts are its keyword parameters, read from its signature, so an option the chosen prior
does not read is refused with one line naming the prior, the option and the accepted ones.
A factory that declares a ``context`` parameter also receives a :class:`PriorContext` (the
latent dimension, the data set and the encoder of the model being built), so priors that
depend on the data or the encoder build themselves and the model has no per-name branches.
"""

from __future__ import annotations

import importlib.metadata
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn

from edvae.errors import EdvaeError, require
from edvae.priors.base import positive_int, shown

__all__ = ["PriorContext", "make", "names", "register"]

_MAX_DIM = 65536  # make(): larger dimensions are refused, not allocated

Factory = Callable[..., nn.Module]


@dataclass(frozen=True)
class PriorContext:
    """What a model offers a prior factory that asks for it (a ``context`` parameter).

    Attributes:
        dim: the latent dimension D.
        data: the data set the model is built for, an :class:`edvae.data.DataSplits` (``None``
            outside a model; typed loosely so that the mathematics does not import the data layer).
        encoder: the model's encoder, mapping (B, *x_shape) to ``(mu, logvar)``.
        fit: whether to fit a prior to data now; ``False`` when a state dict holding the
            fitted values is loaded next (build it cheaply, do not fit).
        state: with ``fit=False``, that state dict (the prior's own entries, names without the
            ``prior.`` prefix), when known: a prior may size itself from it instead of reading
            files (a ``samples:PATH`` prior never needs its file again).
    """

    dim: int
    data: Any = None
    encoder: nn.Module | None = None
    fit: bool = True
    state: Any = None


@dataclass(frozen=True)
class _Entry:
    factory: Factory
    options: tuple[str, ...]  # the keyword parameters after dim, without context
    required: tuple[str, ...]
    wants_context: bool
    needs_context: bool  # a context parameter without default: only a model can build it
    argument: str | None  # "name:VALUE" passes VALUE as this option


_REGISTRY: dict[str, _Entry] = {}

#: Entry-point group of installed packages that register priors when imported (see :func:`names`).
PLUGIN_GROUP = "edvae.priors"
_plugins_loaded = False


def _load_plugins() -> None:
    """Import, once, every module an installed package lists under the ``edvae.priors`` entry
    points, so that its ``@register`` lines run (a fresh ``edvae`` process knows its priors)."""
    global _plugins_loaded
    if _plugins_loaded:
        return
    _plugins_loaded = True
    for entry_point in importlib.metadata.entry_points(group=PLUGIN_GROUP):
        try:
            entry_point.load()
        except Exception as exc:  # noqa: BLE001 - any failure is the plugin's, named in one line
            message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise EdvaeError(
                f"the prior plugin {entry_point.name!r} ({entry_point.value}) failed "
                f"to import: {message}; fix or uninstall it"
            ) from None


def register(name: str, *, argument: str | None = None, replace: bool = False) -> Callable[[Factory], Factory]:
    r"""Register a prior factory under ``name``: ``@register("name")`` above ``def f(dim, *, ...)``.

    The factory takes the latent dimension D first and its options as keyword parameters with
    defaults (without a default an option is required), and returns a module whose
    ``forward()`` returns p(z) with ``event_shape == (D,)``. A keyword parameter named
    ``context`` receives the :class:`PriorContext` of the model being built (``None`` when
    :func:`make` is called without one; without a default the prior can only be built in a
    model, and :func:`names` lists it only with ``in_model=True``). ``argument="path"`` makes
    ``"name:VALUE"`` mean ``name`` with ``path=VALUE`` (as in ``"samples:PATH"``).

    Once registered, the name works everywhere a prior name does: :func:`make`, a config's
    ``model.prior`` and ``--prior``. A fresh ``edvae`` process finds priors of installed
    packages through their entry point, ``[project.entry-points."edvae.priors"]
    any_name = "my_pkg.priors"`` (the module whose import registers them). Registering a name
    that exists raises :class:`EdvaeError` unless ``replace=True``. Returns the factory.
    """
    require(
        isinstance(name, str) and name.isidentifier(),
        f"a prior name must be an identifier (letters, digits, _), got {shown(name)}",
    )

    def decorate(factory: Factory) -> Factory:
        require(callable(factory), f"register({name!r}) decorates a factory function, got {type(factory).__name__}")
        require(
            replace or name not in _REGISTRY,
            f"prior {name!r} is already registered; choose another name or pass replace=True",
        )
        parameters = list(inspect.signature(factory).parameters.values())
        require(
            bool(parameters)
            and parameters[0].kind in (parameters[0].POSITIONAL_ONLY, parameters[0].POSITIONAL_OR_KEYWORD),
            f"the factory of prior {name!r} must take the dimension first: def f(dim, *, ...)",
        )
        options = [p for p in parameters[1:] if p.name != "context"]
        require(
            all(p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD) for p in options),
            f"the options of prior {name!r} must be named parameters (no *args or **kwargs), "
            "so that unknown options can be refused",
        )
        names_ = tuple(p.name for p in options)
        require(argument is None or argument in names_, f"argument={argument!r} is not an option of prior {name!r}")
        required = tuple(p.name for p in options if p.default is p.empty)
        context = [p for p in parameters[1:] if p.name == "context"]
        needs_context = bool(context) and context[0].default is context[0].empty
        _REGISTRY[name] = _Entry(factory, names_, required, bool(context), needs_context, argument)
        return factory

    return decorate


def names(*, in_model: bool = False) -> list[str]:
    """The prior names :func:`make` builds from a dimension and options, in the order they were
    registered; with ``in_model=True`` also those that need a model's :class:`PriorContext`
    (such as ``"true"``, the data set's own prior). Priors of installed plugins (packages with
    an ``edvae.priors`` entry point naming the module that registers them) are included."""
    _load_plugins()
    return [name for name, entry in _REGISTRY.items() if in_model or not entry.needs_context]


def make(name: str, dim: int = 2, *, context: PriorContext | None = None, **options: Any) -> nn.Module:
    r"""Build the prior called ``name`` over R^``dim``; ``forward()`` returns p(z).

    Options per name (defaults in brackets):

    * ``normal``: none. p(z) = N(z; 0, I).
    * ``diag_normal``: ``loc`` [0], ``scale`` [1], ``learnable`` [False].
      p(z) = prod_d N(z_d; loc_d, scale_d^2).
    * ``student_t``: ``df`` [3], ``loc`` [0], ``scale`` [1], ``learnable`` [False].
      p(z) = prod_d t_df((z_d - loc_d) / scale_d) / scale_d.
    * ``laplace``: ``loc`` [0], ``scale`` [1], ``learnable`` [False].
      p(z) = prod_d exp(-|z_d - loc_d| / scale_d) / (2 scale_d).
    * ``mixture``: ``n_components`` [8], ``init`` [None: with a context, the k-means centres
      of 4096 seeded N(0, I) draws; without one, means ~ N(0, I) seeded; else data (M, D)
      whose k-means centres start the means; recommended], ``scale`` [1, the initial
      component std], ``learnable`` [True], ``seed`` [0].
      p(z) = sum_k pi_k N(z; m_k, diag s_k^2).
    * ``mog_ring``: ``n_components`` [8], ``radius`` [2], ``scale`` [0.3].
      p(z) = (1/K) sum_k N(z; m_k, scale^2 I), m_k = radius (cos 2 pi k/K, sin 2 pi k/K, 0..).
    * ``banana``: ``curvature`` [0.5], ``scale`` [1.5]; see :class:`BananaPrior`.
    * ``true``: none; the data set's own generating prior (needs a context with synthetic data).
    * ``flow``: ``transforms`` [3], ``hidden_features`` [(64, 64)]; see :class:`FlowPrior`.
    * ``vamp``: ``encoder`` (required without a context), ``input_shape``, ``n_components``
      [50], ``init`` [None: with a context, K seeded rows of the training data; without one,
      N(0, I) pseudo-inputs; else data rows], ``seed`` [0]; see :class:`VampPrior`.
    * ``samples`` or ``samples:PATH``: ``path`` (required), ``method`` ["kde"], ``bandwidth``
      ["cv"], ``chunk_size`` [1024], ``flow_steps`` [1000; 0: unfitted], ``seed`` [0]; see
      :func:`from_samples`. A context with ``fit=False`` skips the fitting.

    Priors added with :func:`register` take the options of their factory. Unknown names,
    unknown options, missing required options and invalid values raise :class:`EdvaeError`,
    as do ``dim`` > 65536 and ``n_components`` > 100000 (sizes that would allocate gigabytes).
    """
    base, colon, value = name.partition(":") if isinstance(name, str) else (name, "", "")
    if not (isinstance(base, str) and base in _REGISTRY):
        _load_plugins()
    entry = _REGISTRY.get(base) if isinstance(base, str) else None
    if entry is None or (colon and entry.argument is None):
        raise EdvaeError(
            f"unknown prior name {shown(name)}; choose one of: {', '.join(names(in_model=True))}"
            + ("" if entry is None else f" ({base!r} takes no ':' argument)")
        )
    dim = positive_int("dim", dim, _MAX_DIM)
    if colon and entry.argument is not None:  # (an entry without argument was refused above)
        require(
            entry.argument not in options,
            f"prior {name!r} gives {entry.argument} after ':' and as an option; give it once",
        )
        options = {**options, entry.argument: value}
    unknown = sorted(set(options) - set(entry.options))
    require(
        not unknown,
        f"unknown option(s) {', '.join(unknown)} for prior {base!r}; accepted options: "
        f"{', '.join(entry.options) or 'none'}",
    )
    missing = [option for option in entry.required if option not in options]
    needed = ", ".join(f"{option}=..." for option in missing)
    require(not missing, f"prior {base!r} needs option(s) {', '.join(missing)}; pass {needed}")
    require(
        context is not None or not entry.needs_context,
        f"prior {base!r} needs the data of a model; use it as model.prior={base!r} in a config",
    )
    if entry.wants_context:
        options["context"] = context
    return entry.factory(dim, **options)
