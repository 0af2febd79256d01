"""Which trial a sweep process runs next, and in which folder.

Local study (SQLite in the workdir). The sweep process that runs a trial holds the flock
`trial_<n>/sweep.lock` for as long as it does (`fer_flax.run.lock`); claims are made under the
sweep-wide lock `claim.lock`, so two sweep processes sharing a study never take the same trial. A
trial left RUNNING in the study with no holder was being run by a sweep that died: the next claim
adopts it and its run resumes from its workdir's latest checkpoint, once its old training process
(told to stop when its sweep died, by `fer_flax.research.sweep.launcher`) has released `train.lock`.
A trial that has been told to Optuna is never started again.

Shared study (`fer_flax.research.sweep.storage.SharedStudy`). The database says who runs what: a
claim takes a retry (WAITING) or a new trial under the study's advisory lock, and the heartbeat that
the sweep process records tells the other workers it still runs it; when it stops, its trial is
failed and retried (storage's docstring). Trial n runs in `trial_<n>` of the worker's workdir,
unique on every machine since numbers are. A retry runs in the folder of the trial it retries when
that is in this workdir (a shared workdir, or the same machine) and resumes from its checkpoint
there, once any old training process has released it; else it starts afresh in its own folder.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator

import optuna
from optuna.trial import FrozenTrial, TrialState

from fer_flax.research.sweep import space as sweep_space
from fer_flax.research.sweep import storage
from fer_flax.research.sweep.trial import TRIAL_CONFIG, Claim, TrialSetup, trial_dir, try_lock
from fer_flax.run import lock as workdir_lock

CLAIM_LOCK = "claim.lock"


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


def _running_numbers(study: optuna.Study) -> set[int]:
    return {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))}


def claim_next(study: optuna.Study, setup: TrialSetup, n_trials: int) -> tuple[Claim | None, list[int]]:
    """The next trial for this process, or None when there is nothing to run now, and the trials
    this process waits for before it may finish. Local study: an orphaned RUNNING trial, else a new
    one while the study has fewer than `n_trials`; it waits for the orphans whose old training
    process is still alive. Shared study: see `_claim_shared`."""
    if setup.shared is not None:
        return _claim_shared(study, setup, n_trials)
    waiting = []
    with claim_lock(setup.root):
        for number in sorted(_running_numbers(study)):
            folder = trial_dir(setup.root, number)
            taken, fd = try_lock(folder)
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
            reported = set(frozen.intermediate_values)
            claim = Claim(trial, frozen._trial_id, folder, values, True, reported, lock_fd=fd, locked=True)
            return claim, waiting
        if storage.counted(study.get_trials(deepcopy=False)) >= n_trials:
            return None, waiting
        trial = study.ask()
        folder = trial_dir(setup.root, trial.number)
        _, fd = try_lock(folder)
        values = sweep_space.suggest(trial, setup.space)
        return Claim(trial, trial._trial_id, folder, values, False, set(), lock_fd=fd, locked=True), waiting


def run_folder(root: str, frozen: FrozenTrial) -> str:
    """Where a trial of a shared study runs in the workdir `root`: a retry in the newest folder of
    its retry history that is here (a shared workdir, or this machine ran it), to resume its run;
    any other trial in its own folder, `trial_<number>` (unique on every machine, as numbers are)."""
    for number in reversed(storage.retry_history(frozen)):
        if os.path.isdir(trial_dir(root, number)):
            return trial_dir(root, number)
    return trial_dir(root, frozen.number)


def _claim_shared(study: optuna.Study, setup: TrialSetup, n_trials: int) -> tuple[Claim | None, list[int]]:
    """A retry or a new trial taken under the shared study's lock (`storage.SharedStudy.take`); this
    process waits for the trials other workers run before it may finish, since any of them is
    retried here if its worker stops. The folder's sweep.lock is taken when the run starts."""
    assert setup.shared is not None
    frozen, running = setup.shared.take(study, n_trials)
    if frozen is None:
        return None, running
    trial = optuna.trial.Trial(study, frozen._trial_id)
    folder = run_folder(setup.root, frozen)
    retry_of = next(iter(storage.retry_history(frozen)), None)
    values = sweep_space.suggest(trial, setup.space)  # a retry's values are its original's
    adopted = os.path.isfile(os.path.join(folder, TRIAL_CONFIG))
    return Claim(
        trial, frozen._trial_id, folder, values, adopted, set(frozen.intermediate_values), retry_of
    ), []
