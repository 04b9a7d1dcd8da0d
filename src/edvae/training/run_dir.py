"""The run folder as the trainer writes it: preparing it, and the metrics log."""

from __future__ import annotations

import json
import os
import shutil
import warnings
from pathlib import Path

from edvae.errors import EdvaeError
from edvae.runs import (
    CHECKPOINT_NAME,
    CONFIG_NAME,
    DATA_RECORD_NAME,
    EVALUATION_NAME,
    LATENTS_NAME,
    METRICS_NAME,
    PRIOR_FIT_NAME,
    STORED_DATA_NAME,
    TENSORBOARD_DIR,
)

__all__ = ["MetricsLog", "check_resumable", "prepare_run_dir"]


def prepare_run_dir(run_dir: Path, *, resume: bool, overwrite: bool) -> None:
    """Check that ``run_dir`` can take a new run (or holds one to resume) and create it.

    A folder holding a run (a checkpoint), or only the logs of a run that failed before its
    first checkpoint, is refused unless ``overwrite``, which deletes the run's files (and no
    others) first."""
    checkpoint = run_dir / CHECKPOINT_NAME
    if resume:
        check_resumable(run_dir)
        return
    if run_dir.exists() and not run_dir.is_dir():
        raise EdvaeError(f"--out {run_dir} is a file, not a folder; choose another output folder")
    holds_run = checkpoint.exists()
    holds_logs = _holds_logs(run_dir)
    if holds_run and not overwrite:
        raise EdvaeError(
            f"{run_dir} already holds a run; pass --overwrite to replace it, --resume to continue it, or choose "
            "another --out"
        )
    if holds_logs and not holds_run and not overwrite:
        raise EdvaeError(
            f"{run_dir} holds the logs of a run that stopped before its first checkpoint (nothing to resume); "
            "pass --overwrite to replace them, or choose another --out"
        )
    if holds_run or holds_logs:
        for name in (
            CHECKPOINT_NAME,
            METRICS_NAME,
            CONFIG_NAME,
            PRIOR_FIT_NAME,
            DATA_RECORD_NAME,
            STORED_DATA_NAME,
            EVALUATION_NAME,
            LATENTS_NAME,
        ):
            (run_dir / name).unlink(missing_ok=True)
        shutil.rmtree(run_dir / TENSORBOARD_DIR, ignore_errors=True)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise EdvaeError(
            f"cannot create the run folder {run_dir} ({err.strerror or err}); choose a writable --out"
        ) from None


def _holds_logs(run_dir: Path) -> bool:
    return any((run_dir / name).exists() for name in (METRICS_NAME, CONFIG_NAME, TENSORBOARD_DIR))


def check_resumable(run_dir: Path) -> None:
    """Raise :class:`EdvaeError` unless ``run_dir`` holds a checkpoint to resume from, saying
    what to do instead (a folder holding only a failed run's logs: ``--overwrite``)."""
    if (run_dir / CHECKPOINT_NAME).is_file():
        return
    if run_dir.is_dir() and _holds_logs(run_dir):
        raise EdvaeError(
            f"cannot resume: {run_dir} holds no {CHECKPOINT_NAME}, only the logs of a run that stopped before its "
            f"first checkpoint; start it again with: edvae train CONFIG --out {run_dir} --overwrite"
        )
    raise EdvaeError(f"cannot resume: no checkpoint at {run_dir / CHECKPOINT_NAME}; start a new run with --out instead")


def _truncate_lines(path: Path, keep: int) -> None:
    if not path.exists():
        return
    lines = path.read_text().splitlines(keepends=True)[:keep]
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(lines))
    os.replace(tmp, path)


class MetricsLog:
    """Rank-0 logging of named scalars to JSONL and TensorBoard.

    On resume, ``keep_lines`` cuts ``metrics.jsonl`` back to the lines the checkpoint had seen
    and ``purge_step`` drops TensorBoard events after it, so a resumed log has no duplicates.
    """

    def __init__(self, run_dir: Path, enabled: bool, purge_step: int | None, keep_lines: int | None) -> None:
        self.enabled = enabled
        self.path = run_dir / METRICS_NAME
        self.lines = 0
        self.writer = None
        if not enabled:
            return
        if keep_lines is not None:
            _truncate_lines(self.path, keep_lines)
        self.lines = len(self.path.read_text().splitlines()) if self.path.exists() else 0
        self._file = open(self.path, "a")
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(run_dir / TENSORBOARD_DIR), purge_step=purge_step)
        except (ImportError, RuntimeError, OSError) as err:  # logging must never cost the run
            warnings.warn(
                f"TensorBoard logging is off for this run ({err}); metrics still go to {METRICS_NAME}", stacklevel=2
            )
            self.writer = None

    def log(self, split: str, step: int, epoch: int, values: dict[str, float]) -> None:
        if not self.enabled:
            return
        record = {"split": split, "step": step, "epoch": epoch, **values}
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        self.lines += 1
        if self.writer is not None:
            for name, value in values.items():
                self.writer.add_scalar(f"{split}/{name}", value, step)

    def close(self) -> None:
        if self.enabled:
            self._file.close()
            if self.writer is not None:
                self.writer.close()
