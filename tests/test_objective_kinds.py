"""Typed objective and critic options (edvae.objective_kinds, edvae.critics): each objective
kind's settings are its own pydantic Options model (defaults written once), a run config picks
the model from ``objective.kind``, and configs stored by edvae before typed options (one flat
section holding every kind's settings) still load."""

from __future__ import annotations

import pytest

from edvae.config import RunConfig, validate_config
from edvae.critics import CRITICS, MomentumCritic, MomentumOptions, make_critic, parse_critic
from edvae.errors import EdvaeError
from edvae.objective_kinds import (
    FLAT_DEFAULTS,
    OBJECTIVES,
    BetaVAEOptions,
    EDOptions,
    ObjectiveConfig,
    build_objective,
)
from edvae.registry import Registry


def _flat(**settings):
    """An ``objective`` section as edvae wrote it into config.json before typed options."""
    return {"kind": "elbo", **FLAT_DEFAULTS, **settings}


#: the flat sections the old config wrote for each kind (the presets with their weights filled in)
LEGACY = {
    "elbo": _flat(kl="mc"),
    "ed": _flat(kind="ed", mi_estimator="infonce", mi_weight=-1.0, critic="momentum", critic_options={"queue_size": 8}),
    "decomposed": _flat(kind="decomposed", mi_estimator="batch", entropy_estimator="batch", tc_weight=2.0),
    "beta-vae": _flat(kind="beta-vae", kl_weight=4.0, mi_weight=0.0, entropy_weight=0.0, cross_entropy_weight=0.0),
    "beta-tcvae": _flat(
        kind="beta-tcvae", tc_weight=6.0, dimwise_kl_weight=1.0, entropy_weight=0.0, cross_entropy_weight=0.0
    ),
}


def test_the_registries_are_registries():
    assert isinstance(OBJECTIVES, Registry) and isinstance(CRITICS, Registry)
    assert OBJECTIVES.names() == ["elbo", "ed", "decomposed", "beta-vae", "beta-tcvae"]
    assert CRITICS.names() == ["encoder", "bilinear", "mlp", "momentum"]


@pytest.mark.parametrize("kind", ["elbo", "ed", "decomposed", "beta-vae", "beta-tcvae"])
def test_each_kind_has_its_own_options_and_a_kind_alone_is_its_defaults(kind):
    options = OBJECTIVES.get(kind).Options
    assert options().kind == kind and issubclass(options, ObjectiveConfig)
    section = validate_config({"objective": {"kind": kind}}).objective
    assert type(section) is options and section == options()
    assert validate_config(RunConfig(objective=section).model_dump()).objective == section  # dump round trip
    assert build_objective(section, 10).settings == section


def test_a_kind_and_its_options_name_the_same_kind():
    from edvae.objective_kinds import ELBOOptions, TrainingObjective, register_objective

    class Options(ELBOOptions):
        pass  # kind "elbo", inherited

    with pytest.raises(EdvaeError, match="Options has kind 'elbo' but is registered as 'other'; declare kind"):
        register_objective("other")(type("Other", (TrainingObjective,), {"Options": Options}))
    assert "other" not in OBJECTIVES


def test_a_kind_holds_only_its_fields():
    assert set(OBJECTIVES.get("elbo").Options.model_fields) == {"kind", "kl"}
    assert "kl" not in EDOptions.model_fields and "critic" not in BetaVAEOptions.model_fields
    assert (BetaVAEOptions().kl_weight, BetaVAEOptions().mi_weight) == (4.0, 0.0)


@pytest.mark.parametrize("kind", sorted(LEGACY))
def test_a_flat_section_stored_by_an_older_edvae_loads(kind):
    """Settings of other kinds at the flat defaults are dropped; the kind's own are kept."""
    section = validate_config({"objective": LEGACY[kind]}).objective
    assert type(section) is OBJECTIVES.get(kind).Options
    fields = type(section).model_fields
    assert section.model_dump() == {name: value for name, value in LEGACY[kind].items() if name in fields}


@pytest.mark.parametrize(
    "kind, name, value, owners",
    [
        ("ed", "kl", "mc", "'elbo', 'decomposed', 'beta-vae' or 'beta-tcvae'"),
        ("elbo", "critic", "mlp", "'ed'"),
        ("elbo", "mi_weight", 2.0, "'ed', 'decomposed', 'beta-vae' or 'beta-tcvae'"),
        ("beta-vae", "critic_options", {"queue_size": 8}, "'ed'"),
    ],
)
def test_a_flat_section_with_a_setting_its_kind_ignores_is_refused_in_one_line(kind, name, value, owners):
    with pytest.raises(EdvaeError) as err:
        validate_config({"objective": _flat(**{"kind": kind, name: value})})
    assert str(err.value) == (
        f"config: invalid value for 'objective': Value error, {name} acts only with objective.kind {owners}, "
        f"not {kind!r}; remove it"
    )


def test_an_unknown_key_lists_the_keys_of_the_kind():
    with pytest.raises(EdvaeError) as err:
        validate_config({"objective": {"kind": "elbo", "beta": 1.0}})
    assert str(err.value) == "config: unknown config key 'objective.beta'; valid keys here: kind, kl"


def test_a_section_is_revalidated_by_its_kind():
    config = RunConfig(objective=ObjectiveConfig(kind="beta-vae"))
    assert type(config.objective) is BetaVAEOptions and config.objective.kl_weight == 4.0
    config.objective = {"kind": "ed", "mi_weight": 0.5}  # type: ignore[assignment]
    assert type(config.objective) is EDOptions and config.objective.mi_weight == 0.5
    assert build_objective({"kind": "ed"}, 10).options["mi_weight"] == 1.0
    with pytest.raises(EdvaeError, match="objective 'ed' has no option 'beta'; its options are mi_weight"):
        build_objective({"kind": "ed", "beta": 1.0}, 10)
    with pytest.raises(EdvaeError) as err:
        build_objective({"kind": "ed", "tc_weight": 1.0}, 10)
    assert str(err.value) == (
        "objective 'ed': tc_weight acts only with objective.kind 'decomposed', 'beta-vae' or 'beta-tcvae', "
        "not 'ed'; remove it"
    )


def test_critic_options_are_typed_and_the_momentum_defaults_live_in_one_place():
    defaults = MomentumOptions()
    critic = make_critic("momentum", 3, encoder=MomentumCriticEncoder())
    assert (critic.queue_size, critic.temperature, critic.momentum, critic.key) == (
        defaults.queue_size,
        defaults.temperature,
        defaults.momentum,
        defaults.key,
    )
    assert MomentumCritic(MomentumCriticEncoder(), 3, queue_size=8).temperature == defaults.temperature
    assert parse_critic("mlp", {"hidden": 8}).model_dump() == {"hidden": 8, "embedding": 32}
    with pytest.raises(EdvaeError) as err:
        parse_critic("momentum", {"momentum": "0.9"})
    assert str(err.value) == "critic 'momentum': momentum='0.9': Input should be a valid number (default 0.99)"
    with pytest.raises(EdvaeError, match=r"critic 'momentum': queue_size=8\.0: Input should be a valid integer"):
        MomentumCritic(MomentumCriticEncoder(), 3, queue_size=8.0)


class MomentumCriticEncoder:
    """x -> (mu, logvar), the least an encoder is (a Linear map)."""

    def __new__(cls):
        import torch

        class Encoder(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.linear = torch.nn.Linear(3, 3)

            def forward(self, x):
                return self.linear(x), torch.zeros_like(x)

        return Encoder()
