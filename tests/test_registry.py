"""edvae.registry.Registry: the one way names are registered and looked up."""

from __future__ import annotations

import importlib
import importlib.metadata
import types

import pytest

from edvae.errors import EdvaeError
from edvae.registry import Registry


def test_add_get_names_in_order():
    reg = Registry[int]("colour")
    assert reg.add("red", 1) == 1

    @reg.register("green")
    def green() -> None: ...

    assert reg.get("red") == 1 and reg["green"] is green
    assert reg.names() == ["red", "green"] and list(reg) == ["red", "green"] and len(reg) == 2
    assert "red" in reg and "blue" not in reg and 3 not in reg


def test_unknown_name_is_one_line_listing_the_choices():
    reg = Registry[int]("colour")
    reg.add("red", 1)
    reg.add("green", 2)
    with pytest.raises(EdvaeError) as err:
        reg.get("blue")
    assert str(err.value) == "unknown colour 'blue'; choose one of: red, green"
    with pytest.raises(EdvaeError, match="unknown colour 3"):
        reg.get(3)


def test_a_taken_name_needs_replace():
    reg = Registry[int]("colour")
    reg.add("red", 1)
    reg.add("red", 1)  # the same object again: harmless (a module imported twice)
    with pytest.raises(EdvaeError, match="already registered"):
        reg.add("red", 2)
    reg.add("red", 2, replace=True)
    assert reg.get("red") == 2
    with pytest.raises(EdvaeError, match="non-empty string"):
        reg.add("", 3)


def test_plugins_load_once_on_first_listing(monkeypatch):
    loaded: list[str] = []
    reg = Registry[int]("colour", plugins="test.colours")

    def load(ep):
        loaded.append(ep.name)
        reg.add("plugin", 7)

    entry = types.SimpleNamespace(name="mine", value="pkg.mod", load=lambda: load(entry))
    monkeypatch.setattr(importlib.metadata, "entry_points", lambda group: [entry] if group == "test.colours" else [])
    reg.add("red", 1)
    assert reg.get("red") == 1 and loaded == []  # a known name needs no plugin
    assert reg.get("plugin") == 7 and loaded == ["mine"]
    assert reg.names() == ["red", "plugin"] and loaded == ["mine"]


def test_a_failing_plugin_is_named_in_one_line(monkeypatch):
    reg = Registry[int]("colour", plugins="test.colours")

    def fail():
        raise ImportError("no module named pkg\nmore")

    entry = types.SimpleNamespace(name="mine", value="pkg.mod", load=fail)
    monkeypatch.setattr(importlib.metadata, "entry_points", lambda group: [entry])
    with pytest.raises(EdvaeError) as err:
        reg.names()
    assert str(err.value) == (
        "the colour plugin 'mine' (pkg.mod) failed to import: no module named pkg; fix or uninstall it"
    )


def test_settings_refuse_in_one_line():
    """Settings, the strict base of typed options: unknown keys, booleans for numbers and NaN
    are refused; parse() words the first refusal in one line."""
    from edvae.registry import Settings

    class Paint(Settings):
        coats: int = 2
        gloss: float = 0.5

    assert Paint.parse({"coats": 3}, "paint 'red'") == Paint(coats=3)
    for values, message in [
        ({"colour": 1}, "paint 'red' has no option 'colour'; its options are coats, gloss"),
        ({"gloss": True}, "paint 'red': gloss=True: expected a number, not a boolean (default 0.5)"),
        ({"gloss": float("nan")}, "paint 'red': gloss=nan: Input should be a finite number (default 0.5)"),
    ]:
        with pytest.raises(EdvaeError) as err:
            Paint.parse(values, "paint 'red'")
        assert str(err.value) == message


@pytest.mark.parametrize(
    "module, attribute, lookup, words",
    [
        ("edvae.data.registry", "DATASETS", "load_dataset", "unknown dataset 'nope'; choose one of: gaussian, complex"),
        ("edvae.experiments", "STUDIES", "get_study", "unknown study 'nope'; choose one of: paper, unknown-prior"),
        ("edvae.experiments.variants", "VARIANTS", None, "unknown model variant 'nope'; choose one of: vae-std"),
    ],
)
def test_data_sets_studies_and_variants_are_registries(module, attribute, lookup, words):
    """Each is one Registry, looked up through Registry.get: one line listing the choices."""
    loaded = importlib.import_module(module)
    registry = getattr(loaded, attribute)
    assert isinstance(registry, Registry)
    refuse = getattr(loaded, lookup) if lookup else (lambda name: loaded.apply_variant({}, name))
    with pytest.raises(EdvaeError, match="^" + words) as err:
        refuse("nope")
    assert "\n" not in str(err.value)


def test_the_prior_registry_is_a_registry_with_its_entry_point_group():
    from edvae.priors import registry

    assert isinstance(registry.PRIORS, Registry) and registry.PRIORS.plugins == "edvae.priors"
    assert registry.names(in_model=True) == registry.PRIORS.names()
