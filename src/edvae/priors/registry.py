r"""Priors by name: an open registry of factories ``(dim, **options) -> Prior``.

A factory is registered with :func:`register` (into :data:`PRIORS`, an
:class:`edvae.registry.Registry`) and built with :func:`make`; the options it accepts are its
keyword parameters, read from its signature into a pydantic model (their annotated types,
their defaults), so an option the chosen prior does not read, or a value not of the option's
type, is refused with one line naming the prior, the option and the accepted ones
(:func:`check_options`, also run on a config's ``model.prior_options``).
A factory that declares a ``context`` parameter also receives a :class:`PriorContext` (the
latent dimension, the data set and the encoder of the model being built), so priors that
depend on the data or the encoder build themselves and the model has no per-name branches.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, create_model
from torch import nn

from edvae.errors import EdvaeError, require
from edvae.priors.base import positive_int, shown
from edvae.registry import Registry

__all__ = ["PRIORS", "PriorContext", "check_options", "make", "names", "register"]

_MAX_DIM = 65536  # make(): larger dimensions are refused, not allocated

#: Entry-point group of installed packages that register priors when imported (see :func:`names`).
PLUGIN_GROUP = "edvae.priors"

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


class _Entry:
    """A registered factory, what its signature says about it, and its options model."""

    def __init__(self, name: str, factory: Factory, argument: str | None) -> None:
        parameters = list(inspect.signature(factory).parameters.values())
        require(
            bool(parameters)
            and parameters[0].kind in (parameters[0].POSITIONAL_ONLY, parameters[0].POSITIONAL_OR_KEYWORD),
            f"the factory of prior {name!r} must take the dimension first: def f(dim, *, ...)",
        )
        options = tuple(p for p in parameters[1:] if p.name != "context")
        require(
            all(p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD) for p in options),
            f"the options of prior {name!r} must be named parameters (no *args or **kwargs), "
            "so that unknown options can be refused",
        )
        require(
            argument is None or argument in [p.name for p in options],
            f"argument={argument!r} is not an option of prior {name!r}",
        )
        context = [p for p in parameters[1:] if p.name == "context"]
        self.name = name
        self.factory = factory
        self.parameters = options  # the keyword parameters after dim, without context
        self.options = tuple(p.name for p in options)
        self.wants_context = bool(context)
        self.needs_context = bool(context) and context[0].default is context[0].empty  # only a model builds it
        self.argument = argument  # "name:VALUE" passes VALUE as this option
        self.types = {p.name: _type_text(p.annotation) for p in options}  # as the source says them

    @functools.cached_property
    def options_model(self) -> type[BaseModel]:
        """The options as a pydantic model, built on first use: one field per option, typed by
        its annotation (strictly: no 1 for True, no 2.0 for an integer) with its default."""
        fields: dict[str, Any] = {
            f"option_{i}": (
                _checkable(_resolved(p.annotation, self.factory)),
                Field(... if p.default is p.empty else p.default, alias=p.name),
            )
            for i, p in enumerate(self.parameters)
        }
        return create_model(f"{self.name}_options", __config__=_OPTIONS_CONFIG, **fields)

    def _errors(self, values: dict[str, Any]) -> list[Any]:
        try:
            self.options_model.model_validate(values)
        except ValidationError as err:
            return list(err.errors())
        return []

    def check(self, options: dict[str, Any], *, complete: bool) -> None:
        """Refuse, in one line, an option the factory does not take, a value not of its
        annotated type and (``complete``) a required option left out. Only checks: the factory
        receives the values as given (a numpy scalar is checked as the Python number it holds,
        a list where a tuple is annotated as that tuple)."""
        values = {k: v.item() if isinstance(v, np.generic) else v for k, v in options.items()}  # numpy scalars
        errors = self._errors(values)
        lists = {str(e["loc"][0]) for e in errors if isinstance(values.get(str(e["loc"][0])), list)}
        if lists:  # a config's list stands for a tuple (TOML and JSON have none)
            errors = self._errors({k: tuple(v) if k in lists else v for k, v in values.items()})
        if not errors:
            return
        unknown = sorted(str(e["loc"][0]) for e in errors if e["type"] == "extra_forbidden")
        require(
            not unknown,
            f"unknown option(s) {', '.join(unknown)} for prior {self.name!r}; accepted options: "
            f"{', '.join(self.options) or 'none'}",
        )
        missing = [str(e["loc"][0]) for e in errors if e["type"] == "missing"]
        needed = ", ".join(f"{option}=..." for option in missing)
        require(not (missing and complete), f"prior {self.name!r} needs option(s) {', '.join(missing)}; pass {needed}")
        wrong = [str(e["loc"][0]) for e in errors if e["type"] != "missing"]
        if wrong:
            option = wrong[0]
            raise EdvaeError(
                f"option {option} of prior {self.name!r} must be {self.types[option]}, got "
                f"{shown(options[option])} ({type(options[option]).__name__}); accepted options: "
                f"{', '.join(self.options)}"
            )


#: Every prior factory by name (:func:`register`, :func:`names`, :func:`make`); installed
#: packages add theirs through the ``edvae.priors`` entry-point group.
PRIORS: Registry[_Entry] = Registry("prior", plugins=PLUGIN_GROUP)

#: Option values are checked strictly (True is no integer, 2.0 and "2" are none either) against
#: any annotated type (a Tensor by isinstance); none is converted.
_OPTIONS_CONFIG = ConfigDict(strict=True, arbitrary_types_allowed=True, extra="forbid")


def _resolved(annotation: Any, factory: Factory) -> Any:
    """An annotation as a type: a string one (``from __future__ import annotations``) evaluated
    in the factory's module, as :func:`inspect.get_annotations` does; one naming what that module
    cannot see stays a string (and is not checked)."""
    if not isinstance(annotation, str):
        return annotation
    try:
        # the module's own annotation, evaluated as inspect.get_annotations(eval_str=True) does
        return eval(annotation, dict(getattr(factory, "__globals__", {})))
    except Exception:  # noqa: BLE001 - any failure means: not checkable
        return annotation


def _checkable(annotation: Any) -> Any:
    """``annotation`` if pydantic can check a value against it, else ``Any`` (unchecked): no
    annotation, one left a string, or a type pydantic has no schema for."""
    if annotation is inspect.Parameter.empty or isinstance(annotation, str):
        return Any
    try:
        TypeAdapter(annotation, config=_OPTIONS_CONFIG)
    except Exception:  # noqa: BLE001 - any failure means: not checkable
        return Any
    return annotation


def _type_text(annotation: Any) -> str:
    """An annotation as its source says it: ``int``, ``Tensor | None``."""
    if isinstance(annotation, str):
        return annotation
    if isinstance(annotation, type):
        return annotation.__name__
    return str(annotation).replace("typing.", "").replace("collections.abc.", "")


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
        PRIORS.add(name, _Entry(name, factory, argument), replace=replace)
        return factory

    return decorate


def names(*, in_model: bool = False) -> list[str]:
    """The prior names :func:`make` builds from a dimension and options, in the order they were
    registered; with ``in_model=True`` also those that need a model's :class:`PriorContext`
    (such as ``"true"``, the data set's own prior). Priors of installed plugins (packages with
    an ``edvae.priors`` entry point naming the module that registers them) are included."""
    return [name for name, entry in PRIORS.items() if in_model or not entry.needs_context]


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

    Priors added with :func:`register` take the options of their factory, of the types it
    annotates (:func:`check_options`). Unknown names, unknown options, missing required
    options, values of another type and invalid values raise :class:`EdvaeError`, as do
    ``dim`` > 65536 and ``n_components`` > 100000 (sizes that would allocate gigabytes).
    """
    base, entry, options = _named(name, options)
    dim = positive_int("dim", dim, _MAX_DIM)
    options = _with_argument(name, entry, options)
    entry.check(options, complete=True)
    require(
        context is not None or not entry.needs_context,
        f"prior {base!r} needs the data of a model; use it as model.prior={base!r} in a config",
    )
    if entry.wants_context:
        options["context"] = context
    return entry.factory(dim, **options)


def check_options(name: str, options: dict[str, Any], *, complete: bool = True) -> None:
    """Refuse, in one line, what :func:`make` would refuse in ``options`` of the prior ``name``
    before building anything: an unknown name, an option the prior does not take (naming the
    accepted ones), a value not of the option's annotated type (``2.5`` or ``True`` for an
    integer, ``"yes"`` for a flag) and, with ``complete``, a required option left out. The
    options model of each prior is a pydantic model read from its factory's signature; values
    are checked, never converted. ``edvae.config`` calls it with ``complete=False`` on a
    config's ``model.prior_options`` (a model may supply a required option, such as vamp's
    encoder)."""
    _, entry, options = _named(name, options)
    entry.check(_with_argument(name, entry, options), complete=complete)


def _named(name: Any, options: dict[str, Any]) -> tuple[str, _Entry, dict[str, Any]]:
    """``(base, entry, options)`` of a prior name ``base`` or ``base:VALUE``; an unknown name,
    or a ':' after a prior that takes no argument, is refused in one line."""
    base, colon, _value = name.partition(":") if isinstance(name, str) else (name, "", "")
    entry = PRIORS.get(base) if isinstance(base, str) and base in PRIORS else None
    if entry is None or (colon and entry.argument is None):
        raise EdvaeError(
            f"unknown prior name {shown(name)}; choose one of: {', '.join(names(in_model=True))}"
            + ("" if entry is None else f" ({base!r} takes no ':' argument)")
        )
    return base, entry, dict(options)


def _with_argument(name: str, entry: _Entry, options: dict[str, Any]) -> dict[str, Any]:
    """``options`` with the VALUE of ``"base:VALUE"`` as the entry's argument option."""
    base, colon, value = name.partition(":")
    if not colon or entry.argument is None:
        return options
    require(
        entry.argument not in options,
        f"prior {name!r} gives {entry.argument} after ':' and as an option; give it once",
    )
    return {**options, entry.argument: value}
