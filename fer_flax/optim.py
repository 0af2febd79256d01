"""Optimizer and learning-rate schedule from `config.optim`; epoch arithmetic lives in train.py."""

from __future__ import annotations

import optax
from flax import traverse_util
from ml_collections import ConfigDict

OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("cosine", "constant", "step")


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
    """Linear warmup from 0 to `optim.lr`, then cosine to 0, constant, or step decay."""
    warmup_steps = min(round(optim.warmup_epochs * steps_per_epoch), max(total_steps - 1, 0))
    if optim.schedule == "cosine":
        main = optax.cosine_decay_schedule(optim.lr, decay_steps=max(total_steps - warmup_steps, 1))
    elif optim.schedule == "constant":
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
    return core
