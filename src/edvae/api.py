"""The high-level Python API: train on your own array, evaluate, read the decomposition.

    >>> import numpy as np, edvae                                        # doctest: +SKIP
    >>> x = np.random.default_rng(0).normal(size=(2000, 8))             # doctest: +SKIP
    >>> run = edvae.fit(x, out="runs/mine", prior="mixture", objective="ed", epochs=20)  # doctest: +SKIP
    >>> run.evaluate()["elbo"], run.decompose()["mi"]                    # doctest: +SKIP

:func:`fit` builds a run config from its arguments (the same keys as a TOML config or
``--set``), splits the array into train/val/test with a seeded permutation, trains with
:func:`edvae.training.train` (the array is stored in the run folder, so ``edvae evaluate RUN``
uses exactly that data) and returns :func:`load` of the run folder: a :class:`Run`.

Priors: a registered name (:func:`edvae.priors.names`), or a ``torch.distributions.Distribution``
/ prior module (:func:`edvae.priors.as_prior`). An object is registered for the run under a
generated name (``python_object_<hex>``) and its trained state is saved in the checkpoint; a
new process cannot rebuild an arbitrary Python object from a name, so ``load(RUN, prior=obj)``
needs an object of the same kind again (its state is then loaded from the checkpoint), and
``edvae evaluate RUN`` refuses such a run with one line.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from edvae import priors
from edvae.config import RunConfig, apply_overrides, validate_config
from edvae.data.splits import DataSplits, check_likelihood, finish
from edvae.errors import EdvaeError
from edvae.objective_kinds import OBJECTIVES
from edvae.runs import OBJECT_PRIOR_PREFIX

__all__ = ["OBJECTIVE_PRESETS", "Run", "fit", "load"]

#: Names ``fit(objective=...)`` accepts besides the registered objective kinds (each a kind with
#: its defaults, :mod:`edvae.objective_kinds`): each is a dict of ``objective.*`` settings.
OBJECTIVE_PRESETS: dict[str, dict[str, Any]] = {"vae": {"kind": "elbo"}}


class Run:
    """A trained run: its folder ``dir``, ``config`` (:class:`~edvae.config.RunConfig`),
    ``model`` (:class:`~edvae.model.VAE`, in eval mode) and ``data`` (the splits it was
    trained on). :func:`fit` and :func:`load` return one."""

    def __init__(self, run_dir: Path, model: Any, config: RunConfig, data: DataSplits) -> None:
        self.dir, self.model, self.config, self.data = run_dir, model, config, data

    def __repr__(self) -> str:
        return f"Run({str(self.dir)!r}, prior={self.config.model.prior!r}, objective={self.config.objective.kind!r})"

    def evaluate(self, split: str = "test", *, accelerator: str = "cpu", **eval_overrides: Any) -> dict[str, float]:
        """The metrics of ``edvae evaluate`` (:mod:`edvae.evaluate`) on ``split`` (``"test"`` or
        ``"val"``); ``eval_overrides`` are ``eval.*`` settings (``iwae_samples=100``,
        ``true_ll=False``, ``seed=1``). The true log-likelihood is cached as the CLI caches it.
        ``accelerator``: ``"cpu"`` (default), ``"gpu"`` or ``"auto"``
        (:func:`edvae.evaluate.evaluation_accelerator`); ``self.model`` stays where it is."""
        from edvae.evaluate import evaluate_run, run_cache_dir

        if split not in ("test", "val"):
            raise EdvaeError(f"split must be 'test' or 'val', got {split!r}")
        items = [f"eval.{key}={json.dumps(value)}" for key, value in eval_overrides.items()]
        config = validate_config(apply_overrides(self.config.model_dump(), items), source="Run.evaluate").eval
        return evaluate_run(
            self.dir, config=config, split=split, cache_dir=run_cache_dir(self.dir), accelerator=accelerator
        )

    @torch.inference_mode()
    def decompose(self, x: Any = None, *, num_queries: int | None = None, seed: int = 0) -> dict[str, float]:
        r"""The full-data-set decomposition of the aggregate posterior of ``x`` (default: the
        run's test split), :func:`edvae.estimators.dataset_decomposition`, as floats (nats):

            mean_n KL(q(z|x_n) || p(z)) = I_q(x; z) + KL(q(z) || p(z)),
            KL(q(z) || p(z)) = H[q(z), p(z)] - H[q(z)],

        keys ``mi``, ``entropy``, ``cross_entropy``, ``marginal_kl``, ``kl``,
        ``posterior_entropy``; q(z) = (1/N) sum_n q(z|x_n) over the N rows of ``x``.
        ``num_queries`` (default all N) samples the outer expectation; ``seed`` fixes the draws.
        """
        from edvae.estimators import dataset_decomposition

        rows = self.data.test if x is None else _as_tensor(x, "x", self.data.x_shape)
        mus, logvars = zip(*(self.model.encode(rows[i : i + 1024]) for i in range(0, rows.shape[0], 1024)), strict=True)
        gen = torch.Generator().manual_seed(seed)
        terms = dataset_decomposition(
            torch.cat(mus), torch.cat(logvars), self.model.prior_distribution(), num_queries=num_queries, generator=gen
        )
        names = ("mi", "entropy", "cross_entropy", "marginal_kl", "kl", "posterior_entropy")
        return {name: float(getattr(terms, name)) for name in names}


def load(run_dir: str | Path, *, prior: Any = None) -> Run:
    """The :class:`Run` in ``run_dir`` (written by :func:`fit` or ``edvae train``).

    ``prior``: for a run whose prior was passed to :func:`fit` as a Python object, an object of
    the same kind (a Distribution or prior module); its trained state comes from the checkpoint.
    """
    from edvae.checkpoint import load_checkpoint
    from edvae.runs import load_run

    run_dir = Path(run_dir)
    name = validate_config(load_checkpoint(run_dir)["config"], source=f"the config stored in {run_dir}").model.prior
    if name.startswith(OBJECT_PRIOR_PREFIX):
        if prior is not None:
            _register_object(name, prior)
        elif name not in priors.names(in_model=True):
            raise EdvaeError(
                f"{run_dir} was trained with a prior passed as a Python object ({name}); "
                "pass an object of the same kind again: edvae.load(run_dir, prior=...)"
            )
    elif prior is not None:
        raise EdvaeError(f"{run_dir} was trained with the prior {name!r}, built by name; drop prior=")
    model, config, _, data = load_run(run_dir)
    return Run(run_dir, model, config, data)


def fit(
    x: Any,
    out: str | Path,
    *,
    prior: Any = "normal",
    objective: str | Mapping[str, Any] = "ed",
    epochs: int = 50,
    overrides: Mapping[str, Any] | Sequence[str] | None = None,
    callbacks: Sequence[Any] = (),
    overwrite: bool = False,
    likelihood: str = "gaussian",
    split: Sequence[float] = (0.8, 0.1, 0.1),
    accelerator: str | None = None,
) -> Run:
    """Train a VAE on the array ``x`` and return its :class:`Run` (folder ``out``).

    * ``x``: a numpy array or tensor of shape ``(N, *x_shape)``, or ``(x, labels)`` with
      integer labels ``(N,)`` (used by the linear probe of :meth:`Run.evaluate`). The rows are
      split ``split`` (train/val/test fractions) with a permutation seeded by ``data.seed``.
    * ``prior``: a prior name (:func:`edvae.priors.names`, e.g. ``"mixture"``, ``"flow"``), or a
      Distribution / prior module over R^D (the latent dimension then defaults to D).
    * ``objective``: ``"ed"`` (the ED objective), ``"elbo"`` or ``"vae"`` (the ELBO), any
      registered ``objective.kind``, or a dict of ``objective.*`` settings
      (``{"kind": "ed", "entropy_weight": 1.5}``).
    * ``overrides``: config keys as ``--set`` takes them, a dict (``{"train.batch_size": 64}``)
      or a list of ``"key=value"``; they win over the arguments above.
    * ``likelihood``: ``"gaussian"`` (any finite values) or ``"bernoulli"`` (values in [0, 1],
      binarised at every step).
    * ``accelerator``: where to train, ``train.accelerator``: ``"cpu"`` (the default), ``"gpu"``
      or ``"auto"`` (the GPU for networks big enough to gain from it,
      :func:`edvae.accelerator.choose_accelerator`). The returned run's model is on the CPU.

    ``callbacks`` and ``overwrite`` are those of :func:`edvae.training.train`. Errors are
    :class:`~edvae.errors.EdvaeError` with one line naming the argument.
    """
    from edvae.training import train

    values, labels = _as_arrays(x)
    config = _config(out, prior, objective, epochs, overrides, accelerator)
    likelihood, binarize = check_likelihood(likelihood, None, "edvae.fit")
    data = finish(
        "array",
        values,
        labels,
        seed=config.data.seed,
        likelihood=likelihood,
        binarize=binarize,
        split=split,
        source="the array passed to edvae.fit",
    )
    if not isinstance(prior, str):
        _register_object(config.model.prior, prior)
    train(config, Path(out), overwrite=overwrite, data=data, callbacks=callbacks)
    return load(out, prior=None if isinstance(prior, str) else prior)


def _config(out: Any, prior: Any, objective: Any, epochs: Any, overrides: Any, accelerator: Any = None) -> RunConfig:
    if not isinstance(out, (str, Path)) or not str(out).strip():
        raise EdvaeError(f"out must be a non-empty folder path, got {out!r}")
    model: dict[str, Any] = {}
    if isinstance(prior, str):
        model["prior"] = prior
    else:
        model["prior"] = OBJECT_PRIOR_PREFIX + uuid.uuid4().hex[:12]
        model["latent_dim"] = priors.event_dim(priors.as_prior(prior))
    if isinstance(objective, str):
        if objective in OBJECTIVE_PRESETS:
            objective = OBJECTIVE_PRESETS[objective]
        elif objective in OBJECTIVES:
            objective = {"kind": objective}
        else:
            choices = sorted(set(OBJECTIVE_PRESETS) | set(OBJECTIVES))
            raise EdvaeError(
                f"unknown objective {objective!r}; use one of {', '.join(choices)}, or a dict of objective settings"
            )
    elif not isinstance(objective, Mapping):
        raise EdvaeError(f"objective must be a name or a dict of objective settings, got {type(objective).__name__}")
    train: dict[str, Any] = {"epochs": epochs}
    if accelerator is not None:
        train["accelerator"] = accelerator
    raw = {"name": Path(out).name or "run", "model": model, "objective": dict(objective), "train": train}
    if overrides is None:
        items: list[str] = []
    elif isinstance(overrides, Mapping):
        items = [f"{key}={json.dumps(value)}" for key, value in overrides.items()]
    elif (
        isinstance(overrides, Sequence)
        and not isinstance(overrides, str)
        and all(isinstance(o, str) for o in overrides)
    ):
        items = list(overrides)
    else:
        raise EdvaeError('overrides must be a dict ({"train.batch_size": 64}) or a list of "key=value" strings')
    return validate_config(apply_overrides(raw, items), source="edvae.fit")


def _register_object(name: str, prior: Any) -> None:
    """Register a prior object under ``name`` for this process (a model's context is required,
    so the name stays out of :func:`edvae.priors.names`)."""
    module = priors.as_prior(prior)

    def factory(dim: int, *, context: Any) -> torch.nn.Module:
        return module

    priors.register(name, replace=True)(factory)


def _as_arrays(x: Any) -> tuple[np.ndarray, np.ndarray | None]:
    labels = None
    if isinstance(x, tuple):
        if len(x) != 2:
            raise EdvaeError(f"x must be an array or a pair (x, labels), got a tuple of {len(x)}")
        x, labels = x
    values = _numpy(x, "x")
    if values.ndim < 2 or values.shape[0] < 3:
        raise EdvaeError(f"x must have shape (N, features...) with N >= 3 examples, got shape {values.shape}")
    if not np.issubdtype(values.dtype, np.number) or np.issubdtype(values.dtype, np.complexfloating):
        raise EdvaeError(f"x must hold real numbers, got dtype {values.dtype}")
    if labels is not None:
        labels = _numpy(labels, "labels")
        if (
            labels.shape != (values.shape[0],)
            or not np.all(np.isfinite(labels))
            or not np.all(labels == np.round(labels))
        ):
            raise EdvaeError(
                f"labels must be {values.shape[0]} whole numbers, one per row of x, got shape {labels.shape}"
            )
    return values.astype(np.float32), labels


def _numpy(value: Any, what: str) -> np.ndarray:
    if isinstance(value, Tensor):
        return value.detach().cpu().numpy()
    try:
        return np.asarray(value)
    except (TypeError, ValueError) as err:
        raise EdvaeError(f"{what} must be a numpy array or tensor ({err})") from None


def _as_tensor(x: Any, what: str, x_shape: tuple[int, ...]) -> Tensor:
    values = _numpy(x, what)
    if tuple(values.shape[1:]) != tuple(x_shape) or values.shape[0] < 2:
        raise EdvaeError(
            f"{what} must have shape (N, *{tuple(x_shape)}) with N >= 2, like the run's data, got {values.shape}"
        )
    if not np.all(np.isfinite(values)):
        raise EdvaeError(f"{what} contains NaN or Inf")
    return torch.from_numpy(np.ascontiguousarray(values, dtype=np.float32))
