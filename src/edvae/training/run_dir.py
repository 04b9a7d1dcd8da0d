"""The run folder while training writes it: preparing it (refusing one that holds a run unless
``--overwrite``), one writer at a time (:class:`RunLock`), replacing an old run only once the new
one has its first checkpoint, and the metrics log. Its layout and reading a run back:
:mod:`edvae.runs`."""

from __future__ import annotations

import json
import os
import shutil
import warnings
from pathlib import Path
from typing import Any

from edvae.errors import EdvaeError
from edvae.runs import CHECKPOINT_NAME, CONFIG_NAME, METRICS_NAME, RUN_FILES, TENSORBOARD_DIR

__all__ = [
    "LOCK_NAME",
    "MetricsLog",
    "RunLock",
    "check_resumable",
    "lock_holder",
    "prepare_run_dir",
    "replace_run",
    "staging_dir",
]

#: The lock file a writer holds in its folder (a run folder, or a study's --out), see :class:`RunLock`.
LOCK_NAME = ".edvae.lock"


def prepare_run_dir(run_dir: Path, *, resume: bool, overwrite: bool) -> bool:
    """Check that ``run_dir`` can take a new run (or holds one to resume); True when it holds a
    run (or a failed run's logs) that the new run will replace (``overwrite``).

    A folder holding a run (a checkpoint), or only the logs of a run that failed before its
    first checkpoint, is refused unless ``overwrite``. Nothing is deleted here: the new run is
    written into a sibling folder and replaces the old one only once it has its first checkpoint
    (:func:`staging_dir`, :func:`replace_run`), so a new run that fails to start loses nothing.
    A folder for a new run is created."""
    checkpoint = run_dir / CHECKPOINT_NAME
    if resume:
        check_resumable(run_dir)
        return False
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
        return True
    _make_folder(run_dir)
    return False


def _make_folder(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise EdvaeError(
            f"cannot create the run folder {folder} ({err.strerror or err}); choose a writable --out"
        ) from None


def staging_dir(run_dir: Path, create: bool = True) -> Path:
    """The sibling folder a run that replaces the one in ``run_dir`` is written into until its
    first checkpoint (``.NAME.new`` beside it; the same path in every process of a run).
    ``create``: a leftover one (a start killed before its first checkpoint) is removed and a
    new one made; the caller holds ``run_dir``'s lock."""
    resolved = run_dir.resolve()
    staging = resolved.parent / f".{resolved.name}.new"
    if create:
        shutil.rmtree(staging, ignore_errors=True)
        _make_folder(staging)
    return staging


def replace_run(run_dir: Path, staging: Path) -> None:
    """Put the new run in ``staging`` in the place of the old run in ``run_dir``: the old run's
    files go to a sibling backup folder (one rename), the new folder takes the name (a second
    rename) and the backup is deleted. The new run already has its first checkpoint, so at every
    instant one of the two runs is complete on disk. Files in ``run_dir`` that are not a run's
    (a user's notes) are moved into the new folder, never deleted."""
    run_dir = run_dir.resolve()
    backup = run_dir.parent / f".{run_dir.name}.old"
    shutil.rmtree(backup, ignore_errors=True)
    os.rename(run_dir, backup)
    os.rename(staging, run_dir)
    for entry in backup.iterdir():
        if entry.name not in (*RUN_FILES, TENSORBOARD_DIR, LOCK_NAME) and not (run_dir / entry.name).exists():
            os.rename(entry, run_dir / entry.name)
    shutil.rmtree(backup, ignore_errors=True)


def _holds_logs(run_dir: Path) -> bool:
    return any((run_dir / name).exists() for name in (METRICS_NAME, CONFIG_NAME, TENSORBOARD_DIR))


def check_resumable(run_dir: Path) -> None:
    """Raise :class:`EdvaeError` unless ``run_dir`` holds a checkpoint to resume from, saying
    what to do instead (a folder locked by a live run before its first checkpoint: wait for it;
    a folder holding only a failed run's logs: ``--overwrite``)."""
    if (run_dir / CHECKPOINT_NAME).is_file():
        return
    holder = lock_holder(run_dir)
    if holder is not None:  # a live run before its first checkpoint: not a failed one
        who = f"pid {holder}" if holder else "another process"
        raise EdvaeError(
            f"cannot resume: {run_dir} is in use by a run that is still starting or training ({who}) and has no "
            f"{CHECKPOINT_NAME} yet; one process at a time writes a run folder: wait for it to finish or stop it"
            f"{f' (kill {holder})' if holder else ''}, then resume"
        )
    if run_dir.is_dir() and _holds_logs(run_dir):
        raise EdvaeError(
            f"cannot resume: {run_dir} holds no {CHECKPOINT_NAME}, only the logs of a run that stopped before its "
            f"first checkpoint; start it again with: edvae train CONFIG --out {run_dir} --overwrite"
        )
    raise EdvaeError(f"cannot resume: no checkpoint at {run_dir / CHECKPOINT_NAME}; start a new run with --out instead")


class RunLock:
    """One writer per folder: an advisory lock (``fcntl.flock``, exclusive) on ``FOLDER/.edvae.lock``.

    :meth:`acquire` takes the lock and writes this process's pid into the file, or raises
    :class:`EdvaeError` naming the pid of the process that holds it. The kernel releases the
    lock when its process ends however it ends (a SIGKILL included), so a stale lock file of a
    dead process is simply taken over. Held by ``edvae train`` (a new run, ``--resume`` and
    ``--overwrite``) for its run folder and by ``edvae reproduce`` for its ``--out``; on a system
    without ``fcntl`` it does nothing. ``what`` names the holder in the refusal."""

    def __init__(self, folder: Path, what: str = "edvae train") -> None:
        self.folder, self.what = Path(folder), what
        self._fd: int | None = None

    def acquire(self) -> RunLock:
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not POSIX: no advisory locks
            return self
        _make_folder(self.folder)
        path = self.folder / LOCK_NAME
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as err:
            raise EdvaeError(
                f"cannot write into {self.folder} ({err.strerror or err}); choose a writable --out"
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            pid = _read_pid(fd)
            os.close(fd)
            holder = f"pid {pid}" if pid else "another process"
            raise EdvaeError(
                f"{self.folder} is in use by another {self.what} ({holder}); one process at a time writes a run "
                f"folder: wait for it to finish or stop it{f' (kill {pid})' if pid else ''}, then try again"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the last descriptor releases the flock
            self._fd = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode().strip()
    except (OSError, UnicodeDecodeError):
        return None
    return int(text) if text.isdigit() else None


def lock_holder(folder: Path) -> int | None:
    """The pid of the live process holding ``folder``'s :class:`RunLock` (0 when the file names
    none), or None when nobody holds it. Reads only: creates no file."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover
        return None
    path = Path(folder) / LOCK_NAME
    if not path.is_file():
        return None
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        return _read_pid(fd) or 0
    finally:
        os.close(fd)
    return None


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
