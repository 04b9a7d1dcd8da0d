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
from typing import Any

import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO

from edvae.errors import EdvaeError

__all__ = [
    "CHECKPOINT_FORMAT",
    "CHECKPOINT_NAME",
    "AtomicCheckpointIO",
    "save_atomic",
    "load_checkpoint",
    "load_weights",
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
    missing = [key for key in _REQUIRED_KEYS if key not in state]
    if missing or not isinstance(state["config"], dict):
        raise EdvaeError(
            f"{path} is a damaged edvae checkpoint (missing or invalid: {', '.join(missing) or 'config'}); re-run "
            "training"
        )
    return state


#: Entries every edvae checkpoint has (a file with the marker but without them is refused).
_REQUIRED_KEYS = ("config", "model", "step", "epoch", "completed")


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
    """``module.load_state_dict(weights)``, or :class:`EdvaeError` if they do not fit its layout."""
    try:
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
