"""Setting a run up: :func:`train` checks the run folder and, on resume, what may change, launches
the processes through Lightning Fabric and hands the run to :class:`~edvae.training.trainer.Trainer`.

See :mod:`edvae.training` for what it guarantees and how to extend it.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch

from edvae.accelerator import PLACEMENT, choose_accelerator, network_macs
from edvae.checkpoint import CHECKPOINT_NAME, AtomicCheckpointIO, load_checkpoint
from edvae.config import RunConfig, validate_config
from edvae.data import DataSplits
from edvae.errors import EdvaeError, TrainingError
from edvae.model import check_fits_memory, training_memory_bytes
from edvae.numeric_files import machine_memory_bytes
from edvae.provenance import check_data, record_data
from edvae.runs import load_data
from edvae.training.run_dir import RunLock, prepare_run_dir, staging_dir
from edvae.training.trainer import HOOKS, Trainer, TrainResult

__all__ = ["RESUMABLE", "resumed_config", "train"]

#: train.* settings that keep a run's footing: they may change on resume, and the change is recorded.
RESUMABLE = ("epochs", "lr", "grad_clip", "on_nonfinite", "log_every", "checkpoint_every", "checkpoint_seconds")


def _make_fabric(config: RunConfig, callbacks: Sequence[Any], accelerator: str | None = None):
    """The Fabric of a run, launched; ``accelerator``: ``cpu`` or ``gpu`` (``train.accelerator``
    resolved, see :func:`edvae.accelerator.choose_accelerator`)."""
    from lightning_fabric import Fabric
    from lightning_fabric.strategies import DDPStrategy

    devices, num_nodes = config.train.devices, config.train.num_nodes
    if "TORCHELASTIC_RUN_ID" in os.environ and "LOCAL_WORLD_SIZE" in os.environ:
        devices = int(os.environ["LOCAL_WORLD_SIZE"])
        num_nodes = int(os.environ["WORLD_SIZE"]) // devices
    world = devices * num_nodes
    split = world * config.train.grad_accum_steps
    if config.train.batch_size % split:  # checked before launching any process
        raise EdvaeError(
            f"train.batch_size={config.train.batch_size} must be divisible by the number of processes ({world}) "
            f"times train.grad_accum_steps ({config.train.grad_accum_steps})"
        )
    timeout = config.train.rendezvous_timeout
    # Lightning logs "Initializing distributed: GLOBAL_RANK ..." at INFO on stderr as each process
    # joins; a run that cannot join would print it before its one-line error, so only its warnings show.
    logging.getLogger("lightning_fabric.utilities.distributed").setLevel(logging.WARNING)
    fabric = Fabric(
        accelerator=accelerator or config.train.accelerator,
        devices=devices,
        num_nodes=num_nodes,
        strategy=DDPStrategy(timeout=timedelta(seconds=timeout)) if world > 1 else "auto",
        plugins=[AtomicCheckpointIO()],
        callbacks=list(callbacks),
    )
    try:
        fabric.launch()
    except torch.distributed.DistStoreError as err:  # the processes did not all join in time
        reason = " ".join(str(err).split())
        raise EdvaeError(
            f"the {world} processes did not all join within train.rendezvous_timeout={timeout:g} s ({reason}); "
            f"start the other nodes' processes with the same MASTER_ADDR and MASTER_PORT "
            f"(num_nodes={num_nodes}), or raise train.rendezvous_timeout"
        ) from None
    return fabric


def _checked_callbacks(callbacks: Any) -> list[Any]:
    """``callbacks`` as a list, refused (one line) unless it is a list or tuple of objects that
    each have at least one of the :data:`HOOKS` methods."""
    if not isinstance(callbacks, (list, tuple)):
        raise EdvaeError(f"callbacks must be a list of objects with methods such as on_step_end, got {callbacks!r}")
    for item in callbacks:
        if not any(callable(getattr(item, hook, None)) for hook in HOOKS):
            raise EdvaeError(
                f"callback {item!r} has none of the methods {', '.join(HOOKS)}; pass objects that define at least one"
            )
    return list(callbacks)


def train(
    config: RunConfig,
    run_dir: str | Path,
    *,
    resume: bool = False,
    overwrite: bool = False,
    data: DataSplits | None = None,
    stop_at_step: int | None = None,
    callbacks: Sequence[Any] = (),
) -> TrainResult:
    """Train the model a config describes, writing checkpoints and logs into ``run_dir``.

    **Resume.** ``resume=True`` continues from ``run_dir/checkpoint.pt``. Settings that keep the
    run's footing may change: ``train.epochs`` (never below the epochs already trained; a cosine
    schedule then follows the new total number of steps, see :func:`~edvae.training.trainer.follow_new_total`),
    ``train.lr`` (the optimiser's rate changes at once; a cosine schedule continues on the curve of
    the new rate), ``grad_clip``, ``on_nonfinite``, ``log_every``, ``checkpoint_every``,
    ``checkpoint_seconds``, and ``name`` and ``eval.*``. Each change is recorded in the run's
    history: the checkpoint's ``changes`` (and ``config.json``'s) list ``{"step", "key",
    "from", "to"}``, the step being the one the new value takes effect after, while the stored
    config holds the latest values. Where the run executes may change without a record:
    ``train.devices``, ``num_nodes``, ``accelerator``, ``threads``, ``progress`` (a run may
    resume on another number of processes, it sees the same global batches and noise). Settings
    that would change what the run is (``train.batch_size``, ``seed``, ``lr_schedule``,
    ``grad_accum_steps``, and ``data``, ``model`` and ``objective``) are refused with an
    :class:`EdvaeError`. ``config=None`` resumes with the stored config unchanged; with nothing
    changed, a resumed run is bit-for-bit the uninterrupted one.

    **Overwrite.** ``overwrite=True`` replaces a run (or a failed run's logs) already in
    ``run_dir``, but only once the new run has its first checkpoint: until then it is written
    into the sibling folder ``.NAME.new``, and a new run that fails before (bad data, a bad prior
    file, a divergence at step 2, a full disk) is removed, leaving the old run as it was.

    **One writer.** The process holds ``run_dir``'s lock (:class:`edvae.training.run_dir.RunLock`)
    while it writes: a second writer (a second run, a concurrent resume, an overwrite of a live run)
    is refused with an :class:`EdvaeError` naming the pid of the first.

    ``stop_at_step`` stops gracefully after that many steps, exactly as a SIGTERM would (for
    tests and time-boxed runs). ``callbacks``: objects with any of the methods in :data:`HOOKS`
    (see :mod:`edvae.training`).

    ``data`` trains on data in memory instead of the data the config names; the run folder then
    keeps a copy (``data.pt``, the stored config reading it back), so that evaluating the run
    uses exactly that data. File data are recorded by absolute path and sha256, and a resumed
    run refuses a data file that changed (:func:`edvae.provenance.record_data`, :func:`~edvae.provenance.check_data`).

    ``train.accelerator``: ``cpu``, ``gpu`` (refused with one line where torch sees none) or
    ``auto``, the GPU only for networks big enough to gain from it
    (:func:`edvae.accelerator.choose_accelerator` on the forward multiply-adds of one step).
    """
    callbacks = _checked_callbacks(callbacks)
    run_dir = Path(run_dir)
    prepare_run_dir(run_dir, resume=resume, overwrite=overwrite)
    saved: dict[str, Any] | None = load_checkpoint(run_dir) if resume else None
    if saved is not None:
        stored = validate_config(saved["config"], source=str(run_dir / CHECKPOINT_NAME))
        config, changes = resumed_config(stored, config, run_dir, saved["step"])
        if changes:  # the run's history: the checkpoint's changes, then these (TrainState.load_state_dict reads them)
            saved = {**saved, "changes": [*(saved.get("changes") or []), *changes]}
        started = saved["epoch"] + ((saved.get("batch_in_epoch") or 0) > 0)  # epochs finished or begun
        if config.train.epochs < started:
            raise EdvaeError(
                f"cannot resume {run_dir} with train.epochs={config.train.epochs}: it has already trained "
                f"{saved['epoch']} epochs{' and begun the next' if saved.get('batch_in_epoch') else ''}; "
                f"pass train.epochs={started} or more"
            )
    tc = config.train
    loaded, macs = None, 0
    if tc.accelerator == "auto":  # the rule reads the data's shape: loaded before the launch, then reused
        source = data
        if source is None:
            if saved is not None:
                check_data(run_dir, config, resuming=True)
            source = loaded = load_data(config, run_dir)
        macs = tc.batch_size * sum(network_macs(config.model, source.x_shape))
    fabric = _make_fabric(config, callbacks, choose_accelerator(tc.accelerator, macs, setting="train.accelerator"))
    if tc.threads:  # after the launch, which sets cores / processes threads unless OMP_NUM_THREADS is set
        torch.set_num_threads(tc.threads)
    locks: list[RunLock] = []
    staging: Path | None = None
    try:
        if fabric.is_global_zero:  # the process that writes; the checks again, now that nobody else can write
            locks.append(RunLock(run_dir).acquire())
            replacing = prepare_run_dir(run_dir, resume=resume, overwrite=overwrite)
        else:
            replacing = False  # rank 0 decides
        if fabric.world_size > 1:
            replacing = bool(fabric.broadcast(replacing, src=0))
        if replacing:
            staging = staging_dir(run_dir, create=fabric.is_global_zero)
            if fabric.is_global_zero:
                locks.append(RunLock(staging).acquire())
            fabric.barrier()
        work_dir = staging if staging is not None else run_dir
        fabric.seed_everything(tc.seed, verbose=False)
        if saved is None:  # record the data: absolute file paths and hashes, data in memory saved in the run folder
            config = record_data(config, work_dir, data, write=fabric.is_global_zero)
        elif data is None and loaded is None:
            check_data(run_dir, config, resuming=True)
        data = data if data is not None else loaded if loaded is not None else load_data(config, run_dir)
        check_fits_memory(
            training_memory_bytes(
                config.model, tuple(data.x_shape), min(tc.batch_size, len(data.train)) // tc.grad_accum_steps
            ),
            machine_memory_bytes(),
            f"training with model.hidden={config.model.hidden} and train.batch_size={tc.batch_size}",
            "use narrower layers (model.hidden) or a smaller train.batch_size",
        )
        replaces = run_dir if staging is not None else None
        trainer = Trainer(config, work_dir, fabric, data, saved=saved, stop_at_step=stop_at_step, replaces=replaces)
        result = trainer.fit()
        staging = None if trainer.run_dir == run_dir else staging
        return result
    except (EdvaeError, TrainingError) as err:
        if staging is None:
            raise
        raise type(err)(_staged_failure(str(err), staging, run_dir)) from None
    finally:
        if staging is not None and fabric.is_global_zero:  # a new run that never had a checkpoint: the old one stays
            shutil.rmtree(staging, ignore_errors=True)
        for lock in reversed(locks):
            lock.release()


def _staged_failure(message: str, staging: Path, run_dir: Path) -> str:
    """The error of a new run that failed before its first checkpoint while replacing the run in
    ``run_dir`` (``--overwrite``): its words about the run folder turned into the truth (the old
    run is unchanged)."""
    kept = f"the run already in {run_dir} is unchanged (--overwrite replaces it once the new run has a checkpoint)"
    message = message.replace(f"no checkpoint was written to {staging} yet", kept)
    message = message.replace(f"the last good checkpoint in {staging} is kept", kept)
    return message.replace(str(staging), str(run_dir)) if kept in message else f"{message}; {kept}"


def resumed_config(
    stored: RunConfig, given: RunConfig | None, run_dir: Path, step: int
) -> tuple[RunConfig, list[dict[str, Any]]]:
    """The config a resumed run goes on with, and the changes to record (see :func:`train`).

    ``given`` (None: the stored config) may differ from ``stored`` in :data:`RESUMABLE`, the
    placement, ``name`` and ``eval.*``; anything else raises :class:`EdvaeError` naming the
    first such key. Returns ``stored`` with those values of ``given``, and the list of
    ``{"step": step, "key", "from", "to"}`` for each recorded change (placement is not recorded).
    """
    if given is None:
        return stored, []
    with_data = stored.data.name != "stored"  # data in memory: the run folder's own copy, nothing to compare
    old, new = _flat(_identity(stored, with_data)), _flat(_identity(given, with_data))
    differing = [key for key in old if old[key] != new.get(key)] + [key for key in new if key not in old]
    if differing:
        key = differing[0]
        was, now = old.get(key), new.get(key)
        raise EdvaeError(
            f"cannot resume {run_dir} with {key}={json.dumps(now)} (it was trained with {json.dumps(was)}): {key} "
            "changes what the run is; start a new run instead (--out NEW, or --overwrite). On resume only "
            f"{', '.join('train.' + k for k in RESUMABLE)} may change (and where it runs)"
        )
    recorded = {f"train.{k}": (getattr(stored.train, k), getattr(given.train, k)) for k in RESUMABLE}
    recorded["name"] = (stored.name, given.name)
    recorded.update({f"eval.{k}": (getattr(stored.eval, k), v) for k, v in given.eval.model_dump().items()})
    changes = [{"step": step, "key": k, "from": a, "to": b} for k, (a, b) in recorded.items() if a != b]
    update = {k: getattr(given.train, k) for k in (*RESUMABLE, *PLACEMENT)}
    config = stored.model_copy(
        update={"name": given.name, "eval": given.eval, "train": stored.train.model_copy(update=update)}
    )
    return config, changes


def _identity(config: RunConfig, with_data: bool) -> dict[str, Any]:
    """What a run is (see :func:`resumed_config`): its data (``with_data``), model, objective and
    the train.* settings other than :data:`RESUMABLE` and the placement. File paths are compared
    resolved."""
    dump = config.model_dump()
    train = {k: v for k, v in dump["train"].items() if k not in (*RESUMABLE, *PLACEMENT)}
    data: dict[str, Any] = {}
    if with_data:
        data = dict(dump["data"], options=dict(dump["data"]["options"]))
        for holder, key in ((data, "path"), (data["options"], "labels_path")):
            if holder.get(key) is not None:
                holder[key] = str(Path(str(holder[key])).expanduser().resolve())
    model = dict(dump["model"])
    prior = model.get("prior")
    if isinstance(prior, str) and prior.startswith("samples:"):
        model["prior"] = "samples:" + str(Path(prior.removeprefix("samples:")).expanduser().resolve())
    return {"data": data, "model": model, "objective": dump["objective"], "train": train}


def _flat(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat
