"""A training run's start in its workdir: the workdir made and proven writable, locked for one run
(`fer_flax.run.lock`) and, when the start fails, left as it was found.

    with start.begin(workdir, process_index) as started:
        ...                  # check the config and data, build or restore the state, write config.json
        started.recorded()   # from here on the workdir holds a run
        ...                  # train

The lock has to be taken before any data is read, so that a second trainer stops at once; that
creates the workdir (and its missing parent folders) and `train.lock`, and opening the checkpoint
managers creates `checkpoints/` and `best/`. A start that fails before `recorded()` (a bad data row,
a missing data path, a teacher or init_from workdir that does not load, a damaged checkpoint) takes
back what it made: the lock file it created is deleted while the lock is still held, then the lock
is released, then the folders it created are removed if they hold no file. A folder that existed
before the start, or one that now holds a file (a cache, another run's lock), is never removed, so a
failed resume of an existing run loses nothing. A process that opened the lock file just before it
was deleted finds out after locking it (`lock.acquire` checks that the path still names the file it
locked) and locks the new one instead, so two runs never hold the same workdir.

Only process 0 locks and tidies up; every process proves the workdir writable.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

from fer_flax.run import lock
from fer_flax.run import workdir as workdir_lib


class Start:
    """A start in progress: what the workdir held before it, and whether this process holds its lock."""

    def __init__(self, workdir: str, tidy: bool):
        self.workdir = workdir
        self.tidy = tidy
        # The workdir and its missing parents, innermost first: the folders this start will create.
        self.new_folders = _missing_folders(workdir)
        self.entries_before = _entries(workdir)
        self.locked = False  # by this process (on a filesystem without locks: unprotected, lock_fd None)
        self.lock_fd: int | None = None
        self.done = False

    def recorded(self) -> None:
        """The run has recorded its start (config.json): a later failure leaves the workdir as it is."""
        self.done = True

    def undo(self) -> None:
        """Removes what this failed start created (see the module docstring) and releases the lock.
        Without the lock (another run holds it) only the folders made before locking are tried: the
        other run's own files and folders are not this start's to remove."""
        try:
            if self.locked:
                new = sorted(_entries(self.workdir) - self.entries_before)
                for name in new:
                    if name != lock.LOCK_FILE:
                        _remove_empty_folders(os.path.join(self.workdir, name))
                if lock.LOCK_FILE in new:  # while it is held: nobody else locks this file meanwhile
                    os.unlink(os.path.join(self.workdir, lock.LOCK_FILE))
        except OSError:  # tidying up is best effort: the error that failed the start is the one to see
            pass
        finally:
            self.release()
        for folder in self.new_folders:
            try:
                os.rmdir(folder)
            except OSError:  # holds a file (or is gone): it, and the folders above it, stay
                break

    def release(self) -> None:
        lock.release(self.lock_fd)
        self.lock_fd = None


def _entries(folder: str) -> set[str]:
    """The names in `folder` (none where it is absent, not a folder or unreadable: `check_writable`
    then says what is wrong)."""
    try:
        return set(os.listdir(folder))
    except OSError:
        return set()


def _missing_folders(workdir: str) -> list[str]:
    """`workdir` and those of its parent folders that do not exist, innermost first (empty when it
    exists)."""
    missing = []
    folder = workdir
    while not os.path.lexists(folder):
        missing.append(folder)
        parent = os.path.dirname(folder)
        if parent == folder:
            break
        folder = parent
    return missing


def _remove_empty_folders(path: str) -> None:
    """Removes `path` and its subfolders when none of them holds a file; else removes nothing that
    holds one. Never follows a symbolic link, never deletes a file."""
    if os.path.islink(path) or not os.path.isdir(path):
        return
    for folder, _, _ in os.walk(path, topdown=False):
        with contextlib.suppress(OSError):  # not empty: stays
            os.rmdir(folder)


@contextlib.contextmanager
def begin(workdir: str, process_index: int = 0) -> Iterator[Start]:
    """The start of a run in `workdir` (an absolute path): writable, locked by process 0 for the
    block, and taken back (the module docstring) if the block raises before `Start.recorded()`.
    Raises `lock.WorkdirLockedError` when another run holds the workdir, PermissionError when it
    cannot be written; both leave it as found."""
    started = Start(workdir, tidy=process_index == 0)
    try:
        workdir_lib.check_writable(workdir)
        if started.tidy:
            started.lock_fd = lock.acquire(workdir)
            started.locked = True
        yield started
    except BaseException:
        if started.tidy and not started.done:
            started.undo()
        raise
    finally:
        started.release()
