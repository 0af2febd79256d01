"""Command line: `python -m fer_flax.main --config configs/simple_cnn.py --workdir workdirs/run`.

Config overrides follow ml_collections: `--config.optim.lr=0.01`; unknown keys are rejected.

Expected errors (a bad config value or data row, a busy or incompatible workdir, a failed checkpoint
save, ...) print one `error: ...` line and exit with status 1; `--debug` adds the traceback
(`fer_flax.cli`).

Rerunning the same command resumes from the workdir's latest checkpoint. SIGTERM or Ctrl-C (SIGINT)
finishes the current step, writes a checkpoint, prints where it stopped and exits with status 143 or
130.

Multi-process (several hosts, or one process per GPU): every process runs the same command, joined by
`--coordinator_address=HOST:PORT --num_processes=N --process_id=I` (or the environment variables
FER_FLAX_COORDINATOR / FER_FLAX_NUM_PROCESSES / FER_FLAX_PROCESS_ID). Under `srun` with several tasks
the three are read from SLURM; `./launch.sh` sets everything up.
"""

from __future__ import annotations

import sys

from absl import app, flags, logging
from ml_collections import config_flags

from fer_flax import cli, runtime
from fer_flax.run.interrupts import TrainingInterrupted
from fer_flax.training import loop as train

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and logs.")
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None, "Multi-process: HOST:PORT of process 0 (env FER_FLAX_COORDINATOR)."
)
_NUM_PROCESSES = flags.DEFINE_integer(
    "num_processes", None, "Multi-process: number of processes (env FER_FLAX_NUM_PROCESSES)."
)
_PROCESS_ID = flags.DEFINE_integer(
    "process_id", None, "Multi-process: this process's id in [0, num_processes) (env FER_FLAX_PROCESS_ID)."
)
flags.mark_flags_as_required(["config", "workdir"])


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    # Orbax and JAX log every checkpoint step at INFO; keep the console for progress and results
    # unless the user asks for more with -v / --verbosity.
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)
    config = _CONFIG.value
    runtime.start(
        config,
        coordinator_address=_COORDINATOR.value,
        num_processes=_NUM_PROCESSES.value,
        process_id=_PROCESS_ID.value,
    )
    try:
        train.train_and_evaluate(config, _WORKDIR.value)
    except TrainingInterrupted as e:
        # SIGTERM/SIGINT: a checkpoint is written and the message printed; exit 128 + signal number
        # (143 / 130) so schedulers and shells see an interrupted job, not a finished one.
        sys.exit(e.exit_code)
    # Only after a clean finish: the shutdown barrier waits for every process, and one that failed
    # will never arrive (its error already ends this job through the coordination service).
    runtime.shutdown()


if __name__ == "__main__":
    cli.run(main)
