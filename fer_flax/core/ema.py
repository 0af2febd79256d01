"""Exponential moving average (EMA) of the weights and BatchNorm statistics.

After every optimizer step, `ema <- decay * ema + (1 - decay) * new` for each parameter and each
BatchNorm running statistic (`config.ema.decay`; 0 disables EMA). The statistics are averaged too, not
copied: the EMA weights need statistics that match them, and a copy would pair them with the raw
network's latest activations.

With `config.ema.warmup`, the decay of the update that follows step `t` (0-based: `t` updates done
before it) is `min(decay, (1 + t) / (10 + t))` (as TensorFlow's ExponentialMovingAverage with
`num_updates`): the first updates use a small decay (0.1, 0.18, 0.25, ...), so the average forgets the
random initialisation in tens of steps instead of the ~1/(1 - decay) steps a fixed 0.999 would need,
which matters for short runs and early evaluations.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from ml_collections import ConfigDict


def decay_at(decay: float, step: jax.Array | int, *, warmup: bool) -> jax.Array:
    """The decay of the update that follows `step` completed updates (float32 scalar)."""
    decay = jnp.float32(decay)
    if not warmup:
        return decay
    step = jnp.asarray(step, jnp.float32)
    return jnp.minimum(decay, (1.0 + step) / (10.0 + step))


def update(ema_tree: Any, new_tree: Any, decay: jax.Array | float) -> Any:
    """`decay * ema + (1 - decay) * new`, leaf by leaf, kept in each EMA leaf's dtype."""

    def mix(e, n):
        # Computed in float32 at least, so a low-precision leaf does not round the small increment away.
        wide = jnp.promote_types(e.dtype, jnp.float32)
        return (decay * e.astype(wide) + (1.0 - decay) * n.astype(wide)).astype(e.dtype)

    return jax.tree.map(mix, ema_tree, new_tree)


def ema_enabled(config: ConfigDict) -> bool:
    """Whether the run keeps an EMA (`ema.decay` > 0)."""
    return config.ema.decay > 0
