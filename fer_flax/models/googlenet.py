"""GoogLeNet / Inception v1 (Szegedy et al. 2014, "Going deeper with convolutions"), sized for 48×48 faces.

Two flavours share one module:

* **Faithful** (`batch_norm=False`): Table 1 of the paper module by module — the same stem layers, inception
  modules 3a-5b with the paper's exact branch widths, 3×3/2 max-pools between the stages, LRN in the stem,
  ReLU without normalisation, the two auxiliary classifiers on 4a and 4d (avg-pool → 1×1 conv 128 →
  FC 1024 → ReLU → dropout 0.7 → FC), global average pooling → dropout 0.4 → FC.
* **Modified** (`batch_norm=True`): the course project's best GoogLeNet — BatchNorm after
  every conv (the convs lose their bias), more dropout (classifier, aux heads, optional channel-wise
  spatial dropout after stages 3 and 4) and auxiliary heads scaled down for 48×48 maps (adaptive avg-pool
  → 1×1 conv 128 + BN + ReLU → Dense → dropout → Dense).

Spatial sizes. The ImageNet stem divides the input by 8 before 3a and the network by 32 overall
(224 → 28 at 3a → 14 at 4a → 7 at 5a). At 48×48 that leaves 6 → 3 → 2, too little for 4×4 aux pooling
or for the 3×3/5×5 branches to see anything but padding. `stem="fer"` (the default) keeps the stem's
layers but makes the first conv 3×3 stride 1 and drops the first max-pool, so only the stem's last
max-pool and the two between-stage pools remain:

    stem  "fer":      48 (convs) → 24 (3×3/2 max-pool) | 3a, 3b: 24 | 4a-4e: 12 | 5a, 5b: 6 → global avg
    stem  "fer_hires": 48 (convs, no pool)             | 3a, 3b: 48 | 4a-4e: 24 | 5a, 5b: 12 (≈3× FLOPs)
    stem  "fer_s2":   24 (stride-2 conv) → 12 (pool) | 3a, 3b: 12 | 4a-4e: 6 | 5a, 5b: 3 (≈¼ of the FLOPs)
    stem  "imagenet": 7×7/2 conv, 3×3/2 pool, 1×1, 3×3, 3×3/2 pool: 48 → 24 → 12 → 6 | 3a: 6 | 4a: 3 | 5a: 2

With "fer" the last map is 6×6, the counterpart of the paper's 7×7 before its 7×7 average pool.

Auxiliary heads. The paper pools the 14×14 4a/4d maps with a 5×5 stride-3 average pool to a 4×4 grid. Here
the heads use an adaptive average pool to `aux_pool_size`² cells (4 in the faithful variants, the paper's
grid): on the 12×12 maps of the "fer" stem that is exactly a 3×3 stride-3 average pool, so the 1×1 conv
sees 4×4×128 = 2048 features and the FC 2048 → 1024 has the paper's shape. They are returned as
`aux["aux_logits"] = (logits_aux1, logits_aux2)` only when `train=True`; at evaluation they are not
computed at all (their parameters are still created by `init` in either mode).

Local response normalisation (the paper's "LRN" after the stem's first conv block and after its 3×3 conv)
is implemented as in Caffe's GoogLeNet (5 channels, alpha 1e-4, beta 0.75, k 1); it has no parameters and
the BatchNorm variants leave it out, as BatchNorm supersedes it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from fer_flax.base.errors import check_choice
from fer_flax.models.layers import ModuleDef, batch_norm

# Table 1 of the paper: (#1×1, #3×3 reduce, #3×3, #5×5 reduce, #5×5, pool proj) per inception module, in
# stage order; a 3×3/2 max-pool separates the stages. Output channels = #1×1 + #3×3 + #5×5 + pool proj:
# 3a 256, 3b 480 | 4a 512, 4b 512, 4c 512, 4d 528, 4e 832 | 5a 832, 5b 1024.
INCEPTION_V1_STAGES: tuple[tuple[tuple[str, tuple[int, int, int, int, int, int]], ...], ...] = (
    (
        ("3a", (64, 96, 128, 16, 32, 32)),
        ("3b", (128, 128, 192, 32, 96, 64)),
    ),
    (
        ("4a", (192, 96, 208, 16, 48, 64)),
        ("4b", (160, 112, 224, 24, 64, 64)),
        ("4c", (128, 128, 256, 24, 64, 64)),
        ("4d", (112, 144, 288, 32, 64, 64)),
        ("4e", (256, 160, 320, 32, 128, 128)),
    ),
    (
        ("5a", (256, 160, 320, 32, 128, 128)),
        ("5b", (384, 192, 384, 48, 128, 128)),
    ),
)
# The paper's auxiliary classifiers sit on the outputs of these modules.
AUX_AFTER: tuple[str, ...] = ("4a", "4d")
STEMS: tuple[str, ...] = ("fer", "fer_hires", "fer_s2", "imagenet")

# He-normal: without BatchNorm a 22-layer ReLU stack needs variance-preserving init to train from scratch
# (the paper's DistBelief init is unpublished; the reference Caffe model used Xavier plus the aux heads).
_conv_init = nn.initializers.variance_scaling(2.0, "fan_in", "truncated_normal")


def local_response_norm(
    x: jax.Array, size: int = 5, alpha: float = 1e-4, beta: float = 0.75, k: float = 1.0
) -> jax.Array:
    """Caffe-style cross-channel LRN: x / (k + alpha/size · Σ_{size neighbouring channels} x²)^beta.

    Computed in float32 (the sum of squares under- and overflows in bfloat16) and cast back.
    """
    x32 = x.astype(jnp.float32)
    half = size // 2
    window_sum = jax.lax.reduce_window(
        jnp.square(x32),
        0.0,
        jax.lax.add,
        window_dimensions=(1,) * (x.ndim - 1) + (size,),
        window_strides=(1,) * x.ndim,
        padding=((0, 0),) * (x.ndim - 1) + ((half, size - 1 - half),),
    )
    return (x32 / jnp.power(k + (alpha / size) * window_sum, beta)).astype(x.dtype)


def _adaptive_pool_matrix(in_size: int, out_size: int) -> np.ndarray:
    """[out, in] averaging weights of PyTorch-style adaptive average pooling along one axis.

    Cell i averages rows floor(i·in/out) .. ceil((i+1)·in/out) - 1, so it is an ordinary k×k stride-k
    average pool when `in_size` is a multiple of `out_size` and still defined when it is not (or smaller).
    """
    m = np.zeros((out_size, in_size), np.float32)
    for i in range(out_size):
        start = (i * in_size) // out_size
        end = -((-(i + 1) * in_size) // out_size)
        m[i, start:end] = 1.0 / (end - start)
    return m


def adaptive_avg_pool(x: jax.Array, out_size: int) -> jax.Array:
    """Averages NHWC `x` to an `out_size`×`out_size` grid (shapes are static, so this is two matmuls)."""
    ph = jnp.asarray(_adaptive_pool_matrix(x.shape[1], out_size), x.dtype)
    pw = jnp.asarray(_adaptive_pool_matrix(x.shape[2], out_size), x.dtype)
    return jnp.einsum("oh,pw,bhwc->bopc", ph, pw, x)


class ConvUnit(nn.Module):
    """Conv → [BatchNorm] → ReLU; the conv keeps its bias only when no BatchNorm follows."""

    features: int
    kernel: int = 1
    strides: int = 1
    batch_norm: bool = False
    dtype: Any = jnp.float32
    conv: ModuleDef = nn.Conv

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        x = self.conv(
            self.features,
            (self.kernel, self.kernel),
            strides=(self.strides, self.strides),
            padding="SAME",
            use_bias=not self.batch_norm,
            kernel_init=_conv_init,
            dtype=self.dtype,
            name="conv",
        )(x)
        if self.batch_norm:
            x = batch_norm(train, self.dtype, name="bn")(x)
        return nn.relu(x)


class Inception(nn.Module):
    """One inception module: four parallel branches concatenated on channels.

    1×1 | 1×1 reduce → 3×3 | 1×1 reduce → 5×5 | 3×3/1 max-pool → 1×1 projection.
    """

    c1: int
    c3_reduce: int
    c3: int
    c5_reduce: int
    c5: int
    pool_proj: int
    batch_norm: bool = False
    dtype: Any = jnp.float32
    conv: ModuleDef = nn.Conv
    max_pool: Callable = nn.max_pool

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        unit = dict(batch_norm=self.batch_norm, dtype=self.dtype, conv=self.conv)
        b1 = ConvUnit(self.c1, 1, **unit, name="b1")(x, train=train)
        b3 = ConvUnit(self.c3_reduce, 1, **unit, name="b3_reduce")(x, train=train)
        b3 = ConvUnit(self.c3, 3, **unit, name="b3")(b3, train=train)
        b5 = ConvUnit(self.c5_reduce, 1, **unit, name="b5_reduce")(x, train=train)
        b5 = ConvUnit(self.c5, 5, **unit, name="b5")(b5, train=train)
        bp = self.max_pool(x, (3, 3), strides=(1, 1), padding="SAME")
        bp = ConvUnit(self.pool_proj, 1, **unit, name="pool_proj")(bp, train=train)
        return jnp.concatenate([b1, b3, b5, bp], axis=-1)


class AuxHead(nn.Module):
    """Auxiliary classifier: adaptive avg-pool → 1×1 conv [+BN] → ReLU → FC → ReLU → dropout → FC."""

    num_classes: int
    pool_size: int = 4
    conv_features: int = 128
    hidden: int = 1024
    dropout: float = 0.7
    batch_norm: bool = False
    dtype: Any = jnp.float32
    conv: ModuleDef = nn.Conv

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        x = adaptive_avg_pool(x, self.pool_size)
        x = ConvUnit(
            self.conv_features, 1, batch_norm=self.batch_norm, dtype=self.dtype, conv=self.conv, name="conv"
        )(x, train=train)
        x = x.reshape((x.shape[0], -1))
        x = nn.relu(nn.Dense(self.hidden, dtype=self.dtype, name="fc")(x))
        x = nn.Dropout(self.dropout, deterministic=not train)(x)
        return nn.Dense(self.num_classes, dtype=self.dtype, name="head")(x).astype(jnp.float32)


def _scaled(channels: int, width: float) -> int:
    return max(1, round(channels * width))


class GoogLeNet(nn.Module):
    """Inception v1; see the module docstring for the 48×48 adaptations.

    Attributes:
      width: multiplies every conv's channel count (stem, all branches, aux-head convs); Table 1 at 1.0.
      stem: "fer" (stride-1 stem, one max-pool; default), "fer_hires" (no stem pool), "fer_s2" (a
        stride-2 first conv: a quarter of the FLOPs, for CPU budgets) or "imagenet".
      batch_norm: BatchNorm after every conv (the modified variant) instead of the paper's plain ReLU.
      lrn: the paper's local response normalisation in the stem.
      aux_heads: build the two auxiliary classifiers (on 4a and 4d).
      aux_pool_size, aux_hidden, aux_dropout: aux head's pooled grid, FC width and dropout rate.
      dropout: before the final classifier (0.4 in the paper).
      spatial_dropout: channel-wise dropout (whole feature maps) on the outputs of stages 3 and 4.
      conv, max_pool: the Module that makes every convolution and the function of every max-pool
        (see models/layers.py, "the seam").
    """

    num_classes: int = 7
    width: float = 1.0
    stem: str = "fer"
    batch_norm: bool = False
    lrn: bool = True
    aux_heads: bool = True
    aux_pool_size: int = 4
    aux_hidden: int = 1024
    aux_dropout: float = 0.7
    dropout: float = 0.4
    spatial_dropout: float = 0.0
    stages: Sequence[Sequence[tuple[str, Sequence[int]]]] = INCEPTION_V1_STAGES
    dtype: Any = jnp.float32
    conv: ModuleDef = nn.Conv
    max_pool: Callable = nn.max_pool

    def _stem(self, x: jax.Array, *, train: bool) -> jax.Array:
        unit = dict(batch_norm=self.batch_norm, dtype=self.dtype, conv=self.conv)
        c64, c192 = _scaled(64, self.width), _scaled(192, self.width)
        if self.stem == "imagenet":
            x = ConvUnit(c64, 7, strides=2, **unit, name="stem_conv1")(x, train=train)
            x = self.max_pool(x, (3, 3), strides=(2, 2), padding="SAME")
        else:
            strides = 2 if self.stem == "fer_s2" else 1
            x = ConvUnit(c64, 3, strides=strides, **unit, name="stem_conv1")(x, train=train)
        if self.lrn:
            x = local_response_norm(x)
        x = ConvUnit(c64, 1, **unit, name="stem_conv2_reduce")(x, train=train)
        x = ConvUnit(c192, 3, **unit, name="stem_conv2")(x, train=train)
        if self.lrn:
            x = local_response_norm(x)
        if self.stem != "fer_hires":
            x = self.max_pool(x, (3, 3), strides=(2, 2), padding="SAME")
        return x

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> tuple[jax.Array, dict]:
        check_choice("GoogLeNet stem", self.stem, STEMS)
        x = self._stem(x.astype(self.dtype), train=train)

        # Aux heads run while training. At init they run in either mode so that a state initialised
        # with train=False already holds their parameters for the training step.
        run_aux = self.aux_heads and (train or self.is_initializing())
        aux_logits = []
        for stage_index, stage in enumerate(self.stages):
            if stage_index > 0:
                x = self.max_pool(x, (3, 3), strides=(2, 2), padding="SAME")
            for name, channels in stage:
                x = Inception(
                    *(_scaled(c, self.width) for c in channels),
                    batch_norm=self.batch_norm,
                    dtype=self.dtype,
                    conv=self.conv,
                    max_pool=self.max_pool,
                    name=f"inception_{name}",
                )(x, train=train)
                if run_aux and name in AUX_AFTER:
                    aux_logits.append(
                        AuxHead(
                            self.num_classes,
                            pool_size=self.aux_pool_size,
                            conv_features=_scaled(128, self.width),
                            hidden=self.aux_hidden,
                            dropout=self.aux_dropout,
                            batch_norm=self.batch_norm,
                            dtype=self.dtype,
                            conv=self.conv,
                            name=f"aux_{name}",
                        )(x, train=train)
                    )
            if self.spatial_dropout > 0 and stage_index < len(self.stages) - 1:
                # Drops whole channels: neighbouring pixels are too correlated for per-pixel dropout.
                x = nn.Dropout(self.spatial_dropout, broadcast_dims=(1, 2), deterministic=not train)(x)

        x = jnp.mean(x, axis=(1, 2))
        x = nn.Dropout(self.dropout, deterministic=not train)(x)
        logits = nn.Dense(self.num_classes, dtype=self.dtype, name="head")(x)
        aux = {"aux_logits": tuple(aux_logits)} if train and aux_logits else {}
        return logits.astype(jnp.float32), aux


MODEL = GoogLeNet

_MODIFIED = dict(batch_norm=True, lrn=False, dropout=0.5, aux_dropout=0.5, spatial_dropout=0.1)

VARIANTS: dict[str, dict] = {
    # Quarter of every Table 1 width, BN + aux heads: the test and CPU-demo size (~0.42M parameters).
    "inception_v1_bn_tiny": dict(**_MODIFIED, width=0.25, aux_pool_size=2, aux_hidden=128),
    # bn_tiny with the stride-2 stem (3a at 12×12, ~0.03 GFLOP) and less dropout: the CPU-budget
    # comparison's size, where a 30-minute run underfits.
    "inception_v1_bn_tiny_s2": dict(
        **{**_MODIFIED, "dropout": 0.3, "spatial_dropout": 0.0},
        width=0.25,
        stem="fer_s2",
        aux_pool_size=2,
        aux_hidden=128,
    ),
    # The faithful network (no BN, LRN, paper aux heads) at quarter width, for smoke runs (~0.65M).
    "inception_v1_tiny": dict(width=0.25, aux_hidden=256),
    # Half widths: a cheaper modified GoogLeNet (~1.7M parameters).
    "inception_v1_bn_small": dict(**_MODIFIED, width=0.5, aux_pool_size=2, aux_hidden=256),
    # The paper's network without the auxiliary classifiers (~6.0M parameters).
    "inception_v1_noaux": dict(aux_heads=False),
    # The course project's best GoogLeNet: BN after every conv, more dropout, aux heads for 12×12 maps
    # (~8.2M parameters).
    "inception_v1_bn": dict(**_MODIFIED, aux_pool_size=4, aux_hidden=512),
    # Faithful Inception v1 (Table 1 + both auxiliary classifiers; ~10.3M parameters with them).
    "inception_v1": dict(),
}
