"""Training recipe: soft-target losses, class weights, logit adjustment, mixup/cutmix, ten-crop, eval TTA.

Expectations are computed by hand (or independently with optax / tta.py), and the wiring is checked
through steps.py's `_loss_and_grads` and `logits_step`, then once end to end with everything on.
"""

import functools
import json
import math
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from ml_collections import ConfigDict

from configs import simple_cnn
from configs.common import get_base_config, use_smoke_settings
from fer_flax.config.schema import ConfigError, validate
from fer_flax.core import augment, forward, losses, mixing, parallel, tta
from fer_flax.core import model as model_lib
from fer_flax.core import state as model_state
from fer_flax.data.synthetic import generate_synthetic
from fer_flax.inference import engine as inference
from fer_flax.training import loop as train
from fer_flax.training import steps

K = 7
# Perfect squares so that sqrt_inverse is easy by hand; N = 230.
COUNTS = np.array([16, 1, 4, 64, 36, 9, 100])


def loss_cfg(weighting="none", weights=None, tau=0.0) -> ConfigDict:
    c = get_base_config().loss
    c.class_weighting, c.logit_adjustment_tau = weighting, tau
    if weights is not None:
        c.class_weights = weights
    return c


def mix_cfg(mixup=0.0, cutmix=0.0, prob=1.0, switch=0.5) -> ConfigDict:
    return ConfigDict(dict(mixup_alpha=mixup, cutmix_alpha=cutmix, prob=prob, switch_prob=switch))


def random_logits(b=6, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).normal(0, 3, (b, K)).astype(np.float32)


# ------------------------------------------------------------------------------------------ losses


def test_soft_cross_entropy_equals_optax_on_one_hot_and_with_smoothing():
    logits = random_logits()
    labels = np.array([0, 1, 2, 3, 6, 5])
    expected = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    np.testing.assert_allclose(
        losses.soft_cross_entropy(logits, jax.nn.one_hot(labels, K)), expected, rtol=1e-6
    )
    # steps.classification_loss takes integer labels or soft targets; float32 even from bf16 logits.
    got = steps.classification_loss(jnp.bfloat16(logits), labels, num_classes=K, label_smoothing=0.0)
    assert got.dtype == jnp.float32
    smoothed = steps.classification_loss(logits, labels, num_classes=K, label_smoothing=0.1)
    by_hand = -np.sum((0.9 * np.eye(K)[labels] + 0.1 / K) * jax.nn.log_softmax(logits), -1)
    np.testing.assert_allclose(smoothed, by_hand, rtol=1e-6)
    soft = steps.classification_loss(logits, jax.nn.one_hot(labels, K), num_classes=K, label_smoothing=0.1)
    np.testing.assert_allclose(soft, smoothed, rtol=1e-6)


def test_class_weights_arithmetic():
    n = COUNTS.astype(np.float64)
    inverse = losses.class_weights(COUNTS, "inverse")
    np.testing.assert_allclose(inverse, 230 / (7 * n), rtol=1e-6)  # (1/n_c) / sum_c (n_c/N)(1/n_c)
    assert inverse[1] == pytest.approx(230 / 7, rel=1e-6)
    sqrt_inverse = losses.class_weights(COUNTS, "sqrt_inverse")
    np.testing.assert_allclose(sqrt_inverse, 230 / (34 * np.sqrt(n)), rtol=1e-6)  # sum sqrt(n_c) = 34
    explicit = losses.class_weights(COUNTS, "explicit", (1, 2, 1, 1, 1, 1, 1))
    np.testing.assert_allclose(explicit, np.array([1, 2, 1, 1, 1, 1, 1]) * 230 / 231, rtol=1e-6)
    for w in (inverse, sqrt_inverse, explicit):
        assert w.dtype == np.float32
        assert np.sum(n / n.sum() * w) == pytest.approx(1.0, rel=1e-6)  # mean over training = 1
    assert losses.class_weights(COUNTS, "none") is None
    # An absent class keeps a finite weight.
    assert np.isfinite(losses.class_weights([5, 0, 5, 5, 5, 5, 5], "inverse")).all()


def test_class_weights_scale_each_example_and_interpolate_over_soft_targets():
    terms = losses.training_loss_terms(loss_cfg("inverse"), COUNTS)
    w = 230 / (7 * COUNTS)
    logits = random_logits(3)
    targets = np.zeros((3, K), np.float32)
    targets[0, 1] = 1.0
    targets[1, 3] = 1.0
    targets[2, [1, 3]] = 0.3, 0.7  # a mixup of a class-1 and a class-3 example
    ce = -np.sum(targets * np.asarray(jax.nn.log_softmax(logits)), -1)
    got = losses.training_loss(logits, targets, terms=terms)
    np.testing.assert_allclose(got, ce * [w[1], w[3], 0.3 * w[1] + 0.7 * w[3]], rtol=1e-5)
    # The weight comes from the unsmoothed targets; smoothing only changes the cross-entropy.
    smoothed = losses.training_loss(logits, targets, label_smoothing=0.1, terms=terms)
    ce_smoothed = -np.sum((0.9 * targets + 0.1 / K) * np.asarray(jax.nn.log_softmax(logits)), -1)
    np.testing.assert_allclose(smoothed, ce_smoothed * [w[1], w[3], 0.3 * w[1] + 0.7 * w[3]], rtol=1e-5)


def test_logit_adjustment_adds_tau_log_prior_to_the_logits():
    tau = 0.7
    terms = losses.training_loss_terms(loss_cfg(tau=tau), COUNTS)
    assert terms.class_weights is None
    np.testing.assert_allclose(terms.logit_offset, tau * np.log(COUNTS / 230), rtol=1e-6)
    logits, labels = random_logits(), np.array([1, 1, 0, 6, 3, 5])
    got = losses.training_loss(logits, jax.nn.one_hot(labels, K), terms=terms)
    expected = optax.softmax_cross_entropy_with_integer_labels(logits + tau * np.log(COUNTS / 230), labels)
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    plain = losses.training_loss(logits, jax.nn.one_hot(labels, K))
    assert not np.allclose(got, plain)
    # Rare class 1 must be won by a margin: its loss goes up; the common class 6's goes down.
    assert got[0] > plain[0] and got[3] < plain[3]
    assert losses.training_loss_terms(loss_cfg(), COUNTS) == losses.NO_TERMS


def config_with(section: str, cfg: ConfigDict) -> ConfigDict:
    config = get_base_config()
    config[section] = cfg
    return config


@pytest.mark.parametrize(
    ("cfg", "match"),
    [
        (loss_cfg("balanced"), "config.loss.class_weighting='balanced' is not one of"),
        (loss_cfg("explicit"), "config.loss.class_weights=None"),
        (loss_cfg("explicit", (1.0, 2.0, 3.0)), "config.loss.class_weights="),
        (loss_cfg("explicit", (1, 1, 1, -1, 1, 1, 1)), "config.loss.class_weights="),
        (loss_cfg(tau=-1.0), "config.loss.logit_adjustment_tau=-1.0"),
        (loss_cfg(tau=float("nan")), "config.loss.logit_adjustment_tau=nan"),
    ],
)
def test_bad_loss_config_names_the_key(cfg, match):
    with pytest.raises(ConfigError, match=re.escape(match)):
        validate(config_with("loss", cfg))


@pytest.mark.parametrize(
    ("cfg", "counts", "match"),
    [
        (loss_cfg("explicit", (0, 1, 0, 0, 0, 0, 0)), [1, 0, 1, 1, 1, 1, 1], "config.loss.class_weights"),
        (loss_cfg("inverse"), None, "class counts"),
    ],
)
def test_loss_config_that_does_not_fit_the_training_counts(cfg, counts, match):
    validate(config_with("loss", cfg))  # valid on its own: the problem is in the data
    with pytest.raises(ValueError, match=match):
        losses.training_loss_terms(cfg, counts)


# ------------------------------------------------------------------------------------------ mixing


def float_batch(b=8, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.normal(size=(b, 48, 48, 1)).astype(np.float32)  # all pixels distinct
    labels = rng.integers(0, K, b)
    return jnp.asarray(images), jax.nn.one_hot(labels, K)


@functools.cache
def jitted_mix(mixup, cutmix, prob, switch):
    return jax.jit(functools.partial(mixing.mix_batch, cfg=mix_cfg(mixup, cutmix, prob, switch)))


def test_mixup_blends_images_and_targets_with_the_drawn_lambda():
    x, t = float_batch()
    cfg = mix_cfg(mixup=0.4)
    lams = []
    for seed in range(4):
        key = jax.random.key(seed)
        params = mixing.draw_mix_params(key, cfg, 48, 48)
        lam = float(params.lam)
        assert bool(params.apply) and not bool(params.cutmix) and 0 < lam < 1
        images, targets = jitted_mix(0.4, 0.0, 1.0, 0.5)(key, x, t)
        np.testing.assert_allclose(images, lam * x + (1 - lam) * x[::-1], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(targets, lam * t + (1 - lam) * t[::-1], rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(targets.sum(-1), 1.0, rtol=1e-6)
        lams.append(lam)
    assert len(set(lams)) == 4


def test_cutmix_pastes_a_box_whose_area_is_the_corrected_lambda():
    x, t = float_batch()
    cfg = mix_cfg(cutmix=1.0)
    areas, clipped = [], 0
    for seed in range(12):
        key = jax.random.key(seed)
        params = mixing.draw_mix_params(key, cfg, 48, 48)
        lam = float(params.lam)
        images, targets = jitted_mix(0.0, 1.0, 1.0, 0.5)(key, x, t)
        images, xs = np.asarray(images), np.asarray(x)
        pasted = np.all(images == xs[::-1], axis=-1) & np.any(images != xs, axis=-1)
        kept = np.all(images == xs, axis=-1)
        assert (pasted | kept).all()  # every pixel is either the example's or its pair's
        assert (pasted == pasted[0]).all()  # one box for the whole batch
        area = int(pasted[0].sum())
        assert area == pytest.approx((1 - lam) * 48 * 48, abs=1e-3)
        y0, y1, x0, x1 = (int(v) for v in params.box)
        assert area == (y1 - y0) * (x1 - x0) and pasted[0, y0:y1, x0:x1].all()  # a full rectangle
        np.testing.assert_allclose(targets, lam * t + (1 - lam) * t[::-1], rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(np.asarray(targets).sum(-1), 1.0, rtol=1e-6)
        areas.append(area)
        clipped += y0 == 0 or x0 == 0 or y1 == 48 or x1 == 48
    assert len(set(areas)) > 6 and max(areas) > 0
    assert clipped > 0  # some boxes met the border and the lambda followed the clipped area


def test_both_methods_switch_and_rows_sum_to_one():
    x, t = float_batch()
    for switch, want_cutmix in ((1.0, True), (0.0, False)):
        for seed in range(3):
            assert (
                bool(
                    mixing.draw_mix_params(
                        jax.random.key(seed), mix_cfg(0.2, 1.0, 1.0, switch), 48, 48
                    ).cutmix
                )
                is want_cutmix
            )
    kinds = {
        bool(mixing.draw_mix_params(jax.random.key(s), mix_cfg(0.2, 1.0), 48, 48).cutmix) for s in range(16)
    }
    assert kinds == {True, False}
    for seed in range(8):
        _, targets = jitted_mix(0.2, 1.0, 1.0, 0.5)(jax.random.key(seed), x, t)
        np.testing.assert_allclose(np.asarray(targets).sum(-1), 1.0, rtol=1e-6)


def test_prob_zero_or_an_unmixed_draw_leaves_the_batch_untouched():
    x, t = float_batch()
    images, targets = mixing.mix_batch(jax.random.key(0), x, t, mix_cfg(0.2, 1.0, prob=0.0))
    assert images is x and targets is t  # nothing traced at all
    jaxpr = jax.make_jaxpr(functools.partial(mixing.mix_batch, cfg=mix_cfg()))(jax.random.key(0), x, t)
    assert not jaxpr.eqns
    applied = []
    for seed in range(12):
        key = jax.random.key(seed)
        params = mixing.draw_mix_params(key, mix_cfg(0.2, 1.0, prob=0.5), 48, 48)
        images, targets = jitted_mix(0.2, 1.0, 0.5, 0.5)(key, x, t)
        changed = not np.array_equal(images, x)
        assert changed == bool(params.apply)
        if not params.apply:
            np.testing.assert_array_equal(targets, t)
            assert float(params.lam) == 1.0
        applied.append(bool(params.apply))
    assert 0 < sum(applied) < 12


@pytest.mark.parametrize(
    ("cfg", "match"),
    [
        (mix_cfg(mixup=-0.1), "config.mix.mixup_alpha"),
        (mix_cfg(cutmix=-1.0), "config.mix.cutmix_alpha"),
        (mix_cfg(0.2, prob=1.5), "config.mix.prob"),
        (mix_cfg(0.2, switch=-0.5), "config.mix.switch_prob"),
    ],
)
def test_bad_mix_config_names_the_key(cfg, match):
    with pytest.raises(ConfigError, match=re.escape(match)):
        validate(config_with("mix", cfg))


# -------------------------------------------------------------------------------------- ten-crop


def test_ten_crop_training_batch_is_ttas_ten_views_with_repeated_labels():
    x = augment.preprocess(np.random.default_rng(0).integers(0, 256, (3, 48, 48, 1), dtype=np.uint8))
    labels = jnp.array([4, 0, 6])
    crops, crop_labels = augment.ten_crop_batch(x, labels, 44)
    assert crops.shape == (30, 48, 48, 1)
    np.testing.assert_array_equal(crop_labels, [4] * 10 + [0] * 10 + [6] * 10)
    views = np.asarray(tta.ten_crop(x, 44))
    for i in range(3):
        np.testing.assert_array_equal(crops[10 * i : 10 * i + 10], views[i])
    # Geometry by hand: view 1 of image 2 is its top-right 44x44 crop resized to 48; view 6 its mirror.
    top_right = jax.image.resize(x[2:3, 0:44, 4:48], (1, 48, 48, 1), method="bilinear")[0]
    np.testing.assert_allclose(crops[21], top_right, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(crops[26], np.asarray(crops[21])[:, ::-1])
    # Soft targets are repeated row by row too.
    _, soft = augment.ten_crop_batch(x, jax.nn.one_hot(labels, K), 44)
    np.testing.assert_array_equal(soft, np.repeat(np.eye(K)[[4, 0, 6]], 10, axis=0))
    # Full-size crops need no resize: the centre view is the image itself.
    exact, _ = augment.ten_crop_batch(x, labels, 48)
    np.testing.assert_array_equal(exact[4], x[0])


@pytest.mark.parametrize("crop_size", [0, 49])
def test_bad_crop_size_names_the_key(crop_size):
    config = get_base_config()
    config.augment.ten_crop, config.augment.crop_size = True, crop_size
    with pytest.raises(ConfigError, match=rf"config\.augment\.crop_size={crop_size} must be"):
        validate(config)
    assert augment.ten_crop_size(config.augment) == crop_size
    config.augment.ten_crop = False
    assert augment.ten_crop_size(config.augment) is None


# ------------------------------------------------------------------- wiring through the train step


def step_config(**overrides) -> ConfigDict:
    """The tiny CNN with augmentation off, so the training forward pass is reproducible by hand."""
    c = simple_cnn.get_config("smoke")
    c.label_smoothing = 0.0
    c.augment.update(pad_crop=0, flip=False, rotate_degrees=0.0)
    c.update_from_flattened_dict(overrides)  # dotted keys: {"optim.lr": 0.1}
    return c


@pytest.fixture(scope="module")
def setup():
    config = step_config()
    model = model_lib.create_model(config)
    mesh = parallel.make_mesh(jax.devices()[:1])
    state = model_state.create_train_state(model, optax.sgd(0.1), jax.random.key(0), mesh)
    split = generate_synthetic(8, 0, 0, seed=0)["train"]
    batch = {"image": split.images[:, :, :, None], "label": split.labels.astype(np.int32)}
    return state, batch


def loss_and_logits(state, batch, config, counts=COUNTS):
    fn = jax.jit(functools.partial(steps._loss_and_grads, config=config, class_counts=counts))
    loss, logits, *_ = fn(state, batch, jax.random.key(3))
    return float(loss), np.asarray(logits)


@pytest.mark.xdist_group("recipe_losses_setup")  # shares the module's `setup` fixture
def test_train_loss_applies_weights_and_adjustment_to_the_training_logits(setup):
    state, batch = setup
    labels = batch["label"]
    base_loss, logits = loss_and_logits(state, batch, step_config())
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    assert base_loss == pytest.approx(float(ce.mean()), rel=1e-6)

    tau = 1.0
    adjusted_loss, adjusted_logits = loss_and_logits(
        state, batch, step_config(**{"loss.logit_adjustment_tau": tau})
    )
    np.testing.assert_array_equal(adjusted_logits, logits)  # the model's raw logits come back
    expected = optax.softmax_cross_entropy_with_integer_labels(logits + tau * np.log(COUNTS / 230), labels)
    assert adjusted_loss == pytest.approx(float(expected.mean()), rel=1e-5)
    assert adjusted_loss != pytest.approx(base_loss, rel=1e-3)

    weighted_loss, _ = loss_and_logits(state, batch, step_config(**{"loss.class_weighting": "inverse"}))
    w = 230 / (7 * COUNTS)
    assert weighted_loss == pytest.approx(float(np.mean(w[labels] * ce)), rel=1e-5)


@pytest.mark.xdist_group("recipe_losses_setup")  # shares the module's `setup` fixture
def test_eval_is_unaffected_by_training_loss_terms_and_uses_the_tta(setup):
    state, batch = setup
    b = len(batch["label"])
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    images = augment.preprocess(batch["image"])
    raw = state.apply_fn(variables, images, train=False)[0]

    @functools.partial(jax.jit, static_argnums=2)
    def reference(variables, images, mode):  # tta.py's logit averaging, independently of logits_step
        return tta.apply_with_tta(lambda v: state.apply_fn(variables, v, train=False)[0], images, mode)

    for mode in tta.TTA_MODES:
        step = jax.jit(functools.partial(forward.logits_step, state.apply_fn, tta_mode=mode))
        out_logits = np.asarray(step(variables, batch["image"]))
        out = inference.split_metrics(out_logits, batch["label"])
        logits = reference(variables, images, mode)
        np.testing.assert_allclose(out_logits, logits, rtol=1e-5, atol=1e-6)
        if mode == "none":  # raw ran eagerly: compiled float32 sums may round differently (FMA)
            np.testing.assert_allclose(logits, raw, rtol=1e-5, atol=1e-6)
        else:
            assert not np.allclose(logits, raw, atol=1e-4)
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"])  # raw logits, no terms
        assert out["loss"] * b == pytest.approx(float(ce.sum()), rel=1e-5)
        predicted = np.argmax(np.asarray(logits), -1)
        np.testing.assert_array_equal(
            np.asarray(out["confusion"]).sum(0), np.bincount(predicted, minlength=K)
        )
    with pytest.raises(ValueError, match=r"'fivecrop'.*none, flip, tencrop"):
        forward.logits_step(state.apply_fn, variables, batch["image"], tta_mode="fivecrop")


@pytest.mark.xdist_group("recipe_losses_setup")  # shares the module's `setup` fixture
def test_ten_crop_training_averages_the_loss_over_every_crop(setup):
    state, batch = setup
    config = step_config(**{"augment.ten_crop": True})
    loss, logits = loss_and_logits(state, batch, config)
    crops, crop_labels = augment.ten_crop_batch(augment.preprocess(batch["image"]), batch["label"], 44)
    # Training-mode forward of all 80 crops at once (BatchNorm sees them all), dropout with the step's key.
    dropout_rng = jax.random.split(jax.random.key(3))[1]
    crop_logits, _ = state.apply_fn(
        {"params": state.params, "batch_stats": state.batch_stats},
        crops,
        train=True,
        rngs={"dropout": dropout_rng},
        mutable=["batch_stats"],
    )[0]
    ce = optax.softmax_cross_entropy_with_integer_labels(crop_logits, crop_labels)
    assert loss == pytest.approx(float(ce.mean()), rel=1e-5)
    assert logits.shape == (8, K)  # one prediction per image: its crops' mean logits
    np.testing.assert_allclose(
        logits, np.asarray(crop_logits).reshape(8, 10, K).mean(1), rtol=1e-5, atol=1e-6
    )


@pytest.mark.slow
def test_everything_on_end_to_end(tmp_path):
    c = simple_cnn.get_config()
    use_smoke_settings(c, variant="tiny")
    c.data.update(synthetic_train=128, synthetic_val=64)
    c.update(eval_tta="tencrop", label_smoothing=0.1)
    c.loss.update(class_weighting="sqrt_inverse", logit_adjustment_tau=1.0)
    c.mix.update(mixup_alpha=0.2, cutmix_alpha=1.0, prob=1.0, switch_prob=0.5)
    c.augment.update(ten_crop=True, crop_size=44, erase_prob=0.25)
    workdir = tmp_path / "run"
    summary = train.train_and_evaluate(c, str(workdir))

    assert summary["final_step"] == 4  # 128 images / batch 32
    val = summary["final_val"]
    assert val["num_examples"] == 64
    assert math.isfinite(val["loss"]) and 0 <= val["accuracy"] <= 1
    with open(workdir / "metrics.jsonl") as f:
        records = [json.loads(line) for line in f]
    train_records = [r for r in records if "train/loss" in r]
    assert train_records and all(math.isfinite(r["train/loss"]) for r in train_records)
    assert all(0 <= r["train/accuracy"] <= 1 for r in train_records)
    with open(workdir / "config.json") as f:
        saved = json.load(f)["config"]
    assert saved["mix"]["cutmix_alpha"] == 1.0 and saved["eval_tta"] == "tencrop"
    assert os.path.isdir(workdir / "best")
