"""One way to give a thing a name: :class:`Registry`.

Priors, objective kinds, critics, data sets, studies and model variants are each looked up by a
name from a config, a command line or a call. Each kind has one :class:`Registry`; a new one is
added with ``@REGISTRY.register("name")`` (or :meth:`Registry.add`) in the module that defines
it, and installed packages may add theirs through an entry-point group, imported the first time
a name is looked up or listed. An unknown name is refused with one line listing the choices.

A registered kind's options are typed: a pydantic model derived from :class:`Settings`, the
strict base of every setting (config sections too): unknown keys, NaN/Inf, and booleans where a
number goes are refused, and :meth:`Settings.parse` turns a refusal into one line.

The module is torch-free and imports nothing of edvae but :mod:`edvae.errors`.
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Generic, TypeVar, get_args

from pydantic import BaseModel, ConfigDict, ValidationError, ValidationInfo, field_validator

from edvae.errors import EdvaeError

__all__ = ["Registry", "Settings"]

T = TypeVar("T")
S = TypeVar("S", bound="Settings")


class Settings(BaseModel):
    """The strict base of typed settings: unknown keys, NaN/Inf, and ``true``/``false`` where a
    number goes (pydantic would read them as 1/0) are refused."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_booleans_for_numbers(cls, value: Any, info: ValidationInfo) -> Any:
        assert info.field_name is not None  # a field validator always has its field's name
        annotation = cls.model_fields[info.field_name].annotation
        kinds = set(get_args(annotation) or (annotation,)) - {type(None)}
        if isinstance(value, bool) and kinds and kinds <= {int, float}:
            raise ValueError("expected a number, not a boolean")
        return value

    @classmethod
    def parse(cls: type[S], values: Mapping[str, Any], what: str) -> S:
        """``values`` validated, or :class:`EdvaeError` in one line naming ``what`` (e.g.
        ``"critic 'mlp'"``) and the first refused option."""
        try:
            return cls.model_validate(dict(values))
        except ValidationError as err:
            first = err.errors()[0]
            key = ".".join(str(part) for part in first["loc"])
            if first["type"] == "extra_forbidden":
                options = ", ".join(name for name in cls.model_fields if name != "kind") or "none"
                raise EdvaeError(f"{what} has no option {key!r}; its options are {options}") from None
            field = cls.model_fields.get(str(first["loc"][0])) if first["loc"] else None
            default = "" if field is None else f" (default {field.default!r})"
            shown = f"{key}={first.get('input')!r}: " if key else ""
            message = str(first["ctx"]["error"]) if first["type"] == "value_error" else first["msg"]
            raise EdvaeError(f"{what}: {shown}{message}{default}") from None


class Registry(Generic[T]):
    """Names -> objects of one kind (factories, classes, functions, settings), in the order
    they were registered.

    Arguments:
        kind: what the names name, as the one-line errors say it (``"prior"``, ``"study"``).
        plugins: an entry-point group (e.g. ``"edvae.priors"``); every module an installed
            package lists there is imported, once, before the first lookup of an unknown name
            or the first listing, so that its ``register`` lines run.

    >>> colours = Registry[int]("colour")
    >>> colours.add("red", 1)
    1
    >>> colours.get("red"), colours.names()
    (1, ['red'])
    """

    def __init__(self, kind: str, *, plugins: str | None = None) -> None:
        self.kind = kind
        self.plugins = plugins
        self._entries: dict[str, T] = {}
        self._plugins_loaded = plugins is None

    def add(self, name: str, obj: T, *, replace: bool = False) -> T:
        """Register ``obj`` under ``name`` and return it; a name already taken (by another
        object) raises :class:`EdvaeError` unless ``replace=True``."""
        if not isinstance(name, str) or not name:
            raise EdvaeError(f"a {self.kind} name is a non-empty string, got {name!r}")
        taken = self._entries.get(name)
        if taken is not None and taken is not obj and not replace:
            raise EdvaeError(f"{self.kind} {name!r} is already registered; choose another name or pass replace=True")
        self._entries[name] = obj
        return obj

    def register(self, name: str, *, replace: bool = False) -> Callable[[T], T]:
        """Decorator form of :meth:`add`: ``@REGISTRY.register("name")`` above a function or class."""

        def decorate(obj: T) -> T:
            return self.add(name, obj, replace=replace)

        return decorate

    def get(self, name: object) -> T:
        """The object registered under ``name``; an unknown name raises :class:`EdvaeError`
        (one line listing the choices)."""
        if isinstance(name, str) and name in self._entries:
            return self._entries[name]
        self._load_plugins()
        if isinstance(name, str) and name in self._entries:
            return self._entries[name]
        raise EdvaeError(self.unknown(name))

    def unknown(self, name: object) -> str:
        """The one-line message for an unknown ``name``."""
        return f"unknown {self.kind} {name!r}; choose one of: {', '.join(self.names())}"

    def names(self) -> list[str]:
        """Every registered name (plugins' included), in registration order."""
        self._load_plugins()
        return list(self._entries)

    def items(self) -> list[tuple[str, T]]:
        """``(name, object)`` pairs in registration order (plugins' included)."""
        self._load_plugins()
        return list(self._entries.items())

    def __contains__(self, name: object) -> bool:
        if isinstance(name, str) and name in self._entries:
            return True
        self._load_plugins()
        return isinstance(name, str) and name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self.names())

    def __getitem__(self, name: str) -> T:
        return self.get(name)

    def _load_plugins(self) -> None:
        """Import, once, every module listed under the entry-point group ``plugins``; a plugin
        that fails to import is named in one line."""
        if self._plugins_loaded:
            return
        self._plugins_loaded = True
        for entry_point in importlib.metadata.entry_points(group=str(self.plugins)):
            try:
                entry_point.load()
            except Exception as exc:  # noqa: BLE001 - any failure is the plugin's, named in one line
                message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                raise EdvaeError(
                    f"the {self.kind} plugin {entry_point.name!r} ({entry_point.value}) failed "
                    f"to import: {message}; fix or uninstall it"
                ) from None

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {list(self._entries)})"
