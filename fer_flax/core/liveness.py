"""The watch over the other processes of a multi-process job: losing one ends the job with one line.

Why: when a process of a JAX job is killed, crashes, freezes (SIGSTOP, a hung host) or is cut off,
JAX's coordination service notices only after its heartbeat timeout (100 s by default) and then
aborts every other process with a native stack dump and no word about what to do; until then, a
process blocked in a collective with the lost one just waits.

How: every process publishes a heartbeat, a counter, in the coordination service's key-value store
every `beat_interval_s` seconds from a daemon thread, and reads everyone else's. A peer whose counter
has not moved for the host timeout (`FER_FLAX_HOST_TIMEOUT` seconds, default 60), or a coordination
service that has not answered for as long, ends this process: a second daemon thread prints one
`error: ...` line naming the lost process (its id, host and PID) and how to resume, and exits with
status 1 through `os._exit`. That works while the main thread is blocked inside a collective, and it
skips JAX's exit-time shutdown barrier, which the lost process would never reach. JAX's own heartbeat
timeout is set well above the host timeout (`jax_heartbeat_timeout_s`), so this watch speaks first;
a survivor prints its line at most `detection_bound_s` (1.2 x the host timeout) after the lost
process's last heartbeat.

Besides `alive`, a process publishes `done` once its work is finished (before JAX's shutdown barrier,
where it may wait for slower peers: they stop watching it), `failed` when it stops with an error of
its own (`settle_after_error`), and `ended` with its line when this watch ends it. The others then
stop at once, instead of waiting for the timeout: after a failed process with a line that points at
its output, after an ended one with the same line as it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import socket
import sys
import threading
import time
import warnings
from collections.abc import Mapping
from typing import Any

ENV_HOST_TIMEOUT = "FER_FLAX_HOST_TIMEOUT"
DEFAULT_HOST_TIMEOUT_S = 60.0
RELAUNCH = "Rerun the same command on every host; the run resumes from its last checkpoint."
_PREFIX = "fer_flax/liveness/"
ALIVE, DONE, FAILED, ENDED = "alive", "done", "failed", "ended"
# New beats from a peer that prove it alive after this process's error (`settle_after_error`).
_PROOF_BEATS = 3


class LivenessWarning(UserWarning):
    """A multi-process job runs without (part of) the watch: a lost process may abort the others."""


def warn_unwatched(reason: str) -> None:
    warnings.warn(
        f"{reason}; losing a process of this job may abort the others after JAX's heartbeat timeout, "
        "with a native stack dump instead of one error line",
        LivenessWarning,
        stacklevel=2,
    )


def host_timeout_s(env: Mapping[str, str] | None = None) -> float:
    """The host timeout in seconds: `FER_FLAX_HOST_TIMEOUT`, else `DEFAULT_HOST_TIMEOUT_S`."""
    env = os.environ if env is None else env
    text = env.get(ENV_HOST_TIMEOUT, "").strip()
    if not text:
        return DEFAULT_HOST_TIMEOUT_S
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{ENV_HOST_TIMEOUT} must be a positive number of seconds, got {text!r}")
    return value


def beat_interval_s(timeout_s: float) -> float:
    """How often a process beats and reads the others' beats: a tenth of the timeout, at most 2 s."""
    return min(timeout_s / 10, 2.0)


def detection_bound_s(timeout_s: float) -> float:
    """The longest a survivor runs on after a lost process's last heartbeat: the timeout, plus a beat
    for the last heartbeat to be read and one for the judgement."""
    return timeout_s + 2 * beat_interval_s(timeout_s)


def jax_heartbeat_timeout_s(timeout_s: float) -> int:
    """JAX's coordination-service heartbeat timeout for a host timeout: twice it plus 10 s, so that
    this watch ends a survivor cleanly long before the service would abort it."""
    return math.ceil(2 * timeout_s + 10)


@dataclasses.dataclass
class _Peer:
    """What this process knows of another: its last heartbeat, when that last changed (this process's
    monotonic clock), how many times it changed, and who it is (`host H, PID P`, once read)."""

    beat: str
    changed_at: float
    changes: int = 0
    who: str = "host and PID unknown"

    @property
    def state(self) -> str:
        return self.beat.split(" ", 1)[0]

    @property
    def ended_line(self) -> str:
        """For a peer that ended: the line it ended with (`ended <beat> <line>`)."""
        return self.beat.split(" ", 2)[-1]


class PeerWatch:
    """The two threads of one process's watch (module docstring); `client` is JAX's distributed
    runtime client (its key-value store)."""

    def __init__(
        self, client: Any, process_id: int, num_processes: int, timeout_s: float, coordinator: str
    ) -> None:
        self._client = client
        self._me = process_id
        self._n = num_processes
        self._timeout = timeout_s
        self._interval = beat_interval_s(timeout_s)
        self._coordinator = coordinator
        self._lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._stop = threading.Event()
        self._state = ALIVE
        self._end_line = ""
        self._published = ""
        self._beats = 0
        now = time.monotonic()
        self._last_contact = now
        self._peers = {i: _Peer("", now) for i in range(num_processes) if i != process_id}
        self._threads = [
            threading.Thread(target=self._beat_loop, name="fer_flax-liveness-beat", daemon=True),
            threading.Thread(target=self._judge_loop, name="fer_flax-liveness-judge", daemon=True),
        ]

    @classmethod
    def start_or_warn(
        cls, client: Any, process_id: int, num_processes: int, timeout_s: float, coordinator: str
    ) -> PeerWatch | None:
        """A started watch, or None with a warning when this JAX's key-value store does not take its
        first heartbeat (an API that differs: better no watch than one that declares everyone lost)."""
        watch = cls(client, process_id, num_processes, timeout_s, coordinator)
        try:
            watch._exchange()
        except Exception as e:
            warn_unwatched(f"no liveness watch ({type(e).__name__}: {e})")
            return None
        for thread in watch._threads:
            thread.start()
        return watch

    def finish(self) -> None:
        """This process's work is done: peers stop watching it; it keeps watching them until `close`
        (through JAX's shutdown barrier, which a lost peer would never reach)."""
        self._set_state(DONE)

    def close(self) -> None:
        """Stops both threads (after JAX's shutdown, when nobody is left to watch)."""
        self._stop.set()

    def settle_after_error(self) -> str | None:
        """This process stops with an error: publishes `failed`, then waits until every peer has
        finished, failed or beaten `_PROOF_BEATS` times since (alive: one new beat could have been
        written before the error and read after it). A peer lost meanwhile ends this process here
        with the lost line, as its loss, not this error, is what the user has to act on. Returns the
        line for a peer that failed (the first by id), else None."""
        self._set_state(FAILED)
        with self._lock:
            seen = {i: p.changes for i, p in self._peers.items()}
        deadline = time.monotonic() + self._timeout + (_PROOF_BEATS + 2) * self._interval
        while time.monotonic() < deadline and not self._stop.is_set():
            with self._lock:
                settled = self._published == FAILED and all(
                    p.state in (DONE, FAILED, ENDED) or p.changes >= seen[i] + _PROOF_BEATS
                    for i, p in self._peers.items()
                )
                failed = [i for i, p in self._peers.items() if p.state == FAILED]
            if settled:
                return self._failed_line(failed[0]) if failed else None
            time.sleep(self._interval / 4)
        return None

    # ------------------------------------------------------------------------------------ threads

    def _set_state(self, state: str) -> None:
        with self._lock:
            self._state = state

    def _beat_loop(self) -> None:
        while not self._stop.is_set():
            # The store unreachable: the judge counts the silence.
            with contextlib.suppress(Exception):
                self._exchange()
            self._stop.wait(self._interval)

    def _exchange(self) -> None:
        """One heartbeat: publish ours (and, the first time, who we are), read everyone's."""
        if self._beats == 0:
            who = f"host {socket.gethostname()}, PID {os.getpid()}"
            self._client.key_value_set(f"{_PREFIX}who/{self._me}", who, allow_overwrite=True)
        state = self._write_beat()
        entries = self._client.key_value_dir_get(_PREFIX)
        now = time.monotonic()
        with self._lock:
            self._published = state
            self._last_contact = now
            for key, value in entries:
                kind, _, index = key[len(_PREFIX) :].partition("/")
                peer = self._peers.get(int(index)) if index.isdigit() else None
                if peer is None:
                    continue
                if kind == "who":
                    peer.who = value
                elif kind == "beat" and value != peer.beat:
                    peer.beat, peer.changed_at, peer.changes = value, now, peer.changes + 1

    def _judge_loop(self) -> None:
        while not self._stop.wait(self._interval):
            line = self._verdict(time.monotonic())
            if line is not None:
                self._end(line)

    def _verdict(self, now: float) -> str | None:
        """The line that ends this process, or None while every peer is accounted for."""
        with self._lock:
            if now - self._last_contact > self._timeout:
                who = self._peers[0].who if 0 in self._peers else "this process"
                return (
                    f"lost contact with the coordination service at {self._coordinator} (process 0 of "
                    f"{self._n}, {who}): no answer for {self._timeout:g} s; the job cannot go on without "
                    f"it. {RELAUNCH}"
                )
            for i, peer in self._peers.items():
                if peer.state == FAILED and self._state != FAILED:
                    return self._failed_line(i)
                if peer.state == ENDED and self._state != FAILED:
                    return peer.ended_line
                if peer.state not in (DONE, FAILED, ENDED) and now - peer.changed_at > self._timeout:
                    return (
                        f"lost process {i} of {self._n} ({peer.who}): no heartbeat from it for "
                        f"{self._timeout:g} s (killed, crashed, stopped or cut off); the job cannot go on "
                        f"without it. {RELAUNCH}"
                    )
        return None

    def _failed_line(self, i: int) -> str:
        return (
            f"process {i} of {self._n} ({self._peers[i].who}) stopped with an error (see its output); the "
            "job cannot go on without it. Fix what it reports, then rerun the same command on every host; "
            "the run resumes from its last checkpoint."
        )

    def _end(self, line: str) -> None:
        """Prints `error: <line>` and ends the process with status 1 at once (module docstring). The
        others hear of it first (`ended`, with the line): those still running end with the same line
        at once, and one that stops with an error of its own does not take this one for lost."""
        if self._stop.is_set():
            return
        self._stop.set()
        publish = threading.Thread(target=self._publish_end, args=(line,), daemon=True)
        publish.start()
        publish.join(1.0)  # an unreachable store: the others find out through the silence
        flush_output(timeout_s=1.0)
        # Straight to the file descriptor: no stream lock that a blocked thread could hold.
        os.write(2, f"error: {line}\n".encode())
        os._exit(1)

    def _write_beat(self) -> str:
        """Publishes this process's state with a new beat number; returns the state. One writer at a
        time, each reading the state as it writes, so the last write has the latest state (`ended`
        is never overwritten by a beat that had started before)."""
        with self._write_lock:
            with self._lock:
                state, line = self._state, self._end_line
            self._beats += 1
            beat = f"{state} {self._beats}" + (f" {line}" if state == ENDED else "")
            self._client.key_value_set(f"{_PREFIX}beat/{self._me}", beat, allow_overwrite=True)
            return state

    def _publish_end(self, line: str) -> None:
        with self._lock:
            self._state, self._end_line = ENDED, line
        with contextlib.suppress(Exception):
            self._write_beat()


def flush_output(timeout_s: float) -> None:
    """Flushes stdout and stderr, giving up after `timeout_s`: a thread blocked inside a write (a full
    pipe) holds its stream's lock, and a process on its way out must not wait on it forever."""

    def flush() -> None:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(OSError, ValueError):  # closed or broken: nothing to write
                stream.flush()

    flusher = threading.Thread(target=flush, name="fer_flax-flush", daemon=True)
    flusher.start()
    flusher.join(timeout_s)
