"""On-device preprocessing and augmentation, traced inside the jitted train step.

Every image gets its own key (`jax.random.split(rng, B)`) and the per-image function is
`vmap`ped, so a batch's augmentation is exactly reproducible from one key and independent of how
the batch is sharded. Which operations run is decided in Python from the (static) config: a
disabled operation is not traced.

Geometry: pad-crop alone is an exact integer window of the reflect-padded image
(`dynamic_slice`). When random-resized-crop or rotation is on, crop, shift, flip and rotation are
composed into ONE affine map and the image is resampled once, bilinearly, with mirror boundaries
(no edge repeat, numpy's `reflect`): corners uncovered by a rotation show mirrored face instead of
a constant, and values never leave the input's range. Erasing comes last.

Ten-crop training (`augment.ten_crop`): every training image becomes the ten views of
`fer_flax.core.tta.ten_crop` (four corners and the centre of side `augment.crop_size`, resized back to 48x48,
and their mirrors), the labels repeated; the augmentations above then run on each crop with its own
key. It is the training counterpart of `--tta tencrop`; the model and BatchNorm see ten times the
batch.

The `config.augment` values are checked by `fer_flax.config.schema.validate` before training starts;
here they are only read.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from fer_flax.core import tta

# Normalisation (x/255 - MEAN) / STD. FER2013 Training pixels have mean 0.506 and std 0.255
# (measured on 6,000 images); round constants keep inputs ~zero-mean, unit-variance on any face set,
# and make 0 the mean grey that random erasing fills with.
MEAN = 0.5
STD = 0.25

# Aspect-ratio range of the erased rectangle: torchvision RandomErasing's default, rarely tuned.
ERASE_RATIO = (0.3, 3.3)


def preprocess(images_uint8: jax.Array) -> jax.Array:
    """uint8 [B, H, W, C] (or grayscale [B, H, W]) -> float32 [B, H, W, C], `(x/255 - MEAN) / STD`."""
    x = jnp.asarray(images_uint8)
    if x.ndim == 3:
        x = x[..., None]
    return (x.astype(jnp.float32) / 255.0 - MEAN) / STD


def _pair(value: Any) -> tuple[float, float]:
    lo, hi = (float(v) for v in value)
    return lo, hi


def _read_config(cfg: Any) -> dict[str, Any]:
    """The augment keys as Python values (static at trace time)."""
    return {
        "pad_crop": int(cfg.pad_crop),
        "rrc": bool(cfg.random_resized_crop),
        "rrc_scale": _pair(cfg.rrc_scale),
        "rrc_ratio": _pair(cfg.rrc_ratio),
        "flip": bool(cfg.flip),
        "rotate": float(cfg.rotate_degrees),
        "erase_prob": float(cfg.erase_prob),
        "erase_scale": _pair(cfg.erase_scale),
    }


def _mirror(i: jax.Array, n: int) -> jax.Array:
    """Maps integer coordinates onto [0, n) by reflection without edge repeat:
    … 2 1 | 0 1 2 … n-1 | n-2 …"""
    period = 2 * (n - 1)
    i = jnp.abs(i) % period
    return jnp.where(i >= n, period - i, i)


def _resample(img: jax.Array, y: jax.Array, x: jax.Array) -> jax.Array:
    """Bilinear sample of `img` [H, W, C] at float coordinates y, x [H', W'] (pixel centres at
    integers) with mirror boundaries, as four flat gathers."""
    h, w, c = img.shape
    flat = img.reshape(h * w, c)
    y0, x0 = jnp.floor(y), jnp.floor(x)
    fy, fx = (y - y0)[..., None], (x - x0)[..., None]
    y0, x0 = y0.astype(jnp.int32), x0.astype(jnp.int32)
    ya, yb = _mirror(y0, h), _mirror(y0 + 1, h)
    xa, xb = _mirror(x0, w), _mirror(x0 + 1, w)
    top = flat[ya * w + xa] * (1 - fx) + flat[ya * w + xb] * fx
    bottom = flat[yb * w + xa] * (1 - fx) + flat[yb * w + xb] * fx
    return top * (1 - fy) + bottom * fy


# Every image draws one vector of uniforms and each random quantity has its own slot: one threefry
# call per image instead of a dozen keeps compile time and run time small on CPU, and turning one
# operation on or off never changes another's draws.
_SLOTS = (
    "flip",
    "shift_y",
    "shift_x",
    "rrc_area",
    "rrc_ratio",
    "rrc_cx",
    "rrc_cy",
    "rotate",
    "erase_do",
    "erase_area",
    "erase_ratio",
    "erase_y",
    "erase_x",
)
_SLOT = {name: i for i, name in enumerate(_SLOTS)}


def _between(u: jax.Array, lo: Any, hi: Any) -> jax.Array:
    return lo + (hi - lo) * u


def _log_between(u: jax.Array, lo: float, hi: float) -> jax.Array:
    return jnp.exp(_between(u, jnp.log(lo), jnp.log(hi)))


def _integer(u: jax.Array, n: Any) -> jax.Array:
    """Uniform integer in [0, n) from u in [0, 1)."""
    return jnp.minimum(jnp.floor(u * n), n - 1).astype(jnp.int32)


def _affine(u: jax.Array, img: jax.Array, flip: jax.Array, p: dict[str, Any]) -> jax.Array:
    """Random-resized crop, pad-crop shift, flip and rotation as one inverse map (output -> input)
    and one resample. The flip is folded in because a separate reverse after the gather made the
    whole augmentation several times slower on XLA:CPU (33 ms vs 2-6 ms for 128 images)."""
    height, width = (float(n) for n in img.shape[:2])
    # Crop box in continuous pixel-edge coordinates [0, W] x [0, H]: centre (cx, cy), size (cw, ch).
    cw, ch = jnp.float32(width), jnp.float32(height)
    cx, cy = jnp.float32(width / 2), jnp.float32(height / 2)
    if p["rrc"]:
        area = _between(u[_SLOT["rrc_area"]], *p["rrc_scale"])
        ratio = _log_between(u[_SLOT["rrc_ratio"]], *p["rrc_ratio"])  # width / height
        # Clipping to the image is torchvision's fallback when a drawn box doesn't fit.
        cw = jnp.minimum(width * jnp.sqrt(area * ratio), width)
        ch = jnp.minimum(height * jnp.sqrt(area / ratio), height)
        cx = _between(u[_SLOT["rrc_cx"]], cw / 2, width - cw / 2)
        cy = _between(u[_SLOT["rrc_cy"]], ch / 2, height - ch / 2)
    if p["pad_crop"]:
        # Pad-crop's shift (same draws); the mirror boundaries stand in for the reflect padding.
        pad = p["pad_crop"]
        cy = cy + _integer(u[_SLOT["shift_y"]], 2 * pad + 1) - pad
        cx = cx + _integer(u[_SLOT["shift_x"]], 2 * pad + 1) - pad
    # Output pixel centre offsets from the image centre, scaled into the crop box.
    rows = jnp.arange(img.shape[0], dtype=jnp.float32) + 0.5 - height / 2
    cols = jnp.arange(img.shape[1], dtype=jnp.float32) + 0.5 - width / 2
    v, h = jnp.meshgrid(rows * (ch / height), cols * (cw / width), indexing="ij")
    h = jnp.where(flip, -h, h)
    if p["rotate"]:
        theta = jnp.deg2rad(_between(u[_SLOT["rotate"]], -p["rotate"], p["rotate"]))
        cos, sin = jnp.cos(theta), jnp.sin(theta)
        h, v = cos * h - sin * v, sin * h + cos * v
    return _resample(img, cy + v - 0.5, cx + h - 0.5)


def _pad_crop(u: jax.Array, img: jax.Array, pad: int) -> jax.Array:
    padded = jnp.pad(img, ((pad, pad), (pad, pad), (0, 0)), mode="reflect")
    oy = _integer(u[_SLOT["shift_y"]], 2 * pad + 1)
    ox = _integer(u[_SLOT["shift_x"]], 2 * pad + 1)
    return jax.lax.dynamic_slice(padded, (oy, ox, 0), img.shape)


def _erase(u: jax.Array, img: jax.Array, p: dict[str, Any]) -> jax.Array:
    """With probability erase_prob, sets a random rectangle (area fraction in erase_scale, aspect
    ratio in ERASE_RATIO, clipped to the image) to 0, the normalised mean grey."""
    h, w = img.shape[:2]
    area = _between(u[_SLOT["erase_area"]], *p["erase_scale"]) * h * w
    ratio = _log_between(u[_SLOT["erase_ratio"]], *ERASE_RATIO)
    eh = jnp.clip(jnp.round(jnp.sqrt(area / ratio)), 1, h).astype(jnp.int32)
    ew = jnp.clip(jnp.round(jnp.sqrt(area * ratio)), 1, w).astype(jnp.int32)
    y0 = _integer(u[_SLOT["erase_y"]], h - eh + 1)
    x0 = _integer(u[_SLOT["erase_x"]], w - ew + 1)
    rows, cols = jnp.arange(h), jnp.arange(w)
    inside = ((rows >= y0) & (rows < y0 + eh))[:, None] & ((cols >= x0) & (cols < x0 + ew))[None, :]
    inside = inside & (u[_SLOT["erase_do"]] < p["erase_prob"])
    return jnp.where(inside[..., None], jnp.zeros((), img.dtype), img)


def augment_batch(rng: jax.Array, images: jax.Array, cfg: Any) -> jax.Array:
    """Augments a preprocessed float batch [B, H, W, C]; `cfg` has the `config.augment` keys.

    pad_crop: reflect-pad by this many pixels and take a random HxW window (0 = off).
    random_resized_crop, rrc_scale, rrc_ratio: crop a box of that area fraction and aspect ratio
      (log-uniform) and resize it to HxW.
    rotate_degrees: rotate by an angle uniform in [-d, d] about the centre (0 = off).
    flip: mirror horizontally with probability 1/2.
    erase_prob, erase_scale: random erasing, filled with 0 (the normalised mean).
    Image i's randomness comes from `jax.random.split(rng, B)[i]` alone; enabling or disabling one
    operation doesn't change the draws of the others.
    """
    p = _read_config(cfg)
    geometric = p["rrc"] or p["rotate"] > 0
    if not (geometric or p["pad_crop"] or p["flip"] or p["erase_prob"] > 0):
        return images

    def one(key: jax.Array, img: jax.Array) -> jax.Array:
        u = jax.random.uniform(key, (len(_SLOTS),))
        flip = (u[_SLOT["flip"]] < 0.5) if p["flip"] else jnp.bool_(False)
        if geometric:
            img = _affine(u, img, flip, p)
        else:
            if p["pad_crop"]:
                img = _pad_crop(u, img, p["pad_crop"])
            if p["flip"]:
                img = jnp.where(flip, img[:, ::-1], img)
        if p["erase_prob"] > 0:
            img = _erase(u, img, p)
        return img

    return jax.vmap(one)(jax.random.split(rng, images.shape[0]), images)


def ten_crop_size(cfg: Any) -> int | None:
    """The crop side when `cfg.ten_crop` (the `config.augment` keys) is on, else None."""
    return int(cfg.crop_size) if bool(cfg.ten_crop) else None


def ten_crop_batch(images: jax.Array, labels: jax.Array, crop_size: int) -> tuple[jax.Array, jax.Array]:
    """images [B, H, H, C] -> [10B, H, H, C] with `tta.ten_crop`'s views; labels [B, ...] -> [10B, ...].

    Example i's crops are rows 10i .. 10i+9 (in tta's view order), so each device's shard of a batch
    makes its own crops and `x.reshape(B, 10, ...)` groups them back by image."""
    crops = tta.ten_crop(images, crop_size)
    views = crops.shape[1]
    return crops.reshape(-1, *crops.shape[2:]), jnp.repeat(labels, views, axis=0)
