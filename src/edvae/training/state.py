"""The state of a training run, which is also its checkpoint."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from edvae._version import __version__
from edvae.checkpoint import CHECKPOINT_FORMAT, load_weights

if TYPE_CHECKING:
    from edvae.model import VAE

__all__ = ["TrainState", "rng_state", "set_rng_state"]


def rng_state(noise: torch.Generator) -> dict[str, Any]:
    """Every random state a run draws from: torch's, numpy's, Python's and the run's noise generator."""
    np_state = np.random.get_state(legacy=True)
    assert isinstance(np_state, tuple)  # the legacy form of the global MT19937 generator's state
    return {
        "torch": torch.get_rng_state(),
        "numpy": [
            np_state[0],
            torch.from_numpy(np_state[1].astype(np.int64)),
            int(np_state[2]),
            int(np_state[3]),
            float(np_state[4]),
        ],
        "python": random.getstate(),
        "noise": noise.get_state(),
    }


def set_rng_state(state: dict[str, Any], noise: torch.Generator) -> None:
    """Restore :func:`rng_state`."""
    torch.set_rng_state(state["torch"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    noise.set_state(state["noise"])


@dataclass
class TrainState:
    """Where a run is, and the objects it trains.

    ``step`` counts optimisation steps (skipped ones included), ``epoch`` the finished epochs,
    ``batch_in_epoch`` the next global batch of the current epoch. :meth:`state_dict` is the
    checkpoint (``checkpoint.pt``); :meth:`load_state_dict` resumes from one, so that a run
    stopped anywhere and resumed continues exactly where it was.
    """

    config: Any
    model: VAE
    optimizer: torch.optim.Optimizer
    scheduler: Any  # None for a constant learning rate
    noise: torch.Generator  # the run's stream of reparameterisation (and binarisation) noise
    objective: Any = None  # a TrainingObjective; its state is stored when it has any
    world_size: int = 1
    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    train_seconds: float = 0.0
    validation_seconds: float = 0.0
    skipped_steps: int = 0
    last_validation: dict[str, float] = field(default_factory=dict)
    log_lines: int = 0  # lines of metrics.jsonl written up to this state
    completed: bool = False
    stopped_by: str | None = None  # not stored: a resumed run is not stopped

    def state_dict(self) -> dict[str, Any]:
        """The checkpoint: format, version, config, model, optimiser, scheduler, every RNG state,
        the position in the run and the log, and the objective's own state if it has any."""
        state = {
            "format": CHECKPOINT_FORMAT,
            "version": __version__,
            "config": self.config.model_dump(),
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": None if self.scheduler is None else self.scheduler.state_dict(),
            "rng": rng_state(self.noise),
            "step": self.step,
            "epoch": self.epoch,
            "batch_in_epoch": self.batch_in_epoch,
            "train_seconds": self.train_seconds,
            "validation_seconds": self.validation_seconds,
            "skipped_steps": self.skipped_steps,
            "last_validation": dict(self.last_validation),
            "log_lines": self.log_lines,
            "completed": self.completed,
            "world_size": self.world_size,
        }
        objective_state = self.objective.state_dict() if self.objective is not None else {}
        if objective_state:
            state["objective"] = objective_state
        return state

    def load_state_dict(self, saved: dict[str, Any], source: Any = "checkpoint") -> None:
        """Resume from a checkpoint written by :meth:`state_dict` (or by an earlier version of
        the trainer: ``validation_seconds`` and ``objective`` may be missing). ``source`` names it
        in the error a damaged checkpoint raises."""
        load_weights(self.model, saved["model"], source)
        self.optimizer.load_state_dict(saved["optimizer"])
        if self.scheduler is not None:
            self.scheduler.load_state_dict(saved["scheduler"])
        set_rng_state(saved["rng"], self.noise)
        self.step, self.epoch, self.batch_in_epoch = saved["step"], saved["epoch"], saved["batch_in_epoch"]
        self.train_seconds, self.skipped_steps = saved["train_seconds"], saved["skipped_steps"]
        self.validation_seconds = saved.get("validation_seconds", 0.0)
        self.last_validation, self.log_lines = saved["last_validation"], saved["log_lines"]
        self.completed = saved.get("completed", False)
        if self.objective is not None and "objective" in saved:
            self.objective.load_state_dict(saved["objective"])
