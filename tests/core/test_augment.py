"""Tests for on-device preprocessing and augmentation."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ml_collections import ConfigDict

from configs.common import get_base_config
from fer_flax.config.schema import ConfigError, validate
from fer_flax.core import augment

OFF = dict(
    pad_crop=0,
    random_resized_crop=False,
    rrc_scale=(0.8, 1.0),
    rrc_ratio=(0.9, 1.1),
    flip=False,
    rotate_degrees=0.0,
    erase_prob=0.0,
    erase_scale=(0.02, 0.2),
    ten_crop=False,
    crop_size=44,
)


def cfg(**overrides) -> ConfigDict:
    return ConfigDict({**OFF, **overrides})


ALL_ON = cfg(pad_crop=4, random_resized_crop=True, flip=True, rotate_degrees=15.0, erase_prob=0.5)


@functools.cache
def _jitted(frozen_items):
    c = ConfigDict(dict(frozen_items))
    return jax.jit(functools.partial(augment.augment_batch, cfg=c))


def run(c: ConfigDict, images, seed=0) -> np.ndarray:
    items = tuple((k, tuple(v) if isinstance(v, (list, tuple)) else v) for k, v in c.items())
    return np.asarray(_jitted(items)(jax.random.key(seed), jnp.asarray(images)))


def images(b=16, seed=0) -> np.ndarray:
    """Asymmetric random images, already in the normalised float range."""
    return augment.preprocess(np.random.default_rng(seed).integers(0, 256, (b, 48, 48, 1), dtype=np.uint8))


def test_config_keys_match_common_config():
    assert set(get_base_config().augment.keys()) == set(OFF)


def test_preprocess():
    x = np.zeros((2, 48, 48), np.uint8)
    x[:, 0, :3] = [0, 128, 255]
    y = augment.preprocess(x)
    assert y.shape == (2, 48, 48, 1) and y.dtype == jnp.float32
    np.testing.assert_allclose(y[0, 0, :3, 0], [-2.0, (128 / 255 - 0.5) / 0.25, 2.0], rtol=0, atol=1e-6)


def test_shape_dtype_with_everything_on():
    x = images()
    y = run(ALL_ON, x)
    assert y.shape == x.shape and y.dtype == np.float32
    assert np.isfinite(y).all()
    assert not np.allclose(y, x)


@pytest.mark.parametrize(
    "c",
    [
        cfg(pad_crop=4, flip=True, rotate_degrees=20.0),
        cfg(random_resized_crop=True, rrc_scale=(0.3, 1.0), rrc_ratio=(0.5, 2.0), flip=True),
        cfg(pad_crop=6, random_resized_crop=True, rotate_degrees=45.0),
    ],
)
def test_geometric_ops_stay_in_input_range(c):
    x = images()
    y = run(c, x)
    lo, hi = x.min(axis=(1, 2, 3)), x.max(axis=(1, 2, 3))
    assert (y.min(axis=(1, 2, 3)) >= lo - 1e-5).all() and (y.max(axis=(1, 2, 3)) <= hi + 1e-5).all()


def test_determinism():
    x = images()
    np.testing.assert_array_equal(run(ALL_ON, x, seed=1), run(ALL_ON, x, seed=1))
    assert not np.array_equal(run(ALL_ON, x, seed=1), run(ALL_ON, x, seed=2))


def test_everything_off_is_identity_and_traces_nothing():
    x = images()
    np.testing.assert_array_equal(run(cfg(), x), x)
    jaxpr = jax.make_jaxpr(functools.partial(augment.augment_batch, cfg=cfg()))(jax.random.key(0), x)
    assert not jaxpr.eqns


def test_zero_degree_rotation_is_identity():
    x = images()
    np.testing.assert_array_equal(run(cfg(rotate_degrees=0.0), x), x)


def test_full_area_resized_crop_is_exact_identity():
    # Scale and ratio pinned to 1: the affine resample path lands on pixel centres exactly.
    x = images()
    c = cfg(random_resized_crop=True, rrc_scale=(1.0, 1.0), rrc_ratio=(1.0, 1.0))
    np.testing.assert_array_equal(run(c, x), x)


def _flip_pattern(x, y) -> np.ndarray:
    """Per example: True if mirrored, False if unchanged; fails if neither."""
    same = np.all(y == x, axis=(1, 2, 3))
    mirrored = np.all(y == x[:, :, ::-1], axis=(1, 2, 3))
    assert np.all(same ^ mirrored)
    return mirrored


def test_flip_is_identity_or_exact_mirror():
    x = images(32)
    flipped = _flip_pattern(x, run(cfg(flip=True), x, seed=3))
    assert 4 < flipped.sum() < 28
    # In the affine path the flip is folded into the resample: still exact, and the same draws.
    c = cfg(flip=True, random_resized_crop=True, rrc_scale=(1.0, 1.0), rrc_ratio=(1.0, 1.0))
    np.testing.assert_array_equal(_flip_pattern(x, run(c, x, seed=3)), flipped)


def _window_offsets(x, y, pad, atol=0.0):
    """For each example, the (dy, dx) windows of the reflect-padded input that equal the output."""
    found = []
    for xi, yi in zip(x, y, strict=True):
        padded = np.pad(xi, ((pad, pad), (pad, pad), (0, 0)), mode="reflect")
        hits = [
            (dy, dx)
            for dy in range(2 * pad + 1)
            for dx in range(2 * pad + 1)
            if np.allclose(padded[dy : dy + 48, dx : dx + 48], yi, atol=atol, rtol=0)
        ]
        assert len(hits) == 1, hits
        found.append(hits[0])
    return found


def test_pad_crop_is_a_window_of_the_reflect_padded_image():
    x = images(8)
    offsets = _window_offsets(x, run(cfg(pad_crop=4), x), pad=4)
    assert len(set(offsets)) > 1
    # Through the affine path (a near-zero rotation turns it on) the shift means the same: mirror
    # boundaries reproduce the reflect padding, and the same draws pick the same windows.
    affine = _window_offsets(x, run(cfg(pad_crop=4, rotate_degrees=1e-4), x), pad=4, atol=1e-3)
    assert affine == offsets


def test_rotation_rotates():
    # A 90 degree inverse map through the resampler equals np.rot90; checks axes and centre.
    x = np.asarray(images(1))[0]
    offs = np.arange(48) + 0.5 - 24
    v, u = np.meshgrid(offs, offs, indexing="ij")
    y = augment._resample(jnp.asarray(x), jnp.asarray(24 + u - 0.5), jnp.asarray(24 - v - 0.5))
    np.testing.assert_allclose(y, np.rot90(x, k=1), atol=1e-6)
    # A random small rotation moves pixels but keeps a centred disc's mass roughly in place.
    disc = ((np.add.outer((offs) ** 2, offs**2)) < 15**2).astype(np.float32)[None, :, :, None]
    r = run(cfg(rotate_degrees=30.0), np.repeat(disc, 4, 0))
    assert not np.array_equal(r, np.repeat(disc, 4, 0))
    np.testing.assert_allclose(r.sum(axis=(1, 2, 3)), disc.sum(), rtol=0.02)


def test_erasing_replaces_one_rectangle_with_zero():
    # Non-zero everywhere, so every erased pixel shows.
    x = np.broadcast_to(np.linspace(0.5, 1.0, 48 * 48, dtype=np.float32).reshape(48, 48, 1), (32, 48, 48, 1))
    y = run(cfg(erase_prob=1.0, erase_scale=(0.05, 0.2)), x)
    for xi, yi in zip(x, y, strict=True):
        changed = (yi != xi)[..., 0]
        rows, cols = np.flatnonzero(changed.any(1)), np.flatnonzero(changed.any(0))
        assert rows.size and cols.size
        box = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
        assert changed[box].all()  # a full rectangle ...
        assert (yi[box] == 0).all()  # ... filled with the normalised mean
        assert changed.sum() == changed[box].size  # ... and nothing else touched
        assert 0.5 * 0.05 * 48 * 48 <= changed.sum() <= 1.5 * 0.2 * 48 * 48
    some = run(cfg(erase_prob=0.5), x, seed=1)
    erased = (some != x).any(axis=(1, 2, 3))
    assert 0 < erased.sum() < len(x)


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        (dict(pad_crop=48), r"config\.augment\.pad_crop=48 must be an integer in \[0, 48\)"),
        (dict(rotate_degrees=-5.0), r"config\.augment\.rotate_degrees=-5\.0"),
        (dict(erase_prob=1.5), r"config\.augment\.erase_prob=1\.5"),
        (dict(rrc_scale=(0.5, 1.5)), r"config\.augment\.rrc_scale=\(0\.5, 1\.5\)"),
        (dict(erase_scale=(0.3, 0.1)), r"config\.augment\.erase_scale=\(0\.3, 0\.1\)"),
    ],
)
def test_config_errors(overrides, match):
    """Bad augment values fail in config_schema.validate, before any data is read or traced."""
    config = get_base_config()
    config.augment.update(overrides)
    with pytest.raises(ConfigError, match=match):
        validate(config)
