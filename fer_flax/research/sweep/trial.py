"""One trial of a sweep: its training process, and what Optuna hears from it.

A trial is an ordinary fer_flax run in `<sweep>/trial_<n>/`: its config is the generated
`trial_config.py` there (base config + the sweep's overrides + the trial's values), and the sweep
starts `python -m fer_flax.main --config <that file> --workdir <that folder>` with the output in
`train.log`. While it trains, the sweep reads its `metrics.jsonl`: each evaluation's accuracy of the
weights best/ selects (`selected/accuracy` with an EMA, else `val/accuracy`) is reported to Optuna
at its training step, and when the pruner says so the run gets SIGTERM, which makes it finish its
step, checkpoint and stop. The objective of a finished trial is its `summary.json`
`best_val_accuracy`, the accuracy of what best/ holds.

Which trial a sweep process runs, and in which folder, is `fer_flax.research.sweep.claim`'s
business: the process that runs a trial holds the flock `<folder>/sweep.lock` for as long as it does,
and the training process its own `train.lock` (`fer_flax.run.lock`). With a shared study the sweep
process also records the trial's heartbeat while it holds it, and gives the trial up (its run stops
at a checkpoint, Optuna hears nothing more from here) when another worker has taken it over.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from typing import Any

import optuna
from optuna.trial import TrialState

from fer_flax.research.sweep import space as sweep_space
from fer_flax.research.sweep.storage import SharedStudy
from fer_flax.run import lock as workdir_lock
from fer_flax.run import tracking
from fer_flax.run import workdir as workdir_lib

TRIAL_CONFIG = "trial_config.py"
LOG_FILE = "train.log"
SWEEP_LOCK = "sweep.lock"


def trial_dir(root: str, number: int) -> str:
    return os.path.join(root, f"trial_{number}")


@dataclasses.dataclass(frozen=True)
class TrialSetup:
    """What every trial of a sweep shares: the base config, the sweep's overrides, the space, and the
    shared study it belongs to (None: the workdir's own SQLite study)."""

    root: str
    base: str
    overrides: Mapping[str, Any]
    space: Mapping[str, sweep_space.Param]
    shared: SharedStudy | None = None


@dataclasses.dataclass
class Claim:
    """A trial this process now owns, with its values and the folder it runs in."""

    trial: optuna.trial.Trial
    trial_id: int  # the storage's id of the trial, which heartbeats name
    folder: str
    values: dict[str, Any]
    adopted: bool  # its run resumes from what `folder` holds
    reported: set[int]  # steps whose evaluation Optuna has
    retry_of: int | None = None  # the first trial of its retry history (shared study)
    lock_fd: int | None = None
    locked: bool = False  # whether this process holds the folder's sweep.lock


def try_lock(folder: str) -> tuple[bool, int | None]:
    """(taken, fd) for the trial folder's sweep.lock; fd None where the filesystem has no locks."""
    try:
        return True, workdir_lock.acquire(folder, SWEEP_LOCK)
    except workdir_lock.WorkdirLockedError:
        return False, None


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
    """A claimed trial's training process, watched until it ends (`poll`). The process starts once
    the trial's folder is free (a retry may find the training process of the worker that stopped
    still writing its checkpoint there); with a shared study, a heartbeat is recorded meanwhile."""

    def __init__(self, study: optuna.Study, claim: Claim, setup: TrialSetup, env: Mapping[str, str], say):
        self.study, self.claim, self.setup, self.env, self.say = study, claim, setup, env, say
        self.trial = claim.trial
        self.number = claim.trial.number
        self.folder = claim.folder
        self.pruning = self.interrupting = False
        self.lost: str | None = None  # why this process gave the trial up to another worker
        self.done = False  # this process is through with the trial
        self.state: TrialState | None = None  # what Optuna was told (None: nothing)
        self.error: str | None = None
        self.process: subprocess.Popen | None = None
        self._signalled = self._said_waiting = False
        self._started = self._beat_at = self._beat_ok = time.monotonic()
        self._try_start()

    def _folder_free(self) -> bool:
        """Takes the folder's sweep.lock if not yet held; whether no training process uses it."""
        if not self.claim.locked:
            taken, fd = try_lock(self.folder)
            if not taken:
                return False
            self.claim.lock_fd, self.claim.locked = fd, True
        return not workdir_lock.is_held(self.folder)

    def _try_start(self) -> None:
        if not self._folder_free():
            if not self._said_waiting:
                self._said_waiting = True
                self.say(f"trial {self.number}: waiting for the previous training process in {self.folder}")
            return
        config_path = os.path.join(self.folder, TRIAL_CONFIG)
        doc = (
            f"Trial {self.number} of the sweep in {self.setup.root}: {self.setup.base} with the "
            f"sweep's overrides and this trial's values.\n\nRun it:\n  python -m fer_flax.main "
            f"--config {config_path} --workdir {self.folder}"
        )
        text = sweep_space.config_file_text(self.setup.base, self.setup.overrides, self.claim.values, doc)
        workdir_lib.write_text(config_path, text)
        self.trial.set_user_attr("workdir", os.path.basename(self.folder))
        self.trial.set_user_attr("host", socket.gethostname())
        if self.claim.adopted and self.trial.should_prune():  # pruned just before its sweep stopped
            self._tell(TrialState.PRUNED)
            return
        verb = "resumes" if self.claim.adopted else "starts"
        retry = "" if self.claim.retry_of is None else f" (a retry of trial {self.claim.retry_of})"
        log_path = os.path.join(self.folder, LOG_FILE)
        values = sweep_space.format_values(self.claim.values)
        self.say(f"trial {self.number} {verb}{retry}: {values} ({log_path})")
        self._started = time.monotonic()
        with open(log_path, "ab") as log:
            self.process = subprocess.Popen(
                training_command(config_path, self.folder),
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, **self.env, "PYTHONUNBUFFERED": "1"},
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
        """Records the heartbeat (shared study), starts the run once its folder is free, reports new
        evaluations, prunes if Optuna says so, and tells Optuna how the trial ended once its process
        has; True when the trial is over (for this process)."""
        if self.done:
            return True
        try:
            return self._poll()
        except optuna.exceptions.UpdateFinishedTrialError:  # failed as stale before a heartbeat noticed
            self._lose("another worker has taken it over (its heartbeat had lapsed)")
            return self.done

    def _poll(self) -> bool:
        if self.setup.shared is not None:
            self._beat()
        if self.process is None:
            if self.lost or self.interrupting:
                self._release()
            elif not self.done:
                self._try_start()
            return self.done
        code = self.process.poll()
        reported = self.lost is None and self._report_new_evaluations()
        if code is None:
            if reported and not (self.pruning or self.interrupting) and self.trial.should_prune():
                step = max(self.claim.reported)
                self.say(f"trial {self.number} is below the pruner's bar at step {step}: stopping it")
                self.pruning = True
                self._stop()
            return False
        self._finish(code)
        return True

    def _beat(self) -> None:
        """Every heartbeat interval: records the heartbeat, and gives the trial up when another worker
        has it or when no heartbeat got through for half the grace period (before others may take it)."""
        shared, now = self.setup.shared, time.monotonic()
        assert shared is not None
        if now - self._beat_at < shared.heartbeat_interval:
            return
        self._beat_at = now
        running = shared.beat(self.claim.trial_id)
        if running:
            self._beat_ok = now
        elif running is False:
            self._lose("another worker has taken it over (its heartbeat had lapsed)")
        elif now - self._beat_ok > shared.grace_period / 2 and self.lost is None:
            self._lose(f"no heartbeat reached the database for {now - self._beat_ok:.0f} s")

    def _lose(self, why: str) -> None:
        """Gives the trial up: its run stops at a checkpoint, and Optuna hears nothing from here."""
        if self.lost is None:
            self.lost = why
            self.say(f"trial {self.number}: {why}; stopping its run here")
        if self.process is not None and self.process.poll() is None:
            self._stop()
        else:
            self._release()

    def _stop(self) -> None:
        """One SIGTERM: the run finishes its step, checkpoints and stops (a second would abort it)."""
        if self.process is not None and self.process.poll() is None and not self._signalled:
            self._signalled = True
            self.process.send_signal(signal.SIGTERM)

    def interrupt(self) -> None:
        """The sweep is stopping: the run checkpoints and stops; the trial is left to be resumed (local
        study: RUNNING, for a rerun; shared study: handed back as a retry any worker takes)."""
        if not self.done and not self.interrupting:
            self.interrupting = True
            self._stop()

    def _finish(self, code: int) -> None:
        if self.lost is not None:
            self.say(f"trial {self.number} stopped here; another worker has it")
            self._release()
            return
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
            self._release()
        else:
            self.error = f"exit status {code}: {last_error(os.path.join(self.folder, LOG_FILE))}"
            self.trial.set_user_attr("error", self.error)
            self._tell(TrialState.FAIL)
            self.say(f"trial {self.number} failed ({self.error}); see {os.path.join(self.folder, LOG_FILE)}")

    def _tell(self, state: TrialState, value: float | None = None) -> None:
        told = self.study.tell(self.trial, value, state=state, skip_if_finished=True)
        if told.state != state:  # another worker failed it first (shared study): Optuna kept that
            raise optuna.exceptions.UpdateFinishedTrialError(f"trial {self.number} is {told.state.name}")
        self.state = state
        if state == TrialState.PRUNED:
            self.say(f"trial {self.number} pruned")
        self._release()

    def _release(self) -> None:
        """Ends this process's hold on the trial. One stopped by the sweep is left to be resumed: a
        local study keeps it RUNNING for a rerun, a shared one queues its retry at once."""
        if self.done:
            return
        if self.interrupting and self.state is None and self.lost is None:
            stopped = "stopped at a checkpoint" if self.process is not None else "not started"
            if self.setup.shared is not None:
                self.setup.shared.hand_back(self.study, self.claim.trial_id)
                self.say(f"trial {self.number} {stopped}; handed back for any worker to resume")
            else:
                self.say(f"trial {self.number} {stopped}; rerun the sweep to resume it")
        workdir_lock.release(self.claim.lock_fd)
        self.claim.lock_fd, self.claim.locked, self.done = None, False, True


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
