"""A run folder: what training and evaluation write into it, and how to read a run back.

One folder per run (``edvae train --out RUN``; a study's ``OUT/runs/<dataset>-<model>-s<seed>``)::

    RUN/
      checkpoint.pt     CHECKPOINT_NAME   model, optimiser, RNG states, position (edvae.checkpoint)
      config.json       CONFIG_NAME       the validated run config
      metrics.jsonl     METRICS_NAME      one JSON line per logged step and per validation
      tensorboard/      TENSORBOARD_DIR   the same scalars for TensorBoard
      prior_fit.json    PRIOR_FIT_NAME    fit report of a prior fitted before training (a flow)
      data.json         DATA_RECORD_NAME  the data files the run was trained on: path and sha256
                                          (file data, or data passed in memory)
      data.pt           STORED_DATA_NAME  data passed in memory to train(..., data=...), as
                                          saved by save_splits (config: data.name = "stored")
      evaluation.json   EVALUATION_NAME   the test metrics, written by a study
      latents.pt        LATENTS_NAME      aggregate-posterior samples and the prior on a grid,
                                          for a study's figures
      .edvae.lock       LOCK_NAME         the writer's lock (edvae.training.run_dir.RunLock)

:data:`RUN_FILES` lists a run's files. The checkpoint's name comes from :mod:`edvae.checkpoint`,
``data.json`` and ``data.pt`` from :mod:`edvae.provenance` (which data the run was trained on,
and refusing them once they changed), the lock's from :mod:`edvae.training.run_dir` (preparing,
locking and replacing the folder while training writes it).

:func:`load_data` builds the data set a config names; :func:`load_run` rebuilds a trained model
from its folder. Neither needs the trainer.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from edvae.checkpoint import CHECKPOINT_NAME, load_checkpoint, load_weights
from edvae.config import RunConfig, validate_config
from edvae.data import DataSplits, load_dataset
from edvae.errors import EdvaeError
from edvae.model import VAE, build_model
from edvae.provenance import DATA_RECORD_NAME, STORED_DATA_NAME, check_data

__all__ = [
    "CHECKPOINT_NAME",
    "CONFIG_NAME",
    "METRICS_NAME",
    "TENSORBOARD_DIR",
    "PRIOR_FIT_NAME",
    "EVALUATION_NAME",
    "LATENTS_NAME",
    "DATA_RECORD_NAME",
    "STORED_DATA_NAME",
    "RUN_FILES",
    "load_data",
    "load_run",
    "run_folder",
]

CONFIG_NAME = "config.json"
METRICS_NAME = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"
#: Written when the prior was fitted before training (a flow fitted to prior samples): its
#: ``fit_report`` (steps, train/held-out mean log-likelihood in nats).
PRIOR_FIT_NAME = "prior_fit.json"
EVALUATION_NAME = "evaluation.json"
LATENTS_NAME = "latents.pt"
#: The prefix of the names under which prior objects passed to :func:`edvae.fit` are registered.
OBJECT_PRIOR_PREFIX = "python_object_"
#: The files of a run (deleted when ``--overwrite`` replaces a run in place, see
#: :func:`edvae.training.run_dir.replace_run`); besides them a run folder holds
#: :data:`TENSORBOARD_DIR` and the writer's lock.
RUN_FILES = (
    CHECKPOINT_NAME,
    METRICS_NAME,
    CONFIG_NAME,
    PRIOR_FIT_NAME,
    DATA_RECORD_NAME,
    STORED_DATA_NAME,
    EVALUATION_NAME,
    LATENTS_NAME,
)


def run_folder(path: str | Path) -> Path:
    """The folder of a run named by its folder or by its checkpoint file."""
    path = Path(path)
    return path.parent if path.is_file() else path


def load_data(config: RunConfig, run_dir: str | Path | None = None) -> DataSplits:
    """The data set a run config names; a relative ``data.path`` of stored data
    (``data.name = "stored"``) is read from ``run_dir``."""
    path = config.data.path
    if config.data.name == "stored" and path is not None and run_dir is not None and not Path(path).is_absolute():
        path = str(Path(run_dir) / path)
    return load_dataset(config.data.name, seed=config.data.seed, path=path, **config.data.options)


def _check_data_fits(model: VAE, weights: Any, data: DataSplits, run_dir: str | Path) -> None:
    """Refuse other data whose examples have another shape than the training data's: the model
    built for them has weights of other shapes than the checkpoint's (the data's fault, not the
    checkpoint's)."""
    own = model.state_dict()
    for key, value in weights.items() if isinstance(weights, dict) else ():
        if key in own and isinstance(value, torch.Tensor) and value.shape != own[key].shape:
            raise EdvaeError(
                f"the data to evaluate on have examples of shape {tuple(data.x_shape)}, which the model in {run_dir} "
                f"does not take (its weight {key} has shape {tuple(value.shape)}, data of this shape need "
                f"{tuple(own[key].shape)}); evaluate on data with the features of the training data"
            )


def load_run(run_dir: str | Path, data: DataSplits | None = None) -> tuple[VAE, RunConfig, dict[str, Any], DataSplits]:
    """Rebuild a trained model from its run folder: ``(model, config, checkpoint, data)``.

    ``data`` may pass the run's data set when the caller already has it, or other data to
    evaluate on; else it is rebuilt from the stored config, after :func:`check_data` has
    checked that its files are those the run was trained on.
    """
    state = load_checkpoint(run_dir)
    config = validate_config(state["config"], source=f"the config stored in {run_dir}")
    if config.model.prior.startswith(OBJECT_PRIOR_PREFIX):
        from edvae import priors

        if config.model.prior not in priors.names(in_model=True):
            raise EdvaeError(
                f"{run_dir} was trained with a prior passed to edvae.fit as a Python object; load it from Python with "
                "the same kind of object: edvae.load(run_dir, prior=...)"
            )
    given = data is not None
    if data is None:
        folder = run_folder(run_dir)
        check_data(folder, config)
        data = load_data(config, folder)
    model = build_model(config.model, data, fit_prior=False, weights=state["model"])  # fitted values: the state dict
    if given:
        _check_data_fits(model, state["model"], data, run_dir)
    load_weights(model, state["model"], run_dir)
    model.eval()
    return model, config, state, data
