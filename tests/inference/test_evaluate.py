"""Evaluation: metric arithmetic by hand, TTA geometry, ensembles, exact counting, checkpoints, CLI."""

import json
import math
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fer_flax.core import metrics, tta
from fer_flax.core.augment import preprocess
from fer_flax.data import FERDataError
from fer_flax.inference import engine as inference
from fer_flax.inference import evaluate
from fer_flax.run import trained
from fer_flax.run import workdir as workdir_lib
from fer_flax.run.tracking import read_metrics
from tests.helpers import REPO as REPO_PATH
from tests.helpers.trained_runs import EVAL_BATCH, NUM_TEST, synthetic_split, write_fer_csv

# One worker trains the tiny run (conftest's `trained_run`) that several test files share.
pytestmark = pytest.mark.xdist_group("trained_run")

REPO = str(REPO_PATH)


def _logits(probs):
    """Logits whose softmax is `probs` (rows over the first classes; the rest get probability 0)."""
    p = np.zeros((len(probs), 7))
    p[:, : len(probs[0])] = probs
    return np.where(p > 0, np.log(np.where(p > 0, p, 1.0)), -1e9)


# ------------------------------------------------------------------------------ metric arithmetic


def test_report_metrics_by_hand_on_fixed_logits():
    labels = np.array([0, 0, 0, 1, 1, 2])
    probs = [
        [0.90, 0.05, 0.05],  # true 0, predicted 0, confidence .90
        [0.62, 0.30, 0.08],  # true 0, predicted 0, .62
        [0.40, 0.50, 0.10],  # true 0, predicted 1, .50
        [0.06, 0.88, 0.06],  # true 1, predicted 1, .88
        [0.03, 0.06, 0.91],  # true 1, predicted 2, .91
        [0.03, 0.02, 0.95],  # true 2, predicted 2, .95
    ]
    report = metrics.classification_report(metrics.softmax(_logits(probs)), labels)

    expected_cm = np.zeros((7, 7), int)
    for true, pred, n in ((0, 0, 2), (0, 1, 1), (1, 1, 1), (1, 2, 1), (2, 2, 1)):
        expected_cm[true, pred] = n
    assert report["confusion_matrix"] == expected_cm.tolist()
    assert report["num_examples"] == 6
    assert report["accuracy"] == pytest.approx(4 / 6)
    # recall 2/3, 1/2, 1; precision: predicted 0 twice (2 right), 1 twice (1 right), 2 twice (1 right)
    pc = report["per_class"]
    assert [pc[c]["recall"] for c in ("angry", "disgust", "fear")] == pytest.approx([2 / 3, 1 / 2, 1])
    assert [pc[c]["precision"] for c in ("angry", "disgust", "fear")] == pytest.approx([1, 1 / 2, 1 / 2])
    f1 = [2 * 1 * (2 / 3) / (1 + 2 / 3), 2 * 0.5 * 0.5 / 1.0, 2 * 0.5 * 1 / 1.5]  # 0.8, 0.5, 0.667
    assert [pc[c]["f1"] for c in ("angry", "disgust", "fear")] == pytest.approx(f1)
    assert [pc[c]["support"] for c in metrics.CLASS_NAMES] == [3, 2, 1, 0, 0, 0, 0]
    assert pc["happy"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    # Macro and balanced average over the 3 classes present in the labels, not all 7.
    assert report["balanced_accuracy"] == pytest.approx((2 / 3 + 1 / 2 + 1) / 3)
    assert report["macro_f1"] == pytest.approx(sum(f1) / 3)
    p_true = [0.90, 0.62, 0.40, 0.88, 0.06, 0.95]
    assert report["nll"] == pytest.approx(-sum(math.log(p) for p in p_true) / 6)
    # 15 bins of width 1/15. (13/15, 14/15] = (.867, .933] holds .90, .88, .91: 2 of 3 right;
    # (9/15, 10/15] holds .62 (right), (7/15, 8/15] holds .50 (wrong), (14/15, 1] holds .95 (right).
    gap13 = abs(2 / 3 - (0.90 + 0.88 + 0.91) / 3)
    ece = (3 * gap13 + abs(1 - 0.62) + abs(0 - 0.50) + abs(1 - 0.95)) / 6
    assert report["ece"] == pytest.approx(ece)
    cal = report["calibration"]
    assert cal["num_bins"] == 15 and len(cal["bin_edges"]) == 16
    assert [i for i, n in enumerate(cal["count"]) if n] == [7, 9, 13, 14]
    assert cal["count"][13] == 3 and cal["accuracy"][13] == pytest.approx(2 / 3)
    assert cal["confidence"][13] == pytest.approx((0.90 + 0.88 + 0.91) / 3)


def test_summarize_still_agrees_with_the_report():
    # The training loop's exact-sum metrics and the evaluation report are the same arithmetic.
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(50, 7)) * 3
    labels = rng.integers(0, 7, size=50)
    report = metrics.classification_report(metrics.softmax(logits), labels)
    summary = metrics.summarize(np.asarray(report["confusion_matrix"]), 0.0, 50)
    for key in ("accuracy", "balanced_accuracy", "macro_f1"):
        assert summary[key] == pytest.approx(report[key])


def test_ece_bins_are_right_closed_and_nll_stays_finite():
    # Confidence exactly 1.0 falls in the last bin; a true-class probability of 0 gives a large,
    # finite NLL instead of inf.
    probs = np.zeros((2, 7))
    probs[0, 3] = 1.0
    probs[1, 0] = 1.0
    labels = np.array([3, 2])
    bins = metrics.calibration_bins(probs, labels)
    assert bins["count"][-1] == 2 and sum(bins["count"]) == 2
    assert metrics.expected_calibration_error(probs, labels) == pytest.approx(0.5)
    nll = metrics.negative_log_likelihood(probs, labels)
    assert np.isfinite(nll) and nll > 300


# -------------------------------------------------------------------------------------------- TTA


def test_ten_crop_geometry_and_mirroring_exact():
    img = (10 * np.arange(6)[:, None] + np.arange(6)[None, :]).astype(np.float32)  # value = 10*row + col
    batch = jnp.asarray(np.stack([img, img + 100])[..., None])  # two images, one channel
    out = np.asarray(tta.ten_crop(batch, crop_size=4, out_size=4))  # no resize: exact crops
    assert out.shape == (2, 10, 4, 4, 1)
    expected = [img[0:4, 0:4], img[0:4, 2:6], img[2:6, 0:4], img[2:6, 2:6], img[1:5, 1:5]]
    for v, crop in enumerate(expected):
        np.testing.assert_array_equal(out[0, v, ..., 0], crop)
        np.testing.assert_array_equal(out[0, v + 5, ..., 0], crop[:, ::-1])  # its mirror
        np.testing.assert_array_equal(out[1, v, ..., 0], crop + 100)  # image order kept
    flip = np.asarray(tta.views(batch, "flip"))
    np.testing.assert_array_equal(flip[0, 1, ..., 0], img[:, ::-1])
    assert tta.five_crop_offsets(48, 44) == [(0, 0), (0, 4), (4, 0), (4, 4), (2, 2)]


def test_ten_crop_resizes_44_pixel_crops_back_to_48_bilinearly():
    ramp = np.tile(np.arange(48, dtype=np.float32), (48, 1))  # value = column
    out = np.asarray(tta.views(jnp.asarray(ramp[None, ..., None]), "tencrop", crop_size=44))
    assert out.shape == (1, 10, 48, 48, 1)
    # Half-pixel centres: output column j samples crop column (j + .5) * 44/48 - .5; a linear ramp
    # interpolates exactly away from the two border columns.
    j = np.arange(1, 47)
    source = (j + 0.5) * 44 / 48 - 0.5
    for view, left in ((0, 0), (1, 4), (4, 2)):  # top-left, top-right, centre
        np.testing.assert_allclose(out[0, view, 10, j, 0], left + source, atol=1e-4)
        np.testing.assert_allclose(out[0, view + 5, 10, 47 - j, 0], left + source, atol=1e-4)


def test_apply_with_tta_averages_each_images_own_views():
    rng = np.random.default_rng(0)
    images = jnp.asarray(rng.normal(size=(3, 48, 48, 1)).astype(np.float32))
    weights = jnp.asarray(rng.normal(size=(48 * 48, 7)).astype(np.float32))

    def logits_fn(x):
        return x.reshape(x.shape[0], -1) @ weights

    for mode in tta.TTA_MODES:
        v = tta.views(images, mode)
        expected = np.mean([np.asarray(logits_fn(v[:, i])) for i in range(tta.num_views(mode))], axis=0)
        got = tta.apply_with_tta(logits_fn, images, mode)
        np.testing.assert_allclose(got, expected, rtol=2e-5, atol=2e-5)
    with pytest.raises(ValueError, match="none, flip, tencrop"):
        tta.views(images, "fivecrop")


# --------------------------------------------------------------------------------------- ensembles


def test_ensemble_averages_probabilities_by_hand():
    a = _logits([[0.6, 0.3, 0.1]])
    b = _logits([[0.2, 0.2, 0.6]])
    probs = inference.ensemble_probabilities([a, b])
    np.testing.assert_allclose(probs[0, :3], [0.4, 0.25, 0.35], atol=1e-12)
    np.testing.assert_allclose(probs[0, 3:], 0.0, atol=1e-12)


def test_ensemble_of_two_models_is_the_mean_of_their_probabilities(trained_run, tmp_path):
    # Two different models: the run's weights after steps 2 and 4.
    members = [inference.load_members([trained_run], step)[0] for step in (2, 4)]
    test = synthetic_split("test")
    single = [inference.member_probabilities([m], test, batch_size=EVAL_BATCH) for m in members]
    assert np.abs(single[0] - single[1]).max() > 1e-3  # the models really differ
    both = inference.member_probabilities(members, test, batch_size=EVAL_BATCH)
    np.testing.assert_allclose(both, (single[0] + single[1]) / 2, atol=1e-12)
    report = evaluate.evaluate_split(members, test, batch_size=EVAL_BATCH)
    assert report["num_models"] == 2 and report["checkpoint_step"] == [2, 4]
    assert report["confusion_matrix"] == metrics.classification_report(both, test.labels)["confusion_matrix"]
    # Several workdirs on the command path: an ensemble of one model with itself is that model.
    kw = {"split": "test", "figures": False, "announce": lambda *_: None}
    pair = evaluate.evaluate_workdirs([trained_run, trained_run], out=str(tmp_path / "pair.json"), **kw)
    alone = evaluate.evaluate_workdirs([trained_run], out=str(tmp_path / "alone.json"), **kw)
    assert pair["num_models"] == 2 and len(pair["workdirs"]) == 2
    assert pair["confusion_matrix"] == alone["confusion_matrix"]
    assert pair["nll"] == pytest.approx(alone["nll"], rel=1e-12)


# ------------------------------------------------------------------------- exactness, checkpoints


def test_every_example_counted_once_with_a_partial_final_batch(trained_run):
    restored = trained.restore(trained_run)
    model, variables = restored.model, restored.variables
    test = synthetic_split("test")
    assert len(test) == NUM_TEST and NUM_TEST % EVAL_BATCH != 0  # 70 = 2 * 32 + 6
    logits = inference.predict_logits(model, variables, test, batch_size=EVAL_BATCH)
    # One forward pass over all 70 images, no batching, no padding: the same logits in the same order.
    direct = jax.jit(lambda v, x: model.apply(v, preprocess(x), train=False)[0])(
        jax.device_get(variables), test.images
    )
    assert logits.shape == (NUM_TEST, 7)
    np.testing.assert_allclose(logits, np.asarray(direct), rtol=1e-4, atol=1e-4)
    members = [restored]
    for batch in (8, 128):  # 9 batches with 6 valid in the last; 1 batch with 70 of 128 valid
        report = evaluate.evaluate_split(members, test, batch_size=batch)
        assert report["num_examples"] == NUM_TEST
        assert np.asarray(report["confusion_matrix"]).sum() == NUM_TEST
        np.testing.assert_array_equal(report["confusion_matrix"], _cm(test.labels, logits))


def _cm(labels, logits):
    cm = np.zeros((7, 7), int)
    np.add.at(cm, (labels, logits.argmax(1)), 1)
    return cm


def test_best_checkpoint_reproduces_the_validation_metrics_logged_in_training(trained_run):
    members = inference.load_members([trained_run])
    report = evaluate.evaluate_split(members, synthetic_split("val"), batch_size=EVAL_BATCH)
    with open(os.path.join(trained_run, "summary.json")) as f:
        best_step = json.load(f)["best_step"]
    records = read_metrics(os.path.join(trained_run, "metrics.jsonl"))
    logged = next(r for r in records if r["step"] == best_step and "val/accuracy" in r)
    assert report["checkpoint_step"] == best_step
    assert report["accuracy"] == logged["val/accuracy"]
    assert report["macro_f1"] == pytest.approx(logged["val/macro_f1"])
    assert report["nll"] == pytest.approx(logged["val/loss"], rel=1e-5)  # eval loss has no smoothing
    assert report["confusion_matrix"] == logged["val/confusion"]


def test_checkpoint_choice_and_errors(trained_run, tmp_path):
    assert trained.restore(trained_run, "latest").step == 4
    assert trained.restore(trained_run, "2").step == 2
    config = workdir_lib.load_run_config(trained_run)
    assert config.augment.rrc_scale == (0.8, 1.0)  # JSON lists come back as the config's tuples
    with pytest.raises(FileNotFoundError, match=r"steps available: \[2, 4\]"):
        trained.restore(trained_run, 3)
    with pytest.raises(ValueError, match="'best', 'latest' or a step"):
        trained.restore(trained_run, "worst")
    with pytest.raises(FileNotFoundError, match=r"config\.json"):
        trained.restore(str(tmp_path))


# ------------------------------------------------------------------------------------ the command


def test_cli_on_a_csv_that_holds_only_the_test_split(trained_run, tmp_path):
    test = synthetic_split("test")
    csv_path = tmp_path / "only_test.csv"
    rows = [(int(y), x, "PrivateTest") for x, y in zip(test.images, test.labels, strict=True)]
    write_fer_csv(csv_path, rows)
    out = tmp_path / "reports" / "test.json"
    cmd = [
        sys.executable, "-m", "fer_flax.evaluate", f"--workdir={trained_run}", f"--data={csv_path}",
        "--split=test", "--tta=tencrop", f"--out={out}",
    ]  # fmt: skip
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "accuracy" in done.stdout and "confusion matrix" in done.stdout

    report = json.loads(out.read_text())
    assert report["split"] == "test" and report["data_path"] == str(csv_path)
    assert report["num_examples"] == NUM_TEST and report["tta"] == "tencrop" and report["crop_size"] == 44
    with open(os.path.join(trained_run, "summary.json")) as f:
        assert report["checkpoint_step"] == json.load(f)["best_step"]
    for key in ("accuracy", "balanced_accuracy", "macro_f1", "nll", "ece", "per_class", "confusion_matrix"):
        assert key in report, key
    assert set(report["per_class"]) == set(metrics.CLASS_NAMES)
    for png in (tmp_path / "reports" / "test.confusion.png", tmp_path / "reports" / "test.reliability.png"):
        assert png.read_bytes()[:4] == b"\x89PNG"

    # The CSV holds exactly the run's synthetic test images: the same numbers as evaluating them directly.
    direct = evaluate.evaluate_split(
        inference.load_members([trained_run]), test, batch_size=EVAL_BATCH, tta_mode="tencrop"
    )
    assert report["confusion_matrix"] == direct["confusion_matrix"]
    assert report["nll"] == pytest.approx(direct["nll"], rel=1e-5)

    # Asking that file for a split it lacks names what it holds.
    with pytest.raises(FERDataError, match=r"PublicTest.*holds PrivateTest \(70\)"):
        evaluate.evaluate_workdirs(
            [trained_run], data_path=str(csv_path), split="val", out=str(tmp_path / "x.json")
        )
