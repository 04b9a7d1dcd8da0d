r"""Training objectives as objects, registered by ``objective.kind``.

The functional objectives (:func:`edvae.objectives.elbo`, :func:`edvae.objectives.ed_elbo`)
take tensors and serve any loop. The trainer needs a little more of an objective, and each
class here says it in one place:

* how to build itself from the ``objective`` section of a config (:meth:`from_config`, which
  only reads attributes: this module imports neither the config nor the trainer);
* whether a step needs the posteriors (mu, logvar) of the whole global batch, which the
  processes must then gather (:meth:`reads_batch_columns`);
* which terms it logs (:attr:`logged_terms`, on a logged step);
* any state it carries from step to step (:meth:`state_dict`, stored in the checkpoint);
* parts of its own that read the model or are trained with it (:meth:`setup` once the model is
  built, :meth:`parameters` added to the optimiser after the model's, :meth:`after_step` after
  every optimiser step), and whether its call needs the batch's inputs (:attr:`reads_inputs`).

Adding a kind is one class in one module, decorated with :func:`register_objective`; the
config accepts its name as soon as the module is imported. The module is torch-free at import
(the functional objectives load when an objective is built), so the config validates before
torch loads.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

from edvae.errors import EdvaeError

__all__ = [
    "OBJECTIVES",
    "BetaTCVAEObjective",
    "BetaVAEObjective",
    "DecomposedObjective",
    "EDObjective",
    "ELBOObjective",
    "TrainingObjective",
    "build_objective",
    "kind_defaults",
    "register_objective",
]

#: objective kind -> class; filled by :func:`register_objective`
OBJECTIVES: dict[str, type[TrainingObjective]] = {}


def register_objective(kind: str) -> Callable[[type[TrainingObjective]], type[TrainingObjective]]:
    """Class decorator: make a :class:`TrainingObjective` subclass the objective ``kind``
    (``objective.kind = "<kind>"`` in a config)."""

    def add(cls: type[TrainingObjective]) -> type[TrainingObjective]:
        if kind in OBJECTIVES and OBJECTIVES[kind] is not cls:
            raise EdvaeError(f"objective kind {kind!r} is already registered ({OBJECTIVES[kind].__name__})")
        cls.kind = kind
        OBJECTIVES[kind] = cls
        return cls

    return add


def kind_defaults(kind: str) -> dict[str, Any]:
    """The settings the objective ``kind`` gives a config that leaves them out (a preset's
    weights, e.g. ``tc_weight = 6`` for ``"beta-tcvae"``); ``{}`` for an unknown kind."""
    cls = OBJECTIVES.get(kind)
    return dict(cls.defaults) if cls is not None else {}


def build_objective(config: Any, dataset_size: int) -> TrainingObjective:
    """The objective a config's ``objective`` section names, for N = ``dataset_size``."""
    cls = OBJECTIVES.get(config.kind)
    if cls is None:
        raise EdvaeError(f"objective.kind={config.kind!r} is unknown; use one of {', '.join(OBJECTIVES)}")
    return cls.from_config(config, dataset_size)


class TrainingObjective:
    """An objective as the trainer calls it: ``objective(out, prior, mu, logvar, row_offset,
    diagnostics=True) -> edvae.objectives.Objective``.

    ``out`` is the model output of this process's rows (``log_px``, ``z``, ``mu``, ``logvar``);
    ``mu``, ``logvar`` are the posteriors the objective reads: the whole global batch's when
    :meth:`reads_batch_columns` is True (rows ``row_offset ..`` are this process's), else this
    process's own (``row_offset = 0``). ``diagnostics=False`` lets it skip terms that only
    report (the trainer sets it True on logged steps and in validation). Inputs are not checked
    for NaN/Inf: the trainer checks the loss and the gradients, without a host synchronisation.
    """

    kind: ClassVar[str]
    #: the names of the terms a logged step reports (``loss`` among them)
    logged_terms: ClassVar[tuple[str, ...]]
    #: whether the trainer passes the rows' inputs as ``x=`` to the call
    reads_inputs: bool = False
    #: the config settings this kind fills in when a config leaves them out (a preset's weights;
    #: read by the config through :func:`kind_defaults`, so ``objective.kind = "beta-tcvae"``
    #: alone is the whole preset, and an explicit setting wins)
    defaults: ClassVar[dict[str, Any]] = {}

    def __init__(self, *, dataset_size: int) -> None:
        self.dataset_size = dataset_size

    @classmethod
    def from_config(cls, config: Any, dataset_size: int) -> TrainingObjective:
        """Build from a config's ``objective`` section (reads its attributes only)."""
        return cls(dataset_size=dataset_size)

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


@register_objective("elbo")
class ELBOObjective(TrainingObjective):
    """The ELBO (:func:`edvae.objectives.elbo`): reconstruction - KL(q(z|x) || p(z)), per row,
    so it never reads other rows' posteriors. ``kl``: ``"auto"``, ``"analytic"`` or ``"mc"``."""

    logged_terms = ("reconstruction", "kl", "elbo", "loss")

    def __init__(self, *, dataset_size: int, kl: str = "auto") -> None:
        from edvae.objectives import elbo

        super().__init__(dataset_size=dataset_size)
        self.kl = kl
        self._elbo = elbo

    @classmethod
    def from_config(cls, config: Any, dataset_size: int) -> ELBOObjective:
        return cls(dataset_size=dataset_size, kl=config.kl)

    def __call__(self, out: Any, prior: Any, mu: Any, logvar: Any, row_offset: int, diagnostics: bool = True) -> Any:
        return self._elbo(out.log_px, out.z, out.mu, out.logvar, prior, kl=self.kl, validate=False)


@register_objective("ed")
class EDObjective(TrainingObjective):
    r"""The ED-VAE objective (:func:`edvae.objectives.ed_elbo`):
    L = -R + w_mi I_hat - w_ent H_hat[q(z)] + w_ce CE_hat, log q_hat over the global batch with
    N = ``dataset_size``. It reads the whole batch's posteriors whenever it evaluates log q_hat
    (:func:`edvae.objectives.uses_aggregate_posterior`): always on logged steps, and in between
    unless one shared estimate serves both terms at w_mi = w_ent."""

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
    settings = ("mi_weight", "entropy_weight", "cross_entropy_weight", "mi_estimator", "entropy_estimator")
    #: the InfoNCE critic's settings (:mod:`edvae.critics`), read from the config beside :attr:`settings`
    critic_settings = ("critic", "critic_options")

    def __init__(
        self,
        *,
        dataset_size: int,
        mi_weight: float = 1.0,
        entropy_weight: float = 1.0,
        cross_entropy_weight: float = 1.0,
        mi_estimator: str = "mss",
        entropy_estimator: str = "mss",
        critic: str | None = None,
        critic_options: dict[str, Any] | None = None,
    ) -> None:
        from edvae.objectives import ed_elbo, uses_aggregate_posterior

        super().__init__(dataset_size=dataset_size)
        self.options: dict[str, Any] = dict(
            mi_weight=mi_weight,
            entropy_weight=entropy_weight,
            cross_entropy_weight=cross_entropy_weight,
            mi_estimator=mi_estimator,
            entropy_estimator=entropy_estimator,
        )
        self._ed_elbo = ed_elbo
        self._reads = {  # by diagnostics
            d: uses_aggregate_posterior(
                mi_weight=mi_weight,
                entropy_weight=entropy_weight,
                mi_estimator=mi_estimator,
                entropy_estimator=entropy_estimator,
                diagnostics=d,
            )
            for d in (False, True)
        }
        self._init_critic(critic, critic_options or {})

    @classmethod
    def from_config(cls, config: Any, dataset_size: int) -> EDObjective:
        names = (*cls.settings, *(name for name in cls.critic_settings if hasattr(config, name)))
        return cls(dataset_size=dataset_size, **{name: getattr(config, name) for name in names})

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

    def _init_critic(self, name: str | None, options: dict[str, Any]) -> None:
        if name is not None:
            from edvae.critics import check_critic

            check_critic(name, options)
        self.critic_name, self.critic_options = name, dict(options)
        self.critic: Any = None  # built by setup(model)
        self.reads_inputs = name == "momentum"

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


@register_objective("decomposed")
class DecomposedObjective(TrainingObjective):
    r"""Every split of the KL in one objective (:func:`edvae.objectives.decomposed_elbo`):
    L = -R + w_kl KL + w_mi I + w_tc TC + w_dim sum_d KL(q_d || p_d) - w_ent H[q(z)] + w_ce H[q(z), p(z)],
    log q_hat and its marginals from one estimator (``entropy_estimator``, MSS by default) over
    the global batch with N = ``dataset_size``. With the config's defaults (w_mi = w_ent = w_ce = 1,
    the others 0) it is the negative Monte-Carlo ELBO. The presets below are this class with
    other :attr:`defaults`."""

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
    #: the weights and their values when neither the class's :attr:`defaults` nor the caller set them
    weights = dict(
        kl_weight=0.0, mi_weight=1.0, entropy_weight=1.0, cross_entropy_weight=1.0, tc_weight=0.0, dimwise_kl_weight=0.0
    )
    #: the config settings it reads (its estimator is ``entropy_estimator``)
    settings = (*weights, "kl")

    def __init__(self, *, dataset_size: int, kl: str = "auto", estimator: str = "mss", **weights: float) -> None:
        """``weights``: any of :attr:`weights`; the rest come from the class's :attr:`defaults`
        (a preset), then from :attr:`weights`."""
        from edvae.objectives import decomposed_elbo, decomposed_reads_batch

        unknown = set(weights) - set(self.weights)
        if unknown:
            raise EdvaeError(
                f"unknown weight(s) {', '.join(sorted(unknown))} for objective {self.kind!r}; use "
                f"{', '.join(self.weights)}"
            )
        super().__init__(dataset_size=dataset_size)
        chosen = {**self.weights, **{k: v for k, v in self.defaults.items() if k in self.weights}, **weights}
        self.options = dict(chosen, kl=kl, estimator=estimator)
        self._objective = decomposed_elbo
        reads = {name: chosen[name] for name in ("mi_weight", "entropy_weight", "tc_weight", "dimwise_kl_weight")}
        self._reads = {d: decomposed_reads_batch(**reads, diagnostics=d) for d in (False, True)}

    @classmethod
    def from_config(cls, config: Any, dataset_size: int) -> DecomposedObjective:
        if config.mi_estimator != config.entropy_estimator:
            raise EdvaeError(
                f"objective.kind={cls.kind!r} estimates I, H, TC and the dimension-wise KL with one estimator "
                f"(entropy_estimator={config.entropy_estimator!r}), so mi_estimator={config.mi_estimator!r} "
                "cannot apply; set mi_estimator equal to entropy_estimator."
            )
        settings = {name: getattr(config, name) for name in cls.settings}
        return cls(dataset_size=dataset_size, estimator=config.entropy_estimator, **settings)

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

_NO_SPLIT = dict(
    kl_weight=0.0, mi_weight=0.0, entropy_weight=0.0, cross_entropy_weight=0.0, tc_weight=0.0, dimwise_kl_weight=0.0
)


@register_objective("beta-vae")
class BetaVAEObjective(DecomposedObjective):
    r"""beta-VAE (Higgins et al., 2017): L = -R + beta mean_i KL(q(z|x_i) || p(z)), beta =
    ``kl_weight`` (default :data:`BETA_VAE_BETA` = 4, their dSprites setting), the KL analytic
    where registered (``kl = "auto"``). At beta = 1 it is the ELBO."""

    defaults = {**_NO_SPLIT, "kl_weight": BETA_VAE_BETA}


@register_objective("beta-tcvae")
class BetaTCVAEObjective(DecomposedObjective):
    r"""beta-TCVAE (Chen et al., 2018): L = -R + alpha I + beta TC + gamma sum_d KL(q_d(z_d) || p_d(z_d))
    with alpha = ``mi_weight``, beta = ``tc_weight``, gamma = ``dimwise_kl_weight`` (defaults
    :data:`BETA_TCVAE_WEIGHTS` = 1, 6, 1), MSS by default; needs a factorised prior. At
    alpha = beta = gamma = 1 it is the negative Monte-Carlo ELBO."""

    defaults = {
        **_NO_SPLIT,
        "mi_weight": BETA_TCVAE_WEIGHTS[0],
        "tc_weight": BETA_TCVAE_WEIGHTS[1],
        "dimwise_kl_weight": BETA_TCVAE_WEIGHTS[2],
    }
