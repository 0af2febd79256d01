"""The coordination service of a multi-process job, in a small process of its own beside process 0.

Why: JAX runs the coordination service (the job's registry, key-value store and barriers) inside
process 0. When that process dies, every other process's JAX client loses its connection to the
service within a second and aborts with a native stack dump, before anything in Python can say which
process was lost or what to do. Served from a separate process that outlives process 0 for a while,
the service stays up when process 0 is killed, and the liveness watch of the others
(`fer_flax.core.liveness`) ends them with one clear line instead.

    python -m fer_flax.core.coordinator BIND_ADDRESS NUM_PROCESSES HEARTBEAT_TIMEOUT_S LINGER_S

`start` runs that from process 0 (which then joins the job as a client like any other process). The
service process reports `ready` (or `error: <why>`, or `unsupported: <why>` for a jaxlib whose service
API differs) on stdout, then waits on its stdin: a `stop` line (process 0 finished, after JAX's
shutdown barrier) shuts the service down at once; the end of stdin without it (process 0 died) keeps
the service up while any other process is still connected, for at most LINGER_S seconds (long
enough for their liveness watch to end them), then exits. It ignores SIGINT and SIGTERM, which a
terminal or a scheduler sends to the whole process group: process 0 ending, however it ends, is what
ends it.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import signal
import socket
import subprocess
import sys
import time
from typing import IO

_READY = "ready"
_STOP = "stop"
_UNSUPPORTED = "unsupported:"
# How long process 0 waits for the service process to start (a Python start-up and jaxlib's import).
_START_TIMEOUT_S = 120.0


class Unsupported(RuntimeError):
    """This jaxlib's coordination service cannot be started on its own (its API differs)."""


class Coordinator:
    """Process 0's handle on the service process: `stop()` after JAX's shutdown barrier."""

    def __init__(self, process: subprocess.Popen) -> None:
        self._process = process

    def stop(self) -> None:
        """Shuts the service down (every process has passed JAX's shutdown barrier) and waits for it."""
        try:
            self._process.stdin.write(f"{_STOP}\n")
            self._process.stdin.close()
        except OSError:  # already gone
            pass
        try:
            self._process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()


def port_in_use(address: str) -> bool:
    """Whether something already accepts connections on HOST:PORT (a previous run's lingering service:
    gRPC servers share ports, so a second service would start without an error and split the job)."""
    host, _, port = address.rpartition(":")
    host = host.strip("[]")
    if host in ("", "::", "0.0.0.0"):
        host = "127.0.0.1"
    try:
        with socket.create_connection((host, int(port)), timeout=1.0):
            return True
    except OSError:
        return False


def start(bind_address: str, num_processes: int, heartbeat_timeout_s: int, linger_s: float) -> Coordinator:
    """Starts the service process on `bind_address` and returns once it serves. Raises OSError when the
    port is taken (after waiting up to `linger_s` for a previous run's service to end) or the service
    cannot start."""
    deadline = time.monotonic() + linger_s
    while port_in_use(bind_address):
        if time.monotonic() > deadline:
            raise OSError(
                f"the coordinator address {bind_address} is in use by another program; stop it, or choose "
                "another port with --coordinator_address on every host"
            )
        time.sleep(0.5)
    arguments = [bind_address, *map(str, (num_processes, heartbeat_timeout_s, linger_s))]
    process = subprocess.Popen(
        [sys.executable, "-m", __name__, *arguments],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,  # the service's own log lines would interleave with process 0's
        text=True,
    )
    line = _read_line(process.stdout, _START_TIMEOUT_S)
    if line == _READY:
        return Coordinator(process)
    process.kill()
    process.wait()
    if line.startswith(_UNSUPPORTED):
        raise Unsupported(f"this jaxlib cannot serve the coordination service on its own ({line})")
    why = line.removeprefix("error: ") if line else "it did not start"
    raise OSError(f"cannot start the coordination service on {bind_address}: {why}")


def _read_line(stream: IO[str], timeout_s: float) -> str:
    """The first line of `stream`, or "" after `timeout_s` or at its end."""
    with selectors.DefaultSelector() as selector:
        selector.register(stream, selectors.EVENT_READ)
        if not selector.select(timeout_s):
            return ""
    return stream.readline().strip()


def _serve(bind_address: str, num_processes: int, heartbeat_timeout_s: int, linger_s: float) -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        try:
            from jaxlib import _jax
        except ImportError:  # a jaxlib that keeps it elsewhere: where jax.distributed finds it
            from jax._src.lib import _jax
        start_service = _jax.get_distributed_runtime_service
    except (ImportError, AttributeError) as e:
        print(f"{_UNSUPPORTED} {type(e).__name__}: {e}", flush=True)
        return 1
    try:
        service = start_service(
            bind_address,
            num_processes,
            heartbeat_timeout=heartbeat_timeout_s,
            shutdown_timeout=max(300, heartbeat_timeout_s),
        )
    except TypeError as e:  # other parameters than jax.distributed passes in JAX 0.10
        print(f"{_UNSUPPORTED} {type(e).__name__}: {e}", flush=True)
        return 1
    except Exception as e:  # reported to process 0, which raises it
        print(f"error: {type(e).__name__}: {' '.join(str(e).split())}", flush=True)
        return 1
    print(_READY, flush=True)
    if sys.stdin.readline().strip() == _STOP:
        service.shutdown()
        return 0
    # Process 0 is gone: stay up until the others' liveness watch has ended them (they would abort on
    # losing the service): until none is connected any more, or at most `linger_s`. Then leave
    # without the service's shutdown, which would wait for them.
    deadline = time.monotonic() + linger_s
    while time.monotonic() < deadline and _connections() != 0:
        time.sleep(0.2)
    os._exit(0)


def _connections() -> int | None:
    """How many TCP connections this process has established (the job's processes that are still
    connected), from Linux's /proc; None where that cannot be read."""
    try:
        inodes = set()
        for fd in os.listdir("/proc/self/fd"):
            with contextlib.suppress(OSError):  # closed meanwhile
                target = os.readlink(f"/proc/self/fd/{fd}")
                if target.startswith("socket:["):
                    inodes.add(target[len("socket:[") : -1])
        count = 0
        for table in ("/proc/net/tcp", "/proc/net/tcp6"):
            with open(table) as rows:
                next(rows)  # the header
                # Columns: sl, local, remote, state (01: established), ..., inode (the 10th).
                count += sum(1 for row in rows if (f := row.split())[3] == "01" and f[9] in inodes)
        return count
    except (OSError, IndexError, StopIteration):
        return None


if __name__ == "__main__":
    address, count, heartbeat, linger = sys.argv[1:5]
    sys.exit(_serve(address, int(count), int(heartbeat), float(linger)))
