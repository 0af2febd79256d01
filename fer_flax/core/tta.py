"""Test-time augmentation on the device: several views of each image, logits averaged over views.

Modes:
  none     the image itself (1 view).
  flip     the image and its horizontal mirror (2 views).
  tencrop  the four corner crops and the centre crop of side `crop_size`, each resized back to the
           input size, then the mirror of each of those five (10 views), in the order
           [top-left, top-right, bottom-left, bottom-right, centre, and the same five mirrored].

Ten-crop choices, and why:
  * Every model takes 48x48 inputs (its parameters, e.g. a ViT's position embeddings, fix the size),
    so a 44x44 crop is resized back to 48x48 with `jax.image.resize(..., "bilinear")` (half-pixel
    centres, as in training's resized crops) instead of being fed at 44x44. Each view is therefore a
    ~9% zoom on one part of the face, close to what `pad_crop`/random-resized-crop training shows.
  * The default crop is 44 for 48x48 inputs, the size the widely copied FER2013 PyTorch recipes
    use (`TenCrop(44)` on 48x48 faces); there the model itself takes 44x44 inputs.
  * The centre crop's offset is `(size - crop) // 2` on each axis (2 for 48/44).
  * Mirrors are of the resized crops (crop, then flip). torchvision's `TenCrop` crops the flipped
    image instead, which gives the same set of ten views in a different order; the mean is the same.
  * Logits (not probabilities) are averaged over views: the views are one model's guesses about one
    image. Ensembles of different models average probabilities instead (`fer_flax.inference.evaluate`).

Views are laid out [B, V, ...] and flattened to [B * V, ...] so that each device's shard of a batch
produces its own images' views locally, without moving data between devices.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from fer_flax.config.choices import TTA_MODES
from fer_flax.config.schema import check_choice

DEFAULT_CROP_SIZE = 44
_NUM_VIEWS = {"none": 1, "flip": 2, "tencrop": 10}


def check_mode(mode: str, key: str = "mode") -> str:
    """Returns `mode` if it is one of TTA_MODES, else raises ConfigError naming `key` (the caller's name
    for the value: "--tta", "config.eval_tta")."""
    check_choice(key, mode, TTA_MODES)
    return mode


def num_views(mode: str) -> int:
    return _NUM_VIEWS[check_mode(mode)]


def hflip(images: jax.Array) -> jax.Array:
    """Mirror left-right: images [..., H, W, C]."""
    return images[..., ::-1, :]


def five_crop_offsets(size: int, crop_size: int) -> list[tuple[int, int]]:
    """(top, left) of the top-left, top-right, bottom-left, bottom-right and centre crops."""
    if not 0 < crop_size <= size:
        raise ValueError(f"crop size must be in [1, {size}], got {crop_size}")
    far = size - crop_size
    mid = far // 2
    return [(0, 0), (0, far), (far, 0), (far, far), (mid, mid)]


def ten_crop(images: jax.Array, crop_size: int, out_size: int | None = None) -> jax.Array:
    """images [B, H, W, C] (square) -> [B, 10, out, out, C]; `out_size` defaults to H.

    Each crop is resized to `out_size` bilinearly unless it already has that size (then it is exact).
    """
    b, h, w, c = images.shape
    if h != w:
        raise ValueError(f"ten-crop expects square images, got {h}x{w}")
    out_size = h if out_size is None else out_size
    crops = []
    for top, left in five_crop_offsets(h, crop_size):
        crop = images[:, top : top + crop_size, left : left + crop_size, :]
        if crop_size != out_size:
            crop = jax.image.resize(crop, (b, out_size, out_size, c), method="bilinear")
        crops.append(crop)
    five = jnp.stack(crops, axis=1)
    return jnp.concatenate([five, hflip(five)], axis=1)


def views(images: jax.Array, mode: str, crop_size: int = DEFAULT_CROP_SIZE) -> jax.Array:
    """images [B, H, W, C] -> [B, V, H, W, C], V = num_views(mode)."""
    check_mode(mode)
    if mode == "none":
        return images[:, None]
    if mode == "flip":
        return jnp.stack([images, hflip(images)], axis=1)
    return ten_crop(images, crop_size)


def apply_with_tta(
    logits_fn: Callable[[jax.Array], jax.Array],
    images: jax.Array,
    mode: str,
    crop_size: int = DEFAULT_CROP_SIZE,
) -> jax.Array:
    """Mean over views of `logits_fn` (float [N, H, W, C] -> [N, K]), in float32: [B, K]."""
    v = views(images, mode, crop_size)
    b, n = v.shape[:2]
    logits = logits_fn(v.reshape(b * n, *v.shape[2:])).astype(jnp.float32)
    return logits.reshape(b, n, -1).mean(axis=1)
