"""Sweeps whose study is in PostgreSQL (research.sweep.storage.SharedStudy), shared by workers on
several machines: claims never exceed --trials, a trial whose heartbeat stops is failed and retried
once, and a worker lost with its trial running (every process of it SIGKILLed, as when its machine
goes down) has that trial resumed by another worker from its checkpoint, never run twice at once.

A real PostgreSQL server on 127.0.0.1 (tests.helpers.postgres), started once for this file; the
tests skip without the server binaries or the psycopg driver. Two sweep processes on this machine
stand for two machines sharing a workdir on a network filesystem; the trials are the smoke CNN on 64
synthetic faces, as in test_sweep.py.
"""

from __future__ import annotations

import datetime
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import optuna
import pytest
from optuna.trial import TrialState

from fer_flax.research.sweep import storage as sweep_storage
from fer_flax.research.sweep import study as sweep
from fer_flax.research.sweep.claim import run_folder
from tests.helpers import REPO, postgres

pytestmark = pytest.mark.xdist_group("postgres")  # one server, started by one worker

TINY = [  # 4 steps of 16 an epoch; 40 steps, a checkpoint every 4, evaluated at the end
    "--config.data.synthetic_train=64",
    "--config.data.synthetic_val=32",
    "--config.batch_size=16",
    "--config.eval_batch_size=32",
    "--config.num_epochs=10",
    "--config.eval_every_epochs=10",
    "--config.checkpoint_every_steps=4",
    "--config.cpu_devices=1",
]


@pytest.fixture(scope="module")
def database() -> Iterator[str]:
    """The URL of a fresh database on a PostgreSQL server of this module's own."""
    pytest.importorskip("psycopg", reason="the PostgreSQL driver (pip install -e '.[test]')")
    reason = postgres.unavailable()
    if reason:
        pytest.skip(reason)
    with postgres.server() as url:
        yield url


def test_a_stale_trial_is_failed_and_retried_once_and_claims_stop_at_the_count(database):
    workers = [
        sweep_storage.SharedStudy(database, "claims", heartbeat_interval=1, grace_period=2) for _ in "ab"
    ]
    optuna.create_study(storage=workers[0].storage, study_name="claims", direction="maximize")
    studies = [optuna.load_study(study_name="claims", storage=w.storage) for w in workers]
    first, running = workers[0].take(studies[0], n_trials=2)
    second, _ = workers[1].take(studies[1], n_trials=2)
    assert (first.number, second.number, running) == (0, 1, [])
    assert workers[0].take(studies[0], n_trials=2) == (None, [0, 1])  # the study holds 2
    studies[0].tell(first.number, 0.5)
    time.sleep(2.5)  # trial 1's worker records no heartbeat: it goes stale
    retry, running = workers[0].take(studies[0], n_trials=2)
    assert running == [] and retry.number == 2 and sweep_storage.retry_history(retry) == [1]
    assert workers[1].beat(second._trial_id) is False  # its worker learns it has been taken over
    assert workers[1].take(studies[1], n_trials=2) == (None, [2])  # failed once, retried once
    trials = studies[1].get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.FAIL, TrialState.RUNNING]
    assert sweep_storage.counted(trials) == 2


def test_a_retry_runs_where_its_checkpoint_is_else_in_its_own_folder(tmp_path):
    retry = optuna.trial.create_trial(state=TrialState.WAITING, system_attrs={"retry_history": [3, 7]})
    retry.number = 9
    assert run_folder(str(tmp_path), retry) == str(tmp_path / "trial_9")  # another machine ran 3 and 7
    (tmp_path / "trial_3").mkdir()
    assert run_folder(str(tmp_path), retry) == str(tmp_path / "trial_3")
    (tmp_path / "trial_7").mkdir()
    assert run_folder(str(tmp_path), retry) == str(tmp_path / "trial_7")  # the newest run


def test_storage_urls_are_postgresql_with_psycopg_and_shown_without_password():
    url = "postgresql://sweeper:secret@127.0.0.1:5432/sweeps"
    assert sweep_storage.database_url(url) == "postgresql+psycopg://sweeper:secret@127.0.0.1:5432/sweeps"
    assert "secret" not in sweep_storage.shown(url)
    with pytest.raises(ValueError, match="takes a PostgreSQL URL"):
        sweep_storage.database_url("sqlite:///study.db")


def test_a_workdir_belongs_to_one_study(tmp_path):
    shared = SimpleNamespace(name="a", url="postgresql+psycopg://u@127.0.0.1/db", where=lambda: "study 'a'")
    sweep.check_workdir(str(tmp_path / "w"), shared)  # records its study
    sweep.check_workdir(str(tmp_path / "w"), shared)  # the same study's workers share it
    with pytest.raises(ValueError, match="workdir of the shared study 'a', not 'b'"):
        sweep.check_workdir(str(tmp_path / "w"), SimpleNamespace(**{**vars(shared), "name": "b"}))
    with pytest.raises(ValueError, match="give --storage and --study"):
        sweep.check_workdir(str(tmp_path / "w"), None)
    (tmp_path / "local").mkdir()
    (tmp_path / "local" / "study.db").touch()
    with pytest.raises(ValueError, match="holds a local sweep"):
        sweep.check_workdir(str(tmp_path / "local"), shared)


def worker(workdir: Path, database: str, seed: int, parallel: int, log: Path) -> subprocess.Popen:
    command = [
        sys.executable, "-m", "fer_flax.sweep", "--config", "configs/simple_cnn.py:smoke",
        "--space", "sweeps/smoke.py", "--workdir", str(workdir), "--seed", str(seed), *TINY,
        "--trials=2", "--pruner=none", "--storage", database, "--study", "lost",
        "--heartbeat_interval=1", "--grace_period=3", f"--parallel={parallel}",
    ]  # fmt: skip
    with open(log, "w") as out:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        return subprocess.Popen(command, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, env=env)


def wait_for(condition, process: subprocess.Popen, log: Path, deadline: float) -> None:
    while not condition():
        assert process.poll() is None and time.monotonic() < deadline, log.read_text()
        time.sleep(0.02)


def descendants(pid: int) -> list[int]:
    """The processes below `pid` (from /proc), children first."""
    parents = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    found, frontier = [], [pid]
    while frontier:
        children = [p for p, parent in parents.items() if parent in frontier]
        found += children
        frontier = children
    return found


def committed_steps(folder: Path) -> list[int]:
    checkpoints = folder / "checkpoints"
    return [int(p.name) for p in checkpoints.iterdir() if p.name.isdigit()] if checkpoints.is_dir() else []


@pytest.mark.slow
def test_a_lost_worker_has_its_trial_resumed_by_another_and_none_runs_twice(database, tmp_path):
    """Worker A takes trial 0; worker B (two slots) then takes trial 1 and waits. A is lost once trial 0
    has checkpointed step 8 of 40; after the grace period B fails trial 0 and runs its retry, trial 2,
    in trial 0's folder, from that checkpoint, beside trial 1."""
    workdir = tmp_path / "sweep"  # one folder for both workers, as on a network filesystem
    logs = [tmp_path / "a.log", tmp_path / "b.log"]
    deadline = time.monotonic() + 150
    a = worker(workdir, database, 1, 1, logs[0])
    b = None
    try:
        wait_for(lambda: "trial 0 starts" in logs[0].read_text(), a, logs[0], deadline)
        b = worker(workdir, database, 2, 2, logs[1])
        wait_for(lambda: max(committed_steps(workdir / "trial_0"), default=0) >= 8, a, logs[0], deadline)
        for pid in [*descendants(a.pid), a.pid]:  # its machine goes down: nothing of it stops cleanly
            os.kill(pid, signal.SIGKILL)
        killed_at = datetime.datetime.now()
        a.wait()
        assert b.wait(timeout=deadline - time.monotonic()) == 0, logs[1].read_text()
    finally:
        for process in (a, b):
            if process is not None and process.poll() is None:
                process.kill()
    told = logs[1].read_text()
    study = optuna.load_study(study_name="lost", storage=database)
    trials = {t.number: t for t in study.trials}
    retry = next(t for t in trials.values() if sweep_storage.retry_history(t) == [0])
    (fresh,) = (t for n, t in trials.items() if n not in (0, retry.number))  # B's own, beside it
    assert len(trials) == 3 and trials[0].state == TrialState.FAIL, told
    assert retry.state == fresh.state == TrialState.COMPLETE, told
    assert retry.params == trials[0].params and fresh.user_attrs["workdir"] == f"trial_{fresh.number}"
    assert retry.datetime_start > killed_at  # taken over only once its worker was gone
    assert f"trial {retry.number} resumes (a retry of trial 0)" in told, told
    assert retry.user_attrs["workdir"] == "trial_0" and not (workdir / f"trial_{retry.number}").exists()
    run = (workdir / "trial_0" / "train.log").read_text()
    assert run.count("Resumed from") == 1 and run.count("Done.") == 1, run
    assert "in use by another training run" not in run
    records = [json.loads(line) for line in (workdir / "trial_0" / "metrics.jsonl").open()]
    assert [r["step"] for r in records if "val/accuracy" in r] == [40]
    assert retry.value == max(r["val/accuracy"] for r in records if "val/accuracy" in r)
    rows = json.loads((workdir / "sweep.json").read_text())["trials"]
    assert sorted(row["state"] for row in rows) == ["complete", "complete", "retried"]
