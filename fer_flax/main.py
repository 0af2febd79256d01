"""Command line: `python -m fer_flax.main --config configs/simple_cnn.py --workdir workdirs/run`.

Config overrides follow ml_collections: `--config.optim.lr=0.01`; unknown keys are rejected.
"""

from __future__ import annotations

from absl import app, flags, logging
from ml_collections import config_flags

from fer_flax import train

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and logs.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    # Orbax and JAX log every checkpoint step at INFO; keep the console for progress and results
    # unless the user asks for more with -v / --verbosity.
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)
    train.train_and_evaluate(_CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
    app.run(main)
