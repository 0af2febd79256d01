"""Mixup and CutMix on the device, traced inside the jitted train step.

Both act on a batch of preprocessed images [B, H, W, C] (after augmentation) and its soft targets
[B, K]. Example i is paired with example B-1-i (the batch reversed, as timm does): no permutation to
draw, and every example is mixed with a different one except the middle of an odd batch. One lambda
and one decision per batch (timm's "batch" mode):

  mixup   (Zhang et al. 2018)  x = lam * x_i + (1 - lam) * x_pair,  lam ~ Beta(mixup_alpha, mixup_alpha).
  cutmix  (Yun et al. 2019)    a box of area (1 - lam) * H * W, centred at a uniform pixel and clipped
                               to the image, is pasted from x_pair; lam ~ Beta(cutmix_alpha,
                               cutmix_alpha) is then corrected to the area actually kept,
                               lam = 1 - box_area / (H * W), so the targets match the pixels.
  targets  t = lam * t_i + (1 - lam) * t_pair: rows still sum to one.

`config.mix.prob` is the probability that a batch is mixed at all, `config.mix.switch_prob` the
probability of cutmix rather than mixup when both alphas are > 0; an alpha of 0 disables that method.
The decisions are traced values selected with `jnp.where`, so the step compiles once; which methods
exist at all is decided in Python from the (static) config, and with mixing off nothing is traced.
The `config.mix` values are checked by `fer_flax.config.schema.validate` before training starts.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp


class MixParams(NamedTuple):
    """One batch's draws. `lam` is the weight of each example itself (1 when the batch is not mixed);
    `box` is (y0, y1, x0, x1) of the pasted region, empty unless cutmix was applied."""

    apply: jax.Array  # bool []
    cutmix: jax.Array  # bool []
    lam: jax.Array  # float32 []
    box: jax.Array  # int32 [4]


def read_mix_config(cfg: Any) -> dict[str, float]:
    """The `config.mix` keys as Python floats (static at trace time)."""
    return {k: float(cfg[k]) for k in ("mixup_alpha", "cutmix_alpha", "prob", "switch_prob")}


def mixing_enabled(cfg: Any) -> bool:
    p = read_mix_config(cfg)
    return (p["mixup_alpha"] > 0 or p["cutmix_alpha"] > 0) and p["prob"] > 0


def _beta(key: jax.Array, alpha: float) -> jax.Array:
    # Clipped because a tiny alpha can round a draw just outside [0, 1] in float32.
    return jnp.clip(jax.random.beta(key, alpha, alpha, dtype=jnp.float32), 0.0, 1.0)


def draw_mix_params(rng: jax.Array, cfg: Any, height: int, width: int) -> MixParams:
    """The batch's decision, method, lambda and cutmix box, from one key and the `config.mix` keys."""
    p = read_mix_config(cfg)
    k_apply, k_switch, k_mixup, k_cutmix, k_cy, k_cx = jax.random.split(rng, 6)
    apply = jax.random.uniform(k_apply) < p["prob"]
    use_mixup, use_cutmix = p["mixup_alpha"] > 0, p["cutmix_alpha"] > 0
    if use_mixup and use_cutmix:
        cutmix = jax.random.uniform(k_switch) < p["switch_prob"]
    else:
        cutmix = jnp.bool_(use_cutmix)
    lam_mixup = _beta(k_mixup, p["mixup_alpha"]) if use_mixup else jnp.float32(1.0)

    box = jnp.zeros(4, jnp.int32)
    lam_cutmix = jnp.float32(1.0)
    if use_cutmix:
        # Box sides of sqrt(1 - lam) times the image's, centred at a uniform pixel, clipped to the image
        # (timm's rand_bbox); clipping shrinks the box, hence the corrected lambda below.
        side = jnp.sqrt(1.0 - _beta(k_cutmix, p["cutmix_alpha"]))
        cut_h = jnp.floor(height * side).astype(jnp.int32)
        cut_w = jnp.floor(width * side).astype(jnp.int32)
        cy = jax.random.randint(k_cy, (), 0, height)
        cx = jax.random.randint(k_cx, (), 0, width)
        y0, y1 = jnp.clip(cy - cut_h // 2, 0, height), jnp.clip(cy - cut_h // 2 + cut_h, 0, height)
        x0, x1 = jnp.clip(cx - cut_w // 2, 0, width), jnp.clip(cx - cut_w // 2 + cut_w, 0, width)
        box = jnp.where(cutmix & apply, jnp.stack([y0, y1, x0, x1]), box)
        lam_cutmix = 1.0 - ((y1 - y0) * (x1 - x0)).astype(jnp.float32) / (height * width)
    lam = jnp.where(cutmix, lam_cutmix, lam_mixup)
    return MixParams(apply=apply, cutmix=cutmix, lam=jnp.where(apply, lam, jnp.float32(1.0)), box=box)


def box_mask(box: jax.Array, height: int, width: int) -> jax.Array:
    """bool [H, W], True inside the (y0, y1, x0, x1) box."""
    rows, cols = jnp.arange(height), jnp.arange(width)
    return ((rows >= box[0]) & (rows < box[1]))[:, None] & ((cols >= box[2]) & (cols < box[3]))[None, :]


def apply_mix(images: jax.Array, targets: jax.Array, params: MixParams) -> tuple[jax.Array, jax.Array]:
    """Mixes images [B, H, W, C] and targets [B, K] with their reversed batch as `params` say."""
    pair_images, pair_targets = images[::-1], targets[::-1]
    lam = params.lam.astype(images.dtype)
    blended = lam * images + (1 - lam) * pair_images
    pasted = jnp.where(box_mask(params.box, *images.shape[1:3])[None, :, :, None], pair_images, images)
    mixed = jnp.where(params.cutmix, pasted, blended)
    mixed_targets = params.lam * targets + (1 - params.lam) * pair_targets
    # An unmixed batch is returned exactly, not as 1 * x + 0 * x_pair.
    return jnp.where(params.apply, mixed, images), jnp.where(params.apply, mixed_targets, targets)


def mix_batch(rng: jax.Array, images: jax.Array, targets: jax.Array, cfg: Any) -> tuple[jax.Array, jax.Array]:
    """Mixup/cutmix of a preprocessed batch [B, H, W, C] and soft targets [B, K] per `config.mix`;
    the inputs themselves (nothing traced) when mixing is off."""
    if not mixing_enabled(cfg):
        return images, targets
    params = draw_mix_params(rng, cfg, images.shape[1], images.shape[2])
    return apply_mix(images, targets.astype(jnp.float32), params)
