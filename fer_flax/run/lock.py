"""One training run per workdir: an OS file lock on `<workdir>/train.lock`, held for the whole run.

The lock is `fcntl.flock` on an open file, so the kernel releases it when the process ends however it
ends (SIGKILL, OOM kill, a machine lost from a network filesystem once its locks expire): a killed run
never blocks its own rerun, and nobody has to delete a stale lock file. The file stays in the workdir
between runs; its content (PID, host, start time of the holder) only names who holds the lock for the
message a second run prints, and its presence alone means nothing.

`is_held(workdir)` asks without taking the lock: `research.sweep.study` uses it to tell a trial whose run is
still alive from one whose process died.

Multi-process runs lock once, from process 0 (`fer_flax.training.loop.train_and_evaluate`). Evaluation
and prediction do not lock: they read only finished checkpoints, which a running training commits
atomically.

On a filesystem without lock support (some network filesystems mounted without it) `flock` fails
with an error other than "would block": the run then goes on with a warning, unprotected.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
import time
import warnings
from collections.abc import Iterator

LOCK_FILE = "train.lock"


class WorkdirLockedError(RuntimeError):
    """Another process holds the workdir's lock: a training run is already using it."""


class WorkdirLockWarning(UserWarning):
    """The workdir's filesystem does not support locks; the run goes on without one."""


def _describe_holder(file_path: str) -> str:
    try:
        with open(file_path) as f:
            holder = json.load(f)
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(holder["started"]))
        return f"PID {holder['pid']} on host {holder['host']}, started {started}"
    except (OSError, ValueError, KeyError, TypeError):  # the holder is between lock and write
        return "a process that is just starting"


def acquire(workdir: str, lock_file: str = LOCK_FILE) -> int | None:
    """Takes the lock of `workdir` (created if needed) without waiting and returns its file
    descriptor (None where the filesystem has no locks). Raises `WorkdirLockedError`, naming the
    holder, when another process holds it. `lock_file` names another lock of the same folder (a sweep
    holds `sweep.lock` of each trial it runs, besides the trial run's own `train.lock`)."""
    os.makedirs(workdir, exist_ok=True)
    file_path = os.path.join(workdir, lock_file)
    fd = os.open(file_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        os.close(fd)
        if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            raise WorkdirLockedError(
                f"workdir {workdir} is in use by another training run ({_describe_holder(file_path)}). "
                "Wait for it to finish or stop it; rerunning the same command afterwards resumes from "
                "its last checkpoint. For a separate run, choose another --workdir."
            ) from None
        warnings.warn(
            f"cannot lock {file_path} ({os.strerror(e.errno)}): nothing stops a second run from using "
            "this workdir at the same time",
            WorkdirLockWarning,
            stacklevel=2,
        )
        return None
    record = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}
    with contextlib.suppress(OSError):  # only names the holder; a full disk is reported by the run
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(record).encode(), 0)
    return fd


def is_held(workdir: str, lock_file: str = LOCK_FILE) -> bool:
    """Whether a live process holds the lock of `workdir` now (False for a folder or lock file that
    does not exist, and where the filesystem has no locks). Creates and writes nothing."""
    try:
        fd = os.open(os.path.join(workdir, lock_file), os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError as e:
        return e.errno in (errno.EWOULDBLOCK, errno.EAGAIN)
    finally:
        os.close(fd)  # also drops the shared lock just taken
    return False


def release(fd: int | None) -> None:
    if fd is not None:
        os.close(fd)  # closing the only descriptor of the open file releases the flock


@contextlib.contextmanager
def hold(workdir: str, *, enabled: bool = True) -> Iterator[None]:
    """The lock of `workdir` for the duration of the block (nothing when not `enabled`)."""
    fd = acquire(workdir) if enabled else None
    try:
        yield
    finally:
        release(fd)
