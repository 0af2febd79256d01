"""Runs one sweep trial's training process and stops it cleanly when the sweep is gone.

    python -m fer_flax.research.sweep.launcher SWEEP_PID COMMAND...

COMMAND (`python -m fer_flax.main ...`) runs as this process's child. SIGTERM and SIGINT sent here
are passed on to it (the sweep prunes or stops a trial that way). When the sweep process dies,
however it dies (SIGKILL, out of memory), the training process gets one SIGTERM: it finishes its
step, checkpoints and stops, so rerunning the sweep resumes the trial from there instead of
repeating it. One signal, once, since fer_flax.main aborts without a checkpoint on a second one.

Why not Linux's PR_SET_PDEATHSIG on the training process: the kernel sends it when the *thread*
that started the child ends, and again each time the child is handed to another thread of the dying
process, so a multithreaded sweep killed outright can deliver it twice.

Exit status: the command's, or 128 + N when signal N ended it. Standard library only, so the launcher
adds milliseconds and a few megabytes to a trial.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys

POLL_SECONDS = 0.5


def run(sweep_pid: int, command: list[str]) -> int:
    """Runs `command` until it ends; returns its exit status as a shell reports it."""
    child = subprocess.Popen(command)

    def forward(signum, frame) -> None:
        del frame
        child.send_signal(signum)

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, forward)
    orphaned = False
    while True:
        try:
            code = child.wait(timeout=POLL_SECONDS)
            break
        except subprocess.TimeoutExpired:
            if not orphaned and os.getppid() != sweep_pid:  # the sweep died: we were handed on
                orphaned = True
                child.send_signal(signal.SIGTERM)
    return code if code >= 0 else 128 - code


if __name__ == "__main__":
    if len(sys.argv) < 3 or not sys.argv[1].isdigit():
        sys.exit("usage: python -m fer_flax.research.sweep.launcher SWEEP_PID COMMAND...")
    sys.exit(run(int(sys.argv[1]), sys.argv[2:]))
