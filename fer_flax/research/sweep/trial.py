"""One trial of a sweep: who runs it, its training process, and what Optuna hears from it.

A trial is an ordinary fer_flax run in `<sweep>/trial_<n>/`: its config is the generated
`trial_config.py` there (base config + the sweep's overrides + the trial's values), and the sweep
starts `python -m fer_flax.main --config <that file> --workdir <that folder>` with the output in
`train.log`. While it trains, the sweep reads its `metrics.jsonl`: each evaluation's accuracy of the
weights best/ selects (`selected/accuracy` with an EMA, else `val/accuracy`) is reported to Optuna
at its training step, and when the pruner says so the run gets SIGTERM, which makes it finish its
step, checkpoint and stop. The objective of a finished trial is its `summary.json`
`best_val_accuracy`, the accuracy of what best/ holds.

Ownership. The sweep process that runs a trial holds the flock `trial_<n>/sweep.lock` for as long
as it does (`fer_flax.run.lock`); claims are made under the sweep-wide lock `claim.lock`, so two
sweep processes sharing a study never take the same trial. A trial left RUNNING in the study with
no holder was being run by a sweep that died: the next claim adopts it and its run resumes from its
workdir's latest checkpoint, once its old training process (told to stop when its sweep died, by
`fer_flax.research.sweep.launcher`) has released `train.lock`. A trial that has been told to Optuna is never
started again.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from typing import Any

import optuna
from optuna.trial import TrialState

from fer_flax.research.sweep import space as sweep_space
from fer_flax.run import lock as workdir_lock
from fer_flax.run import tracking
from fer_flax.run import workdir as workdir_lib

TRIAL_CONFIG = "trial_config.py"
LOG_FILE = "train.log"
SWEEP_LOCK = "sweep.lock"
CLAIM_LOCK = "claim.lock"


def trial_dir(root: str, number: int) -> str:
    return os.path.join(root, f"trial_{number}")


@dataclasses.dataclass(frozen=True)
class TrialSetup:
    """What every trial of a sweep shares: the base config, the sweep's overrides, the space."""

    root: str
    base: str
    overrides: Mapping[str, Any]
    space: Mapping[str, sweep_space.Param]


@dataclasses.dataclass
class Claim:
    """A trial this process now owns (its sweep.lock held) with its values."""

    trial: optuna.trial.Trial
    lock_fd: int | None
    values: dict[str, Any]
    adopted: bool
    reported: set[int]  # steps whose evaluation Optuna has


@contextlib.contextmanager
def claim_lock(root: str) -> Iterator[None]:
    """The sweep-wide lock (waits for it): claims, and the creation of the study, happen under it."""
    os.makedirs(root, exist_ok=True)
    fd = os.open(os.path.join(root, CLAIM_LOCK), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # waits: claims are quick
        yield
    finally:
        os.close(fd)


def _try_lock(folder: str) -> tuple[bool, int | None]:
    """(taken, fd) for the trial folder's sweep.lock; fd None where the filesystem has no locks."""
    try:
        return True, workdir_lock.acquire(folder, SWEEP_LOCK)
    except workdir_lock.WorkdirLockedError:
        return False, None


def _running_numbers(study: optuna.Study) -> set[int]:
    return {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))}


def claim_next(study: optuna.Study, setup: TrialSetup, n_trials: int) -> tuple[Claim | None, list[int]]:
    """The next trial for this process: an orphaned RUNNING trial, else a new one while the study has
    fewer than `n_trials`. Also returns the orphans whose old training process is still alive (to
    wait for; None is returned then when there is nothing else to run)."""
    waiting = []
    with claim_lock(setup.root):
        for number in sorted(_running_numbers(study)):
            folder = trial_dir(setup.root, number)
            taken, fd = _try_lock(folder)
            if not taken:
                continue  # another sweep process runs it
            # Re-read under the lock: its owner may have told Optuna and let go meanwhile.
            still_running = number in _running_numbers(study)
            if not still_running or workdir_lock.is_held(folder):
                if still_running:
                    waiting.append(number)  # its training process has not stopped yet
                workdir_lock.release(fd)
                continue
            frozen = next(t for t in study.get_trials(deepcopy=False) if t.number == number)
            # Optuna's public Trial constructor takes the storage id, which only FrozenTrial carries.
            trial = optuna.trial.Trial(study, frozen._trial_id)
            values = sweep_space.suggest(trial, setup.space)
            return Claim(trial, fd, values, adopted=True, reported=set(frozen.intermediate_values)), waiting
        if len(study.get_trials(deepcopy=False)) >= n_trials:
            return None, waiting
        trial = study.ask()
        _, fd = _try_lock(trial_dir(setup.root, trial.number))
        return Claim(
            trial, fd, sweep_space.suggest(trial, setup.space), adopted=False, reported=set()
        ), waiting


def training_command(config_path: str, workdir: str) -> list[str]:
    """`python -m fer_flax.main --config <config_path> --workdir <workdir>` behind the launcher that
    stops it cleanly when this sweep process dies (`fer_flax.research.sweep.launcher`)."""
    main = [sys.executable, "-m", "fer_flax.main", "--config", config_path, "--workdir", workdir]
    return [sys.executable, "-m", "fer_flax.research.sweep.launcher", str(os.getpid()), *main]


def best_selected(records: list[dict]) -> dict[int, float]:
    """{step: accuracy of the weights best/ selects} of every evaluation in metrics records."""
    return {
        int(r["step"]): float(r.get("selected/accuracy", r["val/accuracy"]))
        for r in records
        if "val/accuracy" in r
    }


class TrialRun:
    """A claimed trial's training process, watched until it ends (`poll`)."""

    def __init__(self, study: optuna.Study, claim: Claim, setup: TrialSetup, env: Mapping[str, str], say):
        self.study, self.claim, self.setup, self.say = study, claim, setup, say
        self.trial = claim.trial
        self.number = claim.trial.number
        self.folder = trial_dir(setup.root, self.number)
        self.pruning = self.interrupting = False
        self.state: TrialState | None = None  # what Optuna was told (None: left RUNNING)
        self.error: str | None = None
        self._started = time.monotonic()
        self.process = self._start(env)

    def _start(self, env: Mapping[str, str]) -> subprocess.Popen | None:
        config_path = os.path.join(self.folder, TRIAL_CONFIG)
        doc = (
            f"Trial {self.number} of the sweep in {self.setup.root}: {self.setup.base} with the "
            f"sweep's overrides and this trial's values.\n\nRun it:\n  python -m fer_flax.main "
            f"--config {config_path} --workdir {self.folder}"
        )
        text = sweep_space.config_file_text(self.setup.base, self.setup.overrides, self.claim.values, doc)
        workdir_lib.write_text(config_path, text)
        self.trial.set_user_attr("workdir", os.path.basename(self.folder))
        if self.claim.adopted and self.trial.should_prune():  # pruned just before its sweep died
            self._tell(TrialState.PRUNED)
            return None
        verb = "resumes" if self.claim.adopted else "starts"
        log_path = os.path.join(self.folder, LOG_FILE)
        self.say(f"trial {self.number} {verb}: {sweep_space.format_values(self.claim.values)} ({log_path})")
        with open(log_path, "ab") as log:
            return subprocess.Popen(
                training_command(config_path, self.folder),
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, **env, "PYTHONUNBUFFERED": "1"},
                start_new_session=True,  # a Ctrl-C reaches the sweep only; it stops each run once
            )

    def _report_new_evaluations(self) -> bool:
        """Reports evaluations not yet reported; whether there was any."""
        path = os.path.join(self.folder, workdir_lib.METRICS_FILE)
        try:
            records = tracking.read_metrics(path) if os.path.isfile(path) else []
        except ValueError:
            return False  # damaged by hand: the run itself will say so
        new = {s: v for s, v in sorted(best_selected(records).items()) if s not in self.claim.reported}
        for step, value in new.items():
            self.trial.report(value, step)
            self.claim.reported.add(step)
            self.say(f"trial {self.number} step {step}: val accuracy {value:.4f}")
        return bool(new)

    def poll(self) -> bool:
        """Reports new evaluations, prunes if Optuna says so, and tells Optuna how the trial ended
        once its process has; True when the trial is over (for this process)."""
        if self.process is None:
            return True
        code = self.process.poll()
        reported = self._report_new_evaluations()
        if code is None:
            if reported and not (self.pruning or self.interrupting) and self.trial.should_prune():
                step = max(self.claim.reported)
                self.say(f"trial {self.number} is below the pruner's bar at step {step}: stopping it")
                self.pruning = True
                self.process.send_signal(signal.SIGTERM)
            return False
        self._finish(code)
        return True

    def interrupt(self) -> None:
        """The sweep is stopping: the run checkpoints and stops; the trial stays RUNNING for a resume."""
        if self.process is not None and self.process.poll() is None and not self.interrupting:
            self.interrupting = True
            self.process.send_signal(signal.SIGTERM)

    def _finish(self, code: int) -> None:
        seconds = self.trial.user_attrs.get("seconds", 0.0) + time.monotonic() - self._started
        self.trial.set_user_attr("seconds", round(seconds, 1))
        summary = os.path.join(self.folder, workdir_lib.SUMMARY_FILE)
        if code == 0 and os.path.isfile(summary):
            value = summary_value(summary)
            if value is None:
                self.error = "finished without a best validation accuracy"
                self._tell(TrialState.FAIL)
            else:
                self._tell(TrialState.COMPLETE, value)
                self.say(f"trial {self.number} complete: best val accuracy {value:.4f} ({seconds:.0f} s)")
        elif self.pruning:
            self._tell(TrialState.PRUNED)
        elif self.interrupting:
            self.say(f"trial {self.number} stopped at a checkpoint; rerun the sweep to resume it")
            self._release()
        else:
            self.error = f"exit status {code}: {last_error(os.path.join(self.folder, LOG_FILE))}"
            self.trial.set_user_attr("error", self.error)
            self._tell(TrialState.FAIL)
            self.say(f"trial {self.number} failed ({self.error}); see {os.path.join(self.folder, LOG_FILE)}")

    def _tell(self, state: TrialState, value: float | None = None) -> None:
        self.state = state
        self.study.tell(self.trial, value, state=state)
        if state == TrialState.PRUNED:
            self.say(f"trial {self.number} pruned")
        self._release()

    def _release(self) -> None:
        workdir_lock.release(self.claim.lock_fd)
        self.claim.lock_fd = None


def summary_value(summary_path: str) -> float | None:
    """`best_val_accuracy` of a run's summary.json (None when absent or unreadable)."""
    try:
        with open(summary_path) as f:
            value = json.load(f).get("best_val_accuracy")
    except (OSError, ValueError):
        return None
    return None if value is None else float(value)


def last_error(log_path: str) -> str:
    """The run's `error: ...` line, else the last line of its log."""
    try:
        with open(log_path, errors="replace") as f:
            lines = [line.strip() for line in f if line.strip()]
    except OSError:
        return "no log"
    errors = [line for line in lines if line.startswith("error:")]
    return (errors or lines or ["no output"])[-1][:300]
