"""Small files written atomically and durably: a temporary file, synced to disk, renamed over the old
one, then the folder synced.

Every small file a run or a command writes (config.json, summary.json, metrics.jsonl when cut back,
config_history.jsonl, the wandb run id, checkpoint manifests, evaluation reports) goes through here, so
a reader never sees half a file, a kill or a full disk mid-write leaves the previous version, and once
the write returns the new version survives a power cut too: the rename is an entry of the folder,
which reaches the disk only when the folder itself is synced. `fsync_tree` does the same for a folder
committed by a rename (a checkpoint). A leaf module (it imports nothing from fer_flax), so any module
can use it.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import tempfile
from collections.abc import Callable
from typing import IO, Any

# What fsync raises on a filesystem that cannot sync a folder (some network and FUSE filesystems):
# there is nothing more to do there, and the write itself has succeeded.
_CANNOT_SYNC = {errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP}


def _fsync(file_path: str, flags: int = 0) -> None:
    fd = os.open(file_path, os.O_RDONLY | flags)
    try:
        os.fsync(fd)
    except OSError as e:
        if e.errno not in _CANNOT_SYNC:
            raise
    finally:
        os.close(fd)


def fsync_dir(folder: str | os.PathLike) -> None:
    """Syncs `folder`'s entries to disk: the names created, renamed or removed in it."""
    _fsync(os.fspath(folder) or ".", getattr(os, "O_DIRECTORY", 0))


def fsync_tree(root: str | os.PathLike) -> None:
    """Syncs every file and folder under `root` (each folder after its contents), then the folder
    that holds `root`: a folder committed by a rename survives a power cut, its rename included."""
    for dirpath, _, filenames in os.walk(root, topdown=False):
        for name in filenames:
            _fsync(os.path.join(dirpath, name))
        fsync_dir(dirpath)
    fsync_dir(os.path.dirname(os.path.abspath(root)))


def write_with(file_path: str | os.PathLike, write: Callable[[IO[bytes]], object]) -> None:
    """Calls `write(f)` on a temporary binary file beside `file_path`, syncs it to disk, renames it
    over `file_path` and syncs the folder: a reader never sees half a file, a kill or a full disk
    mid-write leaves the previous version (the temporary file is removed on an error), and the new
    version survives a power cut once this returns."""
    folder, name = os.path.split(os.fspath(file_path))
    fd, tmp = tempfile.mkstemp(dir=folder or ".", prefix=f".{name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, file_path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise
    fsync_dir(folder or ".")


def write_text(file_path: str | os.PathLike, text: str) -> None:
    """Writes `text` (UTF-8) atomically (`write_with`)."""
    write_with(file_path, lambda f: f.write(text.encode()))


def write_json(file_path: str, obj: Any) -> None:
    """Writes `obj` as indented JSON atomically (`write_text`)."""
    write_text(file_path, json.dumps(obj, indent=2, default=str))
