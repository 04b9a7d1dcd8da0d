"""Data provenance: which data files a run was trained on, and refusing them once they changed.

:func:`record_data` (called by the trainer when a run starts) makes a file path absolute, stores
data passed in memory as ``data.pt`` (:data:`STORED_DATA_NAME`) in the run folder, and writes
``data.json`` (:data:`DATA_RECORD_NAME`) with the sha256 of every data file;
:func:`check_data` (called by :func:`edvae.runs.load_run` and on resume) refuses, in one line
naming the file, data that is missing or changed since training. Evaluating on another file is
explicit: pass ``data``.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from pathlib import Path
from typing import Any

import torch

from edvae.config import RunConfig
from edvae.data import DataSplits
from edvae.errors import EdvaeError

__all__ = ["DATA_RECORD_NAME", "STORED_DATA_NAME", "check_data", "file_sha256", "record_data"]

#: The data files the run was trained on: path and sha256, by role (file data, or data passed in memory).
DATA_RECORD_NAME = "data.json"
#: Data passed in memory to ``train(..., data=...)``, as :func:`record_data` saves them
#: (config: ``data.name = "stored"``).
STORED_DATA_NAME = "data.pt"
#: Options of the ``file`` data set that name a file (recorded and checked like ``data.path``).
_PATH_OPTIONS = ("labels_path",)
#: The role under which ``data.json`` records a ``samples:PATH`` prior's file (provenance only).
PRIOR_ROLE = "prior_samples"
SAMPLES_PREFIX = "samples:"


def file_sha256(path: str | Path) -> str:
    """The sha256 of a file's bytes, hex."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _data_files(config: RunConfig) -> dict[str, str]:
    """The files a config's data are read from, by role (``path``, ``labels_path``)."""
    files = (
        {"path": config.data.path} if config.data.path is not None and config.data.name in ("file", "stored") else {}
    )
    files.update({k: str(config.data.options[k]) for k in _PATH_OPTIONS if config.data.options.get(k) is not None})
    return files


def record_data(
    config: RunConfig, run_dir: str | Path, data: DataSplits | None = None, *, write: bool = True
) -> RunConfig:
    """The config a new run stores, with its data recorded in ``run_dir``.

    * ``data`` given (data in memory): the splits are saved as ``data.pt`` in the run folder and
      the returned config reads them back (``data.name = "stored"``, ``data.path = "data.pt"``,
      relative to the run folder), so evaluating the run uses exactly that data. A ground truth
      (synthetic data's exact likelihood) is not saved.
    * file data: ``data.path`` (and ``labels_path``) become absolute paths, so the run can be
      evaluated from any folder.

    ``data.json`` records the sha256 of every data file, and the absolute path and sha256 of a
    ``samples:PATH`` prior's file (whose path the returned config makes absolute; evaluation and
    resume use the prior stored in the checkpoint and never read that file). ``write=False`` (processes other than
    the first) only computes the config.
    """
    run_dir = Path(run_dir)
    if data is not None:
        payload = io.BytesIO()
        torch.save(_splits_payload(data), payload)
        raw = payload.getvalue()
        if write:
            tmp = run_dir / (STORED_DATA_NAME + ".tmp")
            tmp.write_bytes(raw)
            os.replace(tmp, run_dir / STORED_DATA_NAME)
        new_data = config.data.model_copy(update={"name": "stored", "path": STORED_DATA_NAME, "options": {}})
        record = {"path": {"path": STORED_DATA_NAME, "sha256": hashlib.sha256(raw).hexdigest()}}
    else:
        files = {role: str(Path(p).expanduser().resolve()) for role, p in _data_files(config).items()}
        options = {**config.data.options, **{k: v for k, v in files.items() if k != "path"}}
        new_data = config.data.model_copy(update={"path": files.get("path", config.data.path), "options": options})
        record = {role: {"path": p, "sha256": file_sha256(p)} for role, p in files.items() if Path(p).is_file()}
    model = config.model
    if model.prior.startswith(SAMPLES_PREFIX):  # provenance only: evaluation uses the checkpoint's prior
        prior_file = Path(model.prior[len(SAMPLES_PREFIX) :]).expanduser().resolve()
        model = model.model_copy(update={"prior": f"{SAMPLES_PREFIX}{prior_file}"})
        if prior_file.is_file():
            record[PRIOR_ROLE] = {"path": str(prior_file), "sha256": file_sha256(prior_file)}
    if write:
        (run_dir / DATA_RECORD_NAME).write_text(json.dumps(record, indent=2) + "\n")
    return config.model_copy(update={"data": new_data, "model": model})


def check_data(run_dir: str | Path, config: RunConfig, *, resuming: bool = False) -> None:
    """Refuse (:class:`EdvaeError`, one line naming the file) to read a run's data when a file
    recorded in ``data.json`` is missing or its content changed since training. The fix offered
    depends on the purpose: evaluation can take another file (``--data``), a resumed run
    (``resuming=True``) trains on the same data only, so the file goes back where it was."""
    run_dir = Path(run_dir)
    record_path = run_dir / DATA_RECORD_NAME
    if not record_path.is_file():
        return  # a run from before data provenance was recorded
    record = json.loads(record_path.read_text())
    for role, entry in record.items():
        if role == PRIOR_ROLE:
            continue  # the prior's samples were read once; the checkpoint holds the prior itself
        path = Path(entry["path"]) if Path(entry["path"]).is_absolute() else run_dir / entry["path"]
        what = "data file" if role == "path" else f"{role} file"
        fix = (
            "pass --data PATH (Python: data=...) to evaluate on another file"
            if config.data.name == "file" and not resuming
            else "re-run training"
        )
        if not path.is_file():
            if resuming and config.data.name == "file":
                fix = f"a resumed run trains on the same data: move the file back or link it there (ln -s NEW {path})"
            raise EdvaeError(f"the {what} {path} this run was trained on is missing; {fix}")
        if file_sha256(path) != entry["sha256"]:
            raise EdvaeError(f"the {what} {path} changed since this run was trained on it (sha256 differs); {fix}")


def _splits_payload(data: DataSplits) -> dict[str, Any]:
    """The tensors and plain fields of ``data`` (what ``load_dataset("stored", path=...)`` reads)."""
    fields = (
        "train",
        "val",
        "test",
        "train_labels",
        "val_labels",
        "test_labels",
        "train_factors",
        "val_factors",
        "test_factors",
    )
    payload: dict[str, Any] = {k: getattr(data, k) for k in fields if getattr(data, k, None) is not None}
    payload.update(
        name=data.name,
        x_shape=list(data.x_shape),
        likelihood=data.likelihood,
        binarize=data.binarize,
        factor_names=list(data.factor_names),
    )
    return payload
