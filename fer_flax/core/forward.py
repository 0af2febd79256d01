"""The inference forward pass: uint8 images -> float32 logits, with the test-time views of a run.
Pure and free of training code (no optimizer, loss or mixing), so every inference path imports it
alone."""

from __future__ import annotations

import jax

from fer_flax.core import tta
from fer_flax.core.augment import preprocess


def logits_step(
    apply_fn,
    variables: dict,
    images: jax.Array,
    *,
    tta_mode: str = "none",
    crop_size: int = tta.DEFAULT_CROP_SIZE,
) -> jax.Array:
    """float32 logits [B, K] of uint8 images [B, H, W, C] in inference mode, averaged over the
    views of `tta_mode` (`fer_flax.core.tta`), so a model trained on crops is scored on what it is
    tested with. The one inference step: training's evaluations, evaluate, predict and multiseed
    all use it through `fer_flax.inference.engine`."""

    return view_logits(apply_fn, variables, preprocess(images), tta_mode=tta_mode, crop_size=crop_size)


def view_logits(
    apply_fn, variables: dict, images: jax.Array, *, tta_mode: str, crop_size: int = tta.DEFAULT_CROP_SIZE
) -> jax.Array:
    """`logits_step` of images already preprocessed (float32 [B, H, W, C], augmented or not)."""

    def apply(x: jax.Array) -> jax.Array:
        return apply_fn(variables, x, train=False)[0]

    return tta.apply_with_tta(apply, images, tta_mode, crop_size)
