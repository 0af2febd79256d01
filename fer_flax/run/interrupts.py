"""How training stops early: SIGTERM / SIGINT (finish the current step, checkpoint it, then stop)
and non-finite numbers.

`StopRequest` turns the first signal into a flag the loop checks after each step; the loop then
writes a checkpoint and raises `TrainingInterrupted`, whose `exit_code` (128 + signal number: 143 for
SIGTERM, 130 for SIGINT) tells schedulers and shells that the job was interrupted, not finished.
"""

from __future__ import annotations

import signal
import threading
from typing import Any


class TrainingInterrupted(Exception):
    """SIGTERM/SIGINT stopped training after a checkpoint was written; rerun the command to resume."""

    def __init__(self, signum: int, step: int, checkpoint_dir: str):
        self.signum, self.step, self.checkpoint_dir = signum, step, checkpoint_dir
        name = signal.Signals(signum).name
        super().__init__(
            f"Interrupted by {name} at step {step}; checkpoint written to {checkpoint_dir}/{step}. "
            "Rerun the same command to resume."
        )

    @property
    def exit_code(self) -> int:
        return 128 + self.signum  # the shell's convention: 143 for SIGTERM, 130 for SIGINT


class StopRequest:
    """SIGTERM/SIGINT handlers that ask the loop to stop at the end of the current step.

    A second signal of either kind restores the previous handlers and re-delivers itself, so a
    second Ctrl-C aborts at once. Installed only in the main thread of a single-process run:
    multi-process, JAX's distributed runtime handles SIGTERM (pre-emption) itself."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self, install: bool | None = None):
        """`install`: whether to take over the signals; by default only in the main thread of a
        single-process JAX run (a process that starts no JAX backend, e.g. a sweep, passes True)."""
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}
        self._install = install

    def __enter__(self) -> StopRequest:
        install = self._install
        if install is None:
            import jax  # here, not at the top: the command-line preamble imports this module for --help

            install = jax.process_count() == 1 and threading.current_thread() is threading.main_thread()
        if install:
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        del frame
        if self.signum is None:
            # Only a flag: printing here could re-enter a print the main thread is in the middle of.
            self.signum = signum
            return
        self._restore()
        signal.raise_signal(signum)

    def _restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}

    def __exit__(self, *exc) -> None:
        self._restore()


class NonFiniteError(FloatingPointError):
    """A non-finite loss or gradient (config.nonfinite == "stop"), or a non-finite state to be saved."""
