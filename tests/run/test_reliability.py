"""Reliability: kills at random moments, SIGTERM/SIGINT, corrupt checkpoints, non-finite numbers,
incompatible workdirs and config mistakes.

Kill points are made deterministic from the outside (tests/helpers/fault_injection.py): the training process,
started through that wrapper, signals itself at an exact step, inside an evaluation, or inside a
checkpoint save.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import simple_cnn
from fer_flax.core import model as model_lib
from fer_flax.run import checkpoint as checkpoint_lib
from fer_flax.run import tracking
from fer_flax.run.interrupts import NonFiniteError
from fer_flax.run.workdir import IncompatibleWorkdirError
from fer_flax.training import loop as train
from fer_flax.training import steps
from tests.helpers import REPO

# The smoke run: 512 images / batch 64 = 8 steps per epoch, 2 epochs (evaluations at 8 and 16),
# metrics logged every 4 steps; here checkpointed every 2 steps as well.
CKPT_EVERY = 2


def smoke_config(**overrides):
    c = simple_cnn.get_config("smoke")
    c.checkpoint_every_steps = CKPT_EVERY
    c.update_from_flattened_dict(overrides)  # dotted keys: {"optim.lr": 0.1}
    return c


def run_cli(workdir: Path, kill_at: str | None, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}  # what a SIGKILLed run printed must reach the pipe
    if kill_at:
        cmd = [sys.executable, str(REPO / "tests" / "helpers" / "fault_injection.py"), kill_at]
    else:
        cmd = [sys.executable, "-m", "fer_flax.main"]
    cmd += ["--config", "configs/simple_cnn.py:smoke"]
    cmd += ["--workdir", str(workdir), f"--config.checkpoint_every_steps={CKPT_EVERY}", *args]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


def final_model(workdir: Path, config) -> dict:
    model = model_lib.create_model(config)
    template = jax.eval_shape(lambda: model_lib.initial_variables(model, jax.random.key(1)))
    ckpt = checkpoint_lib.Checkpointer(str(workdir), read_only=True)
    try:
        restored, _ = ckpt.restore_model(
            {"params": template["params"], "batch_stats": template["batch_stats"]}, "latest"
        )
    finally:
        ckpt.close()
    return jax.device_get(restored)


def comparable_metrics(workdir: Path) -> list[dict]:
    """Every line of metrics.jsonl (a resume drops what was logged after its checkpoint, so no step
    repeats), minus the wall-clock figures."""
    drop = {"time", "train/images_per_sec", "train/seconds"}
    lines = (workdir / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k not in drop} for line in lines]


def assert_trees_equal(a, b) -> None:
    flat_a, flat_b = jax.tree_util.tree_leaves_with_path(a), jax.tree_util.tree_leaves_with_path(b)
    assert [p for p, _ in flat_a] == [p for p, _ in flat_b]
    for (path, x), (_, y) in zip(flat_a, flat_b, strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=jax.tree_util.keystr(path))


@pytest.mark.slow
def test_interrupted_run_resumes_bit_identical(tmp_path, capsys):
    config = smoke_config()
    reference = tmp_path / "reference"
    expected = train.train_and_evaluate(config, str(reference))

    work = tmp_path / "interrupted"
    ckpts = work / "checkpoints"
    # Ctrl-C right after step 2: the step finishes, a checkpoint is written, exit status 130.
    r = run_cli(work, "step:2:INT")
    assert r.returncode == 130, r.stderr[-3000:]
    assert f"Interrupted by SIGINT at step 2; checkpoint written to {ckpts}/2" in r.stdout
    # SIGKILL inside the evaluation at step 8 (in the middle of the run's work: a kill between two
    # training steps is no different) and inside the save of checkpoint 12 (after its arrays are
    # written, before Orbax commits it). A save is finished before training goes on, so each rerun
    # resumes from the last checkpoint before the previous kill.
    for kill_at, resumed_from in (("eval:8", 2), ("save:12", 6)):
        r = run_cli(work, kill_at)
        assert r.returncode == -signal.SIGKILL, (kill_at, r.stderr[-3000:])
        resumed = f"Resumed from {ckpts}/{resumed_from} (step {resumed_from} of 16)"
        assert resumed in r.stdout, (kill_at, r.stdout[-2000:])
    assert [p.name for p in ckpts.iterdir() if p.name.startswith("12.orbax-checkpoint-tmp")]
    assert "12" not in os.listdir(ckpts)
    # SIGTERM at step 14: the half-written save of 12 is ignored (and cleaned up), exit status 143.
    r = run_cli(work, "step:14:TERM")
    assert r.returncode == 143, r.stderr[-3000:]
    assert f"Resumed from {ckpts}/10 (step 10 of 16)" in r.stdout
    assert f"Interrupted by SIGTERM at step 14; checkpoint written to {ckpts}/14" in r.stdout
    assert not [p for p in os.listdir(ckpts) if "tmp" in p]
    # The last stretch runs in this process: the same loop the command calls, without another start-up.
    capsys.readouterr()
    train.train_and_evaluate(config, str(work))
    assert f"Resumed from {ckpts}/14 (step 14 of 16)" in capsys.readouterr().out

    summary = json.loads((work / "summary.json").read_text())
    assert summary["final_step"] == 16
    for key in ("final_val", "best_step", "best_val_accuracy"):
        assert summary[key] == expected[key], key
    assert_trees_equal(final_model(work, config), final_model(reference, config))
    assert comparable_metrics(work) == comparable_metrics(reference)


def _truncate_files(folder: Path) -> int:
    files = [p for p in folder.rglob("*") if p.is_file()]
    for p in files:
        p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
    return len(files)


@pytest.mark.slow
def test_corrupt_latest_checkpoint_falls_back_to_the_previous_one(tmp_path):
    config = smoke_config(num_epochs=1.0, checkpoint_every_steps=4)
    workdir = tmp_path / "run"
    first = train.train_and_evaluate(config, str(workdir))
    assert _truncate_files(workdir / "checkpoints" / "8" / "state") > 0

    with pytest.warns(checkpoint_lib.CorruptCheckpointWarning, match=r"step 8 .*step 4") as record:
        again = train.train_and_evaluate(config, str(workdir))
    message = str(record[0].message)
    assert str(workdir / "checkpoints") in message and "corrupt_checkpoints" in message
    # Steps 5..8 were recomputed from checkpoint 4: the same numbers as before.
    assert again["final_step"] == 8 and again["final_val"] == first["final_val"]
    assert [p.name.split("-")[0] for p in (workdir / "corrupt_checkpoints").iterdir()] == ["8"]
    assert sorted(os.listdir(workdir / "checkpoints")) == ["4", "8"]


def _poison_step(monkeypatch, bad_step: int) -> None:
    """Makes the loss and gradients NaN at `bad_step` (1-based, as the loop counts)."""
    original = steps._loss_and_grads

    def poisoned(state, batch, rng, config, **kwargs):
        loss, logits, batch_stats, grads, *rest = original(state, batch, rng, config, **kwargs)
        factor = jnp.where(state.step + 1 == bad_step, jnp.nan, 1.0)
        return loss * factor, logits, batch_stats, jax.tree.map(lambda g: g * factor, grads), *rest

    monkeypatch.setattr(steps, "_loss_and_grads", poisoned)


def test_nonfinite_stop_names_step_and_keeps_good_checkpoint(tmp_path, monkeypatch):
    _poison_step(monkeypatch, 5)
    workdir = tmp_path / "run"
    config = smoke_config(num_epochs=1.0)
    with pytest.raises(NonFiniteError, match=r"at step 5\. Last good checkpoint: .*checkpoints/4"):
        train.train_and_evaluate(config, str(workdir))
    ckpt = checkpoint_lib.Checkpointer(str(workdir), read_only=True)
    assert ckpt.latest_step() == 4
    ckpt.close()
    params = final_model(workdir, config)["params"]
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(params))


def test_nonfinite_skip_keeps_the_previous_state_and_counts(tmp_path, monkeypatch):
    _poison_step(monkeypatch, 5)
    workdir = tmp_path / "run"
    config = smoke_config(num_epochs=1.0, nonfinite="skip")
    summary = train.train_and_evaluate(config, str(workdir))
    assert summary["final_step"] == 8 and summary["skipped_updates_this_run"] == 1
    records = [r for r in tracking.read_metrics(workdir / "metrics.jsonl") if "train/loss" in r]
    assert {r["step"]: r["train/skipped_updates"] for r in records} == {2: 0, 4: 0, 6: 1, 8: 0}
    assert all(np.isfinite(r["train/loss"]) for r in records)
    params = final_model(workdir, config)["params"]
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(params))


@pytest.mark.slow
def test_incompatible_workdir_is_refused_and_compatible_changes_recorded(tmp_path):
    workdir = tmp_path / "run"
    train.train_and_evaluate(smoke_config(num_epochs=0.5), str(workdir))  # 4 steps

    with pytest.raises(IncompatibleWorkdirError) as info:
        train.train_and_evaluate(smoke_config(**{"model.variant": "small", "seed": 3}), str(workdir))
    message = str(info.value)
    assert "model.variant: 'tiny' in the workdir -> 'small' now" in message
    assert "seed: 0 in the workdir -> 3 now" in message and "new --workdir" in message

    summary = train.train_and_evaluate(smoke_config(num_epochs=1.0, **{"optim.lr": 0.05}), str(workdir))
    assert summary["final_step"] == 8
    (record,) = [json.loads(line) for line in (workdir / "config_history.jsonl").read_text().splitlines()]
    assert record["resumed_at_step"] == 4
    assert record["changes"] == {"num_epochs": [0.5, 1.0], "optim.lr": [0.1, 0.05]}

    # Without the config.json record, a checkpoint of other shapes is still refused, clearly.
    (workdir / "config.json").unlink()
    with pytest.raises(checkpoint_lib.NoRestorableCheckpointError, match="new --workdir"):
        train.train_and_evaluate(smoke_config(**{"model.variant": "small"}), str(workdir))
    assert sorted(os.listdir(workdir / "checkpoints")) == ["6", "8"]  # nothing moved or deleted


@pytest.mark.parametrize(
    "override, error, message",
    [
        ({"nonfinite": "ignore"}, ValueError, "is not one of: stop, skip"),
        ({"checkpoint_every_steps": -1}, ValueError, "must be an integer >= 0"),
    ],
)
def test_run_setting_mistakes_fail_before_training(tmp_path, override, error, message):
    workdir = tmp_path / "run"
    with pytest.raises(error, match=message):
        train.train_and_evaluate(smoke_config(**override), str(workdir))
    assert not (workdir / "checkpoints").exists()


def test_unwritable_workdir_fails_before_training(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    # (A path under a regular file: unwritable even for root, unlike a chmod-ed folder.)
    with pytest.raises(PermissionError, match=r"is not writable .*choose a --workdir"):
        train.train_and_evaluate(smoke_config(), str(blocker / "run"))
