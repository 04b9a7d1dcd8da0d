"""Atomic, weights-only checkpoints.

A checkpoint is written to a temporary file in the same folder, flushed and fsync'ed, then
renamed over the old one (``os.replace`` is atomic on POSIX), so at every instant the folder
holds one complete checkpoint: a crash or a kill mid-write leaves the previous one intact.
Loading uses ``torch.load(weights_only=True)``, which never executes code from the file.

:class:`AtomicCheckpointIO` plugs this into Lightning Fabric (``Fabric(plugins=[...])``) so
that ``fabric.save`` / ``fabric.load`` use it, rank 0 writing.
"""

from __future__ import annotations

import io
import os
import pickle
import warnings
from pathlib import Path
from typing import Any, Literal

import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, ValidationError
from torch import Tensor

from edvae.errors import EdvaeError

__all__ = [
    "CHECKPOINT_FORMAT",
    "CHECKPOINT_NAME",
    "AtomicCheckpointIO",
    "save_atomic",
    "CheckpointMeta",
    "load_checkpoint",
    "load_weights",
    "validate_checkpoint",
]

#: Marker stored in every checkpoint; files without it are refused.
CHECKPOINT_FORMAT = "edvae-checkpoint-v1"
#: File name of a run's checkpoint inside its folder.
CHECKPOINT_NAME = "checkpoint.pt"


def save_atomic(obj: Any, path: str | Path) -> None:
    """``torch.save(obj)`` to ``path`` atomically: temporary file, fsync, rename, fsync folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        buffer = io.BytesIO()
        torch.save(obj, buffer)
        with open(tmp, "wb") as f:
            f.write(buffer.getbuffer())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load an edvae checkpoint safely (weights only), or raise :class:`EdvaeError`.

    ``path`` may be the file or the run folder holding ``checkpoint.pt``.
    """
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT_NAME
    if not path.exists():
        raise EdvaeError(f"no checkpoint at {path}; pass a run folder written by 'edvae train'")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. torch's pickle-protocol warning on foreign files
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # random bytes make the unpickler fail in any way (IndexError, KeyError, ...)
        raise EdvaeError(
            f"{path} is truncated, corrupt or not a safe edvae checkpoint ({_load_failure(err)}); "
            "re-run training or point to another run folder"
        ) from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise EdvaeError(f"{path} is not an edvae checkpoint (no '{CHECKPOINT_FORMAT}' marker)")
    validate_checkpoint(state, path)
    return state


_NonNegative = Field(ge=0, allow_inf_nan=False)


class RngStates(BaseModel):
    """The random states a checkpoint stores (:func:`edvae.training.state.rng_state`)."""

    model_config = ConfigDict(arbitrary_types_allowed=True, extra="forbid")
    torch: Tensor
    numpy: tuple[str, Tensor, StrictInt, StrictInt, StrictFloat]
    python: tuple[StrictInt, tuple[StrictInt, ...], StrictFloat | None]
    noise: Tensor


class CheckpointMeta(BaseModel):
    """The schema of a checkpoint (:meth:`edvae.training.state.TrainState.state_dict`).

    ``config``, ``model``, ``step``, ``epoch`` and ``completed`` are required (they are all that
    evaluation reads); the rest is what a resume needs and may be absent from a checkpoint written
    by an earlier version (a resume then refuses it, see :func:`edvae.training.state.TrainState`).
    Counters are whole numbers >= 0, ``completed`` a bool, times finite and >= 0 (numbers, never
    strings: the validated dict is used as it is, so no value may need converting), tensors tensors;
    entries it does not name are allowed (a later version's).
    """

    model_config = ConfigDict(arbitrary_types_allowed=True, extra="allow")
    format: Literal["edvae-checkpoint-v1"]
    version: str | None = None
    config: dict[str, Any]
    model: dict[str, Tensor]
    step: StrictInt = Field(ge=0)
    epoch: StrictInt = Field(ge=0)
    completed: StrictBool
    batch_in_epoch: StrictInt | None = Field(None, ge=0)
    train_seconds: StrictFloat | None = _NonNegative
    validation_seconds: StrictFloat | None = _NonNegative
    skipped_steps: StrictInt | None = Field(None, ge=0)
    last_validation: dict[str, StrictFloat] | None = None
    log_lines: StrictInt | None = Field(None, ge=0)
    world_size: StrictInt | None = Field(None, ge=1)
    optimizer: dict[str, Any] | None = None
    scheduler: dict[str, Any] | None = None
    rng: RngStates | None = None
    objective: dict[str, Any] | None = None
    changes: list[dict[str, Any]] | None = None


#: Entries a checkpoint must hold for a run to resume from it.
RESUME_KEYS = (
    "optimizer",
    "rng",
    "batch_in_epoch",
    "train_seconds",
    "skipped_steps",
    "last_validation",
    "log_lines",
)


def validate_checkpoint(state: dict[str, Any], path: str | Path, *, resume: bool = False) -> None:
    """Check a loaded checkpoint's entries against :class:`CheckpointMeta` (and, with
    ``resume``, that it holds :data:`RESUME_KEYS`), or raise :class:`EdvaeError`: one line
    naming the file, the first wrong entry and the fix. The tensors are checked against the
    model later, when they are loaded into it (:func:`load_weights`)."""
    fix = "re-run training, or point to another run folder"
    try:
        CheckpointMeta.model_validate(state)
    except ValidationError as err:
        first = err.errors()[0]
        key = ".".join(str(p) for p in first["loc"]) or "(top level)"
        if first["type"] == "missing":
            what = f"the entry '{key}' is missing"
        else:
            got = first.get("input")
            shown = type(got).__name__ if isinstance(got, (dict, list, tuple, torch.Tensor)) else repr(got)[:40]
            what = f"'{key}' is invalid ({first['msg'][0].lower() + first['msg'][1:]}; got {shown})"
        raise EdvaeError(f"{path} is a damaged edvae checkpoint: {what}; {fix}") from None
    if resume:
        missing = [key for key in RESUME_KEYS if state.get(key) is None]
        if missing:
            raise EdvaeError(
                f"{path} cannot be resumed: it holds no {', '.join(missing)} (a damaged checkpoint, or one written "
                f"by an older edvae); evaluate it, or start the run again with --overwrite"
            )


def _load_failure(err: Exception) -> str:
    """One short clause saying why ``torch.load(weights_only=True)`` refused or failed."""
    text = str(err)
    if isinstance(err, pickle.UnpicklingError) and "weights_only" in text:
        detail = next((line.strip() for line in text.splitlines() if "GLOBAL" in line or "Unsupported" in line), "")
        detail = f": {detail[:120].rstrip('.')}" if detail else ""
        return (
            f"it holds Python objects other than tensors and plain values{detail}; refused, as loading it could "
            "run code"
        )
    return first_sentence(text) if text.strip() else type(err).__name__


def first_sentence(text: str, limit: int = 160) -> str:
    """The first sentence of a library's error message, whole: a long one is cut at a word
    boundary and marked with '...', never mid-word; torch's "(Could this error message be
    improved? ...)" boilerplate is dropped."""
    text = " ".join(text.split()).split(" (Could this error message be improved?")[0]
    for end in range(len(text)):
        if text[end] in ".!?" and (end + 1 == len(text) or text[end + 1] == " ") and end > 0:
            text = text[:end]
            break
    if len(text) <= limit:
        return text
    return text[:limit].rsplit(" ", 1)[0] + "..."


def load_weights(module: torch.nn.Module, weights: Any, source: str | Path) -> None:
    """``module.load_state_dict(weights)`` (strict: every name, shape and dtype as the module's),
    or :class:`EdvaeError` if they do not fit its layout."""
    try:
        expected = module.state_dict()
        for name, value in weights.items():
            if name in expected and isinstance(value, torch.Tensor) and value.dtype != expected[name].dtype:
                raise TypeError(f"'{name}' is {value.dtype}, the model's is {expected[name].dtype}")
        module.load_state_dict(weights)
    except (RuntimeError, TypeError, AttributeError, ValueError) as err:
        reason = " ".join(str(err).split())  # torch lists every missing/unexpected key over several lines
        reason = reason.removeprefix(f"Error(s) in loading state_dict for {type(module).__name__}: ")
        raise EdvaeError(
            f"the weights in {source} do not fit the model its config describes "
            f"({reason[:160]}{'...' * (len(reason) > 160)}); "
            "the checkpoint is damaged or from another version, re-run training"
        ) from None


class AtomicCheckpointIO(TorchCheckpointIO):
    """Fabric checkpoint I/O: atomic writes and weights-only reads with clear errors."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        save_atomic(checkpoint, path)

    def load_checkpoint(self, path: Any, map_location: Any = None, weights_only: bool | None = None) -> dict[str, Any]:
        return load_checkpoint(path)
