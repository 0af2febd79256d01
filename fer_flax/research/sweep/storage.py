"""Where a sweep's study lives, and how the sweep processes that share it take trials.

Local (the default): the study is an SQLite file, `<workdir>/study.db`. The sweep processes that
share it share the workdir (one machine, or a network filesystem with working locks), and file locks
in the workdir say who runs what (`fer_flax.research.sweep.trial`).

Shared (`--storage postgresql+psycopg://user@host/db --study NAME`): the study is in a PostgreSQL
database, and sweep workers on several machines share it, each with its own workdir or all with one
on a network filesystem. The database alone says who runs what:

- Claims are made under a PostgreSQL advisory lock of the study, held by one worker at a time on any
  machine: two workers never take the same trial, nor make the study hold more than `--trials`.
- A worker records a heartbeat (Optuna's heartbeat table) for each trial it runs, every
  `heartbeat_interval` seconds; the first one before the trial turns RUNNING, so a worker that dies
  at any moment leaves a trial whose heartbeat goes stale.
- A RUNNING trial whose heartbeat is older than `grace_period` seconds belonged to a worker that died
  or lost the database. The next claim fails it (Optuna's `fail_stale_trials`), and Optuna's
  `RetryHeartbeatStaleTrialCallback` queues its retry: a WAITING copy with its values, evaluations
  and retry history, which the next free worker takes (in the failed trial's folder when it can see
  it, resuming from its checkpoint; see `fer_flax.research.sweep.trial`). The failed original is
  "retried" in the leaderboard and does not count towards `--trials`; a trial is retried however
  often its worker dies (a failure of its own training run is an ordinary FAIL, never retried).
- A worker that cannot record a heartbeat for half the grace period stops its runs at a checkpoint,
  before any other worker may take them over.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import os
import warnings
from collections.abc import Iterable, Iterator

import optuna
import sqlalchemy
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy.exc import SQLAlchemyError

STUDY_FILE = "study.db"
HEARTBEAT_INTERVAL = 10
GRACE_PERIOD = 60
# Seconds a worker waits for the database server to answer a new connection before it gives up.
CONNECT_TIMEOUT = 10
# The advisory lock key space of fer_flax sweeps (any 32-bit number; other users of the database
# are unlikely to pick it), with the study's own key beside it. Key 0: creating the tables.
_LOCK_SPACE = 0x0FE2F1A
_SETUP_KEY = 0


@contextlib.contextmanager
def _experimental_apis() -> Iterator[None]:
    """Optuna marks the heartbeat and its retry callback experimental; the warning says nothing here."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        yield


RetryCallback = optuna.storages.RetryHeartbeatStaleTrialCallback


def local_storage(root: str) -> optuna.storages.RDBStorage:
    """The workdir's SQLite study; concurrent writers wait up to a minute for each other."""
    os.makedirs(root, exist_ok=True)
    url = f"sqlite:///{os.path.abspath(os.path.join(root, STUDY_FILE))}"
    return optuna.storages.RDBStorage(url, engine_kwargs={"connect_args": {"timeout": 60}})


def database_url(url: str) -> str:
    """`url` checked to name a PostgreSQL database, with psycopg 3 as its driver when it names none
    (`postgresql://...` would otherwise mean psycopg2)."""
    try:
        parsed = sqlalchemy.engine.make_url(url)
    except sqlalchemy.exc.ArgumentError as e:
        raise ValueError(f"--storage {url!r} is not a database URL ({e})") from None
    if parsed.get_backend_name() != "postgresql":
        raise ValueError(
            f"--storage takes a PostgreSQL URL (postgresql+psycopg://user@host:5432/db), got "
            f"{parsed.get_backend_name()!r}; without --storage the study is SQLite in the workdir"
        )
    if parsed.drivername == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed.render_as_string(hide_password=False)


def shown(url: str) -> str:
    """`url` with its password, if any, masked: for messages and the workdir's record."""
    return sqlalchemy.engine.make_url(url).render_as_string(hide_password=True)


def retry_history(trial: FrozenTrial) -> list[int]:
    """The trials that `trial` retries, oldest first (empty: it is no retry)."""
    with _experimental_apis():
        return RetryCallback.retry_history(trial)


def retried_numbers(trials: Iterable[FrozenTrial]) -> set[int]:
    """Numbers of the trials that a retry replaces (failed when their worker stopped)."""
    return {n for t in trials for n in retry_history(t)}


def counted(trials: list[FrozenTrial]) -> int:
    """How many trials the study holds towards `--trials`: retried ones count as their retry."""
    return len(trials) - len(retried_numbers(trials) & {t.number for t in trials})


def _key(name: str) -> int:
    """A signed 32-bit advisory lock key of the study `name`, never `_SETUP_KEY`."""
    digest = hashlib.blake2b(name.encode(), digest_size=4).digest()
    return int.from_bytes(digest, "big", signed=True) or 1


class SharedStudy:
    """The study `name` in a PostgreSQL database, shared by sweep workers on any number of machines
    (see the module's docstring for how they share it)."""

    def __init__(
        self,
        url: str,
        name: str,
        heartbeat_interval: int = HEARTBEAT_INTERVAL,
        grace_period: int = GRACE_PERIOD,
    ):
        if heartbeat_interval < 1 or grace_period < 2 * heartbeat_interval:
            raise ValueError(
                f"--heartbeat_interval must be >= 1 and --grace_period at least twice it, got "
                f"{heartbeat_interval} and {grace_period}"
            )
        self.url, self.name = database_url(url), name
        self.heartbeat_interval, self.grace_period = heartbeat_interval, grace_period
        connect_args = {"connect_timeout": CONNECT_TIMEOUT}
        # The lock's own connections, opened per claim: one left by a dead claim is never reused.
        self._lock_engine = sqlalchemy.create_engine(
            self.url, poolclass=sqlalchemy.pool.NullPool, connect_args=connect_args
        )
        with _experimental_apis():
            self._retry = RetryCallback(max_retry=None, inherit_intermediate_values=True)
        with self.lock(_SETUP_KEY), _experimental_apis():  # workers creating the tables at once collide
            self.storage = optuna.storages.RDBStorage(
                self.url,
                engine_kwargs={"pool_pre_ping": True, "connect_args": connect_args},
                heartbeat_interval=heartbeat_interval,
                grace_period=grace_period,
                heartbeat_stale_trial_callback=self._retry,
            )

    def where(self) -> str:
        return f"study {self.name!r} in {shown(self.url)}"

    @contextlib.contextmanager
    def lock(self, key: int | None = None) -> Iterator[None]:
        """The study's claim lock, held by one worker at a time on any machine: a transaction-level
        advisory lock on a connection of its own. Should its holder hang, the server closes the
        connection once it has idled `grace_period` seconds in its transaction, and the lock goes with it."""
        key = _key(self.name) if key is None else key
        with self._lock_engine.connect() as connection:
            timeout_ms = self.grace_period * 1000
            connection.execute(
                sqlalchemy.text(f"SET LOCAL idle_in_transaction_session_timeout = {timeout_ms}")
            )
            connection.execute(
                sqlalchemy.text("SELECT pg_advisory_xact_lock(:a, :b)"), {"a": _LOCK_SPACE, "b": key}
            )
            try:
                yield
            finally:
                with contextlib.suppress(SQLAlchemyError):  # closed by the server: the lock is gone already
                    connection.commit()  # ends the transaction, which releases the lock

    def take(self, study: optuna.Study, n_trials: int) -> tuple[FrozenTrial | None, list[int]]:
        """Under the claim lock: fails the trials whose heartbeat is stale (queuing their retries),
        then takes the first WAITING trial, else a new one while the study counts fewer than
        `n_trials`. Returns the trial taken (now RUNNING, with a fresh heartbeat) or None, and the
        numbers of the trials RUNNING before (by other workers, or by this one)."""
        with self.lock():
            with _experimental_apis():
                optuna.storages.fail_stale_trials(study)
            trials = study.get_trials(deepcopy=False)
            running = [t.number for t in trials if t.state == TrialState.RUNNING]
            waiting = [t for t in trials if t.state == TrialState.WAITING]
            if not waiting and counted(trials) < n_trials:
                study.add_trial(optuna.trial.create_trial(state=TrialState.WAITING))
                waiting = study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
            for frozen in waiting:
                trial_id = frozen._trial_id  # the storage's id: only FrozenTrial carries it
                self.storage.record_heartbeat(trial_id)  # before RUNNING: it goes stale if we die
                with contextlib.suppress(optuna.exceptions.UpdateFinishedTrialError):
                    if self.storage.set_trial_state_values(trial_id, TrialState.RUNNING):
                        return self.storage.get_trial(trial_id), running
        return None, running

    def beat(self, trial_id: int) -> bool | None:
        """Records a heartbeat of a trial this worker runs. Returns whether the trial is still
        RUNNING (False: another worker failed it, its heartbeat having gone stale), or None when the
        database cannot be reached."""
        try:
            self.storage.record_heartbeat(trial_id)
            return self.storage.get_trial(trial_id).state == TrialState.RUNNING
        except (optuna.exceptions.StorageInternalError, SQLAlchemyError):
            return None

    def hand_back(self, study: optuna.Study, trial_id: int) -> None:
        """Fails a trial this worker stops (Ctrl-C, SIGTERM) and queues its retry at once, as its
        heartbeat going stale would later: any worker may take it on from its checkpoint."""
        with self.lock(), contextlib.suppress(optuna.exceptions.UpdateFinishedTrialError):
            if self.storage.set_trial_state_values(trial_id, TrialState.FAIL):
                with _experimental_apis():
                    self._retry(study, copy.deepcopy(self.storage.get_trial(trial_id)))
