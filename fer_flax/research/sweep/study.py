"""Hyper-parameter sweeps with Optuna: each trial an ordinary fer_flax run, weak trials pruned on
their validation curve, and a summary with the best config as a ready-to-run file.

Command:
  python -m fer_flax.sweep --config configs/cpu_recipe.py --space sweeps/cpu_recipe.py --trials 8 \
      --workdir workdirs/sweep_cpu [--config.data.path=...] [--pruner median|halving|none] \
      [--parallel P] [--gpus 0,1,2,3] [--seed S] [--summary_only] \
      [--storage postgresql+psycopg://user@host/db --study NAME]

The study lives in `<workdir>/study.db` (SQLite), so rerunning the same command continues a killed
or stopped sweep: trials that were running resume from their checkpoints, finished ones are never
run again, and new ones are started until the study holds `--trials` trials. Several sweep
processes may share one workdir (on one machine or on a shared filesystem with working locks);
`fer_flax.research.sweep.claim` says how they share the trials. Ctrl-C or SIGTERM stops every running trial
at a checkpoint and writes the summary.

With `--storage URL --study NAME` the study is in a PostgreSQL database instead, and workers on
several machines run the same command to share it (each with its own workdir, or one on a network
filesystem): a heartbeat tells which trials have a live worker, and the trial of a worker that stops
is retried by another, from its checkpoint where that one can see it (`fer_flax.research.sweep.storage`).

`--parallel P` runs P trials at once, each its own process: with `--gpus`, worker slot s gets its
share of the listed GPUs through CUDA_VISIBLE_DEVICES (several slots share a GPU when P exceeds their
number); on a CPU each trial splits the host as `config.cpu_devices` says (set it to 1 with P > 1).
Each trial's config sets `wandb.group` to the sweep's name, so with wandb on the trials of a sweep
are one group.

The objective is the best validation accuracy of a trial (what its best/ checkpoint holds),
maximised. Pruners: `median` (Optuna's MedianPruner: stop a trial whose best accuracy so far is
below the median of earlier trials at the same step, once `--prune_after` trials have finished),
`halving` (asynchronous successive halving) or `none`. Outputs and the space file's format:
docs/sweeps.md.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import optuna
from absl import flags
from ml_collections import config_flags
from optuna.trial import TrialState

from fer_flax import cli
from fer_flax.config import schema as config_schema
from fer_flax.research.sweep import space as sweep_space
from fer_flax.research.sweep import storage
from fer_flax.research.sweep import summary as sweep_summary
from fer_flax.research.sweep.claim import claim_lock, claim_next
from fer_flax.research.sweep.storage import SharedStudy
from fer_flax.research.sweep.trial import TrialRun, TrialSetup
from fer_flax.run import interrupts
from fer_flax.run import workdir as workdir_lib

STUDY_NAME = "sweep"  # of the workdir's SQLite study
SHARED_RECORD = "shared_study.json"  # in the workdir of a shared study: which one it belongs to
PRUNERS = ("median", "halving", "none")
POLL_SECONDS = 0.5
MAX_FAILURES_IN_A_ROW = 3


def make_pruner(name: str, prune_after: int) -> optuna.pruners.BasePruner:
    config_schema.check_choice("--pruner", name, PRUNERS)
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=prune_after, n_warmup_steps=0)
    if name == "halving":
        return optuna.pruners.SuccessiveHalvingPruner()
    return optuna.pruners.NopPruner()


def open_study(
    root: str,
    *,
    shared: SharedStudy | None = None,
    pruner: str = "none",
    prune_after: int = 3,
    seed: int | None = None,
    create: bool = True,
) -> optuna.Study:
    """The sweep's study: the workdir's SQLite one, or `shared` (created when `create`). The sampler
    is TPE, seeded from `seed` and the number of trials already in the study, so a resumed sweep does
    not repeat the first suggestions."""
    if shared is not None:
        with shared.lock():  # the first workers to start would all create it
            if not create:
                try:
                    shared.storage.get_study_id_from_name(shared.name)
                except KeyError:
                    raise FileNotFoundError(f"no {shared.where()}: the sweep has not started") from None
            study = optuna.create_study(
                storage=shared.storage, study_name=shared.name, direction="maximize", load_if_exists=True
            )
    else:
        path = os.path.join(root, storage.STUDY_FILE)
        if not create and not os.path.isfile(path):
            raise FileNotFoundError(f"{path} not found: {root} holds no sweep yet")
        with claim_lock(root):  # two processes creating the database at once would collide
            study = optuna.create_study(
                storage=storage.local_storage(root),
                study_name=STUDY_NAME,
                direction="maximize",
                load_if_exists=True,
            )
    sampler_seed = None
    if seed is not None:
        sampler_seed = int(np.random.SeedSequence([seed, len(study.trials)]).generate_state(1)[0])
    study.sampler = optuna.samplers.TPESampler(seed=sampler_seed)
    study.pruner = make_pruner(pruner, prune_after)
    return study


def check_workdir(root: str, shared: SharedStudy | None) -> None:
    """Keeps a workdir to one study, since its trial folders are named by trial number: a shared
    study's workdir records the study's name (`shared_study.json`), a local one holds study.db."""
    path = os.path.join(root, SHARED_RECORD)
    record = None
    if os.path.isfile(path):
        with open(path) as f:
            record = json.load(f)
    if shared is None:
        if record is not None:
            raise ValueError(
                f"{root} is a workdir of the shared study {record['study']!r} in {record['storage']}: "
                "give --storage and --study as its workers do, or use a new --workdir"
            )
        return
    if os.path.isfile(os.path.join(root, storage.STUDY_FILE)):
        raise ValueError(f"{root} holds a local sweep (study.db): use a new --workdir for {shared.where()}")
    if record is not None and record["study"] != shared.name:
        raise ValueError(
            f"{root} is a workdir of the shared study {record['study']!r}, not {shared.name!r}: "
            "use a new --workdir"
        )
    if record is None:
        os.makedirs(root, exist_ok=True)
        workdir_lib.write_json(path, {"study": shared.name, "storage": storage.shown(shared.url)})


def check_same_sweep(study: optuna.Study, setup: TrialSetup, root: str) -> None:
    """Records what the sweep is (base config, overrides, space) in a new study, and refuses to
    continue one made by a different command."""
    identity = {
        "base": setup.base,
        "overrides": {k: repr(v) for k, v in setup.overrides.items()},
        "space": {k: sweep_space.describe(p) for k, p in setup.space.items()},
    }
    if "sweep" not in study.user_attrs:
        study.set_user_attr("sweep", identity)
        name = setup.shared.name if setup.shared else os.path.basename(os.path.abspath(root))
        study.set_user_attr("name", name)
        return
    old = study.user_attrs["sweep"]
    differ = [k for k in identity if old.get(k) != identity[k]]
    if differ:
        lines = "\n".join(f"  {k}: {old.get(k)!r} in the study -> {identity[k]!r} now" for k in differ)
        where = setup.shared.where() if setup.shared else root
        raise ValueError(
            f"{where} holds a sweep made by a different command; refusing to continue it:\n{lines}\n"
            "Rerun with the sweep's own --config, overrides and --space, or start a new sweep."
        )


def slot_environments(parallel: int, gpus: Sequence[str]) -> list[dict[str, str]]:
    """Per worker slot, the environment its trials start with: a share of `gpus` (contiguous, equal
    shares; slots share GPUs round-robin, without preallocation, when there are more slots)."""
    if parallel < 1:
        raise ValueError(f"--parallel must be >= 1, got {parallel}")
    if not gpus:
        return [{} for _ in range(parallel)]
    if parallel <= len(gpus):
        share = len(gpus) // parallel
        return [
            {"CUDA_VISIBLE_DEVICES": ",".join(gpus[s * share : (s + 1) * share])} for s in range(parallel)
        ]
    return [
        {"CUDA_VISIBLE_DEVICES": gpus[s % len(gpus)], "XLA_PYTHON_CLIENT_PREALLOCATE": "false"}
        for s in range(parallel)
    ]


def _progress(study: optuna.Study, n_trials: int) -> str:
    trials = study.get_trials(deepcopy=False)
    retried = storage.retried_numbers(trials)
    trials = [t for t in trials if t.number not in retried]
    counts = {s: sum(t.state == s for t in trials) for s in TrialState}
    done = sum(t.state.is_finished() for t in trials)
    line = (
        f"sweep: {done}/{n_trials} trials done ({counts[TrialState.COMPLETE]} complete, "
        f"{counts[TrialState.PRUNED]} pruned, {counts[TrialState.FAIL]} failed"
        + (f", {len(retried)} retried" if retried else "")
        + f"), {counts[TrialState.RUNNING]} running"
    )
    if counts[TrialState.COMPLETE]:
        best = study.best_trial
        line += f"; best {best.value:.4f} (trial {best.number})"
    return line


class TrialsFailingError(ValueError):
    """Several trials in a row failed: something common to all (the data, the config) is wrong."""


def _claim_into(
    running: dict[int, TrialRun],
    study: optuna.Study,
    setup: TrialSetup,
    n_trials: int,
    environments: Sequence[Mapping[str, str]],
    say: Callable[[str], object],
) -> tuple[bool, list[int]]:
    """Starts trials in the free slots; returns (whether the study has nothing more to hand out
    now, the trials to wait for before this process may finish: see `claim_next`)."""
    waiting: list[int] = []
    for slot in range(len(environments)):
        if slot in running:
            continue
        claim, waiting = claim_next(study, setup, n_trials)
        if claim is None:
            return True, waiting
        run = TrialRun(study, claim, setup, environments[slot], say)
        if not run.done:  # done: pruned on adoption, nothing to run
            running[slot] = run
    return False, waiting


def run_trials(
    study: optuna.Study,
    setup: TrialSetup,
    n_trials: int,
    environments: Sequence[Mapping[str, str]],
    say: Callable[[str], object] = print,
) -> int | None:
    """Runs trials (len(environments) at a time) until the study holds `n_trials` and none is left
    to run here (with a shared study: until every trial of the study has ended, since one whose
    worker stops is retried by whoever is left). Returns the signal that stopped it early, or None."""
    running: dict[int, TrialRun] = {}
    failures, last_error, failing, said_waiting, next_claim = 0, None, False, set(), 0.0
    with interrupts.StopRequest(install=True) as stop:  # a second signal ends the sweep at once
        while True:
            for slot, run in list(running.items()):
                if run.poll():
                    del running[slot]
                    failures = failures + 1 if run.state == TrialState.FAIL else 0
                    last_error = run.error or last_error
                    next_claim = 0.0
                    if run.state is not None:
                        say(_progress(study, n_trials))
            if failures >= MAX_FAILURES_IN_A_ROW and not failing:
                say(f"{failures} trials failed in a row: stopping the sweep")
                failing = True
                stop.signum = stop.signum or signal.SIGTERM
            if stop.signum is not None:
                for run in running.values():
                    run.interrupt()
                if not running:
                    break
            elif time.monotonic() >= next_claim:
                exhausted, waiting = _claim_into(running, study, setup, n_trials, environments, say)
                waiting = sorted(set(waiting) - {run.number for run in running.values()})
                if setup.shared is None:
                    for number in sorted(set(waiting) - said_waiting):
                        say(f"trial {number}: waiting for its previous training process to stop")
                    said_waiting |= set(waiting)
                elif exhausted:  # other workers' trials are checked for a stale heartbeat now and then
                    next_claim = time.monotonic() + setup.shared.heartbeat_interval
                    if waiting and not running and not said_waiting:
                        say(f"sweep: nothing left to start; other workers run {waiting} (retried if stopped)")
                        said_waiting = set(waiting)
                if exhausted and not running and not waiting:
                    break
            time.sleep(POLL_SECONDS)
    if failing:
        raise TrialsFailingError(f"{MAX_FAILURES_IN_A_ROW} trials in a row failed; the last: {last_error}")
    return stop.signum


# ------------------------------------------------------------------------------------ command line


# JAX's process start-up without a device split: no device is used here, each trial's own process
# starts its devices. Absl logging at ERROR: the sweep prints its own progress.
COMMAND = cli.Command(log_level="error")


def define_flags() -> None:
    config_flags.DEFINE_config_file("config", None, "Base experiment config file.", lock_config=True)
    flags.DEFINE_string("space", None, "Search space: a Python file defining SPACE (docs/sweeps.md).")
    flags.DEFINE_integer("trials", None, "Trials the study should hold in all (finished or not).")
    flags.DEFINE_string("workdir", None, "Sweep folder: study.db, trial_<n>/, summary files.")
    flags.DEFINE_string(
        "storage", None, "PostgreSQL URL of a study shared by workers on several machines (docs/sweeps.md)."
    )
    flags.DEFINE_string("study", None, "With --storage: the study's name, the same for all its workers.")
    flags.DEFINE_integer(
        "heartbeat_interval", storage.HEARTBEAT_INTERVAL, "With --storage: seconds between heartbeats."
    )
    flags.DEFINE_integer(
        "grace_period", storage.GRACE_PERIOD, "With --storage: heartbeat age (s) at which a trial is retried."
    )
    flags.DEFINE_enum("pruner", "median", list(PRUNERS), "How weak trials are stopped early.")
    flags.DEFINE_integer("prune_after", 3, "median pruner: finished trials before it prunes any.")
    flags.DEFINE_integer("parallel", 1, "Trials run at once (separate processes).")
    flags.DEFINE_list("gpus", [], "GPU ids shared among the parallel slots (CUDA_VISIBLE_DEVICES).")
    flags.DEFINE_integer("seed", None, "Sampler seed (default: fresh randomness on every start).")
    flags.DEFINE_bool("summary_only", False, "Only write the summary of the sweep in --workdir.")
    flags.mark_flags_as_required(["config", "space", "workdir"])


def _shared_study(f: flags.FlagValues) -> SharedStudy | None:
    """The study that --storage and --study name (None: the workdir's SQLite study)."""
    if f.storage is None:
        if f.study is not None:
            raise ValueError("--study names a study in the database of --storage, which is missing")
        return None
    if not f.study:
        raise ValueError("--storage needs --study NAME: the name all the workers of this sweep give")
    return SharedStudy(f.storage, f.study, f.heartbeat_interval, f.grace_period)


def main(argv: list[str]) -> None:
    del argv  # the program name only: the preamble refuses positional arguments
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # the sweep prints its own progress
    f = flags.FLAGS
    root = os.path.abspath(f.workdir)
    config_flag = f["config"]
    base, overrides = config_flag.config_filename, dict(config_flag.override_values)
    if not f.summary_only and (f.trials is None or f.trials < 1):
        raise ValueError("--trials must be given, >= 1 (the number of trials the study should hold)")
    environments = slot_environments(f.parallel, f.gpus)
    config_schema.validate(f.config)
    space = sweep_space.load_space(f.space, f.config)
    shared = _shared_study(f)
    check_workdir(root, shared)
    study = open_study(
        root,
        shared=shared,
        pruner=f.pruner,
        prune_after=f.prune_after,
        seed=f.seed,
        create=not f.summary_only,
    )
    # The trials of a sweep are one wandb group, named after the sweep (unless the command names one).
    name = shared.name if shared else os.path.basename(root)
    overrides.setdefault("wandb.group", study.user_attrs.get("name", name))
    setup = TrialSetup(root=root, base=base, overrides=overrides, space=space, shared=shared)
    with shared.lock() if shared else claim_lock(root):
        check_same_sweep(study, setup, root)
    stopped_by = None
    if not f.summary_only:
        where = f"{root}, {shared.where()}" if shared else root
        print(f"Sweep of {base} over {', '.join(space)} in {where} ({f.trials} trials, pruner {f.pruner})")
        try:
            stopped_by = run_trials(study, setup, f.trials, environments)
        except TrialsFailingError:
            sweep_summary.write(study, setup)  # the failures and their errors, for a look
            raise
    result = sweep_summary.write(study, setup)
    print(sweep_summary.markdown(result))
    print(f"Wrote {', '.join(os.path.join(root, name) for name in result['files'])}")
    if stopped_by is not None:
        print("Stopped early; rerun the same command to continue the sweep.")
        raise SystemExit(128 + stopped_by)
