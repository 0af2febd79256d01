"""Sweeps (research.sweep.study): a killed sweep resumes without running any trial twice, pruning stops a
trial below the median, the best config reproduces its trial, and a bad space file is named.

The trials are the smoke CNN on 64 synthetic faces (4 steps of 16 an epoch); the sweeps run as the
command a user types, in subprocesses, since what is tested is how processes stop and resume.
"""

from __future__ import annotations

import json
import runpy
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from configs import simple_cnn
from fer_flax.research.sweep import space as sweep_space
from fer_flax.research.sweep import storage as sweep_storage
from fer_flax.research.sweep import study as sweep
from fer_flax.research.sweep.trial import TrialSetup
from fer_flax.run import lock as workdir_lock
from fer_flax.training import loop as train
from tests.helpers import REPO

TINY = [  # 4 steps of 16 an epoch
    "--config.data.synthetic_train=64",
    "--config.data.synthetic_val=32",
    "--config.batch_size=16",
    "--config.eval_batch_size=32",
]


def sweep_command(workdir: Path, *args: str) -> list[str]:
    return [
        sys.executable, "-m", "fer_flax.sweep", "--config", "configs/simple_cnn.py:smoke",
        "--space", "sweeps/smoke.py", "--workdir", str(workdir), "--seed", "0", *TINY, *args,
    ]  # fmt: skip


def run_sweep(workdir: Path, *args: str) -> subprocess.CompletedProcess:
    result = subprocess.run(
        sweep_command(workdir, *args), cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def trial_states(workdir: Path) -> dict[int, TrialState]:
    study = optuna.load_study(study_name=sweep.STUDY_NAME, storage=sweep_storage.local_storage(str(workdir)))
    return {t.number: t.state for t in study.trials}


def finished_trial(value: float, curve: dict[int, float]) -> optuna.trial.FrozenTrial:
    return optuna.trial.create_trial(value=value, intermediate_values=curve, state=TrialState.COMPLETE)


@pytest.fixture(scope="module")
def killed_and_resumed(tmp_path_factory) -> Path:
    """A sweep of two trials (40 steps each, evaluated at the end), SIGKILLed while its first trial
    trains, then rerun with two trials at a time: the first resumes beside the second."""
    workdir = tmp_path_factory.mktemp("sweep") / "sweep"
    args = ["--trials=2", "--pruner=none", "--config.num_epochs=10", "--config.eval_every_epochs=10"]
    args += ["--config.log_every_steps=2"]
    first = subprocess.Popen(sweep_command(workdir, *args), cwd=REPO, stdout=subprocess.DEVNULL)
    metrics = workdir / "trial_0" / "metrics.jsonl"
    deadline = time.monotonic() + 120
    try:
        while not (metrics.is_file() and metrics.stat().st_size > 0):  # past compilation, training
            assert first.poll() is None and time.monotonic() < deadline, "the trial did not start training"
            time.sleep(0.05)
    finally:
        first.send_signal(signal.SIGKILL)  # its trial's process then stops at a checkpoint by itself
        first.wait()
    assert trial_states(workdir) == {0: TrialState.RUNNING}  # nobody told Optuna anything
    # The rerun waits for trial 0's old process to let go of its workdir, then resumes it.
    result = run_sweep(workdir, *args, "--parallel=2")
    assert "trial 0 resumes" in result.stdout and "trial 1 starts" in result.stdout, result.stdout
    return workdir


@pytest.mark.slow
@pytest.mark.xdist_group("sweep")  # with the other user of the fixture: one worker builds it, once
def test_a_killed_sweep_resumes_its_trials_and_runs_none_twice(killed_and_resumed):
    workdir = killed_and_resumed
    assert trial_states(workdir) == {0: TrialState.COMPLETE, 1: TrialState.COMPLETE}
    for n, resumed in ((0, 1), (1, 0)):
        log = (workdir / f"trial_{n}" / "train.log").read_text()
        # Trial 0's run was told to stop when its sweep died (SIGTERM from its launcher): it
        # checkpointed, resumed from there under the new sweep and finished, once. Trial 1 ran once.
        assert log.count("Interrupted by SIGTERM") == log.count("Resumed from") == resumed, log
        assert log.count("Done.") == 1, log
        records = [json.loads(line) for line in (workdir / f"trial_{n}" / "metrics.jsonl").open()]
        train_steps = [r["step"] for r in records if "train/loss" in r]
        assert train_steps == sorted(set(train_steps)) and train_steps[-1] == 40
        assert [r["step"] for r in records if "val/accuracy" in r] == [40]
    leaderboard = json.loads((workdir / "sweep.json").read_text())
    assert [row["state"] for row in leaderboard["trials"]] == ["complete", "complete"]
    assert leaderboard["best"]["objective"] == max(row["objective"] for row in leaderboard["trials"])
    for name in ("sweep.md", "best_config.py", "objective.png", "parameters.png"):
        assert (workdir / name).stat().st_size > 0, name


@pytest.mark.slow
@pytest.mark.xdist_group("sweep")
def test_the_best_config_reproduces_its_trial(killed_and_resumed, tmp_path, monkeypatch):
    workdir = killed_and_resumed
    best = json.loads((workdir / "sweep.json").read_text())["best"]
    trial_summary = json.loads((workdir / best["workdir"] / "summary.json").read_text())
    monkeypatch.chdir(REPO)  # the base config path is relative to where the sweep ran
    config = runpy.run_path(str(workdir / "best_config.py"))["get_config"]()
    assert config.optim.lr == best["params"]["optim.lr"] and config.num_epochs == 10.0
    assert config.wandb.group == "sweep"  # with wandb on, a sweep's trials are one group
    summary = train.train_and_evaluate(config, str(tmp_path / "again"))
    assert summary["final_val"]["accuracy"] == trial_summary["final_val"]["accuracy"]
    assert summary["best_val_accuracy"] == trial_summary["best_val_accuracy"] == best["objective"]


def test_the_median_pruner_decides_on_the_curve_at_the_same_step():
    study = optuna.create_study(direction="maximize", pruner=sweep.make_pruner("median", prune_after=2))
    for curve in ({4: 0.3, 8: 0.5}, {4: 0.5, 8: 0.7}, {4: 0.4, 8: 0.9}):
        study.add_trial(
            optuna.trial.create_trial(
                value=max(curve.values()), intermediate_values=curve, state=TrialState.COMPLETE
            )
        )
    low, high = study.ask(), study.ask()
    low.report(0.35, 4)  # median at step 4 is 0.4
    high.report(0.45, 4)
    assert low.should_prune() and not high.should_prune()
    high.report(0.6, 8)  # its best so far (0.6) is below the median at step 8 (0.7)
    assert high.should_prune()


@pytest.mark.slow
def test_pruning_stops_a_real_run_below_the_median(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)  # where a user runs the sweep: the base config path is relative to it
    workdir = tmp_path / "sweep"
    study = sweep.open_study(str(workdir), pruner="median", prune_after=2)
    perfect = {step: 1.0 for step in range(0, 201)}  # two finished trials at accuracy 1 at every step
    for _ in range(2):
        study.add_trial(finished_trial(1.0, perfect))
    overrides = {"data.synthetic_train": 64, "data.synthetic_val": 32, "batch_size": 16}
    overrides.update({"eval_batch_size": 32, "num_epochs": 50.0})  # 200 steps, evaluated every 4
    config = sweep_space.trial_config("configs/simple_cnn.py:smoke", overrides)
    space = sweep_space.load_space("sweeps/smoke.py", config)
    setup = TrialSetup(str(workdir), "configs/simple_cnn.py:smoke", overrides, space)
    said = []
    assert sweep.run_trials(study, setup, 3, [{}], say=said.append) is None
    assert study.trials[2].state == TrialState.PRUNED, said
    trial = workdir / "trial_2"
    assert "Interrupted by SIGTERM" in (trial / "train.log").read_text()  # stopped cleanly, checkpointed
    assert not (trial / "summary.json").exists()
    saved = [int(p.name) for p in (trial / "checkpoints").iterdir() if p.name.isdigit()]
    assert saved and 4 <= max(saved) < 200


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "SPACE = {'optim.lrr': loguniform(0.01, 0.1)}",
            r"SPACE\['optim.lrr'\]: the config has no key .*'optim.lr'",
        ),
        ("SPACE = {'optim.lr': loguniform(0.0, 0.1)}", r"SPACE\['optim.lr'\]: .*log scale: low must be > 0"),
        ("SPACE = {'optim.lr': (0.01, 0.1)}", r"SPACE\['optim.lr'\] is \(0.01, 0.1\): use uniform\(\)"),
        ("SPACE = {'optim.schedule': choice('cosine', 'sawtooth')}", r"the value 'sawtooth' does not fit"),
        ("SPACE = {'batch_size': uniform(16, 64)}", r"SPACE\['batch_size'\]: the value 16.0 does not fit"),
        ("LR = 1", r"must define SPACE"),
        ("SPACE = {", r"the space file failed to run \(SyntaxError"),
    ],
)
def test_a_bad_space_file_is_named_with_its_key(tmp_path, text, message):
    path = tmp_path / "space.py"
    path.write_text("from fer_flax.research.sweep.space import choice, loguniform, uniform\n" + text + "\n")
    with pytest.raises(ValueError, match=message) as info:
        sweep_space.load_space(str(path), simple_cnn.get_config("smoke"))
    assert str(path) in str(info.value)


def test_is_held_tells_a_live_holder_from_a_released_lock(tmp_path):
    assert not workdir_lock.is_held(str(tmp_path))  # no lock file yet
    fd = workdir_lock.acquire(str(tmp_path), "sweep.lock")
    assert workdir_lock.is_held(str(tmp_path), "sweep.lock")
    assert not workdir_lock.is_held(str(tmp_path))  # train.lock is another lock
    workdir_lock.release(fd)
    assert not workdir_lock.is_held(str(tmp_path), "sweep.lock")


def test_parallel_slots_share_the_gpus():
    assert sweep.slot_environments(2, []) == [{}, {}]
    assert [e["CUDA_VISIBLE_DEVICES"] for e in sweep.slot_environments(2, list("0123"))] == ["0,1", "2,3"]
    shared = sweep.slot_environments(3, ["0", "1"])
    assert [e["CUDA_VISIBLE_DEVICES"] for e in shared] == ["0", "1", "0"]
    assert all(e["XLA_PYTHON_CLIENT_PREALLOCATE"] == "false" for e in shared)
