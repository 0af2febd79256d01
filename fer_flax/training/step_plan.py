"""All epoch <-> step arithmetic of a run, in one place."""

from __future__ import annotations

import math

from ml_collections import ConfigDict


def step_plan(config: ConfigDict, num_train: int) -> dict[str, int]:
    """Steps per epoch, total steps and the evaluation cadence for `num_train` training images."""
    steps_per_epoch = max(1, math.ceil(num_train / config.batch_size))
    total_steps = max(1, math.ceil(config.num_epochs * steps_per_epoch))
    eval_every = max(1, round(config.eval_every_epochs * steps_per_epoch))
    return {
        "steps_per_epoch": steps_per_epoch,
        "total_steps": total_steps,
        "eval_every_steps": eval_every,
    }
