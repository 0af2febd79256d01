"""What goes wrong with checkpoints, and how it is said: the exceptions and warning of
`fer_flax.run.checkpoint`, the one-phrase cause of a failed save, and the verdict on checkpoints that
cannot be used (damaged, or intact but not fitting the model).

Imports nothing from fer_flax and no Orbax, so the command-line layer (`fer_flax.cli`) can name these
errors without loading a checkpoint library.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import re
import sys
from collections.abc import Iterator
from typing import Any


class CorruptCheckpointWarning(UserWarning):
    """A checkpoint could not be used (damaged, or unrestorable); an older or next-best one was."""


class NoRestorableCheckpointError(RuntimeError):
    """No checkpoint that the request allows can be restored: damaged, or not fitting the model."""


class CheckpointSaveError(RuntimeError):
    """Writing a checkpoint failed (a full disk, a lost filesystem); the run stopped at that step."""


def describe(e: BaseException, limit: int = 300) -> str:
    """`Type: message` on one line, cut at `limit` characters."""
    text = f"{type(e).__name__}: {e}".replace("\n", " ")
    return text if len(text) <= limit else text[:limit] + "..."


# TensorStore reports OS errors in its message: ... Failed writing: "<file>": ... [os_error_code='28']
_OS_ERROR_CODE = re.compile(r"\[os_error_code='(\d+)'\]")
_FILE_IN_MESSAGE = re.compile(r'(?:Failed writing|local file): "([^"]+)"')


def failure_cause(error: BaseException) -> str:
    """The root cause of a failed write in one phrase: the OS error and its file when there is one
    anywhere in the exception's chain (Python's OSError, or TensorStore's error code in the message),
    else the error itself on one line."""
    todo, seen = [error], set()
    while todo:
        e = todo.pop(0)
        if id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno:
            where = f" ({e.filename})" if e.filename else ""
            return f"{e.strerror or os.strerror(e.errno)}{where}"
        code = _OS_ERROR_CODE.search(str(e))
        if code:
            files = _FILE_IN_MESSAGE.findall(str(e))
            return os.strerror(int(code.group(1))) + (f" ({files[-1]})" if files else "")
        todo += [c for c in (e.__cause__, e.__context__) if c is not None]
        todo += list(getattr(e, "exceptions", ()))  # an ExceptionGroup's members
    return describe(error)


def save_failure(what: str, directory: object, last_good: str | None, error: BaseException) -> str:
    """The one line that reports a failed save of `what` ("checkpoint 12") into `directory`."""
    then = "to resume from it" if last_good else "to start again"
    return (
        f"Saving {what} to {directory} failed: {failure_cause(error)}. Last good checkpoint: "
        f"{last_good or 'none'}. Fix the cause (free disk space, ...) and rerun the same command {then}."
    )


@dataclasses.dataclass(frozen=True)
class Failure:
    """Why checkpoint `step` could not be used. `damaged`: True when its manifest says so, False for
    intact files that did not restore, None when there is no manifest to tell."""

    step: int
    reason: str
    damaged: bool | None


def failures_text(failures: list[Failure], *, say_damaged: bool = True) -> str:
    """`step 8 (damaged: <what>); step 4 (<why>)`; without `say_damaged` for a list of damaged ones."""
    return "; ".join(
        f"step {f.step} ({'damaged: ' if f.damaged and say_damaged else ''}{f.reason})" for f in failures
    )


def nothing_usable(directory: object, failures: list[Failure], target: str) -> NoRestorableCheckpointError:
    """The error when no checkpoint could be used: which ones are damaged, which do not fit `target`
    (the model or state they were to be restored into), and what to do."""
    damaged = [f for f in failures if f.damaged]
    unfit = [f for f in failures if f.damaged is False]
    unknown = [f for f in failures if f.damaged is None]
    parts = []
    if damaged:
        parts.append(f"damaged: {failures_text(damaged, say_damaged=False)}")
    if unfit:
        parts.append(f"intact but not fitting {target}: {failures_text(unfit)}")
    if unknown:
        parts.append(
            f"not restorable into {target} (damaged, or written for another model): {failures_text(unknown)}"
        )
    if not failures:
        parts.append("there is none")
    if unfit or unknown:
        advice = (
            "If the model, optimizer or parameter shapes changed since they were written, train in a "
            "new --workdir."
        )
    else:
        advice = "Restore the files from a backup, or train again in a new --workdir."
    return NoRestorableCheckpointError(f"No usable checkpoint in {directory}: {'; '.join(parts)}. {advice}")


class _HeldOrbaxErrors(logging.Filter):
    def __init__(self):
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.ERROR and f"{os.sep}orbax{os.sep}" in record.pathname:
            self.records.append(record)
            return False
        return True


def quiet_orbax_leftovers() -> None:
    """From now on (installed before a save or restore), drops the reports of unraisable exceptions
    that a failed Orbax save or restore leaves behind: the reads and writes TensorStore still had
    under way finish into the event loop Orbax has already closed ("Event loop is closed"), and its
    abandoned coroutines and tasks complain when collected (an unraisable exception, or asyncio's
    "Task exception was never retrieved" log), each with a traceback, once per array, some at
    interpreter exit. The failure itself is reported once, by the caller. Everything the hook needs
    is bound in its closure: module globals may already be gone when it runs at exit."""
    previous = sys.unraisablehook
    if getattr(previous, "quiet_orbax_leftovers", False):
        return
    orbax_path = f"{os.sep}orbax{os.sep}"

    def left_by_orbax(unraisable: Any) -> bool:
        error, code = unraisable.exc_value, getattr(unraisable.object, "cr_code", None)
        if isinstance(error, RuntimeError) and str(error) == "Event loop is closed":
            return True
        if code is not None and orbax_path in code.co_filename:
            return True
        tb = unraisable.exc_traceback
        while tb is not None:
            if orbax_path in tb.tb_frame.f_code.co_filename:
                return True
            tb = tb.tb_next
        return False

    def hook(unraisable: Any) -> None:
        if not left_by_orbax(unraisable):
            previous(unraisable)

    hook.quiet_orbax_leftovers = True
    sys.unraisablehook = hook
    logging.getLogger("asyncio").addFilter(_OrbaxTasksNeverRetrieved())


class _OrbaxTasksNeverRetrieved(logging.Filter):
    """asyncio's "Task (or future) exception was never retrieved" for the array reads of a failed
    Orbax restore, logged when the abandoned tasks are collected."""

    def __init__(self):
        super().__init__()
        self.orbax_path = f"{os.sep}orbax{os.sep}"  # bound here: it may run at interpreter exit

    def filter(self, record: logging.LogRecord) -> bool:
        if self.orbax_path in str(record.getMessage()):
            return False
        tb = record.exc_info[2] if record.exc_info else None
        while tb is not None:
            if self.orbax_path in tb.tb_frame.f_code.co_filename:
                return False
            tb = tb.tb_next
        return True


@contextlib.contextmanager
def orbax_errors_held() -> Iterator[None]:
    """Holds back the ERROR records Orbax logs (from its threads, with tracebacks, once per array)
    while a save runs: dropped if the block raises, so a failed save is reported once, by
    `CheckpointSaveError`; passed on if it succeeds. The stray reports of the writes a failure
    leaves behind are dropped too (`quiet_orbax_leftovers`)."""
    logger, held = logging.getLogger("absl"), _HeldOrbaxErrors()
    logger.addFilter(held)
    quiet_orbax_leftovers()  # before: TensorStore may report into the closed loop at once
    try:
        yield
    except BaseException:
        logger.removeFilter(held)
        raise
    logger.removeFilter(held)
    for record in held.records:
        logger.handle(record)
