"""Optimizer and learning-rate schedule from `config.optim`; epoch arithmetic lives in train.py."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import traverse_util
from ml_collections import ConfigDict

OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("cosine", "constant", "step", "plateau")


def weight_decay_mask(params):
    """True for weights that should decay: conv/dense kernels only. Biases, BatchNorm/LayerNorm scales,
    position embeddings and class tokens are left alone (decaying them hurts and is not what the
    reference recipes do)."""
    flat = traverse_util.flatten_dict(params)
    mask = {path: path[-1] == "kernel" for path in flat}
    return traverse_util.unflatten_dict(mask)


def create_learning_rate_schedule(
    optim: ConfigDict, *, steps_per_epoch: int, total_steps: int
) -> optax.Schedule:
    """Linear warmup from 0 to `optim.lr`, then cosine to 0, constant, or step decay. "plateau" is
    warmup then constant here; the optimizer multiplies it by the reduce-on-plateau scale."""
    warmup_steps = min(round(optim.warmup_epochs * steps_per_epoch), max(total_steps - 1, 0))
    if optim.schedule == "cosine":
        main = optax.cosine_decay_schedule(optim.lr, decay_steps=max(total_steps - warmup_steps, 1))
    elif optim.schedule in ("constant", "plateau"):
        check_plateau_settings(optim)
        main = optax.constant_schedule(optim.lr)
    elif optim.schedule == "step":
        boundaries = {
            max(round(e * steps_per_epoch) - warmup_steps, 1): optim.step_factor for e in optim.step_epochs
        }
        main = optax.piecewise_constant_schedule(optim.lr, boundaries)
    else:
        raise ValueError(
            f"Unknown config.optim.schedule {optim.schedule!r}; valid choices: {', '.join(SCHEDULES)}"
        )
    if warmup_steps == 0:
        return main
    warmup = optax.linear_schedule(0.0, optim.lr, warmup_steps)
    return optax.join_schedules([warmup, main], [warmup_steps])


def create_optimizer(optim: ConfigDict, schedule: optax.Schedule) -> optax.GradientTransformation:
    if optim.name == "sgd":
        # Classic L2 weight decay added to the gradient before momentum, as in torch.optim.SGD.
        core = optax.chain(
            optax.add_decayed_weights(optim.weight_decay, mask=weight_decay_mask),
            optax.sgd(schedule, momentum=optim.momentum or None, nesterov=optim.nesterov),
        )
    elif optim.name == "adamw":
        core = optax.adamw(
            schedule,
            b1=optim.b1,
            b2=optim.b2,
            weight_decay=optim.weight_decay,
            mask=weight_decay_mask,
        )
    else:
        raise ValueError(f"Unknown config.optim.name {optim.name!r}; valid choices: {', '.join(OPTIMIZERS)}")
    if optim.grad_clip_norm is not None:
        core = optax.chain(optax.clip_by_global_norm(optim.grad_clip_norm), core)
    if optim.schedule == "plateau":
        # Last in the chain, so the scale multiplies the whole step, exactly as a lower learning rate
        # would (including adamw's decoupled decay, which optax scales by the learning rate too).
        core = optax.chain(core, scale_by_plateau())
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


def check_plateau_settings(optim: ConfigDict) -> None:
    if optim.schedule != "plateau":
        return
    problems = []
    if not 0.0 < optim.plateau_factor < 1.0:
        problems.append(f"plateau_factor={optim.plateau_factor} must be in (0, 1)")
    if optim.plateau_patience < 1:
        problems.append(f"plateau_patience={optim.plateau_patience} must be >= 1")
    if optim.plateau_cooldown < 0:
        problems.append(f"plateau_cooldown={optim.plateau_cooldown} must be >= 0")
    if optim.plateau_min_delta < 0:
        problems.append(f"plateau_min_delta={optim.plateau_min_delta} must be >= 0")
    if not 0.0 <= optim.plateau_min_scale <= 1.0:
        problems.append(f"plateau_min_scale={optim.plateau_min_scale} must be in [0, 1]")
    if problems:
        raise ValueError("config.optim: " + "; ".join(problems))


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
