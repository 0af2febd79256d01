"""Plain convolutional networks: stages of (conv 3x3 → [BatchNorm] → ReLU) × n, then 2×2 max-pooling.

These are the course project's first models, from a tiny net that trains in seconds on a CPU to the
"bigger and more complex" plain nets it tried next. `batch_norm=False` gives the plain conv-ReLU-pool
stacks exactly; with BatchNorm the same shapes train far faster and are the default.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from fer_flax.models.layers import batch_norm


class PlainCNN(nn.Module):
    num_classes: int = 7
    stage_widths: Sequence[int] = (32, 64, 128)
    convs_per_stage: int = 1
    dense_widths: Sequence[int] = (256,)
    batch_norm: bool = True
    dropout: float = 0.0
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, *, train: bool):
        x = x.astype(self.dtype)
        for width in self.stage_widths:
            for _ in range(self.convs_per_stage):
                # A bias right before BatchNorm is redundant (and its gradient is pure rounding noise).
                x = nn.Conv(width, (3, 3), use_bias=not self.batch_norm, dtype=self.dtype)(x)
                if self.batch_norm:
                    x = batch_norm(train, self.dtype)(x)
                x = nn.relu(x)
            x = nn.max_pool(x, (2, 2), strides=(2, 2))
        x = x.reshape((x.shape[0], -1))
        for width in self.dense_widths:
            x = nn.Dense(width, dtype=self.dtype)(x)
            x = nn.relu(x)
            x = nn.Dropout(self.dropout, deterministic=not train)(x)
        logits = nn.Dense(self.num_classes, dtype=self.dtype)(x)
        return logits.astype(jnp.float32), {}


MODEL = PlainCNN

VARIANTS: dict[str, dict] = {
    # ~0.1M parameters: the smoke-test and CPU-demo size.
    "tiny": dict(stage_widths=(16, 32, 64), dense_widths=(128,)),
    # ~0.3M: three conv-BN-ReLU stages at 32/64/128 with a 256-unit head.
    "small": dict(stage_widths=(32, 64, 128), dense_widths=(256,), dropout=0.3),
    # Two convs per stage, four stages: the VGG-like "bigger" plain net.
    "medium": dict(stage_widths=(64, 128, 256, 512), convs_per_stage=2, dense_widths=(512,), dropout=0.4),
    "large": dict(stage_widths=(64, 128, 256, 512), convs_per_stage=3, dense_widths=(1024, 512), dropout=0.5),
    # The course project's very first nets: conv-ReLU-pool with no normalisation at all.
    "plain": dict(stage_widths=(32, 64, 128), dense_widths=(256,), batch_norm=False),
}
