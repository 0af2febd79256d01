"""All epoch <-> step arithmetic of a run, and what every run of a config starts from: its plan,
learning-rate schedule, optimizer, initial train state and training rng."""

from __future__ import annotations

import math
from typing import Any

import jax
import optax
from ml_collections import ConfigDict

from fer_flax.core import ema as ema_lib
from fer_flax.core import optim
from fer_flax.core import state as model_state
from fer_flax.data.spec import DataSpec


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


def start_state(
    config: ConfigDict, model: Any, spec: DataSpec, mesh: jax.sharding.Mesh, num_train: int
) -> tuple[dict[str, int], optax.Schedule, optax.GradientTransformation, Any, jax.Array]:
    """A run's step plan, learning-rate schedule, optimizer, initial train state (replicated over
    `mesh`) and training rng, for `num_train` training images: what every run of `config` starts
    from, whatever loads its data or restores its checkpoint afterwards."""
    plan = step_plan(config, num_train)
    schedule = optim.create_learning_rate_schedule(
        config.optim, steps_per_epoch=plan["steps_per_epoch"], total_steps=plan["total_steps"]
    )
    tx = optim.create_optimizer(config.optim, schedule)
    init_rng, train_rng = jax.random.split(jax.random.key(config.seed))
    state = model_state.create_train_state(
        model, tx, init_rng, mesh, ema=ema_lib.ema_enabled(config), image_shape=spec.image_shape
    )
    return plan, schedule, tx, state, train_rng
