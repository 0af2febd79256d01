"""An output folder written all at once: readers see the previous folder or the complete new one.

`fer_flax.explain` and `fer_flax.export` fill a temporary folder beside the destination and swap it in
only when everything is written. A destination that holds something else than an earlier output of the
same command (recognised by its `marker` file) is refused rather than replaced.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator


def check_replaceable(path: str, marker: str, command: str) -> str:
    """The absolute `path` if it is absent, an empty folder or an earlier output (it holds `marker`);
    else ValueError naming it."""
    path = os.path.abspath(os.path.expanduser(path))
    if os.path.exists(path) and not os.path.isdir(path):
        raise ValueError(f"--out {path} is a file; give a folder")
    if os.path.isdir(path) and os.listdir(path) and not os.path.exists(os.path.join(path, marker)):
        raise ValueError(
            f"--out {path} is a non-empty folder that is not an earlier output of {command} (it has no "
            f"{marker}); choose a new or empty folder"
        )
    return path


@contextlib.contextmanager
def written_at_once(path: str, marker: str, command: str) -> Iterator[str]:
    """Yields a temporary folder to fill; on success it replaces `path` (see `check_replaceable`), on
    an error it is deleted and `path` is left as it was."""
    path = check_replaceable(path, marker, command)
    parent = os.path.dirname(path)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(path)}.partial-", dir=parent)
    try:
        yield tmp
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)  # mkdtemp's folder is private; the result is an ordinary one
        old = None
        if os.path.exists(path):
            old = tempfile.mkdtemp(prefix=f".{os.path.basename(path)}.old-", dir=parent)
            os.replace(path, os.path.join(old, "previous"))
        os.replace(tmp, path)
        if old:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if os.path.exists(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
