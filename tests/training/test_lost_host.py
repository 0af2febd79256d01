"""Losing a process of a two-process job ends the other with one `error:` line, within the bound.

Two processes train on localhost as in test_multihost (CPU collectives over gloo), with a short host
timeout (`FER_FLAX_HOST_TIMEOUT`). Once the first checkpoint is committed, one process is lost, from
outside: killed (SIGKILL: process 1, or process 0, the coordinator) or frozen (SIGSTOP), while the
other is in the middle of its train steps (blocked in a collective with the lost one). The survivor
must exit with status 1 within the detection bound, printing exactly one `error:` line that names
the lost process and says how to resume, and neither JAX's native abort nor a traceback; then every
process of the job, the coordination service's own process included, must be gone. A relaunch of
the same job resumes from the checkpoint. The three jobs run at once, so that their waits overlap.
"""

import concurrent.futures
import dataclasses
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from fer_flax.core import liveness
from tests.helpers import REPO
from tests.helpers.multihost import free_port, job_command, job_env, run_two_processes

HOST_TIMEOUT_S = 3.0
# The survivor's own detection bound, plus room for a loaded machine (the suite shares two cores).
DEADLINE_S = liveness.detection_bound_s(HOST_TIMEOUT_S) + 6
# Long enough never to finish before the loss: the test stops it, one way or the other.
EPOCHS = 100
FIRST_CHECKPOINT = 4  # one epoch of 256 images in batches of 64
NATIVE_NOISE = ("Check failure stack trace", "Terminating process", "Fatal Python error", "Traceback")


def _start_job(workdir: Path, logs: Path) -> tuple[list[subprocess.Popen], list[Path]]:
    """Both processes, each in a session of its own (so that the test can find and end everything
    each one started, the coordination service's process included)."""
    port = free_port()
    env = {**job_env(logs / "jax_cache"), liveness.ENV_HOST_TIMEOUT: str(HOST_TIMEOUT_S)}
    procs, paths = [], []
    for pid in range(2):
        path = logs / f"lost_host_process{pid}.log"
        cmd = job_command(workdir, EPOCHS, port, pid)
        with open(path, "w") as out:
            procs.append(
                subprocess.Popen(
                    cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
                )
            )
        paths.append(path)
    return procs, paths


def _wait_for_checkpoint(workdir: Path, procs: list[subprocess.Popen], paths: list[Path]) -> None:
    committed = workdir / "checkpoints" / str(FIRST_CHECKPOINT)
    deadline = time.monotonic() + 180
    while not committed.is_dir():
        for p, path in zip(procs, paths, strict=True):
            assert p.poll() is None, f"a process ended before the loss:\n{path.read_text()[-3000:]}"
        assert time.monotonic() < deadline, "no checkpoint within 180 s"
        time.sleep(0.05)


def _group_alive(pgid: int) -> bool:
    """Whether a process of process group `pgid` still runs (zombies, which only wait to be reaped by
    whoever inherited them, do not count)."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


def _end_groups(procs: list[subprocess.Popen], within_s: float) -> list[int]:
    """Waits up to `within_s` for every process group of the job to end by itself; then kills what is
    left, and returns the groups that had to be killed."""
    deadline = time.monotonic() + within_s
    while any(_group_alive(p.pid) for p in procs) and time.monotonic() < deadline:
        time.sleep(0.1)
    stuck = [p.pid for p in procs if _group_alive(p.pid)]
    for p in procs:
        if _group_alive(p.pid):
            os.killpg(p.pid, signal.SIGKILL)
        p.wait()
    return stuck


@dataclasses.dataclass
class Loss:
    """How the survivor of a job that lost process `victim` ended."""

    victim: int
    victim_pid: int
    status: int | None  # None: still running at the deadline
    took_s: float
    output: str
    stuck: list[int]  # process groups still running after the bound
    workdir: Path


def _lose_a_process(root: Path, victim: int, sig: signal.Signals) -> Loss:
    """Runs a job in `root`, loses process `victim` by `sig` once the first checkpoint is committed, and
    records how the other one ended."""
    root.mkdir(parents=True)
    workdir = root / "run"
    procs, paths = _start_job(workdir, root)
    try:
        _wait_for_checkpoint(workdir, procs, paths)
        survivor = procs[1 - victim]
        lost_at = time.monotonic()
        os.kill(procs[victim].pid, sig)
        try:
            status = survivor.wait(timeout=DEADLINE_S)
        except subprocess.TimeoutExpired:
            status = None
        took = time.monotonic() - lost_at
        if sig == signal.SIGSTOP:
            procs[victim].kill()  # a frozen host: the test ends it, as an operator would
        # The coordination service's process outlives process 0 by the time the others need, no more.
        stuck = _end_groups(procs, within_s=liveness.detection_bound_s(HOST_TIMEOUT_S) + 10)
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
    output = paths[1 - victim].read_text()
    return Loss(victim, procs[victim].pid, status, took, output, stuck, workdir)


SCENARIOS = {
    "killed": (1, signal.SIGKILL),
    "killed_coordinator": (0, signal.SIGKILL),
    "stopped": (1, signal.SIGSTOP),
}


# One worker runs the module, so that the three jobs (the module fixture) run once.
pytestmark = pytest.mark.xdist_group("lost_host")


@pytest.fixture(scope="module")
def losses(tmp_path_factory) -> dict[str, Loss]:
    """The three jobs run at once, so that their start-ups and waits overlap."""
    root = tmp_path_factory.mktemp("lost_host")
    with concurrent.futures.ThreadPoolExecutor(len(SCENARIOS)) as pool:
        futures = {
            name: pool.submit(_lose_a_process, root / name, victim, sig)
            for name, (victim, sig) in SCENARIOS.items()
        }
    return {name: future.result() for name, future in futures.items()}


@pytest.mark.slow
@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_a_lost_process_ends_the_other_with_one_line(losses, scenario):
    loss = losses[scenario]
    assert loss.status is not None, f"the survivor still ran {DEADLINE_S:.1f} s after the loss"
    assert loss.status == 1, f"the survivor exited with {loss.status}:\n{loss.output[-4000:]}"
    errors = [line for line in loss.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, loss.output[-4000:]
    assert f"lost process {loss.victim} of 2 (host " in errors[0], errors[0]
    assert f"PID {loss.victim_pid})" in errors[0], errors[0]
    assert "Rerun the same command on every host" in errors[0]
    assert not [noise for noise in NATIVE_NOISE if noise in loss.output], loss.output[-4000:]
    assert loss.took_s < DEADLINE_S
    assert not loss.stuck, "processes of the job were still running after the bound"


@pytest.mark.slow
def test_the_job_resumes_after_the_loss(losses, tmp_path):
    workdir = losses["killed"].workdir
    # The same job again (to 2 epochs, so that it ends): it resumes from the checkpoint.
    relaunch = run_two_processes(workdir, 2.0, tmp_path)
    resumed = f"Resumed from {workdir}/checkpoints/{FIRST_CHECKPOINT} (step {FIRST_CHECKPOINT} of 8)"
    assert resumed in relaunch[0]
    assert "Done. Final validation accuracy" in relaunch[0]
