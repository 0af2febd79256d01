"""Conventions the convolutional families share, kept in one place."""

from __future__ import annotations

from typing import Any

import flax.linen as nn

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
