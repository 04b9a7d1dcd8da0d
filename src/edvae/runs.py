"""A run folder: what training and evaluation write into it, and how to read a run back.

One folder per run (``edvae train --out RUN``; a study's ``OUT/runs/<dataset>-<model>-s<seed>``)::

    RUN/
      checkpoint.pt     CHECKPOINT_NAME   model, optimiser, RNG states, position (edvae.checkpoint)
      config.json       CONFIG_NAME       the validated run config
      metrics.jsonl     METRICS_NAME      one JSON line per logged step and per validation
      tensorboard/      TENSORBOARD_DIR   the same scalars for TensorBoard
      prior_fit.json    PRIOR_FIT_NAME    fit report of a prior fitted before training (a flow)
      evaluation.json   EVALUATION_NAME   the test metrics, written by a study
      latents.pt        LATENTS_NAME      aggregate-posterior samples and the prior on a grid,
                                          for a study's figures

:func:`load_data` builds the data set a config names; :func:`load_run` rebuilds a trained model
from its folder. Neither needs the trainer.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edvae.checkpoint import CHECKPOINT_NAME, load_checkpoint, load_weights
from edvae.config import RunConfig, validate_config
from edvae.data import DataSplits, load_dataset
from edvae.model import VAE, build_model

__all__ = [
    "CHECKPOINT_NAME",
    "CONFIG_NAME",
    "METRICS_NAME",
    "TENSORBOARD_DIR",
    "PRIOR_FIT_NAME",
    "EVALUATION_NAME",
    "LATENTS_NAME",
    "load_data",
    "load_run",
]

CONFIG_NAME = "config.json"
METRICS_NAME = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"
#: Written when the prior was fitted before training (a flow fitted to prior samples): its
#: ``fit_report`` (steps, train/held-out mean log-likelihood in nats).
PRIOR_FIT_NAME = "prior_fit.json"
EVALUATION_NAME = "evaluation.json"
LATENTS_NAME = "latents.pt"


def load_data(config: RunConfig) -> DataSplits:
    """The data set a run config names."""
    return load_dataset(config.data.name, seed=config.data.seed, path=config.data.path, **config.data.options)


def load_run(run_dir: str | Path, data: DataSplits | None = None) -> tuple[VAE, RunConfig, dict[str, Any], DataSplits]:
    """Rebuild a trained model from its run folder: ``(model, config, checkpoint, data)``.

    ``data`` may pass the run's data set when the caller already has it (else it is rebuilt
    from the stored config).
    """
    state = load_checkpoint(run_dir)
    config = validate_config(state["config"], source=f"the config stored in {run_dir}")
    data = data if data is not None else load_data(config)
    model = build_model(config.model, data, fit_prior=False)  # fitted values come from the state dict
    load_weights(model, state["model"], run_dir)
    model.eval()
    return model, config, state, data
