"""The liveness watch's judgement, step by step over an in-memory key-value store (no threads, so no
verdict can end the test process); tests/training/test_lost_host.py runs the real thing."""

import os
import socket
import time

import pytest

from fer_flax.core import liveness


class Store:
    """The two calls the watch makes on JAX's distributed runtime client."""

    def __init__(self) -> None:
        self.values: dict[str, str] = {}

    def key_value_set(self, key: str, value: str, allow_overwrite: bool = False) -> None:
        assert allow_overwrite or key not in self.values
        self.values[key] = value

    def key_value_dir_get(self, prefix: str) -> list[tuple[str, str]]:
        return sorted((k, v) for k, v in self.values.items() if k.startswith(prefix))


TIMEOUT_S = 2.0


def _job(n: int = 2) -> list[liveness.PeerWatch]:
    store = Store()
    watches = [liveness.PeerWatch(store, i, n, TIMEOUT_S, "127.0.0.1:1234") for i in range(n)]
    for _ in range(2):  # everyone has beaten, and read everyone's beat
        for w in watches:
            w._exchange()
    return watches


def test_host_timeout_from_the_environment():
    assert liveness.host_timeout_s({}) == liveness.DEFAULT_HOST_TIMEOUT_S == 60
    assert liveness.host_timeout_s({liveness.ENV_HOST_TIMEOUT: "2.5"}) == 2.5
    for bad in ("0", "-1", "soon", "nan", "inf"):
        with pytest.raises(ValueError, match=liveness.ENV_HOST_TIMEOUT):
            liveness.host_timeout_s({liveness.ENV_HOST_TIMEOUT: bad})


def test_bounds_leave_jax_far_behind():
    assert liveness.detection_bound_s(3) == pytest.approx(3.6)
    assert liveness.detection_bound_s(60) == pytest.approx(64)
    for timeout in (1, 3, 60, 600):
        assert liveness.jax_heartbeat_timeout_s(timeout) > liveness.detection_bound_s(timeout) + 5


def test_a_silent_peer_is_lost_and_named():
    first, _ = _job()
    now = time.monotonic()
    assert first._verdict(now) is None
    first._last_contact = now + TIMEOUT_S  # the store still answers; process 1 no longer beats
    line = first._verdict(now + TIMEOUT_S + 0.1)
    # Both "processes" are this one: process 1's host and PID are this test's.
    assert line.startswith(f"lost process 1 of 2 (host {socket.gethostname()}, PID {os.getpid()}): ")
    assert line.endswith(liveness.RELAUNCH)


def test_a_peer_that_finished_is_not_lost():
    first, second = _job()
    second.finish()
    second._exchange()
    first._exchange()
    first._last_contact = time.monotonic() + 10 * TIMEOUT_S
    assert first._verdict(time.monotonic() + 10 * TIMEOUT_S) is None


def test_a_peer_that_failed_ends_the_others_at_once():
    first, second, third = _job(3)
    second._set_state(liveness.FAILED)
    second._exchange()
    first._exchange()
    line = first._verdict(time.monotonic())
    assert line.startswith("process 1 of 3 (host ") and "stopped with an error (see its output)" in line
    # A process that failed itself does not blame the others' failures for its own error.
    third._set_state(liveness.FAILED)
    third._exchange()
    assert third._verdict(time.monotonic()) is None


def test_an_unreachable_coordination_service_is_named():
    (first, _) = _job()
    line = first._verdict(time.monotonic() + TIMEOUT_S + 0.1)
    assert line.startswith("lost contact with the coordination service at 127.0.0.1:1234 (process 0 of 2")


def test_a_peer_ended_by_its_watch_passes_its_line_on():
    first, second, third = _job(3)
    line = "lost process 2 of 3 (host h, PID 1): no heartbeat from it for 2 s"
    second._publish_end(line)
    first._exchange()
    assert first._verdict(time.monotonic()) == line
    # A process stopping with an error of its own counts the ended one as accounted for, not lost.
    third._set_state(liveness.FAILED)
    third._exchange()
    assert third._verdict(time.monotonic() + TIMEOUT_S / 2) is None
    assert third._peers[1].state == liveness.ENDED
