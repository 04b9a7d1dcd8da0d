"""Typed run configuration.

A run is described by one :class:`RunConfig`: the data, the model (networks, likelihood,
prior), the objective (its kind, and that kind's settings: :mod:`edvae.objective_kinds`),
training and evaluation. Configs are TOML files (see ``configs/``) or Python objects; unknown
keys, wrong types and out-of-range values are refused with one line naming the key.
"""

from __future__ import annotations

import datetime
import json
import sys
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    Field,
    SerializeAsAny,
    ValidationError,
    ValidationInfo,
    ValidatorFunctionWrapHandler,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from edvae.errors import EdvaeError
from edvae.objective_kinds import ObjectiveConfig, kind_of, objective_config, options_for
from edvae.registry import Settings

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__ = [
    "DataConfig",
    "ModelConfig",
    "ObjectiveConfig",
    "TrainConfig",
    "EvalConfig",
    "RunConfig",
    "load_config",
    "apply_overrides",
    "validate_config",
]


#: The strict base of every section: unknown keys, NaN/Inf and booleans for numbers are refused.
_Strict = Settings


class DataConfig(_Strict):
    """Which data set, and its options (passed to :func:`edvae.data.load_dataset`)."""

    name: str = "gaussian"
    path: str | None = None
    seed: int = Field(0, ge=0, le=2**32 - 1)
    options: dict[str, Any] = Field(default_factory=dict)

    @field_validator("path")
    @classmethod
    def _path_not_empty(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise ValueError("data.path is empty; give the path of a data file (or leave data.path out)")
        return value


#: Largest hidden-layer width accepted (wider layers do not fit in memory anyway).
MAX_WIDTH = 65536


class ModelConfig(_Strict):
    """Networks, likelihood and prior.

    ``prior`` is a name from :func:`edvae.priors.names`, ``"true"`` (the data set's own
    generating prior, synthetic data only) or ``"samples:PATH"`` (a density estimated from a
    file of prior samples).
    """

    network: Literal["mlp", "conv"] = "mlp"
    latent_dim: int = Field(2, ge=1, le=4096)
    hidden: list[int] = Field(default_factory=lambda: [128, 128])
    likelihood: Literal["auto", "gaussian", "bernoulli"] = "auto"
    decoder_scale: Literal["learned", "optimal", "fixed"] = Field(
        "optimal",
        description=(
            "Gaussian decoder scale: the batch's maximum-likelihood value in training and the training set's at the "
            "end (calibrated, the default: a learned scale starting at 1 needs thousands of steps to reach the data's "
            "noise level), trained with the rest, or fixed (edvae.networks.GaussianLikelihood)"
        ),
    )
    decoder_log_scale: float = Field(
        0.0,
        ge=-7.0,
        le=10.0,
        description="initial (learned) or constant (fixed) log standard deviation of the Gaussian decoder",
    )
    prior: str = "normal"
    prior_options: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _legacy_learn_scale(cls, raw: Any) -> Any:
        """Configs written before ``decoder_scale`` existed said ``learn_scale = true/false``."""
        if isinstance(raw, dict) and "learn_scale" in raw:
            raw = dict(raw)
            learn = raw.pop("learn_scale")
            if not isinstance(learn, bool):
                raise ValueError(
                    f"learn_scale must be true or false (it is now decoder_scale = 'learned' or 'fixed'), got {learn!r}"
                )
            if "decoder_scale" in raw:
                raise ValueError("give decoder_scale only (learn_scale is its old spelling)")
            raw["decoder_scale"] = "learned" if learn else "fixed"
        return raw

    @field_validator("prior_options")
    @classmethod
    def _options_the_prior_takes(cls, options: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        """Each option must be one the prior's factory takes, of its annotated type
        (:func:`edvae.priors.registry.check_options`); a required option left out, and a prior
        name not registered (yet), are reported when the model is built. No options: nothing
        to check, and torch is not loaded."""
        prior = info.data.get("prior")
        if not options or not isinstance(prior, str):
            return options
        from edvae.priors.registry import PRIORS, check_options  # torch loads only for a config with options

        if prior.partition(":")[0] in PRIORS:
            try:
                check_options(prior, options, complete=False)
            except EdvaeError as err:
                raise PydanticCustomError("prior_option", "{message}", {"message": str(err)}) from None
        return options

    @model_validator(mode="after")
    def _positive_widths(self) -> ModelConfig:
        if any(not 1 <= h <= MAX_WIDTH for h in self.hidden):
            raise ValueError(f"hidden widths must be integers from 1 to {MAX_WIDTH}, got {self.hidden}")
        return self


class TrainConfig(_Strict):
    """Optimisation, checkpoints, logging and devices."""

    epochs: int = Field(50, ge=1)
    batch_size: int = Field(256, ge=2)
    lr: float = Field(1e-3, gt=0, le=1e6)
    lr_schedule: Literal["constant", "cosine"] = Field(
        "constant",
        description=(
            "cosine: lr_t = lr (1 + cos(pi t / T)) / 2 after t of T = epochs x steps-per-epoch steps; on resume with "
            "more epochs T becomes the new total and t is kept, so the rate continues on the new curve and ends at 0"
        ),
    )
    seed: int = Field(0, ge=0, le=2**32 - 1)
    grad_clip: float | None = Field(None, gt=0)
    on_nonfinite: Literal["stop", "skip"] = "stop"
    checkpoint_every: int = Field(0, ge=0, description="steps between extra mid-epoch checkpoints; 0: none")
    checkpoint_seconds: float = Field(
        30.0,
        ge=0,
        description="at an epoch's end, checkpoint if this long has passed since the last one; 0: every epoch",
    )
    log_every: int = Field(20, ge=1)
    grad_accum_steps: int = Field(
        1,
        ge=1,
        description=(
            "micro-batches per optimisation step: each global batch of batch_size is cut into this many "
            "consecutive micro-batches of batch_size / grad_accum_steps rows, forward and backward one at a "
            "time, gradients summed with weight 1/grad_accum_steps, one optimiser step. The aggregate-posterior "
            "estimators and a calibrated decoder's scale (model.decoder_scale='optimal') see each micro-batch on its "
            "own (B = batch_size / grad_accum_steps, N unchanged), and "
            "validation uses batches of that size too; the data order, the noise and the steps per epoch are "
            "those of grad_accum_steps=1. batch_size must be divisible by grad_accum_steps x processes"
        ),
    )
    devices: int = Field(1, ge=1)
    num_nodes: int = Field(1, ge=1)
    rendezvous_timeout: float = Field(
        600.0,
        gt=0,
        le=86400,
        description=(
            "seconds a multi-process run waits for all its processes to join (and for any one collective "
            "operation) before it stops with a one-line error"
        ),
    )
    accelerator: Literal["cpu", "gpu", "auto"] = "cpu"
    threads: int = Field(
        1,
        ge=0,
        le=1024,
        description=(
            "torch threads per process (set for the whole process); 0 leaves torch's default. 1 by measurement: on a "
            "shared 2-core machine the study networks train 20-50x faster with 1 thread than with 2 "
            "(docs/performance.md)"
        ),
    )
    progress: bool = True


class EvalConfig(_Strict):
    """Evaluation settings (the same for every model)."""

    iwae_samples: int = Field(1000, ge=1)
    batch_size: int = Field(100, ge=1)
    seed: int = Field(0, ge=0, le=2**32 - 1)
    true_ll: bool = True


class RunConfig(_Strict):
    """Everything that defines a run."""

    name: str = "run"
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    objective: SerializeAsAny[ObjectiveConfig] = Field(default_factory=lambda: objective_config({}))
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)

    @field_validator("objective", mode="wrap")
    @classmethod
    def _objective_of_its_kind(cls, value: Any, handler: ValidatorFunctionWrapHandler) -> ObjectiveConfig:
        """The section validated by the options of its kind
        (:func:`edvae.objective_kinds.objective_config`); errors keep the ``objective.`` prefix."""
        return objective_config(value)


def format_validation_error(err: ValidationError, source: str, raw: Any = None) -> str:
    """The first problem pydantic found in a config, as one line naming ``source``, the key and the fix."""
    first = err.errors()[0]
    key = ".".join(str(p) for p in first["loc"]) or "(top level)"
    if first["type"] == "extra_forbidden":
        parent = first["loc"][:-1]
        section = _section(parent, raw)
        valid = ", ".join(sorted(section.model_fields)) if section else ""
        return f"{source}: unknown config key '{key}'; valid keys here: {valid}"
    got = first.get("input")
    got_text = "" if isinstance(got, dict) else f" (got {got!r})"
    return f"{source}: invalid value for '{key}': {first['msg']}{got_text}"


def _section(loc: tuple, raw: Any = None) -> type[BaseModel] | None:
    """The model of the section at ``loc``; the objective's is its kind's options (read from ``raw``)."""
    model: type[BaseModel] = RunConfig
    for part in loc:
        raw = raw.get(str(part)) if isinstance(raw, dict) else None
        if model is RunConfig and part == "objective":
            model = options_for(kind_of(raw))
            continue
        field = model.model_fields.get(str(part))
        ann = getattr(field, "annotation", None)
        if not (isinstance(ann, type) and issubclass(ann, BaseModel)):
            return None
        model = ann
    return model


#: The value types a config holds (TOML's, without its dates and times, and None for JSON's null).
_PLAIN = (str, int, float, bool, type(None))


def _check_plain(value: Any, source: str, key: str = "") -> None:
    """Refuse (one line naming the key) a value a config cannot hold: TOML dates and times, or
    any other object that is not a string, number, boolean, list or table."""
    if isinstance(value, dict):
        for name, item in value.items():
            if not isinstance(name, str):
                raise EdvaeError(f"{source}: config key {name!r} under '{key or '(top level)'}' is not a string")
            _check_plain(item, source, f"{key}.{name}" if key else name)
    elif isinstance(value, (list, tuple)):
        for item in value:
            _check_plain(item, source, key)
    elif not isinstance(value, _PLAIN):
        kind = "a TOML date/time" if isinstance(value, (datetime.date, datetime.time)) else f"a {type(value).__name__}"
        raise EdvaeError(
            f"{source}: '{key}' holds {kind} ({value!r}); config values are strings, numbers, booleans, lists "
            "and tables: quote it if you meant text"
        )


def validate_config(raw: dict[str, Any], source: str = "config") -> RunConfig:
    """Build a :class:`RunConfig` from a plain dict, or raise :class:`EdvaeError` (one line).

    Values other than strings, numbers, booleans, lists and tables (TOML dates and times) are
    refused, naming the key."""
    if not isinstance(raw, dict):
        raise EdvaeError(f"{source}: a config is a table of sections (data, model, ...), got {type(raw).__name__}")
    _check_plain(raw, source)
    try:
        return RunConfig.model_validate(raw)
    except ValidationError as err:
        raise EdvaeError(format_validation_error(err, source, raw)) from None


def load_config(path: str | Path) -> dict[str, Any]:
    """Read a TOML config file into a plain dict (validated later, after overrides)."""
    path = Path(path)
    if not path.is_file():
        raise EdvaeError(
            f"config file {path} does not exist; presets live in configs/ (e.g. configs/edvae-complex.toml)"
        )
    try:
        raw = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise EdvaeError(f"config file {path} is not valid TOML: {err}") from None
    _check_plain(raw, f"config file {path}")
    for name, value in raw.items():  # [[train]] (an array of tables) where a section [train] goes
        if name in RunConfig.model_fields and name != "name" and not isinstance(value, dict):
            shown = f"[[{name}]] (an array of tables)" if isinstance(value, list) else f"{name} = {value!r}"
            raise EdvaeError(f"config file {path}: '{name}' is a section, write [{name}] instead of {shown}")
    return raw


def _parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        pass
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def apply_overrides(raw: dict[str, Any], overrides: list[str] | None) -> dict[str, Any]:
    """Apply ``key.sub=value`` overrides (values parsed as JSON/TOML, else taken as strings)."""
    _check_plain(raw, "config")
    out = json.loads(json.dumps(raw))
    for item in overrides or []:
        if "=" not in item:
            raise EdvaeError(f"--set expects key=value (e.g. train.epochs=10), got '{item}'")
        key, _, value = item.partition("=")
        parts = key.strip().split(".")
        node = out
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise EdvaeError(f"--set {key}: '{part}' is a value, not a section")
            node = child
        node[parts[-1]] = _parse_value(value.strip())
    return out
