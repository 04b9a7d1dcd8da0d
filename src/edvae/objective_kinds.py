r"""Training objectives as objects, registered by ``objective.kind``.

The functional objectives (:func:`edvae.objectives.elbo`, :func:`edvae.objectives.ed_elbo`)
take tensors and serve any loop. The trainer needs a little more of an objective, and each
class here says it in one place:

* its settings: :attr:`Options`, a pydantic model (a subclass of :class:`ObjectiveConfig`)
  holding the kind's fields and their defaults, written once (a preset's weights are its
  defaults); a run config's ``objective`` section is validated by the Options of its kind
  (:func:`objective_config`), and :meth:`from_config` builds the objective from one (reading
  attributes only: this module imports neither the config nor the trainer);
* whether a step needs the posteriors (mu, logvar) of the whole global batch, which the
  processes must then gather (:meth:`reads_batch_columns`);
* which terms it logs (:attr:`logged_terms`, on a logged step);
* any state it carries from step to step (:meth:`state_dict`, stored in the checkpoint);
* parts of its own that read the model or are trained with it (:meth:`setup` once the model is
  built, :meth:`parameters` added to the optimiser after the model's, :meth:`after_step` after
  every optimiser step), and whether its call needs the batch's inputs (:attr:`reads_inputs`).

Adding a kind is one class in one module (and its Options, if it has settings), decorated with
:func:`register_objective`; the config accepts its name as soon as the module is imported
(installed packages: through the entry-point group ``edvae.objectives``). A config stored by
edvae before typed options (one flat section with every kind's settings) still loads: a
setting of another kind at its :data:`FLAT_DEFAULTS` value is dropped, any other value refused.
The module is torch-free at import
(the functional objectives load when an objective is built), so the config validates before
torch loads.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, ClassVar

from pydantic import Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

from edvae.errors import EdvaeError
from edvae.estimator_names import EntropyEstimator, KLMethod, MIEstimator
from edvae.registry import Registry, Settings

__all__ = [
    "FLAT_DEFAULTS",
    "OBJECTIVES",
    "BetaTCVAEObjective",
    "BetaTCVAEOptions",
    "BetaVAEObjective",
    "BetaVAEOptions",
    "DecomposedObjective",
    "DecomposedOptions",
    "EDObjective",
    "EDOptions",
    "ELBOObjective",
    "ELBOOptions",
    "ObjectiveConfig",
    "TrainingObjective",
    "build_objective",
    "kind_of",
    "objective_config",
    "options_for",
    "register_objective",
]

#: objective kind -> class; filled by :func:`register_objective`, and by the modules installed
#: packages list under the entry-point group ``edvae.objectives``
OBJECTIVES: Registry[type[TrainingObjective]] = Registry("objective kind", plugins="edvae.objectives")


def register_objective(kind: str) -> Callable[[type[TrainingObjective]], type[TrainingObjective]]:
    """Class decorator: make a :class:`TrainingObjective` subclass the objective ``kind``
    (``objective.kind = "<kind>"`` in a config); its :attr:`~TrainingObjective.Options` are the
    settings a config may give it."""

    def add(cls: type[TrainingObjective]) -> type[TrainingObjective]:
        declared = cls.Options.model_fields["kind"].default
        if "Options" in vars(cls) and declared != kind:
            raise EdvaeError(
                f"{cls.__name__}.Options has kind {declared!r} but is registered as {kind!r}; "
                f"declare kind: str = {kind!r} in its Options"
            )
        OBJECTIVES.add(kind, cls)
        cls.kind = kind
        return cls

    return add


#: The one flat ``objective`` section of edvae before typed options held every kind's settings
#: at once, with these defaults; a ``config.json`` of such a run still loads (a setting of
#: another kind is dropped at its value here, refused otherwise). A record of the old format:
#: it never changes with a kind's defaults.
FLAT_DEFAULTS: dict[str, Any] = {
    "kl": "auto",
    "mi_weight": 1.0,
    "entropy_weight": 1.0,
    "cross_entropy_weight": 1.0,
    "mi_estimator": "mss",
    "entropy_estimator": "mss",
    "critic": None,
    "critic_options": {},
    "kl_weight": 0.0,
    "tc_weight": 0.0,
    "dimwise_kl_weight": 0.0,
}


def _either(choices: list[str]) -> str:
    """``'a', 'b' or 'c'``, as pydantic words the values of a Literal."""
    quoted = [repr(c) for c in choices]
    return " or ".join((", ".join(quoted[:-1]), quoted[-1])) if len(quoted) > 1 else quoted[0]


class ObjectiveConfig(Settings):
    """The ``objective`` section of a run config: ``kind``, a name of :data:`OBJECTIVES`. Each
    kind's settings are its class's :attr:`~TrainingObjective.Options`, a subclass of this one
    holding that kind's fields and their defaults; :func:`objective_config` picks it from the
    kind. A setting of another kind is refused in one line naming the kinds it acts with."""

    kind: str = "elbo"

    @field_validator("kind")
    @classmethod
    def _registered(cls, value: str) -> str:
        if value not in OBJECTIVES:  # worded as pydantic words a Literal
            expected = _either(OBJECTIVES.names())
            raise PydanticCustomError("literal_error", "Input should be {expected}", {"expected": expected})
        return value

    @model_validator(mode="before")
    @classmethod
    def _settings_of_other_kinds(cls, raw: Any) -> Any:
        """Drop a setting of other kinds left at its :data:`FLAT_DEFAULTS` value (a stored flat
        config); refuse it otherwise, naming the kinds it acts with."""
        if not isinstance(raw, dict):
            return raw
        kind = raw.get("kind", cls.model_fields["kind"].default)
        kept = {}
        for name, value in raw.items():
            owners = [] if name in cls.model_fields else _owners(name)
            if not owners:
                kept[name] = value  # its own, or no kind's (refused as an unknown key)
            elif not (name in FLAT_DEFAULTS and _same(value, FLAT_DEFAULTS[name])):
                raise ValueError(f"{name} acts only with objective.kind {_either(owners)}, not {kind!r}; remove it")
        return kept


def _owners(name: str) -> list[str]:
    """The registered kinds whose options hold the setting ``name``."""
    return [kind for kind, cls in OBJECTIVES.items() if name in cls.Options.model_fields]


def _same(value: Any, default: Any) -> bool:
    return value == default and isinstance(value, bool) == isinstance(default, bool)


def kind_of(section: Any) -> object:
    """The kind an ``objective`` section (a dict) names: ``"elbo"`` when it names none."""
    return section.get("kind", ObjectiveConfig.model_fields["kind"].default) if isinstance(section, Mapping) else None


def options_for(kind: object) -> type[ObjectiveConfig]:
    """The options model of the objective ``kind``; :class:`ObjectiveConfig` (which refuses
    the kind in one line) when it is not registered."""
    return OBJECTIVES.get(kind).Options if kind in OBJECTIVES else ObjectiveConfig


def objective_config(value: Any) -> ObjectiveConfig:
    """An ``objective`` section (a dict, or any :class:`ObjectiveConfig`) validated by the
    options of its kind (``"elbo"`` when it names none); raises pydantic's ``ValidationError``
    (the config words it in one line)."""
    if isinstance(value, ObjectiveConfig):
        if type(value) is options_for(value.kind):
            return value
        value = value.model_dump()
    if not isinstance(value, dict):
        return ObjectiveConfig.model_validate(value)  # refused: not a section
    kind = kind_of(value)
    if kind not in OBJECTIVES:
        return ObjectiveConfig.model_validate({"kind": kind})  # refused: the kind, in one line
    return options_for(kind).model_validate(value)


def build_objective(config: Any, dataset_size: int) -> TrainingObjective:
    """The objective a config's ``objective`` section names (its :class:`ObjectiveConfig`, or a
    dict of settings), for N = ``dataset_size``."""
    if isinstance(config, ObjectiveConfig) and type(config) is not options_for(config.kind):
        config = config.model_dump()  # e.g. ObjectiveConfig(kind="ed"): the kind's defaults
    if isinstance(config, Mapping):
        kind = kind_of(config)
        config = OBJECTIVES.get(kind).Options.parse(config, f"objective {kind!r}")
    return OBJECTIVES.get(config.kind).from_config(config, dataset_size)


class TrainingObjective:
    """An objective as the trainer calls it: ``objective(out, prior, mu, logvar, row_offset,
    diagnostics=True) -> edvae.objectives.Objective``.

    ``out`` is the model output of this process's rows (``log_px``, ``z``, ``mu``, ``logvar``);
    ``mu``, ``logvar`` are the posteriors the objective reads: the whole global batch's when
    :meth:`reads_batch_columns` is True (rows ``row_offset ..`` are this process's), else this
    process's own (``row_offset = 0``). ``diagnostics=False`` lets it skip terms that only
    report (the trainer sets it True on logged steps and in validation). Inputs are not checked
    for NaN/Inf: the trainer checks the loss and the gradients, without a host synchronisation.

    Its settings are :attr:`Options` (a subclass of :class:`ObjectiveConfig`: the fields a
    config's ``objective`` section may hold for this kind, and their defaults, written once);
    ``cls(dataset_size=N, **settings)`` validates them into :attr:`settings`.
    """

    kind: ClassVar[str]
    #: the kind's settings and their defaults (a preset's weights are its defaults)
    Options: ClassVar[type[ObjectiveConfig]] = ObjectiveConfig
    #: the names of the terms a logged step reports (``loss`` among them)
    logged_terms: ClassVar[tuple[str, ...]]
    #: whether the trainer passes the rows' inputs as ``x=`` to the call
    reads_inputs: bool = False
    settings: ObjectiveConfig

    def __init__(self, *, dataset_size: int, **settings: Any) -> None:
        self.dataset_size = dataset_size
        self.settings = self.Options.parse({**settings, "kind": self.kind}, f"objective {self.kind!r}")

    @classmethod
    def from_config(cls, config: Any, dataset_size: int) -> TrainingObjective:
        """Build from a config's ``objective`` section (reads the attributes :attr:`Options` names)."""
        settings = {name: getattr(config, name) for name in cls.Options.model_fields if name != "kind"}
        return cls(dataset_size=dataset_size, **settings)

    def reads_batch_columns(self, diagnostics: bool) -> bool:
        """Whether a step (with these ``diagnostics``) reads the posteriors of the whole global batch."""
        return False

    def __call__(self, out: Any, prior: Any, mu: Any, logvar: Any, row_offset: int, diagnostics: bool = True) -> Any:
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        """State carried from step to step (for example a queue of past codes); stored in the
        checkpoint when not empty."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""

    def setup(self, model: Any) -> None:
        """Called once the model is built (on its device), before the optimiser and before a
        checkpoint is loaded: build the parts that read the model (e.g. a critic that copies
        the encoder). They stay outside the model: its state and parameters do not change."""

    def parameters(self) -> list[Any]:
        """The objective's own trainable parameters (trained with the model's, by the same optimiser)."""
        return []

    def after_step(self, model: Any, *, applied: bool, gather: Callable[[Any], Any] | None = None) -> None:
        """Called after every optimisation step, with the (unwrapped) model: ``applied`` is False
        for a skipped step (non-finite loss or gradient); ``gather`` concatenates a tensor of
        this process's rows over the processes, in rank order."""


class ELBOOptions(ObjectiveConfig):
    """``kind = "elbo"``: the KL analytic where registered (``kl = "auto"``), or Monte Carlo."""

    kind: str = "elbo"
    kl: KLMethod = "auto"


@register_objective("elbo")
class ELBOObjective(TrainingObjective):
    """The ELBO (:func:`edvae.objectives.elbo`): reconstruction - KL(q(z|x) || p(z)), per row,
    so it never reads other rows' posteriors. ``kl``: ``"auto"``, ``"analytic"`` or ``"mc"``."""

    Options = ELBOOptions
    settings: ELBOOptions
    logged_terms = ("reconstruction", "kl", "elbo", "loss")

    def __init__(self, *, dataset_size: int, **settings: Any) -> None:
        from edvae.objectives import elbo

        super().__init__(dataset_size=dataset_size, **settings)
        self.kl = self.settings.kl
        self._elbo = elbo

    def __call__(self, out: Any, prior: Any, mu: Any, logvar: Any, row_offset: int, diagnostics: bool = True) -> Any:
        return self._elbo(out.log_px, out.z, out.mu, out.logvar, prior, kl=self.kl, validate=False)


class _LatentTerms(ObjectiveConfig):
    """The weights and estimators of the latent terms I, H[q(z)] and H[q(z), p(z)] (the ED
    objective's and the decomposed one's)."""

    mi_weight: float = 1.0
    entropy_weight: float = 1.0
    cross_entropy_weight: float = 1.0
    mi_estimator: MIEstimator = "mss"
    entropy_estimator: EntropyEstimator = "mss"


class EDOptions(_LatentTerms):
    """``kind = "ed"``: -R + w_mi I - w_ent H[q(z)] + w_ce H[q(z), p(z)] with the chosen
    estimators; unit weights with one shared estimator give the negative Monte-Carlo ELBO."""

    kind: str = "ed"
    critic: str | None = Field(
        None,
        description=(
            "the InfoNCE critic of mi_estimator='infonce': 'encoder' (log q(z|x), <= log B; the default when unset), "
            "'bilinear' or 'mlp' (learned scores, <= log B), 'momentum' (MoCo-style momentum encoder and a queue of "
            "K past codes as negatives, <= log(K + 1)); see edvae.critics"
        ),
    )
    critic_options: dict[str, Any] = Field(
        default_factory=dict,
        description="options of the critic (its options model in edvae.critics.CRITICS), e.g. {queue_size = 1024}",
    )

    @model_validator(mode="after")
    def _critic_fits(self) -> EDOptions:
        """A critic goes with the InfoNCE estimate; its options are its own (edvae.critics)."""
        if self.critic is None:
            if self.critic_options:
                raise ValueError("objective.critic_options needs objective.critic (encoder, bilinear, mlp or momentum)")
            return self
        if self.mi_estimator != "infonce":
            raise ValueError(
                f"objective.critic={self.critic!r} scores the InfoNCE estimate of I(x; z): set objective.kind='ed' "
                f"and objective.mi_estimator='infonce' (got kind={self.kind!r}, mi_estimator={self.mi_estimator!r})"
            )
        from edvae.critics import parse_critic  # torch loads only for a config that names a critic

        parse_critic(self.critic, self.critic_options)
        return self


@register_objective("ed")
class EDObjective(TrainingObjective):
    r"""The ED-VAE objective (:func:`edvae.objectives.ed_elbo`):
    L = -R + w_mi I_hat - w_ent H_hat[q(z)] + w_ce CE_hat, log q_hat over the global batch with
    N = ``dataset_size``. It reads the whole batch's posteriors whenever it evaluates log q_hat
    (:func:`edvae.objectives.uses_aggregate_posterior`): always on logged steps, and in between
    unless one shared estimate serves both terms at w_mi = w_ent."""

    Options = EDOptions
    settings: EDOptions
    logged_terms = (
        "reconstruction",
        "cross_entropy",
        "loss",
        "mi",
        "entropy",
        "marginal_kl",
        "posterior_entropy",
        "elbo_mc",
    )

    def __init__(self, *, dataset_size: int, **settings: Any) -> None:
        from edvae.objectives import ed_elbo, uses_aggregate_posterior

        super().__init__(dataset_size=dataset_size, **settings)
        self.options: dict[str, Any] = self.settings.model_dump(include=set(_LatentTerms.model_fields) - {"kind"})
        self._ed_elbo = ed_elbo
        terms = {k: self.options[k] for k in ("mi_weight", "entropy_weight", "mi_estimator", "entropy_estimator")}
        self._reads = {d: uses_aggregate_posterior(**terms, diagnostics=d) for d in (False, True)}  # by diagnostics
        self.critic_name, self.critic_options = self.settings.critic, dict(self.settings.critic_options)
        self.critic: Any = None  # built by setup(model)
        self.reads_inputs = self.critic_name == "momentum"

    def reads_batch_columns(self, diagnostics: bool) -> bool:
        return self._reads[diagnostics] or self.critic_name not in (None, "encoder")

    def __call__(
        self, out: Any, prior: Any, mu: Any, logvar: Any, row_offset: int, diagnostics: bool = True, x: Any = None
    ) -> Any:
        if self.critic_name is not None and self.critic is None:
            raise EdvaeError(
                f"the ED objective's critic {self.critic_name!r} is built by objective.setup(model); call it first"
            )
        return self._ed_elbo(
            out.log_px,
            out.z,
            mu,
            logvar,
            prior,
            dataset_size=self.dataset_size,
            row_offset=row_offset,
            validate=False,
            diagnostics=diagnostics,
            critic=self.critic,
            x=x,
            **self.options,
        )

    # ------------------------------------------------------------------ the InfoNCE critic
    # objective.critic: the InfoNCE estimate's critic (edvae.critics), each with its cap:
    #   "encoder"  f = log q(z|x), the batch's other codes as negatives   I_NCE <= log B
    #   "bilinear" f = z^T W mu, learned                                   I_NCE <= log B
    #   "mlp"      f = g(z)^T h(mu) / sqrt(k), learned                     I_NCE <= log B
    #   "momentum" cosine / tau against a momentum encoder's keys, a queue
    #              of K past keys as negatives (MoCo)                      I_NCE <= log(K + 1)

    def setup(self, model: Any) -> None:
        """Build the critic for the model's latent size (the momentum critic copies its encoder),
        on the model's device."""
        if self.critic_name is None:
            return
        from edvae.critics import make_critic

        device = next(iter(model.parameters())).device
        critic = make_critic(self.critic_name, model.latent_dim, encoder=model.encoder, **self.critic_options)
        self.critic = critic.to(device)

    def parameters(self) -> list[Any]:
        return [] if self.critic is None else [p for p in self.critic.parameters() if p.requires_grad]

    def after_step(self, model: Any, *, applied: bool, gather: Callable[[Any], Any] | None = None) -> None:
        """The critic's update (the momentum critic's EMA and queue), or its skip."""
        if self.critic is None:
            return
        if applied:
            self.critic.update(model.encoder, gather=gather)
        else:
            self.critic.skip()

    def state_dict(self) -> dict[str, Any]:
        """The critic's parameters and buffers (the momentum critic's key encoder and queue)."""
        state = {} if self.critic is None else self.critic.state_dict()
        return {"critic": state} if state else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "critic" in state and self.critic is not None:
            self.critic.load_state_dict(state["critic"])


class DecomposedOptions(_LatentTerms):
    """``kind = "decomposed"``: every split of the KL (see :class:`DecomposedObjective`), one
    estimator for all of them; the defaults are the negative Monte-Carlo ELBO."""

    kind: str = "decomposed"
    kl: KLMethod = "auto"
    kl_weight: float = 0.0
    tc_weight: float = 0.0
    dimwise_kl_weight: float = 0.0

    @model_validator(mode="after")
    def _one_estimator(self) -> DecomposedOptions:
        if self.mi_estimator != self.entropy_estimator:
            raise ValueError(
                f"objective.kind={self.kind!r} estimates I, H, TC and the dimension-wise KL with one estimator "
                f"(entropy_estimator={self.entropy_estimator!r}), so mi_estimator={self.mi_estimator!r} "
                "cannot apply; set mi_estimator equal to entropy_estimator."
            )
        return self


#: the weights of :func:`edvae.objectives.decomposed_elbo`
_WEIGHTS = ("kl_weight", "mi_weight", "entropy_weight", "cross_entropy_weight", "tc_weight", "dimwise_kl_weight")


@register_objective("decomposed")
class DecomposedObjective(TrainingObjective):
    r"""Every split of the KL in one objective (:func:`edvae.objectives.decomposed_elbo`):
    L = -R + w_kl KL + w_mi I + w_tc TC + w_dim sum_d KL(q_d || p_d) - w_ent H[q(z)] + w_ce H[q(z), p(z)],
    log q_hat and its marginals from one estimator (``entropy_estimator``, MSS by default) over
    the global batch with N = ``dataset_size``. With its defaults (w_mi = w_ent = w_ce = 1, the
    others 0) it is the negative Monte-Carlo ELBO. The presets below are this class with other
    :attr:`Options` defaults."""

    Options: ClassVar[type[DecomposedOptions]] = DecomposedOptions
    settings: DecomposedOptions
    logged_terms = (
        "reconstruction",
        "cross_entropy",
        "loss",
        "kl",
        "elbo",
        "mi",
        "entropy",
        "marginal_kl",
        "total_correlation",
        "dimwise_kl",
    )

    def __init__(self, *, dataset_size: int, **settings: Any) -> None:
        """``settings``: any of :attr:`Options` (the weights, ``kl``, the estimators); the rest
        are the kind's defaults."""
        from edvae.objectives import decomposed_elbo, uses_aggregate_posterior

        super().__init__(dataset_size=dataset_size, **settings)
        chosen = {name: getattr(self.settings, name) for name in _WEIGHTS}
        estimator = self.settings.entropy_estimator
        self.options = dict(chosen, kl=self.settings.kl, estimator=estimator)
        self._objective = decomposed_elbo
        reads = {name: chosen[name] for name in ("mi_weight", "entropy_weight", "tc_weight", "dimwise_kl_weight")}
        self._reads = {
            d: uses_aggregate_posterior(**reads, mi_estimator=estimator, entropy_estimator=estimator, diagnostics=d)
            for d in (False, True)
        }

    def reads_batch_columns(self, diagnostics: bool) -> bool:
        return self._reads[diagnostics]

    def __call__(self, out: Any, prior: Any, mu: Any, logvar: Any, row_offset: int, diagnostics: bool = True) -> Any:
        return self._objective(
            out.log_px,
            out.z,
            mu,
            logvar,
            prior,
            dataset_size=self.dataset_size,
            row_offset=row_offset,
            validate=False,
            diagnostics=diagnostics,
            **self.options,
        )


#: beta of the beta-VAE preset: Higgins et al. (2017) use beta = 4 on dSprites
BETA_VAE_BETA = 4.0
#: (alpha, beta, gamma) of the beta-TCVAE preset: Chen et al. (2018), alpha = gamma = 1, beta = 6
BETA_TCVAE_WEIGHTS = (1.0, 6.0, 1.0)


class BetaVAEOptions(DecomposedOptions):
    """``kind = "beta-vae"``: beta = ``kl_weight`` on the whole KL, the latent terms off."""

    kind: str = "beta-vae"
    kl_weight: float = BETA_VAE_BETA
    mi_weight: float = 0.0
    entropy_weight: float = 0.0
    cross_entropy_weight: float = 0.0


@register_objective("beta-vae")
class BetaVAEObjective(DecomposedObjective):
    r"""beta-VAE (Higgins et al., 2017): L = -R + beta mean_i KL(q(z|x_i) || p(z)), beta =
    ``kl_weight`` (default :data:`BETA_VAE_BETA` = 4, their dSprites setting), the KL analytic
    where registered (``kl = "auto"``). At beta = 1 it is the ELBO."""

    Options = BetaVAEOptions


class BetaTCVAEOptions(DecomposedOptions):
    """``kind = "beta-tcvae"``: alpha I + beta TC + gamma sum_d KL_d, the other terms off."""

    kind: str = "beta-tcvae"
    mi_weight: float = BETA_TCVAE_WEIGHTS[0]
    tc_weight: float = BETA_TCVAE_WEIGHTS[1]
    dimwise_kl_weight: float = BETA_TCVAE_WEIGHTS[2]
    entropy_weight: float = 0.0
    cross_entropy_weight: float = 0.0


@register_objective("beta-tcvae")
class BetaTCVAEObjective(DecomposedObjective):
    r"""beta-TCVAE (Chen et al., 2018): L = -R + alpha I + beta TC + gamma sum_d KL(q_d(z_d) || p_d(z_d))
    with alpha = ``mi_weight``, beta = ``tc_weight``, gamma = ``dimwise_kl_weight`` (defaults
    :data:`BETA_TCVAE_WEIGHTS` = 1, 6, 1), MSS by default; needs a factorised prior. At
    alpha = beta = gamma = 1 it is the negative Monte-Carlo ELBO."""

    Options = BetaTCVAEOptions
