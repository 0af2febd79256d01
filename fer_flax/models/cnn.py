"""Plain convolutional networks: stages of (conv 3x3 → [BatchNorm] → ReLU) × n, then 2×2 max-pooling.

These are the course project's first models, from a tiny net that trains in seconds on a CPU to the
"bigger and more complex" plain nets it tried next. `batch_norm=False` gives the plain conv-ReLU-pool
stacks exactly; with BatchNorm the same shapes train far faster and are the default.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from fer_flax.models.layers import ModuleDef, batch_norm


class PlainCNN(nn.Module):
    num_classes: int = 7
    stage_widths: Sequence[int] = (32, 64, 128)
    convs_per_stage: int | Sequence[int] = 1  # one count for every stage, or one per stage
    dense_widths: Sequence[int] = (256,)
    batch_norm: bool = True
    # Dense → BatchNorm → ReLU in the head. Without it the flatten → Dense layer (fan-in 4608 in the
    # small net) takes steps far larger than the convs' at SGD learning rates near 0.1, and on FER2013
    # the head dies within an epoch (every prediction "happy"); with it lr 0.1 trains as in ResNets.
    head_batch_norm: bool = False
    # Architecture variant: each stage's last conv is max-pooled before its BatchNorm and ReLU
    # (conv → pool → BN → ReLU) instead of after them. With a positive BatchNorm scale, BN+ReLU is
    # monotonic per channel, so this is the same function up to which values the BN statistics are
    # taken over; it is cheaper because the BN and ReLU passes (forward and backward) touch a quarter
    # of the elements.
    pool_before_norm: bool = False
    dropout: float = 0.0
    dtype: Any = jnp.float32
    conv: ModuleDef = nn.Conv  # every convolution (see models/layers.py, "the seam")
    max_pool: Callable = nn.max_pool  # every max-pool

    @nn.compact
    def __call__(self, x, *, train: bool):
        x = x.astype(self.dtype)
        counts = self.convs_per_stage
        if isinstance(counts, int):
            counts = (counts,) * len(self.stage_widths)
        if len(counts) != len(self.stage_widths):
            raise ValueError(f"convs_per_stage {counts} needs one count per stage of {self.stage_widths}")
        for width, count in zip(self.stage_widths, counts, strict=True):
            for index in range(count):
                # A bias right before BatchNorm is redundant (and its gradient is pure rounding noise).
                x = self.conv(width, (3, 3), use_bias=not self.batch_norm, dtype=self.dtype)(x)
                pool_now = self.pool_before_norm and index == count - 1
                if pool_now:
                    x = self.max_pool(x, (2, 2), strides=(2, 2))
                if self.batch_norm:
                    x = batch_norm(train, self.dtype)(x)
                x = nn.relu(x)
            if not self.pool_before_norm:
                x = self.max_pool(x, (2, 2), strides=(2, 2))
        x = x.reshape((x.shape[0], -1))
        for width in self.dense_widths:
            x = nn.Dense(width, use_bias=not self.head_batch_norm, dtype=self.dtype)(x)
            if self.head_batch_norm:
                x = batch_norm(train, self.dtype)(x)
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
    # "small" with a BatchNorm head, which trains at SGD lr 0.1 where "small" collapses.
    "small_bn": dict(stage_widths=(32, 64, 128), dense_widths=(256,), head_batch_norm=True, dropout=0.3),
    # The CPU recipe's net (configs/cpu_recipe.py): small_bn plus a fourth stage at 6x6. small_bn
    # underfits in a CPU-length run (train accuracy close to validation accuracy); the extra stage adds
    # conv capacity and whole-face receptive fields where maps are small and convs cheap.
    "cpu": dict(stage_widths=(32, 64, 128, 256), dense_widths=(256,), head_batch_norm=True, dropout=0.2),
    # "cpu" pooling before each stage's last BatchNorm and ReLU (pool_before_norm): the same
    # parameters, less work per step, so more epochs in the CPU recipe's time budget.
    "cpu_fast": dict(
        stage_widths=(32, 64, 128, 256),
        dense_widths=(256,),
        head_batch_norm=True,
        pool_before_norm=True,
        dropout=0.2,
    ),
    # Two convs per stage, four stages: the VGG-like "bigger" plain net.
    "medium": dict(stage_widths=(64, 128, 256, 512), convs_per_stage=2, dense_widths=(512,), dropout=0.4),
    "large": dict(stage_widths=(64, 128, 256, 512), convs_per_stage=3, dense_widths=(1024, 512), dropout=0.5),
    # The course project's very first nets: conv-ReLU-pool with no normalisation at all.
    "plain": dict(stage_widths=(32, 64, 128), dense_widths=(256,), batch_norm=False),
}
