"""Output files that appear all together or not at all.

A command that writes many files per input (annotated pictures, JSON records, plots) writes them
into a hidden staging folder beside the output folder; `commit()` moves them into place once every
input has been processed, and leaving the `with` block without committing (an unreadable input, an
interrupt) deletes the staging folder. So a failed run leaves no partial outputs, and the output
folder is created only when there is something to put in it.

With `replaces=MARKER` (a file every output of the command holds) the output folder is one product,
replaced as a whole: `commit()` swaps the staged folder in, so no file of an earlier run survives
beside the new ones. A destination that holds something other than such an output is refused
(`check_replaceable`, which a command calls before any work).
"""

from __future__ import annotations

import os
import shutil
import tempfile

from fer_flax.base import output_paths


def check_replaceable(out_dir: str | os.PathLike, marker: str, command: str, flag: str = "--out") -> str:
    """The absolute `out_dir` if it is absent, an empty folder or an earlier output of `command` (it
    holds `marker`), and can be written (`output_paths.check_folder`); else ValueError naming `flag`
    and the folder."""
    path = output_paths.check_folder(flag, out_dir, staged=True)
    if os.path.isdir(path) and os.listdir(path) and not os.path.exists(os.path.join(path, marker)):
        raise ValueError(
            f"{flag} {path} is a non-empty folder that is not an earlier output of {command} (it has no "
            f"{marker}); choose a new or empty folder"
        )
    return path


class StagedOutputs:
    """with StagedOutputs(out_dir) as out: write to out.path(name) ...; out.commit() -> final paths."""

    def __init__(self, out_dir: str | os.PathLike, *, replaces: str | None = None):
        self.out_dir = os.path.abspath(os.fspath(out_dir))
        self.replaces = replaces
        self._stage: str | None = None
        self._names: list[str] = []

    def __enter__(self) -> StagedOutputs:
        parent = os.path.dirname(self.out_dir)
        os.makedirs(parent, exist_ok=True)
        self._stage = tempfile.mkdtemp(prefix=f".{os.path.basename(self.out_dir)}.partial-", dir=parent)
        return self

    def unique_name(self, stem: str, suffix: str) -> str:
        """`stem + suffix`, or `stem-2 + suffix`, ... when taken in this run or in the output folder."""
        name, n = f"{stem}{suffix}", 1
        while name in self._names or os.path.exists(os.path.join(self.out_dir, name)):
            n += 1
            name = f"{stem}-{n}{suffix}"
        self._names.append(name)
        return name

    def path(self, name: str) -> str:
        """Where to write output `name` now (inside the staging folder)."""
        assert self._stage is not None, "use StagedOutputs in a with block"
        return os.path.join(self._stage, name)

    def final_path(self, name: str) -> str:
        return os.path.join(self.out_dir, name)

    def commit(self) -> list[str]:
        """Moves every staged file into the output folder (or, with `replaces`, the staged folder in
        place of the output folder); returns their final paths."""
        assert self._stage is not None
        if self.replaces is not None:
            return self._replace_folder()
        os.makedirs(self.out_dir, exist_ok=True)
        moved = []
        for name in sorted(os.listdir(self._stage)):
            os.replace(os.path.join(self._stage, name), self.final_path(name))
            moved.append(self.final_path(name))
        shutil.rmtree(self._stage, ignore_errors=True)
        self._stage = None
        return moved

    def _replace_folder(self) -> list[str]:
        check_replaceable(self.out_dir, self.replaces, "this command")
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(self._stage, 0o777 & ~umask)  # mkdtemp's folder is private; the result is an ordinary one
        names = sorted(os.listdir(self._stage))
        old = None
        if os.path.exists(self.out_dir):
            old = tempfile.mkdtemp(
                prefix=f".{os.path.basename(self.out_dir)}.old-", dir=os.path.dirname(self.out_dir)
            )
            os.replace(self.out_dir, os.path.join(old, "previous"))
        os.replace(self._stage, self.out_dir)
        self._stage = None
        if old:
            shutil.rmtree(old, ignore_errors=True)
        return [self.final_path(name) for name in names]

    def __exit__(self, *exc) -> None:
        if self._stage is not None:
            shutil.rmtree(self._stage, ignore_errors=True)
            self._stage = None
