"""Run configuration (:mod:`edvae.config`): presets load, overrides edit the raw dict as
documented, and every bad key or value is refused with one line that names it."""

from __future__ import annotations

from pathlib import Path

import pytest

from edvae.config import RunConfig, apply_overrides, load_config, validate_config
from edvae.errors import EdvaeError

PRESETS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.toml"))


@pytest.mark.parametrize("path", PRESETS, ids=lambda p: p.name)
def test_every_preset_validates_and_round_trips(path):
    config = validate_config(load_config(path), source=str(path))
    assert isinstance(config, RunConfig)
    assert validate_config(config.model_dump()) == config


def test_defaults_are_a_valid_run():
    assert validate_config({}) == RunConfig()


def test_overrides_parse_values_and_create_sections_without_touching_the_input():
    raw = {"train": {"epochs": 5}}
    out = apply_overrides(
        raw,
        [
            "train.epochs=10",
            "train.lr=1e-3",
            "model.hidden=[32, 16]",
            "model.prior=mog_ring",
            "train.progress=false",
            "model.prior_options.radius = 1.5",
            "data.path=a=b.csv",
        ],
    )
    assert raw == {"train": {"epochs": 5}}
    assert out["train"] == {"epochs": 10, "lr": 1e-3, "progress": False}
    assert out["model"] == {"hidden": [32, 16], "prior": "mog_ring", "prior_options": {"radius": 1.5}}
    assert out["data"] == {"path": "a=b.csv"}  # only the first '=' separates key and value
    assert validate_config(out).model.hidden == [32, 16]
    assert apply_overrides(raw, None) == raw


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["train.epochs"], "--set expects key=value"),
        (["train=3", "train.epochs=2"], "'train' is a value, not a section"),
    ],
)
def test_bad_overrides_are_one_line(overrides, message):
    with pytest.raises(EdvaeError, match=message) as err:
        apply_overrides({}, overrides)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    "raw, message",
    [
        ({"train": {"epoch": 3}}, r"my.toml: unknown config key 'train.epoch'; valid keys here: .*epochs"),
        ({"trian": {}}, r"unknown config key 'trian'; valid keys here: data, eval, model, name, objective, train"),
        ({"train": {"epochs": 0}}, r"invalid value for 'train.epochs': .*greater than or equal to 1 \(got 0\)"),
        ({"train": {"epochs": True}}, r"invalid value for 'train.epochs': .*not a boolean"),
        ({"train": {"lr": float("inf")}}, r"invalid value for 'train.lr'"),
        ({"train": {"lr": float("nan")}}, r"invalid value for 'train.lr'"),
        ({"objective": {"kind": "elbow"}}, r"invalid value for 'objective.kind'.*'elbow'"),
        ({"data": {"seed": 2**32}}, r"invalid value for 'data.seed'"),
    ],
)
def test_bad_configs_are_refused_with_one_line_naming_the_key(raw, message):
    with pytest.raises(EdvaeError, match=message) as err:
        validate_config(raw, source="my.toml")
    assert "\n" not in str(err.value)


def test_config_files_that_are_missing_or_not_toml_are_one_line(tmp_path):
    with pytest.raises(EdvaeError, match="does not exist; presets live in configs/"):
        load_config(tmp_path / "absent.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("train = {epochs = \n")
    with pytest.raises(EdvaeError, match="is not valid TOML"):
        load_config(bad)
    binary = tmp_path / "binary.toml"
    binary.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(EdvaeError, match="is not valid TOML"):
        load_config(binary)
