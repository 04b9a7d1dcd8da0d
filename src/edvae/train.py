"""The training loop's public names, kept at their old import path.

The trainer lives in :mod:`edvae.training` (its docstring states what it guarantees); the
objectives it trains in :mod:`edvae.objective_kinds`.
"""

from __future__ import annotations

from edvae import training
from edvae.config import ObjectiveConfig
from edvae.objective_kinds import TrainingObjective, build_objective
from edvae.training import *  # noqa: F403 - this module is the old import path of training's public names

__all__ = [*training.__all__, "make_objective", "reads_batch_columns"]


def make_objective(config: ObjectiveConfig, dataset_size: int) -> TrainingObjective:
    """The objective of a config as the trainer calls it, ``fn(output, prior, mu_cols,
    logvar_cols, row_offset, diagnostics=True)`` (see :mod:`edvae.objective_kinds`)."""
    return build_objective(config, dataset_size)


def reads_batch_columns(config: ObjectiveConfig, diagnostics: bool) -> bool:
    """Whether the objective of ``config`` reads the posteriors of the whole global batch, which
    the processes must then gather (see :meth:`edvae.objective_kinds.TrainingObjective.reads_batch_columns`)."""
    return build_objective(config, dataset_size=1).reads_batch_columns(diagnostics)
