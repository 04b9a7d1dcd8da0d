"""The prior registry: priors registered by name from outside the package, options checked
against the factory that reads them, the model's context, and the one conversion of a
prior-like object into a distribution."""

from __future__ import annotations

import importlib
import importlib.metadata
import math
import re
import sys
import textwrap

import pytest
import torch
import zuko
from torch import nn
from torch.distributions import Independent, Normal
from typer.testing import CliRunner

from edvae import estimators
from edvae import priors as P
from edvae.checkpoint import load_checkpoint
from edvae.cli import app
from edvae.data import GroundTruth, load_dataset
from edvae.errors import EdvaeError
from edvae.model import build_model
from edvae.priors import registry
from edvae.training import train

USER_MODULE = '''
from torch.distributions import Normal

from edvae.priors import FactorizedPrior, register


@register("my_prior")
def my_prior(dim, *, loc=0.0, scale=1.0):
    """N(loc, diag scale^2) with a learned location and scale."""
    return FactorizedPrior(Normal, dim, learnable=True, loc=loc, scale=scale)
'''


@pytest.fixture(autouse=True)
def scratch_registry(monkeypatch):
    """Registrations made by a test vanish after it (the registry is a module-level Registry)."""
    monkeypatch.setattr(registry.PRIORS, "_entries", dict(registry.PRIORS._entries))
    monkeypatch.setattr(registry.PRIORS, "_plugins_loaded", False)


def _user_module(tmp_path, monkeypatch) -> str:
    """A user's module registering "my_prior", importable but not yet imported."""
    (tmp_path / "user_priors_for_test.py").write_text(textwrap.dedent(USER_MODULE))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "user_priors_for_test", raising=False)
    return "user_priors_for_test"


@pytest.fixture(scope="module")
def complex_data():
    return load_dataset("complex", n_train=128, n_val=64, n_test=64)


def test_a_prior_registered_in_a_user_module_trains_by_name(tmp_path, monkeypatch, tiny_config):
    importlib.import_module(_user_module(tmp_path, monkeypatch))
    assert "my_prior" in P.names()

    cfg = tiny_config(model={"prior": "my_prior", "prior_options": {"scale": 2.0}}, train={"epochs": 1})
    result = train(cfg, tmp_path / "run")
    assert result.completed and result.step == 512 // 64
    state = load_checkpoint(tmp_path / "run")["model"]
    # the prior's learned parameters were trained from their configured start
    assert set(k for k in state if k.startswith("prior.")) == {"prior.loc", "prior.log_scale"}
    assert not torch.equal(state["prior.loc"], torch.zeros(2))
    assert torch.allclose(state["prior.log_scale"], torch.full((2,), math.log(2.0)), atol=0.1)
    assert not torch.equal(state["prior.log_scale"], torch.full((2,), math.log(2.0)))


def test_an_installed_plugin_prior_trains_by_name_from_the_cli(tmp_path, monkeypatch):
    """A package's ``edvae.priors`` entry point is imported when a name is not yet known, so a
    fresh ``edvae train --prior my_prior`` finds the prior its module registers."""
    module = _user_module(tmp_path, monkeypatch)
    plugin = importlib.metadata.EntryPoint(name="mine", value=module, group=registry.PLUGIN_GROUP)
    monkeypatch.setattr(
        importlib.metadata, "entry_points", lambda group: [plugin] if group == registry.PLUGIN_GROUP else []
    )
    assert "my_prior" not in registry.PRIORS._entries and module not in sys.modules
    args = [
        "train",
        "--out",
        str(tmp_path / "run"),
        "--prior",
        "my_prior",
        "--set",
        "data.name=complex",
        "--set",
        "data.options.n_train=128",
        "--set",
        "data.options.n_val=64",
        "--set",
        "data.options.n_test=64",
        "--set",
        "model.hidden=[16]",
        "--set",
        "train.epochs=1",
        "--set",
        "train.batch_size=64",
        "--set",
        "train.progress=false",
        "--set",
        "eval.iwae_samples=16",
    ]
    done = CliRunner().invoke(app, args)
    assert done.exit_code == 0, done.output
    assert "prior.log_scale" in load_checkpoint(tmp_path / "run")["model"]


def test_a_plugin_that_fails_to_import_is_named_in_one_line(monkeypatch):
    plugin = importlib.metadata.EntryPoint(name="broken", value="no_such_module_xyz", group=registry.PLUGIN_GROUP)
    monkeypatch.setattr(importlib.metadata, "entry_points", lambda group: [plugin])
    with pytest.raises(EdvaeError, match="prior plugin 'broken' \\(no_such_module_xyz\\) failed to import"):
        P.make("not_registered_anywhere", 2)


def test_options_a_registered_prior_does_not_read_are_refused(complex_data, tiny_config):
    @P.register("two_options")
    def two_options(dim, *, alpha=1.0, beta=2.0):
        return P.make("normal", dim)

    with pytest.raises(
        EdvaeError,
        match=r"unknown option\(s\) gamma for prior 'two_options'; "
        r"accepted options: alpha, beta$",
    ):
        P.make("two_options", 2, gamma=1)
    # a config refuses it when it is validated, and a model built from unvalidated settings too
    with pytest.raises(EdvaeError, match="gamma for prior 'two_options'") as info:
        tiny_config(model={"prior": "two_options", "prior_options": {"alpha": 3, "gamma": 1}})
    assert "\n" not in str(info.value) and "'model.prior_options'" in str(info.value)
    unchecked = tiny_config(model={"prior": "two_options"}).model.model_copy(
        update={"prior_options": {"alpha": 3, "gamma": 1}}
    )
    with pytest.raises(EdvaeError, match="gamma for prior 'two_options'"):
        build_model(unchecked, complex_data)


def test_the_true_prior_refuses_options_it_would_ignore(complex_data, tiny_config):
    """Regression (issue 12): prior='true' with prior_options ignored them silently while the
    run's config.json recorded them."""
    refused = r"unknown option\(s\) scale for prior 'true'; accepted options: none"
    with pytest.raises(EdvaeError, match=refused):
        tiny_config(model={"prior": "true", "prior_options": {"scale": 2}})
    unchecked = tiny_config(model={"prior": "true"}).model.model_copy(update={"prior_options": {"scale": 2}})
    with pytest.raises(EdvaeError, match=refused):
        build_model(unchecked, complex_data)
    plain = build_model(tiny_config(model={"prior": "true"}).model, complex_data).prior
    z = torch.randn(5, 2)
    assert torch.equal(plain().log_prob(z), complex_data.ground_truth.prior.log_prob(z))


def test_a_config_refuses_an_option_its_prior_does_not_take_in_one_line():
    from edvae.config import validate_config

    with pytest.raises(EdvaeError) as info:
        validate_config({"model": {"prior": "mixture", "prior_options": {"n_componets": 8}}})
    assert str(info.value) == (
        "config: invalid value for 'model.prior_options': unknown option(s) n_componets for prior 'mixture'; "
        "accepted options: n_components, init, scale, learnable, seed"
    )


@pytest.mark.parametrize(
    "name, options, words",
    [
        ("mixture", {"n_components": 2.5}, "option n_components of prior 'mixture' must be int, got 2.5 (float)"),
        ("mixture", {"n_components": True}, "option n_components of prior 'mixture' must be int, got True (bool)"),
        ("mog_ring", {"n_components": "8"}, "option n_components of prior 'mog_ring' must be int, got '8' (str)"),
        ("diag_normal", {"learnable": 1}, "option learnable of prior 'diag_normal' must be bool, got 1 (int)"),
        ("flow", {"hidden_features": "ab"}, "option hidden_features of prior 'flow' must be Sequence[int]"),
        ("samples:x.npy", {"chunk_size": 1.5}, "option chunk_size of prior 'samples' must be int | None"),
    ],
)
def test_an_option_of_the_wrong_type_is_refused_by_make_and_by_the_config(name, options, words):
    from edvae.config import validate_config

    for refuse in (
        lambda: P.make(name, 2, **options),
        lambda: validate_config({"model": {"prior": name, "prior_options": options}}),
    ):
        with pytest.raises(EdvaeError, match=re.escape(words) + ".*; accepted options: ") as info:
            refuse()
        assert "\n" not in str(info.value)


def test_a_registered_prior_gets_its_options_typed_from_its_signature_and_unconverted(tiny_config):
    import numpy as np

    seen = []

    @P.register("typed")
    def typed(dim, *, k: int = 2, scale: float = 1.0, shape: tuple[int, ...] = (1,), loose: Unseen = None):  # noqa: F821
        seen.append((k, scale, shape, loose))
        return P.make("normal", dim)

    k, shape, loose = np.int64(3), [4, 5], object()
    P.make("typed", 2, k=k, scale=2, shape=shape, loose=loose)
    # the factory receives the values as given: checked, never converted (an unresolvable
    # annotation, Unseen, is not checked)
    assert seen[0][0] is k and seen[0][1] == 2 and type(seen[0][1]) is int and seen[0][2] is shape
    assert seen[0][3] is loose
    with pytest.raises(EdvaeError, match=r"option k of prior 'typed' must be int, got 2.0 \(float\); accepted options"):
        P.make("typed", 2, k=2.0)
    with pytest.raises(EdvaeError, match="option scale of prior 'typed' must be float, got 'big'"):
        tiny_config(model={"prior": "typed", "prior_options": {"scale": "big"}})
    assert tiny_config(model={"prior": "typed", "prior_options": {"k": 4, "shape": [1, 2]}}).model.prior_options == {
        "k": 4,
        "shape": [1, 2],
    }


def test_a_config_leaves_required_options_and_unknown_priors_to_the_model(tiny_config):
    """A model supplies vamp's encoder, and a prior may be registered after the config is read:
    neither is the config's to refuse (building the model refuses what is still wrong)."""
    assert tiny_config(model={"prior": "vamp", "prior_options": {"n_components": 4}}).model.prior == "vamp"
    assert tiny_config(model={"prior": "later_prior", "prior_options": {"a": 1}}).model.prior == "later_prior"


def test_registering_a_taken_name_is_refused_unless_replaced():
    with pytest.raises(EdvaeError, match="prior 'normal' is already registered.*replace=True"):
        P.register("normal")(lambda dim: P.make("laplace", dim))
    assert isinstance(P.make("normal", 2)().base_dist, Normal)
    P.register("normal", replace=True)(lambda dim: P.make("laplace", dim))
    assert not isinstance(P.make("normal", 2)().base_dist, Normal)


@pytest.mark.parametrize(
    "factory, words",
    [
        (lambda dim, **options: None, "named parameters"),
        (lambda *, scale=1.0: None, "dimension first"),
    ],
)
def test_factories_whose_options_cannot_be_checked_are_refused(factory, words):
    with pytest.raises(EdvaeError, match=words):
        P.register("unchecked")(factory)
    with pytest.raises(EdvaeError, match="identifier"):
        P.register("not a name")


def test_a_factory_asking_for_the_context_gets_the_model_data_and_encoder(complex_data, tiny_config):
    seen = []

    @P.register("spy")
    def spy(dim, *, context):
        seen.append(context)
        return P.make("normal", dim)

    cfg = tiny_config(model={"prior": "spy"})
    model = build_model(cfg.model, complex_data, fit_prior=False)
    (context,) = seen
    assert context.dim == 2 and context.data is complex_data and context.encoder is model.encoder
    assert context.fit is False
    assert "spy" not in P.names() and "spy" in P.names(in_model=True)  # it needs a model
    with pytest.raises(EdvaeError, match="prior 'spy' needs the data of a model"):
        P.make("spy", 2)


def test_samples_colon_path_is_the_path_option(tmp_path):
    samples = torch.randn(50, 3, generator=torch.Generator().manual_seed(0))
    torch.save(samples, tmp_path / "s.pt")
    by_colon = P.make(f"samples:{tmp_path / 's.pt'}", 3, bandwidth="scott")
    by_option = P.make("samples", 3, path=tmp_path / "s.pt", bandwidth="scott")
    assert torch.equal(by_colon.samples, by_option.samples) and by_colon.bandwidth == by_option.bandwidth
    with pytest.raises(EdvaeError, match="give it once"):
        P.make(f"samples:{tmp_path / 's.pt'}", 3, path="other.pt")
    with pytest.raises(EdvaeError, match="'normal' takes no ':' argument"):
        P.make("normal:3", 3)


def test_the_true_prior_needs_a_model():
    assert "true" not in P.names() and "true" in P.names(in_model=True)
    with pytest.raises(EdvaeError, match="prior 'true' needs the data of a model"):
        P.make("true", 2)


# --- the one conversion of a prior-like object ---------------------------------------------------


def test_distribution_of_accepts_a_distribution_a_prior_module_a_flow_and_a_callable():
    dist = Independent(Normal(torch.zeros(3), torch.ones(3)), 1)
    flow = zuko.flows.NSF(3, transforms=1, hidden_features=(8,))
    ring = P.make("mog_ring", 2)
    assert P.distribution_of(dist) is dist
    assert P.distribution_of(lambda: dist, 3) is dist
    z = torch.randn(4, 3)
    assert torch.equal(P.distribution_of(flow, 3).log_prob(z), flow().log_prob(z))
    assert P.distribution_of(ring).event_shape == (2,)
    # every entry point uses it: the estimators, as_prior and the ground truth
    assert estimators.resolve_prior(flow, 3).event_shape == (3,)
    assert GroundTruth(flow, nn.Linear(3, 5), 0.1).latent_dim == 3


@pytest.mark.parametrize(
    "bad, words",
    [
        (Normal(torch.zeros(3), torch.ones(3)), "batch_shape \\(3,\\).*Independent"),
        (3, "cannot use a int as a prior"),
        (nn.Linear(2, 2), "cannot be called without arguments"),
        (lambda: 3, "is a int, not a torch Distribution"),
    ],
)
def test_distribution_of_refuses_other_objects_in_one_line_everywhere(bad, words):
    for convert in (P.distribution_of, estimators.resolve_prior, lambda obj: GroundTruth(obj, nn.Linear(3, 5), 0.1)):
        with pytest.raises(EdvaeError, match=words) as info:
            convert(bad)
        assert "\n" not in str(info.value)


def test_distribution_of_checks_the_dimension():
    dist = Independent(Normal(torch.zeros(3), torch.ones(3)), 1)
    with pytest.raises(EdvaeError, match="event_shape \\(3,\\) but mu and z have latent dimension D=2"):
        P.distribution_of(dist, 2)
