"""Small files written atomically: a temporary file, flushed to disk, renamed over the old one.

Every small file a run or a command writes (config.json, summary.json, metrics.jsonl when cut back,
config_history.jsonl, the wandb run id, checkpoint manifests, evaluation reports) goes through here, so
a reader never sees half a file and a kill or a full disk mid-write leaves the previous version. A
leaf module (it imports nothing from fer_flax), so any module can use it.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Callable
from typing import IO, Any


def write_with(file_path: str | os.PathLike, write: Callable[[IO[bytes]], object]) -> None:
    """Calls `write(f)` on a temporary binary file beside `file_path`, flushes it to disk and renames
    it over `file_path`: a reader never sees half a file, and a kill or a full disk mid-write leaves
    the previous version (the temporary file is removed on an error)."""
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


def write_text(file_path: str | os.PathLike, text: str) -> None:
    """Writes `text` (UTF-8) atomically (`write_with`)."""
    write_with(file_path, lambda f: f.write(text.encode()))


def write_json(file_path: str, obj: Any) -> None:
    """Writes `obj` as indented JSON atomically (`write_text`)."""
    write_text(file_path, json.dumps(obj, indent=2, default=str))
