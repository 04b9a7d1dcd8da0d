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

:func:`load_data` builds the data set a config names; :func:`load_run` rebuilds a trained model
from its folder. Neither needs the trainer.

Data provenance: :func:`record_data` (called by the trainer when a run starts) makes a file
path absolute, stores data passed in memory as ``data.pt`` in the run folder, and writes
``data.json`` with the sha256 of every data file; :func:`check_data` (called by
:func:`load_run` and on resume) refuses, in one line naming the file, data that is missing or
changed since training. Evaluating on another file is explicit: pass ``data``.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from pathlib import Path
from typing import Any

import torch

from edvae.checkpoint import CHECKPOINT_NAME, load_checkpoint, load_weights
from edvae.config import RunConfig, validate_config
from edvae.data import DataSplits, load_dataset
from edvae.errors import EdvaeError
from edvae.model import VAE, build_model

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
    "check_data",
    "file_sha256",
    "load_data",
    "load_run",
    "record_data",
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
DATA_RECORD_NAME = "data.json"
STORED_DATA_NAME = "data.pt"
#: Options of the ``file`` data set that name a file (recorded and checked like ``data.path``).
_PATH_OPTIONS = ("labels_path",)
#: The role under which ``data.json`` records a ``samples:PATH`` prior's file (provenance only).
PRIOR_ROLE = "prior_samples"
SAMPLES_PREFIX = "samples:"


def load_data(config: RunConfig, run_dir: str | Path | None = None) -> DataSplits:
    """The data set a run config names; a relative ``data.path`` of stored data
    (``data.name = "stored"``) is read from ``run_dir``."""
    path = config.data.path
    if config.data.name == "stored" and path is not None and run_dir is not None and not Path(path).is_absolute():
        path = str(Path(run_dir) / path)
    return load_dataset(config.data.name, seed=config.data.seed, path=path, **config.data.options)


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
        folder = Path(run_dir).parent if Path(run_dir).is_file() else Path(run_dir)
        check_data(folder, config)
        data = load_data(config, folder)
    model = build_model(config.model, data, fit_prior=False, weights=state["model"])  # fitted values: the state dict
    if given:
        _check_data_fits(model, state["model"], data, run_dir)
    load_weights(model, state["model"], run_dir)
    model.eval()
    return model, config, state, data
