"""A training start that fails, probed from outside: a first start leaves the workdir as it found it
(absent stays absent, an empty folder stays empty), a failed resume keeps every file of the run, and
the one `error:` line is all a failed start prints (no traceback of Orbax's background work racing
the exit). The lock a failed start deletes is never held by two runs.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fer_flax.run import lock as workdir_lock
from fer_flax.run import start as run_start
from tests.helpers import REPO, folder_files, repo_env
from tests.helpers.fault_injection import flip_a_bit, largest_file
from tests.helpers.trained_runs import TINY_FLAGS, write_fer_csv

pytestmark = pytest.mark.xdist_group("trained_run")

SMOKE = "--config=configs/simple_cnn.py:smoke"


def _train(*flags: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "fer_flax.main", *flags]
    return subprocess.run(cmd, cwd=REPO, env=repo_env(), capture_output=True, text=True, timeout=300)


def _bad_row_csv(path: Path) -> Path:
    """A FER2013 CSV whose file line 12 has 2303 pixels instead of 2304."""
    rng = np.random.default_rng(0)
    rows = [(i % 7, rng.integers(0, 256, (48, 48), dtype=np.uint8), "Training") for i in range(14)]
    rows[10] = (1, " ".join(["7"] * 2303), "Training")  # file line 12 (after the header)
    write_fer_csv(path, rows)
    return path


def _one_error_line(result: subprocess.CompletedProcess, start: str) -> None:
    assert result.returncode == 1, result.stderr[-3000:]
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(start), result.stderr[-3000:]
    assert "Traceback" not in result.stderr


def test_failed_first_starts_print_one_line_and_leave_the_workdir_as_found(tmp_path):
    """Twice: no checkpoint manager is open before the data is read (run.start), so there is no
    Orbax thread left to race the exit, which showed about once in four tries when there was one."""
    csv = _bad_row_csv(tmp_path / "badrow.csv")
    empty = tmp_path / "empty"
    empty.mkdir()
    for attempt in range(2):
        # An absent workdir under an absent parent, and an existing empty folder, in turn.
        workdir = tmp_path / "absent" / "run" if attempt % 2 == 0 else empty
        result = _train(SMOKE, f"--config.data.path={csv}", f"--workdir={workdir}")
        _one_error_line(result, f"error: {csv}, line 12: expected 2304 pixel values")
        assert not (tmp_path / "absent").exists()
        assert list(empty.iterdir()) == []
    missing = _train(SMOKE, f"--config.data.path={tmp_path / 'nowhere.csv'}", f"--workdir={empty}")
    _one_error_line(missing, f"error: config.data.path='{tmp_path / 'nowhere.csv'}' does not exist")
    assert list(empty.iterdir()) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["badrow.csv", "empty"]  # no cache either


def test_a_failed_resume_keeps_every_file_of_the_run(trained_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    for step in ("2", "4"):  # no checkpoint left to resume from: the run stops after opening them
        flip_a_bit(largest_file(run / "checkpoints" / step / "state"))
    before = folder_files(run)
    result = _train(*TINY_FLAGS, f"--workdir={run}")
    _one_error_line(result, f"error: No usable checkpoint in {run}/checkpoints: damaged")
    after = folder_files(run)
    assert workdir_lock.LOCK_FILE in after  # rewritten with the last holder's PID, not removed
    assert {k: v for k, v in after.items() if k != workdir_lock.LOCK_FILE} == {
        k: v for k, v in before.items() if k != workdir_lock.LOCK_FILE
    }


def test_a_failed_start_keeps_folders_that_hold_files(tmp_path):
    workdir = tmp_path / "run"
    with pytest.raises(RuntimeError, match="data"), run_start.begin(str(workdir)):
        (workdir / "checkpoints").mkdir()  # as Orbax makes it
        (workdir / "cache" / "arrays").mkdir(parents=True)
        (workdir / "cache" / "arrays" / "train.npz").write_bytes(b"kept")
        raise RuntimeError("bad data")
    assert sorted(os.listdir(workdir)) == ["cache"]  # the lock file and the empty folder are gone
    assert (workdir / "cache" / "arrays" / "train.npz").read_bytes() == b"kept"


def test_a_lock_file_deleted_by_a_failed_start_is_not_locked(tmp_path, monkeypatch):
    """A second starter opens train.lock just before a failed start deletes it (the fault is made
    here, between the open and the lock): it must lock the file now at the path, or a third starter
    would lock that one too."""
    real_flock = workdir_lock.fcntl.flock
    deleted = []

    def flock_after_delete(fd, operation):
        if not deleted:
            os.unlink(tmp_path / workdir_lock.LOCK_FILE)  # what the failed start does while it holds it
            deleted.append(True)
        return real_flock(fd, operation)

    monkeypatch.setattr(workdir_lock.fcntl, "flock", flock_after_delete)
    fd = workdir_lock.acquire(str(tmp_path))
    try:
        assert deleted
        assert os.fstat(fd).st_ino == os.stat(tmp_path / workdir_lock.LOCK_FILE).st_ino
        monkeypatch.setattr(workdir_lock.fcntl, "flock", real_flock)
        assert workdir_lock.is_held(str(tmp_path))
    finally:
        workdir_lock.release(fd)
