"""Optimizer and learning-rate schedule from `config.optim`; epoch arithmetic lives in train.py.

The config is validated by `fer_flax.config.schema.validate` (optimizer and schedule names, learning
rate, plateau settings) before anything here reads it; the builders below are keyed by the schema's
`OPTIMIZERS` and `SCHEDULES`.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import traverse_util
from ml_collections import ConfigDict


def weight_decay_mask(params):
    """True for weights that should decay: conv/dense kernels only. Biases, BatchNorm/LayerNorm scales,
    position embeddings and class tokens are left alone (decaying them hurts and is not what the
    reference recipes do)."""
    flat = traverse_util.flatten_dict(params)
    mask = {path: path[-1] == "kernel" for path in flat}
    return traverse_util.unflatten_dict(mask)


def param_path(path: tuple) -> str:
    """A parameter's (or BatchNorm statistic's) path as `optim.freeze` and `init_skip` match it:
    module names and the leaf name joined by "/", e.g. "Dense_1/kernel" or "BatchNorm_0/mean"."""
    return "/".join(str(getattr(k, "key", k)) for k in path)


def frozen_mask(tree: Any, pattern: str | None) -> Any:
    """A tree of bools like `tree`: True where the leaf's path matches `pattern` (re.search)."""
    regex = re.compile(pattern) if pattern else None
    return jax.tree_util.tree_map_with_path(
        lambda path, _: bool(regex and regex.search(param_path(path))), tree
    )


def keep_frozen(new: Any, old: Any, pattern: str | None) -> Any:
    """`new` with the leaves whose path matches `pattern` taken from `old` (frozen BatchNorm statistics)."""
    if not pattern:
        return new
    mask = frozen_mask(new, pattern)
    return jax.tree.map(lambda keep, n, o: o if keep else n, mask, new, old)


def _cosine(optim: ConfigDict, steps_per_epoch: int, main_steps: int, warmup_steps: int) -> optax.Schedule:
    del steps_per_epoch, warmup_steps
    return optax.cosine_decay_schedule(optim.lr, decay_steps=max(main_steps, 1))


def _constant(optim: ConfigDict, steps_per_epoch: int, main_steps: int, warmup_steps: int) -> optax.Schedule:
    del steps_per_epoch, main_steps, warmup_steps
    return optax.constant_schedule(optim.lr)


def _step(optim: ConfigDict, steps_per_epoch: int, main_steps: int, warmup_steps: int) -> optax.Schedule:
    del main_steps
    boundaries = {
        max(round(e * steps_per_epoch) - warmup_steps, 1): optim.step_factor for e in optim.step_epochs
    }
    return optax.piecewise_constant_schedule(optim.lr, boundaries)


# The schedule after warmup, by config.optim.schedule. "plateau" is constant here: the optimizer
# multiplies it by the reduce-on-plateau scale.
_MAIN_SCHEDULES: dict[str, Callable[[ConfigDict, int, int, int], optax.Schedule]] = {
    "cosine": _cosine,
    "constant": _constant,
    "step": _step,
    "plateau": _constant,
}


def create_learning_rate_schedule(
    optim: ConfigDict, *, steps_per_epoch: int, total_steps: int
) -> optax.Schedule:
    """Linear warmup from 0 to `optim.lr`, then cosine to 0, constant, or step decay. "plateau" is
    warmup then constant here; the optimizer multiplies it by the reduce-on-plateau scale."""
    warmup_steps = min(round(optim.warmup_epochs * steps_per_epoch), max(total_steps - 1, 0))
    main = _MAIN_SCHEDULES[optim.schedule](optim, steps_per_epoch, total_steps - warmup_steps, warmup_steps)
    if warmup_steps == 0:
        return main
    warmup = optax.linear_schedule(0.0, optim.lr, warmup_steps)
    return optax.join_schedules([warmup, main], [warmup_steps])


def _sgd(optim: ConfigDict, schedule: optax.Schedule) -> optax.GradientTransformation:
    # Classic L2 weight decay added to the gradient before momentum, as in torch.optim.SGD.
    return optax.chain(
        optax.add_decayed_weights(optim.weight_decay, mask=weight_decay_mask),
        optax.sgd(schedule, momentum=optim.momentum or None, nesterov=optim.nesterov),
    )


def _adamw(optim: ConfigDict, schedule: optax.Schedule) -> optax.GradientTransformation:
    return optax.adamw(
        schedule, b1=optim.b1, b2=optim.b2, weight_decay=optim.weight_decay, mask=weight_decay_mask
    )


_OPTIMIZERS: dict[str, Callable[[ConfigDict, optax.Schedule], optax.GradientTransformation]] = {
    "sgd": _sgd,
    "adamw": _adamw,
}


def create_optimizer(optim: ConfigDict, schedule: optax.Schedule) -> optax.GradientTransformation:
    """`config.optim.name`'s optimizer, after gradient clipping when `grad_clip_norm` is set, and
    followed by the reduce-on-plateau scale when the schedule is "plateau"; the parameters matching
    `optim.freeze` (a regex of `param_path`s) are kept fixed through `optax.multi_transform`."""
    core = _OPTIMIZERS[optim.name](optim, schedule)
    if optim.grad_clip_norm is not None:
        core = optax.chain(optax.clip_by_global_norm(optim.grad_clip_norm), core)
    if optim.schedule == "plateau":
        # Last in the chain, so the scale multiplies the whole step, exactly as a lower learning rate
        # would (including adamw's decoupled decay, which optax scales by the learning rate too).
        core = optax.chain(core, scale_by_plateau())
    freeze = optim.freeze
    if freeze:
        # Parameters matching optim.freeze get zero updates (no momentum, no weight decay): they stay
        # exactly as initialised (or as loaded by config.init_from).

        def labels(params: Any) -> Any:
            return jax.tree.map(lambda f: "frozen" if f else "trained", frozen_mask(params, freeze))

        core = optax.multi_transform({"trained": core, "frozen": optax.set_to_zero()}, labels)
    return core


# ------------------------------------------------------------------------------ reduce on plateau
#
# optax.contrib.reduce_on_plateau watches a loss passed to every update; here the signal is the
# validation accuracy, known only at evaluations, so the state lives in the optimizer state (and is
# checkpointed and restored with it) while the training loop updates it once per evaluation with
# `plateau_update`.


class PlateauState(NamedTuple):
    """Reduce-on-plateau state. `best` starts at -1 (below any accuracy) rather than -inf: a state
    holding a non-finite number is never checkpointed."""

    scale: jax.Array  # float32: multiplies the scheduled learning rate
    best: jax.Array  # float32: best validation accuracy so far
    bad_evals: jax.Array  # int32: evaluations since the last improvement (cooldown ones not counted)
    cooldown: jax.Array  # int32: evaluations left before bad evaluations count again


def scale_by_plateau() -> optax.GradientTransformation:
    """Multiplies the updates by the current plateau scale; the state changes only in `plateau_update`."""

    def init_fn(params: Any) -> PlateauState:
        del params
        return PlateauState(
            scale=jnp.ones([], jnp.float32),
            best=jnp.full([], -1.0, jnp.float32),
            bad_evals=jnp.zeros([], jnp.int32),
            cooldown=jnp.zeros([], jnp.int32),
        )

    def update_fn(updates: Any, state: PlateauState, params: Any = None) -> tuple[Any, PlateauState]:
        del params
        return jax.tree.map(lambda u: (u * state.scale).astype(u.dtype), updates), state

    return optax.GradientTransformation(init_fn, update_fn)


def plateau_update(state: PlateauState, accuracy: jax.Array | float, optim: ConfigDict) -> PlateauState:
    """The state after one evaluation with validation accuracy `accuracy` (pure; jittable).

    An accuracy above `best + plateau_min_delta` is an improvement. Otherwise the evaluation counts as
    bad, unless it is one of the `plateau_cooldown` evaluations right after a reduction. At
    `plateau_patience` bad evaluations in a row the scale is multiplied by `plateau_factor` (never
    below `plateau_min_scale`), the count restarts and the cooldown begins."""
    accuracy = jnp.asarray(accuracy, jnp.float32)
    improved = accuracy > state.best + jnp.float32(optim.plateau_min_delta)
    in_cooldown = state.cooldown > 0
    bad_evals = jnp.where(improved | in_cooldown, 0, state.bad_evals + 1)
    cooldown = jnp.maximum(state.cooldown - 1, 0)
    reduce = bad_evals >= optim.plateau_patience
    scale = jnp.where(
        reduce, jnp.maximum(state.scale * optim.plateau_factor, optim.plateau_min_scale), state.scale
    )
    return PlateauState(
        scale=scale.astype(jnp.float32),
        best=jnp.where(improved, accuracy, state.best),
        bad_evals=jnp.where(reduce, 0, bad_evals).astype(jnp.int32),
        cooldown=jnp.where(reduce, optim.plateau_cooldown, cooldown).astype(jnp.int32),
    )


def _is_plateau(x: Any) -> bool:
    return isinstance(x, PlateauState)


def get_plateau(opt_state: Any) -> PlateauState | None:
    """The optimizer state's PlateauState, or None when the schedule is not "plateau"."""
    found = [x for x in jax.tree.leaves(opt_state, is_leaf=_is_plateau) if _is_plateau(x)]
    return found[0] if found else None


def set_plateau(opt_state: Any, plateau: PlateauState) -> Any:
    """`opt_state` with its PlateauState replaced by `plateau`."""
    return jax.tree.map(lambda x: plateau if _is_plateau(x) else x, opt_state, is_leaf=_is_plateau)


def plateau_scale(opt_state: Any) -> jax.Array:
    """The current learning-rate scale: the plateau's, or 1 when there is none."""
    plateau = get_plateau(opt_state)
    return jnp.ones([], jnp.float32) if plateau is None else plateau.scale
