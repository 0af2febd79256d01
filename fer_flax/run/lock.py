"""One training run per workdir: an OS file lock on `<workdir>/train.lock`, held for the whole run.

The lock is `fcntl.flock` on an open file, so the kernel releases it when the process ends however it
ends (SIGKILL, OOM kill, a machine lost from a network filesystem once its locks expire): a killed run
never blocks its own rerun, and nobody has to delete a stale lock file. The file stays in the workdir
between runs (only a start that fails before its run has begun deletes the one it created,
`fer_flax.run.start`); its content (PID, host, start time of the holder) only names who holds the
lock for the message a second run prints, and its presence alone means nothing.

`is_held(workdir)` asks without taking the lock: `research.sweep.study` uses it to tell a trial whose run is
still alive from one whose process died.

Multi-process runs lock once, from process 0 (`fer_flax.run.start`, which training starts with). Evaluation
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

LOCK_FILE = "train.lock"
# Tries to lock a file that failed starts keep deleting under the locker (each one takes one).
_ATTEMPTS = 20


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
    holds `sweep.lock` of each trial it runs, besides the trial run's own `train.lock`).

    A start that fails deletes the lock file it created while it still holds it
    (`fer_flax.run.start`); a process that opened that file just before is told so after locking it,
    by the path no longer naming the file it locked, and locks the file at the path instead."""
    file_path = os.path.join(workdir, lock_file)
    for _ in range(_ATTEMPTS):
        os.makedirs(workdir, exist_ok=True)
        try:
            fd = os.open(file_path, os.O_RDWR | os.O_CREAT, 0o644)
        except FileNotFoundError:  # the folder was removed by a failed start meanwhile: make it again
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise WorkdirLockedError(
                    f"workdir {workdir} is in use by another training run ({_describe_holder(file_path)}). "
                    "Wait for it to finish or stop it; rerunning the same command afterwards resumes "
                    "from its last checkpoint. For a separate run, choose another --workdir."
                ) from None
            warnings.warn(
                f"cannot lock {file_path} ({os.strerror(e.errno)}): nothing stops a second run from using "
                "this workdir at the same time",
                WorkdirLockWarning,
                stacklevel=2,
            )
            return None
        if _names(file_path, fd):
            break
        os.close(fd)  # locked a file that was deleted meanwhile: try the one at the path now
    else:
        raise OSError(f"cannot lock {file_path}: it is deleted and made again by other processes")
    record = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}
    with contextlib.suppress(OSError):  # only names the holder; a full disk is reported by the run
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(record).encode(), 0)
    return fd


def _names(file_path: str, fd: int) -> bool:
    """Whether `file_path` is (still) the file open as `fd`."""
    try:
        at_path = os.stat(file_path)
    except FileNotFoundError:
        return False
    held = os.fstat(fd)
    return (at_path.st_dev, at_path.st_ino) == (held.st_dev, held.st_ino)


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
