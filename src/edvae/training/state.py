"""The state of a training run, which is also its checkpoint."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from edvae._version import __version__
from edvae.checkpoint import CHECKPOINT_FORMAT, load_weights, validate_checkpoint
from edvae.errors import EdvaeError

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
    #: settings changed on resume: ``{"step", "key", "from", "to"}``, oldest first (see :func:`edvae.training.train`)
    changes: list[dict[str, Any]] = field(default_factory=list)
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
        if self.changes:
            state["changes"] = [dict(change) for change in self.changes]
        return state

    def load_state_dict(self, saved: dict[str, Any], source: Any = "checkpoint") -> None:
        """Resume from a checkpoint written by :meth:`state_dict` (or by an earlier version of
        the trainer: ``validation_seconds``, ``objective`` and ``changes`` may be missing).

        The checkpoint is checked as data first (:func:`edvae.checkpoint.validate_checkpoint`),
        its tensors against the model, optimiser and objective they go into (names, shapes,
        dtypes), so a damaged or forged checkpoint ends in one :class:`EdvaeError` naming
        ``source`` instead of a run that trains on from a wrong state."""
        validate_checkpoint(saved, source, resume=True)
        load_weights(self.model, saved["model"], source)
        _check_optimizer_state(self.optimizer, saved["optimizer"], source)
        parts = [("optimizer", lambda: self.optimizer.load_state_dict(saved["optimizer"]))]
        if self.scheduler is not None:
            parts.append(("learning-rate schedule", lambda: self.scheduler.load_state_dict(saved["scheduler"])))
        parts.append(("random states", lambda: set_rng_state(saved["rng"], self.noise)))
        if self.objective is not None and "objective" in saved:
            parts.append(("objective's state", lambda: self.objective.load_state_dict(saved["objective"])))
        for what, load in parts:
            try:
                load()
            except (RuntimeError, TypeError, ValueError, KeyError, IndexError, AttributeError) as err:
                raise EdvaeError(
                    f"the {what} in {source} does not fit this run ({_reason(err)}); the checkpoint is damaged or from "
                    "another version: start the run again with --overwrite"
                ) from None
        self.step, self.epoch, self.batch_in_epoch = saved["step"], saved["epoch"], saved["batch_in_epoch"]
        self.train_seconds, self.skipped_steps = saved["train_seconds"], saved["skipped_steps"]
        self.validation_seconds = saved.get("validation_seconds") or 0.0
        self.last_validation, self.log_lines = saved["last_validation"], saved["log_lines"]
        self.completed = saved.get("completed", False)
        self.changes = [dict(change) for change in saved.get("changes") or []]


def _reason(err: Exception) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    return text[:160] + "..." * (len(text) > 160)


#: The per-parameter entries of torch.optim.Adam's state (amsgrad is never used): a scalar step
#: count and two moments of the parameter's shape and dtype.
_ADAM_STATE = {"step", "exp_avg", "exp_avg_sq"}


def _check_optimizer_state(optimizer: torch.optim.Optimizer, saved: dict[str, Any], source: Any) -> None:
    """Refuse (:class:`EdvaeError`) an optimiser state whose per-parameter tensors (Adam's
    moments) do not have the shape and dtype of the parameters they belong to, which torch's
    ``Optimizer.load_state_dict`` accepts and the next step fails on (or worse, broadcasts); and,
    for Adam, an entry without exactly ``step`` (one finite float count >= 0), ``exp_avg`` and
    ``exp_avg_sq`` (a KeyError at the next step)."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    state = saved.get("state")
    groups = saved.get("param_groups")
    if not isinstance(state, dict) or not isinstance(groups, list):
        raise EdvaeError(f"the optimizer state in {source} is damaged (no state or param_groups); start the run again")
    _check_param_groups(optimizer, groups, source)
    for index, entry in state.items():
        if not isinstance(index, int) or not 0 <= index < len(params) or not isinstance(entry, dict):
            raise EdvaeError(
                f"the optimizer state in {source} names parameter {index!r}, which this run's model does not have; "
                "the checkpoint is damaged or from another version: start the run again with --overwrite"
            )
        expected = _ADAM_STATE if isinstance(optimizer, torch.optim.Adam) else set(entry)
        if set(entry) != expected or not all(isinstance(value, torch.Tensor) for value in entry.values()):
            found = ", ".join(f"{k}: {type(v).__name__}" for k, v in entry.items()) or "nothing"
            raise EdvaeError(
                f"the optimizer state of parameter {index} in {source} holds {found}, not the tensors "
                f"{', '.join(sorted(expected))}; the checkpoint is damaged or from another version: start the run "
                "again with --overwrite"
            )
        step = entry.get("step")
        if step is not None and (step.numel() != 1 or not step.is_floating_point() or not 0 <= float(step) < math.inf):
            raise EdvaeError(
                f"the optimizer state 'step' of parameter {index} in {source} is not one finite count >= 0 "
                f"(shape {tuple(step.shape)}, {step.dtype}); the checkpoint is damaged: start the run again with "
                "--overwrite"
            )
        for name, value in entry.items():
            if name != "step" and (value.shape != params[index].shape or value.dtype != params[index].dtype):
                raise EdvaeError(
                    f"the optimizer state '{name}' of parameter {index} in {source} has shape {tuple(value.shape)} "
                    f"({value.dtype}), the parameter {tuple(params[index].shape)} ({params[index].dtype}); the "
                    "checkpoint is damaged or from another version: start the run again with --overwrite"
                )


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value >= 0


def _check_param_groups(optimizer: torch.optim.Optimizer, groups: list[Any], source: Any) -> None:
    """Refuse (:class:`EdvaeError`) saved ``param_groups`` that differ from this run's optimiser
    in their number, keys or parameter indices, or whose hyperparameters are not of the kinds
    this optimiser holds: numbers finite and >= 0 where it holds numbers, tuples of as many such
    numbers where it holds tuples (Adam's betas), None or a bool where it holds either (``fused``,
    ``foreach``: they follow the device), the same type elsewhere. Torch's
    ``load_state_dict`` takes them as they are and the next step fails deep in torch."""
    fix = "the checkpoint is damaged or from another version: start the run again with --overwrite"
    if len(groups) != len(optimizer.param_groups):
        raise EdvaeError(
            f"the optimizer state in {source} has {len(groups)} parameter groups, this run's "
            f"{len(optimizer.param_groups)}; {fix}"
        )
    for number, (saved, own) in enumerate(zip(groups, optimizer.param_groups, strict=True)):
        if not isinstance(saved, dict) or set(saved) != set(own):
            keys = sorted(map(str, saved)) if isinstance(saved, dict) else type(saved).__name__
            raise EdvaeError(f"the optimizer's parameter group {number} in {source} holds {keys}; {fix}")
        for key, value in saved.items():
            mine = own[key]
            if key == "params":
                good = isinstance(value, list) and len(value) == len(mine) and all(type(i) is int for i in value)
            elif _is_number(mine):
                good = _is_number(value)
            elif isinstance(mine, tuple):
                good = isinstance(value, tuple) and len(value) == len(mine) and all(map(_is_number, value))
            elif mine is None or isinstance(mine, bool):  # fused, foreach, ...: may differ between devices
                good = value is None or isinstance(value, bool)
            else:
                good = type(value) is type(mine)
            if not good:
                raise EdvaeError(
                    f"the optimizer's setting '{key}' in {source} is {value!r:.40}, not a value of its kind; {fix}"
                )
