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
the three are read from SLURM; `./launch.sh` sets everything up. A process of the job that is lost
(killed, crashed, stopped, cut off) ends the others with one `error: ...` line naming it, status 1,
within 1.2 x FER_FLAX_HOST_TIMEOUT seconds (default 60; docs/scale-out.md).
"""

from __future__ import annotations

from absl import flags
from ml_collections import config_flags

from fer_flax import cli
from fer_flax.training import loop as train

# Trains on the CPU devices the config asks for, and joins multi-process jobs. Absl logging at WARNING:
# Orbax and JAX log every checkpoint step at INFO, the warnings stay.
COMMAND = cli.Command(cpu_devices_from_config=True, multi_process=True, log_level="warning")


def define_flags() -> None:
    config_flags.DEFINE_config_file("config", None, "Experiment config file.", lock_config=True)
    flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and logs.")
    flags.mark_flags_as_required(["config", "workdir"])


def main(argv: list[str]) -> None:
    del argv  # the program name only: the preamble refuses positional arguments
    train.train_and_evaluate(flags.FLAGS.config, flags.FLAGS.workdir)


if __name__ == "__main__":
    cli.main_of("fer_flax.main")
