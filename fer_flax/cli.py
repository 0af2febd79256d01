"""How every command-line entry point runs: `cli.run(main)` in place of absl's `app.run(main)`.

A user's mistake or a bad day on the machine (a config value or key that does not exist, a bad data
row, a missing path, an incompatible or busy workdir, damaged checkpoints, a full disk) is an
expected error: the command prints one clear message, `error: ...`, and exits with status 1, without
a traceback. `--debug` shows the traceback as well. Anything else (a bug) keeps its traceback.

Expected are `ValueError` (which includes `ConfigError`, `FERDataError`, `IncompatibleWorkdirError`
and the command-line checks), `OSError` (missing paths, unwritable folders, a full disk), and the
project's own run-stopping errors listed in `EXPECTED_ERRORS`. The project raises these with messages
that say what, where and what to do; a library's `ValueError` deep inside a computation would come
out as one line too, which `--debug` then expands.

Warnings of this project (a checkpoint skipped as damaged, a workdir that cannot be locked) print as
`warning: ...` without Python's source-line decoration.
"""

from __future__ import annotations

import functools
import importlib
import sys
import warnings
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from absl import app, flags

from fer_flax.run.checkpoint_errors import CheckpointSaveError, NoRestorableCheckpointError
from fer_flax.run.lock import WorkdirLockedError

# NonFiniteError is a FloatingPointError (an ArithmeticError): named here by its base, so that this
# module needs nothing from the training side.
EXPECTED_ERRORS: tuple[type[BaseException], ...] = (
    ValueError,
    OSError,
    NoRestorableCheckpointError,
    CheckpointSaveError,
    WorkdirLockedError,
    FloatingPointError,
)
_TRACEBACK_START = "Traceback (most recent call last):"


def define_debug_flag() -> None:
    """`--debug` (defined once, whichever entry point asks first)."""
    if "debug" not in flags.FLAGS:
        flags.DEFINE_bool("debug", False, "Show the Python traceback of expected errors too.")


def _debug_requested(argv: Sequence[str]) -> bool:
    return any(a in ("--debug", "--debug=true", "--debug=True", "--debug=1") for a in argv)


def fail(error: BaseException) -> NoReturn:
    """Exits with `error: <message>` (status 1), or re-raises `error` under --debug. Call it from an
    `except` block."""
    if "debug" in flags.FLAGS and flags.FLAGS.is_parsed() and flags.FLAGS.debug:
        raise error
    sys.exit(f"error: {error}")


def unknown_key_message(error: BaseException, argv: Sequence[str]) -> str:
    """ml_collections' error for an override of a key the config does not declare (a KeyError, or an
    AttributeError wrapping one, whose text is `'key'` plus a did-you-mean line), as one sentence
    naming the flag."""
    key_error = error if isinstance(error, KeyError) else (error.args or [None])[0]
    text = str(key_error.args[0]) if isinstance(key_error, KeyError) and key_error.args else str(error)
    first, _, hint = text.partition("\n")
    key = first.strip().strip("'\"")
    suggestion = hint.split('"')[1] if hint.count('"') >= 2 else None
    for arg in argv:
        name = arg.split("=", 1)[0]
        flag, _, path = name.lstrip("-").partition(".")
        parts = path.split(".")
        if arg.startswith("--") and key in parts:
            where = ".".join(parts[: parts.index(key) + 1])
            message = f"{name}: the config has no key {where!r}"
            if suggestion:
                message += f" (did you mean --{flag}.{where[: -len(key)]}{suggestion}?)"
            return message + ". Every key is declared in fer_flax/config/defaults.py (see docs/configs.md)."
    return f"the config has no key {key!r}" + (f" (did you mean {suggestion!r}?)" if suggestion else "")


def _without_traceback(message: str) -> str:
    """A flag error whose message embeds a traceback (a config file that raised): the text before
    it and the exception's last line."""
    if _TRACEBACK_START not in message:
        return message.strip()
    before, _, trace = message.partition(_TRACEBACK_START)
    last = [line.strip() for line in trace.strip().splitlines() if line.strip()][-1]
    return f"{' '.join(before.split())} {last}"


def _parse_flags(argv: list[str]) -> list[str]:
    try:
        return flags.FLAGS(argv)
    except flags.Error as e:
        if _debug_requested(argv):
            raise
        sys.exit(f"error: {_without_traceback(str(e))}\nPass --helpshort or --helpfull to see help on flags.")
    except (AttributeError, KeyError) as e:  # ml_collections: an override of an undeclared key
        if _debug_requested(argv):
            raise
        sys.exit(f"error: {unknown_key_message(e, argv)}")


def _format_warning(message, category, filename, lineno, line=None) -> str:
    if category.__module__.startswith("fer_flax"):
        return f"warning: {message}\n"
    return _default_format_warning(message, category, filename, lineno, line)


_default_format_warning = warnings.formatwarning


def _main_with_expected_errors(main: Callable[[list[str]], Any], argv: list[str]) -> Any:
    try:
        return main(argv)
    except EXPECTED_ERRORS as e:
        fail(e)


def run(main: Callable[[list[str]], Any]) -> None:
    """`app.run(main)` with `--debug`, expected errors as one message, unknown config keys named
    clearly, and this project's warnings as `warning: ...` lines."""
    define_debug_flag()
    warnings.formatwarning = _format_warning
    app.run(functools.partial(_main_with_expected_errors, main), flags_parser=_parse_flags)


def main_of(module_name: str) -> None:
    """Runs the command `module_name` defines under `run`: its `define_flags()` when it has one, then
    its `main`. The `python -m fer_flax.<command>` modules at the top of the package call this, so
    each command has one entry and the library modules carry no `__main__` block."""
    module = importlib.import_module(module_name)
    if hasattr(module, "define_flags"):
        module.define_flags()
    run(module.main)
