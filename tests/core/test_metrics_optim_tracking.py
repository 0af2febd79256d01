"""Small library pieces: metric arithmetic, the optimizer from config, and the metric writer."""

import glob
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs.common import get_base_config
from fer_flax.config.choices import OPTIMIZERS, SCHEDULES
from fer_flax.config.schema import ConfigError, validate
from fer_flax.core import metrics, optim
from fer_flax.run import tracking


def test_confusion_matrix_counts_only_masked_examples():
    labels = jnp.array([0, 0, 1, 2, 2, 2, 6, 6])
    preds = jnp.array([0, 1, 1, 2, 0, 2, 6, 3])
    mask = jnp.array([1, 1, 1, 1, 1, 1, 1, 0], bool)  # the last one is padding
    cm = np.asarray(metrics.confusion_matrix(labels, preds, mask, 7))
    expected = np.zeros((7, 7), int)
    for t, p in [(0, 0), (0, 1), (1, 1), (2, 2), (2, 0), (2, 2), (6, 6)]:
        expected[t, p] += 1
    np.testing.assert_array_equal(cm, expected)


def test_summarize_by_hand():
    # 3 classes present (0, 1, 2) in a 7-class matrix.
    cm = np.zeros((7, 7), int)
    cm[0, 0], cm[0, 1] = 3, 1  # class 0: 4 examples, recall 3/4
    cm[1, 1] = 2  # class 1: recall 1; predicted 1: 3 times (precision 2/3)
    cm[2, 0], cm[2, 2] = 1, 1  # class 2: recall 1/2; predicted 0: 4 times (precision 3/4)
    out = metrics.summarize(cm, loss_sum=8.0, count=8)
    assert out["accuracy"] == pytest.approx(6 / 8)
    assert out["balanced_accuracy"] == pytest.approx((3 / 4 + 1 + 1 / 2) / 3)
    f1_0 = 2 * (3 / 4) * (3 / 4) / (3 / 4 + 3 / 4)
    f1_1 = 2 * (2 / 3) * 1 / (2 / 3 + 1)
    f1_2 = 2 * 1 * (1 / 2) / (1 + 1 / 2)
    assert out["macro_f1"] == pytest.approx((f1_0 + f1_1 + f1_2) / 3)
    assert out["loss"] == 1.0
    assert out["recall/angry"] == 0.75 and out["recall/neutral"] == 0.0
    with pytest.raises(AssertionError, match="counted"):
        metrics.summarize(cm, loss_sum=8.0, count=9)


def test_weight_decay_mask_only_decays_kernels():
    params = {
        "Conv_0": {"kernel": 1, "bias": 2},
        "BatchNorm_0": {"scale": 3, "bias": 4},
        "pos_embedding": 5,
    }
    assert optim.weight_decay_mask(params) == {
        "Conv_0": {"kernel": True, "bias": False},
        "BatchNorm_0": {"scale": False, "bias": False},
        "pos_embedding": False,
    }


def test_schedule_warmup_cosine_and_step():
    c = get_base_config().optim
    c.lr, c.warmup_epochs = 0.4, 1.0
    s = optim.create_learning_rate_schedule(c, steps_per_epoch=10, total_steps=110)
    assert float(s(0)) == 0.0
    assert float(s(5)) == pytest.approx(0.2)
    assert float(s(10)) == pytest.approx(0.4)
    assert float(s(60)) == pytest.approx(0.2, rel=1e-4)  # half-way through the cosine
    assert float(s(110)) == pytest.approx(0.0, abs=1e-7)
    c.schedule, c.warmup_epochs, c.step_epochs, c.step_factor = "step", 0.0, (2.0, 4.0), 0.1
    s = optim.create_learning_rate_schedule(c, steps_per_epoch=10, total_steps=60)
    assert [round(float(s(i)), 6) for i in (0, 19, 20, 39, 40)] == [0.4, 0.4, 0.04, 0.04, 0.004]
    config = get_base_config()
    config.optim.schedule = "warm_restarts"
    with pytest.raises(
        ConfigError,
        match=r"config\.optim\.schedule='warm_restarts' is not one of: cosine, constant, step, plateau",
    ):
        validate(config)


@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("name", OPTIMIZERS)
def test_every_valid_optimizer_and_schedule_builds(name, schedule):
    c = get_base_config().optim
    c.name, c.schedule = name, schedule
    s = optim.create_learning_rate_schedule(c, steps_per_epoch=10, total_steps=50)
    tx = optim.create_optimizer(c, s)
    params = {"Dense_0": {"kernel": jnp.ones([2])}}
    updates, _ = tx.update({"Dense_0": {"kernel": jnp.ones([2])}}, tx.init(params), params)
    assert np.isfinite(np.asarray(updates["Dense_0"]["kernel"])).all()


def test_sgd_weight_decay_and_clipping_apply():
    c = get_base_config().optim
    c.lr, c.momentum, c.weight_decay, c.grad_clip_norm = 1.0, 0.0, 0.5, 1.0
    c.nesterov = False
    tx = optim.create_optimizer(c, optim.optax.constant_schedule(1.0))
    params = {"Dense_0": {"kernel": jnp.array([2.0]), "bias": jnp.array([2.0])}}
    grads = {"Dense_0": {"kernel": jnp.array([0.0]), "bias": jnp.array([3.0])}}
    updates, _ = tx.update(grads, tx.init(params), params)
    # Clipping first: grads (0, 3) -> (0, 1); then L2 decay on the kernel only: 0 + 0.5*2 = 1.
    np.testing.assert_allclose(updates["Dense_0"]["kernel"], [-1.0])
    np.testing.assert_allclose(updates["Dense_0"]["bias"], [-1.0])


def test_metric_writer_jsonl_and_offline_wandb_with_histograms(tmp_path):
    config = get_base_config()
    config.wandb.mode = "offline"
    writer = tracking.MetricWriter(str(tmp_path), config)
    writer.write(1, {"train/loss": np.float32(0.5), "val/accuracy": jnp.asarray(0.25)})
    writer.log_histograms(1, {"params": {"Dense_0": {"kernel": jnp.ones((3, 3))}}})
    writer.close()
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert lines[0]["step"] == 1 and lines[0]["train/loss"] == 0.5 and lines[0]["val/accuracy"] == 0.25
    runs = glob.glob(os.path.join(tmp_path, "wandb", "offline-run-*"))
    assert len(runs) == 1, os.listdir(tmp_path)
    # A second writer in the same workdir continues the same wandb run (resume).
    assert (tmp_path / "wandb_run_id.txt").read_text().strip() in runs[0]


def test_unknown_wandb_mode_is_rejected(tmp_path):
    config = get_base_config()
    config.wandb.mode = "cloud"
    with pytest.raises(
        ConfigError, match=r"config\.wandb\.mode='cloud' is not one of: offline, online, disabled"
    ):
        validate(config)


def test_progress_bar_prints_rate_and_eta():
    import io

    stream = io.StringIO()
    bar = tracking.ProgressBar(10, 32, stream=stream)
    bar.start(0)
    bar.update(10, "loss 1.0")
    out = stream.getvalue()
    assert "step 10/10" in out and "img/s" in out and "ETA" in out and "loss 1.0" in out
    assert jax.process_index() == 0
