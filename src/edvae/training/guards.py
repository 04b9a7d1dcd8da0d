"""What keeps a run safe: stop signals, non-finite checks, and the words of their errors."""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from edvae.checkpoint import CHECKPOINT_NAME
from edvae.errors import EdvaeError, TrainingError

__all__ = [
    "DIVERGENCE_FACTOR",
    "LARGE_DATA_VALUE",
    "MAX_CONSECUTIVE_SKIPS",
    "StopFlag",
    "checkpoint_due",
    "diverged",
    "divergence_warning",
    "first_step_error",
    "flag_interval",
    "kept_checkpoint",
    "nonfinite_flag",
]

MAX_CONSECUTIVE_SKIPS = 50
#: Data values whose magnitude reaches this are named as the cause of a non-finite first step.
LARGE_DATA_VALUE = 1e6
#: A validation ELBO this many times the first epoch's magnitude below it is a diverging run.
DIVERGENCE_FACTOR = 100.0


class StopFlag:
    """SIGINT/SIGTERM handler that asks the loop to stop at the next step boundary."""

    def __init__(self) -> None:
        self.signal_name: str | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopFlag:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signal_name is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C stops at once
        self.signal_name = signal.Signals(signum).name

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def kept_checkpoint(run_dir: Path) -> str:
    """What a run stopped by a non-finite value leaves behind, for its error message."""
    if (run_dir / CHECKPOINT_NAME).is_file():
        return f"the last good checkpoint in {run_dir} is kept"
    return f"no checkpoint was written to {run_dir} yet"


def diverged(outputs: list[Any], step: int, epoch: int, run_dir: Path) -> TrainingError | None:
    """The error to raise when a non-finite step came from non-finite encoder outputs.

    Non-finite (mu, logvar, z) mean that the previous update made the parameters diverge, and no
    later step can recover: a :class:`TrainingError` (exit code 1) naming the step, even with
    ``train.on_nonfinite=skip``. None when the encoder outputs (of every micro-batch) are finite.
    """
    if all(bool(torch.isfinite(t).all()) for out in outputs for t in (out.mu, out.logvar, out.z)):
        return None
    return TrainingError(
        f"the encoder outputs became non-finite at step {step} (epoch {epoch + 1}): the parameters diverged; "
        f"{kept_checkpoint(run_dir)}. Lower train.lr or set train.grad_clip"
    )


def first_step_error(x_train: Tensor, where: str) -> EdvaeError:
    """The error of a non-finite step taken before any parameter update: the learning rate has
    not acted yet, so the cause is the data (named with its largest magnitude when it reaches
    :data:`LARGE_DATA_VALUE`) or the model settings."""
    finite = x_train[torch.isfinite(x_train)]
    largest = float(finite.abs().max()) if finite.numel() else float("nan")
    if largest >= LARGE_DATA_VALUE:
        return EdvaeError(
            f"the first training step is non-finite {where}, before any parameter update (so not the learning rate): "
            f"the training data reach |x| = {largest:.3g}; rescale them to order 1 (data.options.scale=..., or "
            "standardise the features)"
        )
    return EdvaeError(
        f"the first training step is non-finite {where}, before any parameter update (so not the learning rate; the "
        f"data's largest magnitude is {largest:.3g}); check the model settings (prior, likelihood, "
        "model.decoder_log_scale) for these data"
    )


def divergence_warning(first: float, current: float, epoch: int) -> str | None:
    """A warning line when the validation ELBO ``current`` (at ``epoch``) is worse than the first
    epoch's ``first`` by more than :data:`DIVERGENCE_FACTOR` times its magnitude (at least 1 nat):
    the run diverges although its values are still finite. None otherwise."""
    if not current < first - DIVERGENCE_FACTOR * max(abs(first), 1.0):
        return None
    return (
        f"warning: the validation ELBO {current:.4g} at epoch {epoch} is orders of magnitude worse than {first:.4g} "
        "at the first validation: the run is diverging; lower train.lr or set train.grad_clip"
    )


def nonfinite_flag(loss: Tensor, params: list[Tensor], clip: float | None) -> Tensor:
    """A (1,) float tensor: 1 if the loss or any gradient holds NaN or Inf, else 0 (not read here).

    With ``clip`` the gradients are first clipped to that total norm (|loss| + the norm is finite
    iff both are); without, one fused pass over the loss and every gradient sets the flag
    (GradScaler's check, with a scale of 1, which leaves every value unchanged).
    """
    if clip is not None:
        return (~torch.isfinite(torch.nn.utils.clip_grad_norm_(params, clip) + loss.detach().abs())).float()
    found_inf = torch.zeros(1, device=loss.device)
    tensors = [loss.detach().reshape(1).clone(), *(p.grad for p in params if p.grad is not None)]
    torch._amp_foreach_non_finite_check_and_unscale_(tensors, found_inf, torch.ones_like(found_inf))
    return found_inf


def flag_interval(device: torch.device, on_nonfinite: str, log_every: int) -> int:
    """Steps between the trainer's host reads of its non-finite and stop flags.

    1 (every step) on a CPU, where the read costs nothing, and with ``on_nonfinite = "skip"``,
    whose host-side decisions (the learning-rate schedule, the objective's state, the count of
    skips) follow each step's flag. Else ``log_every``: a logged step reads the terms anyway, so
    a GPU synchronises once per ``log_every`` steps. A deferred read loses nothing the run
    writes: the first non-finite step still stops it with its own error before any checkpoint,
    log line or validation (see ``Trainer.train_step``).
    """
    if device.type == "cpu" or on_nonfinite != "stop":
        return 1
    return log_every


def checkpoint_due(fabric: Any, last_save: float, interval: float) -> bool:
    """Whether ``interval`` seconds have passed since the last checkpoint, as rank 0 sees it
    (broadcast, so that every process takes the same decision)."""
    due = time.monotonic() - last_save >= interval
    return bool(fabric.broadcast(due, src=0)) if fabric.world_size > 1 else due
