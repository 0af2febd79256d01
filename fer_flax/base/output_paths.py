"""Output paths checked before any work: a command that would fail to write its result after minutes of
loading and computing says so at once, naming the flag and the path.

    check_file("--out", path)      a file: not a folder, and its folder exists or can be made, writable
    check_folder("--out_dir", path) a folder: not a file, and it (or where it would be made) writable

"Can be made" means the nearest existing folder above it is a folder one may write in; "writable"
is `os.access`, which also answers for a read-only filesystem. Nothing is created or written, so a
check leaves no trace. Outputs are written by renaming into place (`atomic_files`,
`run.staged_outputs`), so what must be writable is the folder that holds an output, and for a folder
of staged outputs the folder above it too (the staging folder sits beside it). Raises `OutputPathError`, a
`ValueError`, which the commands print as one `error:` line.

A leaf module (it imports nothing from fer_flax), so every layer can check its outputs.
"""

from __future__ import annotations

import os


class OutputPathError(ValueError):
    """An output path that cannot be written; the message names the flag and the path."""


def _absolute(path: str | os.PathLike) -> str:
    return os.path.abspath(os.path.expanduser(os.fspath(path)))


def _check_can_write_in(flag: str, path: str, folder: str) -> None:
    """`folder` (where `path` is written, perhaps not made yet) is or can be made a writable folder."""
    existing = folder
    while not os.path.isdir(existing):
        if os.path.lexists(existing):
            raise OutputPathError(f"{flag} {path} cannot be written: {existing} is a file, not a folder")
        existing = os.path.dirname(existing)
    if not os.access(existing, os.W_OK | os.X_OK):
        raise OutputPathError(f"{flag} {path} cannot be written: {existing} is not writable")


def check_file(flag: str, path: str | os.PathLike) -> str:
    """The absolute `path` of an output file named by `flag`, or `OutputPathError` when it is a folder
    or its folder cannot be made or written."""
    path = _absolute(path)
    if os.path.isdir(path):
        raise OutputPathError(f"{flag} {path} is a folder; give a file name")
    _check_can_write_in(flag, path, os.path.dirname(path))
    return path


def check_folder(flag: str, path: str | os.PathLike, *, staged: bool = False) -> str:
    """The absolute `path` of an output folder named by `flag`, or `OutputPathError` when it is a file
    or it cannot be made or written. `staged`: its outputs are staged beside it and moved in
    (`run.staged_outputs`), so the folder above it must be writable too."""
    path = _absolute(path)
    if os.path.lexists(path) and not os.path.isdir(path):
        raise OutputPathError(f"{flag} {path} is a file; give a folder")
    if staged or not os.path.isdir(path):
        _check_can_write_in(flag, path, os.path.dirname(path))
    if os.path.isdir(path) and not os.access(path, os.W_OK | os.X_OK):
        raise OutputPathError(f"{flag} {path} cannot be written: it is not writable")
    return path
