"""The one command-line preamble: every `python -m fer_flax.<command>` runs its command through
`main_of`, and only the command's own work stays in the command's module.

A command is a module with `define_flags()`, `main(argv)` and `COMMAND`, a `Command` saying what it
needs from the preamble. `python -m fer_flax.main` and the aliases at the top of the package
(`python -m fer_flax.evaluate`, ...) call `main_of("<module>")`, which does, in this order:

1. Flags: the command's (`define_flags()`), `--debug`, and for a command that joins multi-process jobs
   `--coordinator_address`, `--num_processes` and `--process_id`.
2. Help: `--help` (`-?`, `--helpshort`) prints the command's docstring and its flags and exits with
   status 0, before any flag is parsed, config file loaded or JAX started; `--helpfull` adds every
   library's flags.
3. argv: an unknown flag, a bad flag value, a missing required flag or an override of a config key
   that does not exist, and positional arguments given to a command that takes none, each print one
   `error: ...` line (and where to find help) and exit with status 1.
4. Verbosity: unless -v/--verbosity is given, absl logging (JAX's notes on its backends, Orbax's on
   every checkpoint it opens or writes) is hidden below the command's `log_level`, so the console
   holds the command's progress and results.
5. Start-up, for a command that runs JAX: `runtime.start` (process-wide CPU settings, joining a
   multi-process job, the CPU device split of `--config` where the command trains), and
   `runtime.shutdown` after a clean finish only (the shutdown barrier waits for every process, and one
   that failed never arrives).
6. Errors, around start-up and the command's work:

A user's mistake or a bad day on the machine (a config value or key that does not exist, a bad data
row, a missing path, an incompatible or busy workdir, damaged checkpoints, a full disk) is an
expected error: the command prints one clear message, `error: ...`, and exits with status 1, without
a traceback. `--debug` shows the traceback as well. Anything else (a bug) keeps its traceback.

Expected are `ValueError` (which includes `ConfigError`, `FERDataError`, `IncompatibleWorkdirError`
and the command-line checks), `OSError` (missing paths, unwritable folders, a full disk), the
project's own run-stopping errors listed in `EXPECTED_ERRORS`, and those a command adds in its
`Command.expected_errors` (a missing optional dependency, no camera). The project raises these with
messages that say what, where and what to do; a library's `ValueError` deep inside a computation
would come out as one line too, which `--debug` then expands. Training stopped by SIGTERM or Ctrl-C
(`TrainingInterrupted`, after its checkpoint and message) exits with 128 + the signal's number.

In a multi-process job, a process that stops with an error tells the others first, which then stop
with one line pointing at its output; a lost process (killed, crashed, stopped, cut off) ends the
others with one line naming it (`fer_flax.core.liveness`); an unexpected error (a collective whose
peer is gone) waits for that verdict before its traceback. Every process that did not finish leaves
through `runtime.end`, without the shutdown barrier, with status 1 (130/143 when interrupted).

Warnings of this project (a checkpoint skipped as damaged, a workdir that cannot be locked) print as
`warning: ...` without Python's source-line decoration.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import inspect
import sys
import traceback
import warnings
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import Any, Literal, NoReturn

from absl import app, flags, logging

from fer_flax.run.checkpoint_errors import CheckpointSaveError, NoRestorableCheckpointError
from fer_flax.run.interrupts import TrainingInterrupted
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
_HELP_FLAGS = ("--help", "-help", "-?", "--helpshort", "-helpshort")
_HELPFULL_FLAGS = ("--helpfull", "-helpfull")
_SEE_HELP = "Pass --help to see the command's usage and flags."


@dataclasses.dataclass(frozen=True)
class Command:
    """What a command needs from the preamble; its module declares it as `COMMAND`.

    arguments: whether it takes positional arguments (files, workdirs); a command without any refuses
      them. Whether some are required is the command's to say (`app.UsageError` from its `main`).
    start_jax: whether the process starts up for JAX (`runtime.start`, `runtime.shutdown`).
    cpu_devices_from_config: at start-up, split the host CPU into the `cpu_devices` JAX devices of the
      command's `--config` (the commands that train, so that they run on the devices training expects).
    multi_process: define the flags that join a multi-process job and pass them to the start-up.
    log_level: absl's level below which log lines are hidden unless -v/--verbosity is given.
    expected_errors: errors that print one `error: ...` line besides `EXPECTED_ERRORS`.
    """

    arguments: bool = False
    start_jax: bool = True
    cpu_devices_from_config: bool = False
    multi_process: bool = False
    log_level: Literal["warning", "error"] = "warning"
    expected_errors: tuple[type[BaseException], ...] = ()


def main_of(module_name: str) -> None:
    """Runs the command that module `module_name` defines through the preamble (the module docstring
    lists what it does). The `python -m fer_flax.<command>` modules call this, so each command has one
    entry and the command modules carry no start-up of their own."""
    module = importlib.import_module(module_name)
    command: Command = module.COMMAND
    module.define_flags()
    _define_debug_flag()
    if command.multi_process:
        _define_multi_process_flags()
    warnings.formatwarning = _format_warning
    app.run(
        functools.partial(_run_main, command, module.main),
        flags_parser=functools.partial(_parse_flags, module),
    )


def _define_debug_flag() -> None:
    flags.DEFINE_bool("debug", False, "Show the Python traceback of expected errors too.")


def _define_multi_process_flags() -> None:
    flags.DEFINE_string(
        "coordinator_address", None, "Multi-process: HOST:PORT of process 0 (env FER_FLAX_COORDINATOR)."
    )
    flags.DEFINE_integer(
        "num_processes", None, "Multi-process: number of processes (env FER_FLAX_NUM_PROCESSES)."
    )
    flags.DEFINE_integer(
        "process_id",
        None,
        "Multi-process: this process's id in [0, num_processes) (env FER_FLAX_PROCESS_ID).",
    )


# ------------------------------------------------------------------------------------ help and argv


def _help_requested(argv: Sequence[str]) -> Literal["short", "full"] | None:
    """Which help the command line asks for (flags after `--` are positional arguments)."""
    args = list(argv[1:])
    if "--" in args:
        args = args[: args.index("--")]
    if any(a in _HELPFULL_FLAGS for a in args):
        return "full"
    if any(a in _HELP_FLAGS for a in args):
        return "short"
    return None


def _print_help(module: ModuleType, which: Literal["short", "full"]) -> NoReturn:
    """The command's docstring (its usage) and its flags, the preamble's included; with `full`, every
    flag of every library as well."""
    usage = inspect.cleandoc(module.__doc__ or f"python -m {module.__name__} [flags]")
    if which == "full":
        listing = flags.FLAGS.get_help()
        tail = ""
    else:
        sections = (flags.FLAGS.module_help(name) for name in (module.__name__, __name__))
        listing = "\n".join(s.strip().split("\n", 1)[1] for s in sections if s.strip())
        tail = "\n\n--helpfull also lists the flags of absl and the libraries (JAX, Orbax, ...)."
    print(f"{usage}\n\nflags:\n{listing}{tail}")
    sys.exit(0)


def _debug_requested(argv: Sequence[str]) -> bool:
    return any(a in ("--debug", "--debug=true", "--debug=True", "--debug=1") for a in argv)


def _without_traceback(message: str) -> str:
    """A flag error on one line: absl's errors about several flags, one line each, joined; one whose
    message embeds a traceback (a config file that raised), the text before it and the exception's
    last line."""
    if _TRACEBACK_START not in message:
        return " ".join(message.split())
    before, _, trace = message.partition(_TRACEBACK_START)
    last = [line.strip() for line in trace.strip().splitlines() if line.strip()][-1]
    return f"{' '.join(before.split())} {last}"


def _parse_flags(module: ModuleType, argv: list[str]) -> list[str]:
    which = _help_requested(argv)
    if which:
        _print_help(module, which)
    try:
        return flags.FLAGS(argv)
    except flags.Error as e:
        if _debug_requested(argv):
            raise
        sys.exit(f"error: {_without_traceback(str(e))}\n{_SEE_HELP}")
    except (AttributeError, KeyError) as e:  # ml_collections: an override of an undeclared key
        if _debug_requested(argv):
            raise
        sys.exit(f"error: {unknown_key_message(e, argv)}")


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


# ------------------------------------------------------------------------------------ running main


def fail(error: BaseException) -> NoReturn:
    """Exits with `error: <message>` (status 1), or shows `error`'s traceback under --debug. Call it
    from an `except` block."""
    from fer_flax import runtime  # imports JAX, which --help and commands without JAX never need

    if _debug():
        _raise(error)
    runtime.end(f"error: {error}")


def _debug() -> bool:
    return "debug" in flags.FLAGS and flags.FLAGS.is_parsed() and flags.FLAGS.debug


def _raise(error: BaseException) -> NoReturn:
    """Re-raises `error`; in a multi-process job, prints its traceback and ends (`runtime.end`)."""
    from fer_flax import runtime  # imports JAX, which --help and commands without JAX never need

    if runtime.in_job():
        traceback.print_exception(error)
        runtime.end(1)
    raise error


def _format_warning(message, category, filename, lineno, line=None) -> str:
    if category.__module__.startswith("fer_flax"):
        return f"warning: {message}\n"
    return _default_format_warning(message, category, filename, lineno, line)


_default_format_warning = warnings.formatwarning


def _start(command: Command) -> None:
    from fer_flax import runtime  # imports JAX, which --help and commands without JAX never need

    f = flags.FLAGS
    distributed = {}
    if command.multi_process:
        distributed = dict(
            coordinator_address=f.coordinator_address, num_processes=f.num_processes, process_id=f.process_id
        )
    runtime.start(f.config if command.cpu_devices_from_config else None, **distributed)


def _run_main(command: Command, main: Callable[[list[str]], Any], argv: list[str]) -> Any:
    """Steps 3 to 6 of the module docstring, around `main(argv)`, once the flags are parsed."""
    if len(argv) > 1 and not command.arguments:
        unexpected = " ".join(argv[1:])
        sys.exit(f"error: unexpected arguments: {unexpected} (the command takes flags only)\n{_SEE_HELP}")
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(command.log_level)
    try:
        if command.start_jax:
            _start(command)
        result = main(argv)
    except Exception as e:
        _stopped(command, e)
        raise  # a bug: its traceback, as it came
    if command.start_jax:
        from fer_flax import runtime

        runtime.shutdown()
    return result


def _stopped(command: Command, error: Exception) -> None:
    """Ends a command that raised `error` (step 6), or returns for an unexpected error outside a
    multi-process job, which then propagates. In a job the other processes hear of it first, and a
    lost one is what gets reported (`runtime.settle_after_error`); every way out goes through
    `runtime.end`, which skips the shutdown barrier that a job that did not finish would wait at
    forever."""
    from fer_flax import runtime  # imports JAX, which --help and commands without JAX never need

    if isinstance(error, TrainingInterrupted):
        # SIGTERM/SIGINT: a checkpoint is written and the message printed; exit 128 + signal number
        # (143 / 130) so schedulers and shells see an interrupted job, not a finished one.
        runtime.end(error.exit_code)
    failed_peer = runtime.settle_after_error()
    if isinstance(error, app.UsageError):  # the command's own check of its arguments
        runtime.end(f"error: {error}\n{_SEE_HELP}")
    if isinstance(error, (*EXPECTED_ERRORS, *command.expected_errors)):
        fail(error)
    if failed_peer and not _debug():
        # Another process failed first: this error (a collective that lost its peer) follows from it.
        runtime.end(f"error: {failed_peer}")
    if runtime.in_job():
        _raise(error)
