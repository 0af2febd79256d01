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
from typing import Any


def write_text(file_path: str, text: str) -> None:
    """Writes `text` atomically (a temporary file, flushed to disk, renamed over the old one): a
    reader never sees half a file, and a kill or a full disk mid-write leaves the previous version."""
    tmp = f"{file_path}.tmp"
    try:
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, file_path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise


def write_json(file_path: str, obj: Any) -> None:
    """Writes `obj` as indented JSON atomically (`write_text`)."""
    write_text(file_path, json.dumps(obj, indent=2, default=str))
