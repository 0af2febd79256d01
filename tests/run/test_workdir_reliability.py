"""Reliability II, probed from outside: one trainer per workdir, damaged checkpoints (truncated or
bit-flipped) in training and in evaluation/prediction, a save that fails on a full disk, bad config
values and damaged small files, and how the commands report all of these.

The runs are copies of the tiny trained run (the `trained_run` fixture of tests/conftest.py: steps 2
and 4 in checkpoints/ and best/); subprocesses only where the test is about a process (the lock, the
one-line report).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from configs import simple_cnn
from fer_flax import cli
from fer_flax.base.errors import ConfigError
from fer_flax.inference import engine as inference
from fer_flax.inference import evaluate
from fer_flax.run import checkpoint as checkpoint_lib
from fer_flax.run import lock as workdir_lock
from fer_flax.run import trained
from fer_flax.training import loop as train
from tests.helpers import REPO, folder_files, repo_env
from tests.helpers.fault_injection import flip_a_bit, largest_file
from tests.helpers.trained_runs import TINY_FLAGS, tiny_config

# One worker trains the tiny run (conftest's `trained_run`) that several test files share.
pytestmark = pytest.mark.xdist_group("trained_run")


@pytest.fixture
def copy(trained_run, tmp_path) -> Path:
    """A private copy of the trained run, to damage."""
    target = tmp_path / "run"
    shutil.copytree(trained_run, target)
    return target


def _same_final_weights(a: str, b: str) -> None:
    left, right = trained.restore(a, "latest"), trained.restore(b, "latest")
    assert left.step == right.step
    for x, y in zip(jax.tree.leaves(left.variables), jax.tree.leaves(right.variables), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


# ------------------------------------------------------------------------------ one trainer per workdir


def test_a_second_trainer_is_refused_before_it_touches_the_workdir(copy):
    before = folder_files(copy)
    fd = workdir_lock.acquire(str(copy))  # this test process is the first trainer
    try:
        held = folder_files(copy)
        cmd = [sys.executable, "-m", "fer_flax.main", *TINY_FLAGS, f"--workdir={copy}", "--debug"]
        second = subprocess.run(cmd, cwd=REPO, env=repo_env(), capture_output=True, text=True, timeout=300)
        assert folder_files(copy) == held  # nothing written, moved or deleted: the first run is unharmed
    finally:
        workdir_lock.release(fd)
    assert second.returncode == 1, second.stderr[-3000:]
    holder = f"PID {os.getpid()} on host {socket.gethostname()}"
    assert f"WorkdirLockedError: workdir {copy} is in use by another training run ({holder}" in second.stderr
    assert "Traceback" in second.stderr  # --debug shows it
    assert "SYNTHETIC" not in second.stdout  # refused before any data was read
    assert {k: v for k, v in held.items() if k != workdir_lock.LOCK_FILE} == {
        k: v for k, v in before.items() if k != workdir_lock.LOCK_FILE
    }


def test_a_killed_holder_releases_the_lock_at_once(tmp_path):
    holder = subprocess.Popen(
        [
            sys.executable, "-c",
            "import sys, time; from fer_flax.run import lock; lock.acquire(sys.argv[1]); "
            "print('locked', flush=True); time.sleep(120)",
            str(tmp_path),
        ],
        cwd=REPO, env=repo_env(), stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(workdir_lock.WorkdirLockedError, match=f"PID {holder.pid} on host"):
            workdir_lock.acquire(str(tmp_path))
    finally:
        holder.kill()  # SIGKILL: no cleanup of any kind
        holder.wait()
    workdir_lock.release(workdir_lock.acquire(str(tmp_path)))  # the rerun proceeds


# ------------------------------------------------------------------------------ damaged checkpoints


def test_evaluate_and_predict_fall_back_past_damaged_checkpoints(copy, tmp_path):
    ckpt = checkpoint_lib.Checkpointer(str(copy), read_only=True)
    best, next_best = ckpt.best_first()
    ckpt.close()
    truncated = largest_file(copy / "best" / str(best))
    truncated.write_bytes(truncated.read_bytes()[:100])
    with pytest.warns(checkpoint_lib.CorruptCheckpointWarning) as record:
        report = evaluate.evaluate_workdirs([str(copy)], out=str(tmp_path / "r.json"), figures=False)
    message = str(record[0].message)
    assert f"step {best} (damaged: {truncated} has 100 bytes" in message
    assert f"Using the best intact one, step {next_best}" in message
    assert report["checkpoint_step"] == next_best
    # The command's output names the step it used instead, and its weights.
    assert f"(checkpoint 'best': step {next_best}, raw weights)" in evaluate.format_report(report)

    flipped = largest_file(copy / "checkpoints" / "4")  # same size, different content
    flip_a_bit(flipped)
    with pytest.warns(checkpoint_lib.CorruptCheckpointWarning, match="does not match its checksum") as record:
        (member,) = inference.load_members([str(copy)], "latest")  # what fer_flax.inference.predict loads
    assert member.step == 2 and "the newest intact one, step 2" in str(record[0].message)

    flip_a_bit(largest_file(copy / "best" / str(next_best)))
    with pytest.raises(checkpoint_lib.NoRestorableCheckpointError) as info:
        trained.restore(str(copy), "best")
    text = str(info.value)
    assert "damaged" in text and "not fitting" not in text and "shapes changed" not in text


def test_training_detects_same_size_corruption_and_resumes_identically(trained_run, copy):
    flip_a_bit(largest_file(copy / "checkpoints" / "4" / "state"))
    pattern = r"step 4 \(damaged: .* does not match its checksum.*previous good checkpoint, step 2"
    with pytest.warns(checkpoint_lib.CorruptCheckpointWarning, match=pattern):
        summary = train.train_and_evaluate(tiny_config(0), str(copy))  # steps 3 and 4 recomputed
    assert summary["final_val"] == json.loads((Path(trained_run) / "summary.json").read_text())["final_val"]
    _same_final_weights(str(copy), trained_run)


def test_a_failed_save_stops_with_one_line_and_resumes_identically(trained_run, tmp_path):
    workdir = tmp_path / "full_disk"
    # The commit of checkpoints/4 fails with ENOSPC (tests/helpers/fault_injection.py), as on a full disk.
    cmd = [sys.executable, str(REPO / "tests" / "helpers" / "fault_injection.py"), "nospace:4", *TINY_FLAGS]
    failed = subprocess.run(
        [*cmd, f"--workdir={workdir}"], cwd=REPO, env=repo_env(), capture_output=True, text=True, timeout=300
    )
    assert failed.returncode == 1, failed.stderr[-3000:]
    assert failed.stderr.count("\n") == 1, failed.stderr[-3000:]  # one line, no traceback
    assert failed.stderr.startswith(f"error: Saving checkpoint 4 to {workdir}/checkpoints failed: No space")
    assert f"Last good checkpoint: {workdir}/checkpoints/2. " in failed.stderr
    assert "rerun the same command to resume" in failed.stderr

    summary = train.train_and_evaluate(tiny_config(0), str(workdir))  # space is back
    assert summary["final_val"] == json.loads((Path(trained_run) / "summary.json").read_text())["final_val"]
    _same_final_weights(str(workdir), trained_run)


# ------------------------------------------------------------------------------ config and small files


@pytest.mark.parametrize(
    ("key", "value"),
    [("num_epochs", -1.0), ("num_epochs", 0.0), ("num_epochs", float("nan")), ("optim.lr", -1.0)],
)
def test_senseless_config_values_are_refused_before_any_data_is_read(tmp_path, key, value):
    config = simple_cnn.get_config("smoke")
    config.update_from_flattened_dict({key: value, "data.path": str(tmp_path / "absent.csv")})
    with pytest.raises(ConfigError, match=rf"config\.{key}=.* must be"):  # not the missing data file
        train.train_and_evaluate(config, str(tmp_path / "run"))
    assert not (tmp_path / "run").exists()


def test_a_damaged_config_json_is_named(copy):
    (copy / "config.json").write_text("")
    with pytest.raises(ValueError, match=rf"{copy}/config\.json is damaged: not valid JSON"):
        trained.restore(str(copy))


def test_an_unknown_config_key_is_named_with_its_flag():
    config = simple_cnn.get_config("smoke")
    with pytest.raises(AttributeError) as info:  # what ml_collections raises while parsing the flag
        config.optim.lrr  # noqa: B018
    message = cli.unknown_key_message(info.value, ["prog", "--config.optim.lrr=0.1"])
    assert message.startswith("--config.optim.lrr: the config has no key 'optim.lrr' (did you mean")
    assert "--config.optim.lr?" in message and "\\n" not in message and "\n" not in message


def test_the_writability_probe_leaves_nothing_behind_on_a_full_disk(tmp_path):
    # A file-size limit of 0 makes every write fail (EFBIG) while files can still be created, as on a
    # nearly full disk; the probe then must not leave an empty file behind.
    script = (
        "import resource, signal, sys\n"
        "from fer_flax.run import workdir\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (0, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))\n"
        "try:\n"
        "    with open(sys.argv[2], 'w') as f:\n"
        "        f.write('x')\n"
        "except OSError as e:\n"
        "    print('write failed:', e.strerror)\n"
        "workdir.check_writable(sys.argv[1])\n"
    )
    workdir, outside = tmp_path / "run", tmp_path / "outside.txt"
    done = subprocess.run(
        [sys.executable, "-c", script, str(workdir), str(outside)],
        cwd=REPO, env=repo_env(), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert "write failed: File too large" in done.stdout, done.stdout + done.stderr  # writes do fail
    assert done.returncode == 0, done.stderr[-3000:]
    assert os.listdir(workdir) == []
