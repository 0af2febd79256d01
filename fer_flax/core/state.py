"""The train state: parameters, BatchNorm statistics, optimizer state and (with an EMA) the averaged
weights, initialised straight into replicated device memory. Restoring a finished run for inference is
`fer_flax.run.trained`; the model itself is built by `fer_flax.core.model`."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax.training import train_state

from fer_flax.core import parallel
from fer_flax.core.model import initial_variables, run_once
from fer_flax.data.spec import FER2013


class TrainState(train_state.TrainState):
    batch_stats: Any = None


class EmaTrainState(TrainState):
    """The train state of a run with config.ema.decay > 0: plus the EMA of params and batch_stats
    (fer_flax/core/ema.py). A separate class rather than None-valued fields on TrainState: Orbax records
    None fields in the checkpoint's tree structure, so checkpoints of runs without EMA would no
    longer restore into a TrainState."""

    ema_params: Any = None
    ema_batch_stats: Any = None

    def ema_weights(self) -> EmaTrainState:
        """This state with the EMA weights and statistics in place of the raw ones (for evaluation)."""
        return self.replace(params=self.ema_params, batch_stats=self.ema_batch_stats)


def has_ema(state: TrainState) -> bool:
    return isinstance(state, EmaTrainState)


def create_train_state(
    model: nn.Module,
    tx: optax.GradientTransformation,
    rng: jax.Array,
    mesh: jax.sharding.Mesh,
    *,
    ema: bool = False,
    image_shape: tuple[int, int, int] = FER2013.image_shape,
) -> TrainState:
    """Initialises directly into replicated device memory (no host round trip of the parameters).
    With `ema`, the EMA weights and statistics start as copies of the initial ones."""

    def init(rng):
        variables = initial_variables(model, rng, image_shape)
        params, batch_stats = variables["params"], variables.get("batch_stats", {})
        if not ema:
            return TrainState.create(apply_fn=model.apply, params=params, batch_stats=batch_stats, tx=tx)
        return EmaTrainState.create(
            apply_fn=model.apply,
            params=params,
            batch_stats=batch_stats,
            tx=tx,
            ema_params=jax.tree.map(jnp.copy, params),
            ema_batch_stats=jax.tree.map(jnp.copy, batch_stats),
        )

    return run_once(jax.jit(init, out_shardings=parallel.replicated_sharding(mesh)), rng)


def variables(state: TrainState) -> dict:
    """The inference variables of a train state (its raw weights)."""
    return {"params": state.params, "batch_stats": state.batch_stats}
