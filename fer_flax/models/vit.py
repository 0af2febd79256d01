"""Vision Transformers for 48x48 faces: plain ViT, conv-stem hybrid, CCT and SPT + LSA, one module.

Every flavour is the same pre-LN encoder (LayerNorm → self-attention → residual, LayerNorm →
MLP(GELU) → residual, final LayerNorm) fed by a different tokenizer and read out by a different
pooling:

- `stem="patch"`: ViT (Dosovitskiy et al. 2021): non-overlapping pxp patches embedded by a Conv with
  kernel = stride = p. At 48x48, p=4 gives 12x12 = 144 tokens and p=6 gives 8x8 = 64 (a 16x16 patch
  would leave 9 tokens, far too coarse for faces).
- `stem="conv"`: the conv-stem hybrid of Xiao et al. 2021 ("Early convolutions help transformers see
  better"): 3x3 conv-BN-ReLU layers (`stem_widths`, `stem_strides`), then a 1x1 conv to `dim`.
- `stem="cct"`: the Compact Convolutional Transformer tokenizer (Hassani et al. 2021): per width in
  `stem_widths` a bias-free 3x3 conv → ReLU → 3x3/2 max-pool (padding 1); the last width is `dim`.
- `stem="spt"`: Shifted Patch Tokenization (Lee et al. 2021, "Vision Transformer for Small-Size
  Datasets"): the image and its four diagonal shifts by half a patch (zero-filled) are concatenated
  on the channel axis, cut into pxp patches, flattened, LayerNorm-ed and projected to `dim`.

`lsa=True` turns every attention layer into Locality Self-Attention (Lee et al.): a learnable
per-head temperature (initialised to 1/sqrt(head_dim)) and the diagonal of the attention logits
masked, so no token attends to itself. `pool` reads out the CLS token ("cls"), the mean token
("gap") or CCT's sequence pooling ("seq": softmax(Dense(1)(x)) over tokens, then the weighted sum).
Position embeddings are learned, fixed 2-D sin-cos, or absent. Stochastic depth (`drop_path`) rises
linearly from 0 at the first block to `drop_path` at the last and drops a block's residual branch
per example.

Numerics: parameters are float32; matmuls run in `dtype`; attention logits are accumulated and
soft-maxed in float32 and LayerNorm reduces in float32, so bfloat16 compute is safe.
`aux` is always empty; attention and sequence-pooling weights are sown into the "intermediates"
collection for inspection (`model.apply(..., mutable=["intermediates"])`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from fer_flax.base.errors import check_choice
from fer_flax.models.layers import ModuleDef, batch_norm

STEMS = ("patch", "conv", "cct", "spt")
POOLS = ("cls", "gap", "seq")
POS_EMBS = ("learned", "sincos", "none")

# Xavier-uniform for every transformer Dense, as in the reference ViT implementations.
_dense_init = nn.initializers.xavier_uniform()


def attention_weights(q: jax.Array, k: jax.Array, *, scale: jax.Array | float, mask_self: bool) -> jax.Array:
    """Softmax attention weights [B, heads, N, N] in float32 from q, k [B, N, heads, head_dim].

    `scale` is a scalar or one temperature per head. `mask_self` masks the diagonal (LSA), so each
    token's weight on itself is exactly 0 and its attention goes to the other tokens.
    """
    # Accumulate in float32 whatever q/k's dtype: bfloat16 logits lose the small differences that
    # softmax needs.
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32)
    scale = jnp.asarray(scale, jnp.float32)
    logits = logits * (scale[:, None, None] if scale.ndim == 1 else scale)
    if mask_self:
        n = logits.shape[-1]
        # The most negative finite float rather than -inf: exp underflows to exactly 0 either way,
        # and a finite value cannot turn a fully masked row into NaN.
        logits = jnp.where(jnp.eye(n, dtype=bool), jnp.finfo(jnp.float32).min, logits)
    return jax.nn.softmax(logits, axis=-1)


def posemb_sincos_2d(h: int, w: int, dim: int, temperature: float = 10_000.0) -> np.ndarray:
    """Fixed 2-D sin-cos position embeddings [1, h*w, dim]: a quarter of the channels each for
    sin(x), cos(x), sin(y), cos(y) at geometrically spaced frequencies (as in big_vision)."""
    if dim % 4:
        raise ValueError(f"sin-cos position embeddings need dim divisible by 4, got dim={dim}")
    y, x = np.mgrid[:h, :w]
    quarter = dim // 4
    omega = 1.0 / temperature ** (np.arange(quarter) / max(quarter - 1, 1))
    y = y.reshape(-1)[:, None] * omega[None, :]
    x = x.reshape(-1)[:, None] * omega[None, :]
    pe = np.concatenate([np.sin(x), np.cos(x), np.sin(y), np.cos(y)], axis=1)
    return pe[None].astype(np.float32)


def shifted_stack(x: jax.Array, shift: int) -> jax.Array:
    """SPT's input: [B, H, W, C] → [B, H, W, 5C], the image then its copies moved by `shift` pixels
    down-right, down-left, up-right and up-left, zero-filled where the shift uncovers the frame."""
    h, w = x.shape[1:3]
    s = shift
    padded = jnp.pad(x, ((0, 0), (s, s), (s, s), (0, 0)))
    # Window offset (dy, dx) in the padded image shows the content moved by (s - dy, s - dx).
    shifts = [padded[:, dy : dy + h, dx : dx + w] for dy in (0, 2 * s) for dx in (0, 2 * s)]
    return jnp.concatenate([x, *shifts], axis=-1)


class DropPath(nn.Module):
    """Stochastic depth: zero the whole input for a random subset of examples, rescale the rest."""

    rate: float

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        if not train or self.rate == 0.0:
            return x
        if self.rate >= 1.0:
            return jnp.zeros_like(x)
        keep = 1.0 - self.rate
        mask = jax.random.bernoulli(self.make_rng("dropout"), keep, (x.shape[0],) + (1,) * (x.ndim - 1))
        return jnp.where(mask, x / keep, 0).astype(x.dtype)


class SelfAttention(nn.Module):
    """Multi-head self-attention; `lsa` adds a learned per-head temperature and no-self masking."""

    num_heads: int
    lsa: bool = False
    qkv_bias: bool = True
    attention_dropout: float = 0.0
    dropout: float = 0.0
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        dim = x.shape[-1]
        if dim % self.num_heads:
            raise ValueError(f"dim={dim} is not divisible by num_heads={self.num_heads}")
        head_dim = dim // self.num_heads
        qkv = nn.DenseGeneral(
            (3, self.num_heads, head_dim),
            use_bias=self.qkv_bias,
            kernel_init=_dense_init,
            dtype=self.dtype,
            name="qkv",
        )(x)
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
        if self.lsa:
            scale = self.param("temperature", nn.initializers.constant(head_dim**-0.5), (self.num_heads,))
        else:
            scale = head_dim**-0.5
        weights = attention_weights(q, k, scale=scale, mask_self=self.lsa)
        self.sow("intermediates", "attention_weights", weights)
        weights = nn.Dropout(self.attention_dropout, deterministic=not train)(weights)
        out = jnp.einsum("bhqk,bkhd->bqhd", weights.astype(self.dtype), v)
        out = nn.DenseGeneral(dim, axis=(-2, -1), kernel_init=_dense_init, dtype=self.dtype, name="out")(out)
        return nn.Dropout(self.dropout, deterministic=not train)(out)


class EncoderBlock(nn.Module):
    """Pre-LN transformer block; `drop_path` is this block's stochastic-depth rate."""

    num_heads: int
    mlp_dim: int
    lsa: bool = False
    qkv_bias: bool = True
    dropout: float = 0.0
    attention_dropout: float = 0.0
    drop_path: float = 0.0
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        y = nn.LayerNorm(dtype=self.dtype, name="norm1")(x)
        y = SelfAttention(
            self.num_heads,
            lsa=self.lsa,
            qkv_bias=self.qkv_bias,
            attention_dropout=self.attention_dropout,
            dropout=self.dropout,
            dtype=self.dtype,
            name="attn",
        )(y, train=train)
        x = x + DropPath(self.drop_path)(y, train=train)

        y = nn.LayerNorm(dtype=self.dtype, name="norm2")(x)
        y = nn.Dense(self.mlp_dim, kernel_init=_dense_init, dtype=self.dtype, name="mlp_in")(y)
        y = nn.gelu(y)
        y = nn.Dropout(self.dropout, deterministic=not train)(y)
        y = nn.Dense(x.shape[-1], kernel_init=_dense_init, dtype=self.dtype, name="mlp_out")(y)
        y = nn.Dropout(self.dropout, deterministic=not train)(y)
        return x + DropPath(self.drop_path)(y, train=train)


class VisionTransformer(nn.Module):
    """ViT family; see the module docstring for what each field selects."""

    num_classes: int = 7
    dim: int = 192
    depth: int = 12
    num_heads: int = 3
    mlp_dim: int = 768
    stem: str = "patch"  # patch | conv | cct | spt
    patch_size: int = 4  # for stem "patch" and "spt"
    stem_widths: Sequence[int] = ()  # conv widths for stem "conv" and "cct"
    stem_strides: Sequence[int] = ()  # per-conv strides for stem "conv"
    pos_emb: str = "learned"  # learned | sincos | none
    pool: str = "cls"  # cls | gap | seq
    lsa: bool = False
    qkv_bias: bool = True
    dropout: float = 0.0  # embedding, attention-output and MLP dropout
    attention_dropout: float = 0.0  # dropout on the attention weights
    drop_path: float = 0.0  # stochastic-depth rate of the last block (linear from 0)
    dtype: Any = jnp.float32
    conv: ModuleDef = nn.Conv  # every convolution (see models/layers.py, "the seam")
    max_pool: Callable = nn.max_pool  # every max-pool

    def _check(self, x: jax.Array) -> None:
        for field, value, valid in (
            ("stem", self.stem, STEMS),
            ("pool", self.pool, POOLS),
            ("pos_emb", self.pos_emb, POS_EMBS),
        ):
            check_choice(f"ViT {field}", value, valid)
        if self.stem in ("patch", "spt"):
            h, w = x.shape[1:3]
            if h % self.patch_size or w % self.patch_size:
                raise ValueError(
                    f"patch_size={self.patch_size} does not tile a {h}x{w} image; use a divisor "
                    "(4 → 144 tokens and 6 → 64 tokens at 48x48)"
                )
        if self.stem == "conv" and (not self.stem_widths or len(self.stem_widths) != len(self.stem_strides)):
            raise ValueError(
                "stem='conv' needs stem_widths and stem_strides of the same non-zero length, got "
                f"{tuple(self.stem_widths)} and {tuple(self.stem_strides)}"
            )
        if self.stem == "cct" and (not self.stem_widths or self.stem_widths[-1] != self.dim):
            raise ValueError(
                f"stem='cct' needs stem_widths ending in dim={self.dim} (its last conv makes the "
                f"tokens), got {tuple(self.stem_widths)}"
            )

    def _tokenize(self, x: jax.Array, *, train: bool) -> jax.Array:
        """Image [B, H, W, C] → token grid [B, h, w, dim]."""
        p = self.patch_size
        if self.stem == "patch":
            return self.conv(
                self.dim, (p, p), strides=(p, p), padding="VALID", dtype=self.dtype, name="embedding"
            )(x)
        # The stems' 3x3 convs are bias-free (in the conv stem BatchNorm's shift makes a bias redundant).
        conv3x3 = functools.partial(self.conv, kernel_size=(3, 3), use_bias=False, dtype=self.dtype)
        if self.stem == "conv":
            for i, (width, stride) in enumerate(zip(self.stem_widths, self.stem_strides, strict=True)):
                x = conv3x3(width, strides=(stride, stride), name=f"stem_conv{i}")(x)
                x = nn.relu(batch_norm(train, self.dtype, name=f"stem_bn{i}")(x))
            return self.conv(self.dim, (1, 1), dtype=self.dtype, name="embedding")(x)
        if self.stem == "cct":
            for i, width in enumerate(self.stem_widths):
                x = nn.relu(conv3x3(width, name=f"stem_conv{i}")(x))
                x = self.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
            return x
        # "spt": the image and its four half-patch diagonal shifts, cut into pxp patches.
        b, h, w, c = x.shape
        x = shifted_stack(x, p // 2)
        x = x.reshape(b, h // p, p, w // p, p, 5 * c).transpose(0, 1, 3, 2, 4, 5)
        x = x.reshape(b, h // p, w // p, p * p * 5 * c)
        x = nn.LayerNorm(dtype=self.dtype, name="spt_norm")(x)
        return nn.Dense(self.dim, kernel_init=_dense_init, dtype=self.dtype, name="embedding")(x)

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> tuple[jax.Array, dict]:
        self._check(x)
        x = x.astype(self.dtype)
        x = self._tokenize(x, train=train)
        b, h, w, d = x.shape
        x = x.reshape(b, h * w, d)

        # Position embeddings cover the grid tokens only: a CLS token is itself a learned vector, so
        # a position embedding for it would be a redundant second copy.
        if self.pos_emb == "learned":
            pe = self.param("pos_embedding", nn.initializers.normal(stddev=0.02), (1, h * w, d), jnp.float32)
            x = x + pe.astype(self.dtype)
        elif self.pos_emb == "sincos":
            x = x + jnp.asarray(posemb_sincos_2d(h, w, d), self.dtype)
        if self.pool == "cls":
            cls = self.param("cls", nn.initializers.zeros, (1, 1, d), jnp.float32)
            x = jnp.concatenate([jnp.broadcast_to(cls.astype(self.dtype), (b, 1, d)), x], axis=1)
        x = nn.Dropout(self.dropout, deterministic=not train)(x)

        for i in range(self.depth):
            rate = self.drop_path * i / (self.depth - 1) if self.depth > 1 else 0.0
            x = EncoderBlock(
                self.num_heads,
                self.mlp_dim,
                lsa=self.lsa,
                qkv_bias=self.qkv_bias,
                dropout=self.dropout,
                attention_dropout=self.attention_dropout,
                drop_path=rate,
                dtype=self.dtype,
                name=f"block{i}",
            )(x, train=train)
        x = nn.LayerNorm(dtype=self.dtype, name="norm")(x)

        if self.pool == "cls":
            x = x[:, 0]
        elif self.pool == "gap":
            x = x.mean(axis=1)
        else:  # "seq": CCT's sequence pooling, an attention over tokens with one learned query.
            scores = nn.Dense(1, dtype=self.dtype, name="seq_pool")(x)[..., 0]
            weights = jax.nn.softmax(scores.astype(jnp.float32), axis=1)
            self.sow("intermediates", "seq_pool_weights", weights)
            x = jnp.einsum("bn,bnd->bd", weights.astype(self.dtype), x)
        # Zero-initialised head: every class starts at the same logit, so early updates come from
        # the data rather than from a random projection.
        logits = nn.Dense(self.num_classes, kernel_init=nn.initializers.zeros, dtype=self.dtype, name="head")(
            x
        )
        return logits.astype(jnp.float32), {}


MODEL = VisionTransformer

_TINY = dict(dim=192, depth=12, num_heads=3, mlp_dim=768)
_SMALL = dict(dim=384, depth=12, num_heads=6, mlp_dim=1536)

# Ordered by parameter count. Token counts are for 48x48 input.
VARIANTS: dict[str, dict] = {
    # Test and CPU sizes (~0.1M parameters), one per tokenizer.
    "vit_micro": dict(dim=64, depth=2, num_heads=2, mlp_dim=128, patch_size=6),  # 64 tokens
    "vit_spt_lsa_micro": dict(
        dim=64,
        depth=2,
        num_heads=2,
        mlp_dim=128,
        stem="spt",
        patch_size=6,
        lsa=True,
        qkv_bias=False,
    ),
    "vit_hybrid_micro": dict(
        dim=64,
        depth=2,
        num_heads=2,
        mlp_dim=128,
        stem="conv",
        stem_widths=(16, 32),
        stem_strides=(2, 2),
    ),  # 144 tokens
    # CCT-2/3x2: 2 layers, two conv-pool tokenizer stages; 12x12 = 144 tokens, sequence pooling.
    "cct_2_3x2": dict(
        dim=128,
        depth=2,
        num_heads=2,
        mlp_dim=128,
        stem="cct",
        stem_widths=(64, 128),
        pool="seq",
        attention_dropout=0.1,
        drop_path=0.1,
        qkv_bias=False,
    ),
    # 4 layers of 128 on 6x6 patches (~0.5M parameters, 64 tokens): the CPU-budget comparison's size.
    "vit_cpu": dict(dim=128, depth=4, num_heads=4, mlp_dim=256, patch_size=6),
    # Lee et al.'s small-dataset ViT (depth 9, 12 heads of 16 dims, MLP ratio 2) with SPT + LSA;
    # 144 tokens.
    "vit_spt_lsa_tiny": dict(
        dim=192,
        depth=9,
        num_heads=12,
        mlp_dim=384,
        stem="spt",
        patch_size=4,
        lsa=True,
        qkv_bias=False,
        drop_path=0.1,
    ),
    # CCT-7/3x1: 7 layers, one conv-pool tokenizer stage; 24x24 = 576 tokens, sequence pooling.
    "cct_7_3x1": dict(
        dim=256,
        depth=7,
        num_heads=4,
        mlp_dim=512,
        stem="cct",
        stem_widths=(256,),
        pool="seq",
        attention_dropout=0.1,
        drop_path=0.1,
        qkv_bias=False,
    ),
    "vit_tiny_p6_gap": dict(**_TINY, patch_size=6, pool="gap", drop_path=0.1),  # 64 tokens
    "vit_tiny_p4": dict(**_TINY, patch_size=4, drop_path=0.1),  # 144 tokens
    # Xiao et al.'s conv stem on ViT-S: 3 conv-BN-ReLU (stride 1, 2, 2) → 12x12 = 144 tokens. Like
    # the paper, one transformer block fewer than ViT-S pays for the stem.
    "vit_hybrid_small": dict(
        **{**_SMALL, "depth": 11},
        stem="conv",
        stem_widths=(64, 128, 256),
        stem_strides=(1, 2, 2),
        drop_path=0.1,
    ),
    "vit_small_p6": dict(**_SMALL, patch_size=6, drop_path=0.1),  # 64 tokens
    "vit_small_p4": dict(**_SMALL, patch_size=4, drop_path=0.1),  # 144 tokens
}
