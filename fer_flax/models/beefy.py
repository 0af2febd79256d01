"""BeefyModel: the course project's best network, a residual CNN with a BatchNorm MLP head.

Layout, for `num_stages` stages at widths `width × 2^i`:

  stage 1:    widen conv (3×3 conv → BN → act) to `width`, at 48×48
              blocks_per_stage × residual block
  stage i>1:  downsample to half resolution and double the width, then blocks_per_stage × residual block
  head:       global average pool → [Dense → BN → act → Dropout] × len(head_widths) → Dense(num_classes)

Residual block: conv 3×3 → BN → act → conv 3×3 → BN, + identity skip, act, Dropout(block_dropout).

Downsampling (`downsample=`):
  "maxpool"  (default) a widen conv (3×3 conv → BN → act) to the new width, then 2×2 max-pool. Every block
             keeps an identity skip, and the widen conv runs at the higher resolution, so nothing is thrown
             away before it is looked at. This is the ResNet-9 pattern (Page 2018) that trains fast and
             well on small images.
  "strided"  the stage's first block has stride 2 and a 1×1 conv + BN projection skip (ResNet style):
             fewer FLOPs, one conv fewer per stage.

Pooling: global average pooling. At 48×48 with four stages the last feature map is 6×6; flattening it
would put 36 × C × head_width weights (9.4M for C=512, head 512) in the first Dense layer alone,
which overfits FER2013's 28.7k training faces. `pooling="flatten"` is there for the comparison.

The head's Dense layers have no bias because BatchNorm follows (its shift is the bias).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from fer_flax.base.errors import check_choice
from fer_flax.models.layers import ModuleDef, batch_norm, he_normal_fan_out

ACTIVATIONS: dict[str, Callable] = {
    "relu": nn.relu,
    "gelu": nn.gelu,
    "silu": nn.silu,
    "elu": nn.elu,
    "leaky_relu": nn.leaky_relu,
}
DOWNSAMPLES: tuple[str, ...] = ("maxpool", "strided")
POOLINGS: tuple[str, ...] = ("avg", "flatten")


class ConvBNAct(nn.Module):
    """3×3 conv → BatchNorm → activation (the widening conv)."""

    features: int
    activation: str = "relu"
    dtype: Any = jnp.float32
    conv: ModuleDef = nn.Conv

    @nn.compact
    def __call__(self, x, *, train: bool):
        x = self.conv(
            self.features,
            (3, 3),
            padding=1,
            use_bias=False,
            kernel_init=he_normal_fan_out,
            dtype=self.dtype,
        )(x)
        return ACTIVATIONS[self.activation](batch_norm(train, self.dtype)(x))


class ResidualBlock(nn.Module):
    """conv 3×3 → BN → act → conv 3×3 → BN, + skip, act, dropout; a 1×1 projection skip if strided."""

    features: int
    strides: int = 1
    dropout: float = 0.0
    activation: str = "relu"
    dtype: Any = jnp.float32
    conv: ModuleDef = nn.Conv

    @nn.compact
    def __call__(self, x, *, train: bool):
        act = ACTIVATIONS[self.activation]
        s = (self.strides, self.strides)
        y = self.conv(
            self.features,
            (3, 3),
            strides=s,
            padding=1,
            use_bias=False,
            kernel_init=he_normal_fan_out,
            dtype=self.dtype,
        )(x)
        y = act(batch_norm(train, self.dtype)(y))
        y = self.conv(
            self.features, (3, 3), padding=1, use_bias=False, kernel_init=he_normal_fan_out, dtype=self.dtype
        )(y)
        y = batch_norm(train, self.dtype)(y)
        if x.shape[-1] != self.features or self.strides != 1:
            x = self.conv(
                self.features,
                (1, 1),
                strides=s,
                use_bias=False,
                kernel_init=he_normal_fan_out,
                dtype=self.dtype,
                name="proj_conv",
            )(x)
            x = batch_norm(train, self.dtype, name="proj_bn")(x)
        y = act(x + y)
        return nn.Dropout(self.dropout, deterministic=not train)(y)


class BeefyModel(nn.Module):
    num_classes: int = 7
    width: int = 64
    num_stages: int = 4
    # One int for every stage, or one entry per stage.
    blocks_per_stage: int | Sequence[int] = 1
    head_widths: Sequence[int] = (512, 256)
    block_dropout: float = 0.1
    head_dropout: float = 0.5
    activation: str = "relu"
    downsample: str = "maxpool"
    pooling: str = "avg"
    dtype: Any = jnp.float32
    conv: ModuleDef = nn.Conv  # every convolution (see models/layers.py, "the seam")
    max_pool: Callable = nn.max_pool  # every max-pool

    def _stage_blocks(self) -> tuple[int, ...]:
        if isinstance(self.blocks_per_stage, int):
            return (self.blocks_per_stage,) * self.num_stages
        blocks = tuple(self.blocks_per_stage)
        if len(blocks) != self.num_stages:
            raise ValueError(
                f"blocks_per_stage {blocks} has {len(blocks)} entries; num_stages is {self.num_stages}"
            )
        return blocks

    @nn.compact
    def __call__(self, x, *, train: bool):
        for field, value, valid in (
            ("activation", self.activation, tuple(ACTIVATIONS)),
            ("downsample", self.downsample, DOWNSAMPLES),
            ("pooling", self.pooling, POOLINGS),
        ):
            check_choice(f"BeefyModel {field}", value, valid)
        act = ACTIVATIONS[self.activation]
        blocks = self._stage_blocks()

        x = x.astype(self.dtype)
        x = ConvBNAct(self.width, self.activation, self.dtype, self.conv, name="stem")(x, train=train)
        for i, num_blocks in enumerate(blocks):
            features = self.width * 2**i
            first_stride = 1
            if i > 0 and self.downsample == "maxpool":
                x = ConvBNAct(features, self.activation, self.dtype, self.conv, name=f"stage{i + 1}_widen")(
                    x, train=train
                )
                x = self.max_pool(x, (2, 2), strides=(2, 2))
            elif i > 0:
                first_stride = 2
            for j in range(num_blocks):
                x = ResidualBlock(
                    features,
                    strides=first_stride if j == 0 else 1,
                    dropout=self.block_dropout,
                    activation=self.activation,
                    dtype=self.dtype,
                    conv=self.conv,
                    name=f"stage{i + 1}_block{j + 1}",
                )(x, train=train)

        x = jnp.mean(x, axis=(1, 2)) if self.pooling == "avg" else x.reshape((x.shape[0], -1))
        for k, features in enumerate(self.head_widths):
            x = nn.Dense(features, use_bias=False, dtype=self.dtype, name=f"head_dense_{k}")(x)
            x = act(batch_norm(train, self.dtype, name=f"head_bn_{k}")(x))
            x = nn.Dropout(self.head_dropout, deterministic=not train)(x)
        logits = nn.Dense(self.num_classes, dtype=self.dtype, name="classifier")(x)
        return logits.astype(jnp.float32), {}


MODEL = BeefyModel

# Ordered by parameter count (7 classes). base, wide and deep spend about the same ~8M parameters in
# three shapes (balanced, wide and shallow, narrow and deep) so their accuracies compare shape, not size.
VARIANTS: dict[str, dict] = {
    # ~0.5M params, three stages 32-64-128 down to 12×12: tests, smoke runs, CPU demos.
    "small": dict(
        width=32,
        num_stages=3,
        blocks_per_stage=1,
        head_widths=(256,),
        block_dropout=0.05,
        head_dropout=0.3,
    ),
    # Four stages 16-32-64-128, one block each (~0.5M params, ~0.05 GFLOP): the CPU-budget comparison's
    # size, light dropout because a 30-minute CPU run underfits.
    "cpu": dict(
        width=16,
        num_stages=4,
        blocks_per_stage=1,
        head_widths=(256,),
        block_dropout=0.0,
        head_dropout=0.2,
    ),
    # Three stages 128-256-512, one block each: final map 12×12, ~3× base's FLOPs.
    "wide": dict(
        width=128,
        num_stages=3,
        blocks_per_stage=1,
        head_widths=(512, 256),
        block_dropout=0.1,
        head_dropout=0.5,
    ),
    # Four stages 64-128-256-512 with one block each (ResNet-9-like, a block in every stage): the
    # recommended FER2013 model.
    "base": dict(
        width=64,
        num_stages=4,
        blocks_per_stage=1,
        head_widths=(512, 256),
        block_dropout=0.1,
        head_dropout=0.5,
    ),
    # Four stages 48-96-192-384 with two blocks each.
    "deep": dict(
        width=48,
        num_stages=4,
        blocks_per_stage=2,
        head_widths=(512, 256),
        block_dropout=0.1,
        head_dropout=0.5,
    ),
    # base with two blocks per stage and more dropout (~14.5M params).
    "large": dict(
        width=64,
        num_stages=4,
        blocks_per_stage=2,
        head_widths=(512, 256),
        block_dropout=0.2,
        head_dropout=0.5,
    ),
}
