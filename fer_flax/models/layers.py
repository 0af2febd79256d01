"""Conventions the convolutional families share, kept in one place."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax

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


def max_pool(
    x: jax.Array,
    window: tuple[int, int],
    strides: tuple[int, int] | None = None,
    padding: str | Sequence[tuple[int, int]] = "VALID",
) -> jax.Array:
    """Max-pooling over NHWC input with the semantics of `flax.linen.max_pool`.

    Non-overlapping windows without padding (the 2×2 pools of the CNN and BeefyModel families) are
    computed as a reshape and a max over the window axes. Why: `nn.max_pool`'s gradient is XLA's
    select-and-scatter, which XLA:CPU runs as a slow scalar loop — on a 2-core CPU the three 2×2
    pools of the small CNN cost ~60% of a training step (177 ms for one (128, 48, 48, 32) pool's
    gradient against 79 ms here). The reshape's gradient is a fused compare-and-select. Forward values
    are identical; gradients are identical wherever the window's maximum is unique, and split equally
    between tied maxima otherwise (the total gradient mass is the same). Overlapping or padded windows
    use `nn.max_pool`. (A maximum over strided slices was faster still, 41 ms, but XLA's SPMD
    partitioner got its gradient wrong for batch-sharded inputs: tests/test_performance_paths.py.)
    """
    window = tuple(window)
    strides = window if strides is None else tuple(strides)
    no_padding = padding == "VALID" or (not isinstance(padding, str) and all(p == (0, 0) for p in padding))
    if strides != window or not no_padding:
        return nn.max_pool(x, window, strides=strides, padding=padding)
    (kh, kw) = window
    n, h, w, c = x.shape
    x = x[:, : h // kh * kh, : w // kw * kw, :]  # VALID drops the incomplete last row/column
    return x.reshape(n, h // kh, kh, w // kw, kw, c).max(axis=(2, 4))
