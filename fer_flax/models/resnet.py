"""ResNet-18/34 (basic blocks) adapted to 48×48 faces, with a plain or a "complex" classifier head.

Trunk: stem → four stages of basic blocks (conv 3×3 → BN → ReLU → conv 3×3 → BN, + shortcut, ReLU) at
widths 64-128-256-512; the first block of stages 2-4 has stride 2. The shortcut is the identity, or a
1×1 conv + BN projection where the shape changes (torchvision's "option B").

Stems (`stem=`), because the ImageNet stem divides 48×48 by 4 before the first block:
  "s1"        3×3 conv, stride 1, no pool: stage 1 sees 48×48, the last stage 6×6 (the default; the
              CIFAR-style adaptation, the most accurate and the most expensive, ~2.3 GFLOP for ResNet-18).
  "s2"        3×3 conv, stride 2, no pool: stage 1 sees 24×24, ~4× cheaper; the CPU choice.
  "imagenet"  7×7 conv stride 2 + 3×3 max-pool stride 2, as in the paper: stage 1 sees 12×12, the last
              stage 2×2. For comparison with ImageNet-style baselines.

Head: global average pooling → [Dense → BatchNorm → ReLU → Dropout] × len(head_widths) → Dense. The plain
ResNet has no hidden layers; the "complex" variants put Dense(512) and Dense(256) blocks there. Their
Dense layers have no bias because BatchNorm follows (its shift is the bias); BatchNorm after each hidden
Dense keeps the head's activations scaled however the trunk's features drift, which is what lets a 0.5
dropout head train at the trunk's learning rate.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from fer_flax.base.errors import check_choice
from fer_flax.models.layers import ModuleDef, batch_norm, he_normal_fan_out

STEMS: tuple[str, ...] = ("s1", "s2", "imagenet")


class BasicBlock(nn.Module):
    """Two 3×3 convs with BatchNorm and a shortcut; projects the shortcut when stride or width change."""

    features: int
    strides: int = 1
    zero_init_residual: bool = False
    dtype: Any = jnp.float32
    conv: ModuleDef = nn.Conv

    @nn.compact
    def __call__(self, x, *, train: bool):
        def conv(features, kernel, strides, padding, name):
            return self.conv(
                features,
                kernel,
                strides=strides,
                padding=padding,
                use_bias=False,  # BatchNorm follows every conv
                kernel_init=he_normal_fan_out,
                dtype=self.dtype,
                name=name,
            )

        def norm(name, scale_init=nn.initializers.ones):
            return batch_norm(train, self.dtype, name=name, scale_init=scale_init)

        s = (self.strides, self.strides)
        y = conv(self.features, (3, 3), s, ((1, 1), (1, 1)), "conv_0")(x)
        y = nn.relu(norm("bn_0")(y))
        y = conv(self.features, (3, 3), (1, 1), ((1, 1), (1, 1)), "conv_1")(y)
        # A zero gamma makes the block start as the identity (Goyal et al. 2017): deep nets train from
        # step 0 like shallow ones, which helps at large batch sizes and learning rates.
        y = norm("bn_1", nn.initializers.zeros if self.zero_init_residual else nn.initializers.ones)(y)
        if x.shape[-1] != self.features or self.strides != 1:
            x = conv(self.features, (1, 1), s, "VALID", "proj_conv")(x)
            x = norm("proj_bn")(x)
        return nn.relu(x + y)


class ResNet(nn.Module):
    num_classes: int = 7
    stage_sizes: Sequence[int] = (2, 2, 2, 2)
    widths: Sequence[int] = (64, 128, 256, 512)
    stem: str = "s1"
    zero_init_residual: bool = False
    head_widths: Sequence[int] = ()
    head_dropout: float = 0.0
    dtype: Any = jnp.float32
    conv: ModuleDef = nn.Conv  # every convolution (see models/layers.py, "the seam")
    max_pool: Callable = nn.max_pool  # every max-pool

    @nn.compact
    def __call__(self, x, *, train: bool):
        check_choice("ResNet stem", self.stem, STEMS)
        if len(self.stage_sizes) != len(self.widths):
            raise ValueError(
                f"stage_sizes {tuple(self.stage_sizes)} and widths {tuple(self.widths)} must have the "
                "same length (one entry per stage)"
            )
        x = x.astype(self.dtype)
        if self.stem == "imagenet":
            kernel, strides, padding = (7, 7), (2, 2), ((3, 3), (3, 3))
        else:
            stride = 1 if self.stem == "s1" else 2
            kernel, strides, padding = (3, 3), (stride, stride), ((1, 1), (1, 1))
        x = self.conv(
            self.widths[0],
            kernel,
            strides=strides,
            padding=padding,
            use_bias=False,
            kernel_init=he_normal_fan_out,
            dtype=self.dtype,
            name="stem_conv",
        )(x)
        x = batch_norm(train, self.dtype, name="stem_bn")(x)
        x = nn.relu(x)
        if self.stem == "imagenet":
            # Explicit padding 1 (with -inf) as in torchvision: 24×24 → 12×12.
            x = self.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))

        for i, (num_blocks, width) in enumerate(zip(self.stage_sizes, self.widths, strict=True)):
            for j in range(num_blocks):
                x = BasicBlock(
                    width,
                    strides=2 if i > 0 and j == 0 else 1,
                    zero_init_residual=self.zero_init_residual,
                    dtype=self.dtype,
                    conv=self.conv,
                    name=f"stage{i + 1}_block{j + 1}",
                )(x, train=train)

        x = jnp.mean(x, axis=(1, 2))
        for k, width in enumerate(self.head_widths):
            x = nn.Dense(width, use_bias=False, dtype=self.dtype, name=f"head_dense_{k}")(x)
            x = nn.BatchNorm(
                use_running_average=not train, momentum=0.9, dtype=self.dtype, name=f"head_bn_{k}"
            )(x)
            x = nn.relu(x)
            x = nn.Dropout(self.head_dropout, deterministic=not train)(x)
        logits = nn.Dense(self.num_classes, dtype=self.dtype, name="classifier")(x)
        return logits.astype(jnp.float32), {}


MODEL = ResNet

_HALF = (32, 64, 128, 256)
_COMPLEX_HEAD = dict(head_widths=(512, 256), head_dropout=0.5)

# Ordered by cost (parameters, then forward FLOPs per image). Parameter counts are for 7 classes.
VARIANTS: dict[str, dict] = {
    # [1,1,1,1] at half width, stride-1 stem (~1.2M params): tests, smoke runs and CPU demos.
    "resnet10_half": dict(stage_sizes=(1, 1, 1, 1), widths=_HALF),
    # Half-width ResNet-18 with the stride-2 stem (~2.8M params, ~1/16 of resnet18's FLOPs): CPU training.
    "resnet18_half_s2": dict(stage_sizes=(2, 2, 2, 2), widths=_HALF, stem="s2"),
    # Half-width ResNet-18 at full 48×48 resolution (~2.8M params).
    "resnet18_half": dict(stage_sizes=(2, 2, 2, 2), widths=_HALF),
    # [1,1,1,1] at full width (~4.9M params).
    "resnet10": dict(stage_sizes=(1, 1, 1, 1)),
    # The paper's stem: 7×7/2 conv + 3×3/2 max-pool, so stage 1 runs at 12×12 (cheapest ResNet-18).
    "resnet18_imagenet_stem": dict(stage_sizes=(2, 2, 2, 2), stem="imagenet"),
    # Stride-2 3×3 stem: stage 1 at 24×24, ~4× fewer FLOPs than resnet18; the full-width CPU option.
    "resnet18_s2": dict(stage_sizes=(2, 2, 2, 2), stem="s2"),
    # ResNet-18 for 48×48 (11.17M params): 3×3 stride-1 stem, stage resolutions 48-24-12-6.
    "resnet18": dict(stage_sizes=(2, 2, 2, 2)),
    # ResNet-18 trunk + GAP → 512 → 256 → classes head with BatchNorm and dropout 0.5.
    "resnet18_complex": dict(stage_sizes=(2, 2, 2, 2), **_COMPLEX_HEAD),
    # ResNet-34 for 48×48 (~21.3M params).
    "resnet34": dict(stage_sizes=(3, 4, 6, 3)),
    "resnet34_complex": dict(stage_sizes=(3, 4, 6, 3), **_COMPLEX_HEAD),
}
