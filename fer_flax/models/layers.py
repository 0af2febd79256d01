"""Conventions the convolutional families share, kept in one place.

The seam. Every family has two fields, `conv: ModuleDef = nn.Conv` (the Module class, or a
`functools.partial` of one, that makes every convolution) and `max_pool: Callable = nn.max_pool` (every
max-pool, with `flax.linen.max_pool`'s signature), as Flax's ImageNet example passes `conv`. A platform
may substitute kernels there that compute the same function (`fer_flax.cpu.model_ops()` on a CPU);
parameter names and shapes do not depend on them.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn

# A Module class or a partial of one (the type Flax's examples use for an injectable layer).
ModuleDef = Any

# He initialisation (fan-out, as torchvision's ResNets) suits ReLU-family convs.
he_normal_fan_out = nn.initializers.variance_scaling(2.0, "fan_out", "normal")

# PyTorch's BatchNorm momentum 0.1 is flax's 0.9 (the weight of the old running average); the
# default 0.99 adapts too slowly for runs of a few thousand steps.
BATCH_NORM_MOMENTUM = 0.9


def batch_norm(train: bool, dtype: Any, name: str | None = None, **kwargs: Any) -> nn.BatchNorm:
    """BatchNorm using batch statistics in training and the running averages at evaluation."""
    return nn.BatchNorm(
        use_running_average=not train, momentum=BATCH_NORM_MOMENTUM, dtype=dtype, name=name, **kwargs
    )
