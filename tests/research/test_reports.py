"""Reports: multi-seed statistics, the leaderboard, training curves and wandb evaluation media."""

import glob
import json
import math
import os
import shutil

import numpy as np
import pytest

from fer_flax.research import leaderboard, multiseed
from fer_flax.run import tracking
from tests.helpers.trained_runs import tiny_config

# One worker trains the tiny run (conftest's `trained_run`) that several test files share.
pytestmark = pytest.mark.xdist_group("trained_run")

# ------------------------------------------------------------------------------------- statistics


def test_mean_std_and_95_percent_ci_by_hand():
    stats = multiseed.mean_std_ci([0.60, 0.62, 0.64])
    assert stats["n"] == 3 and stats["mean"] == pytest.approx(0.62)
    assert stats["std"] == pytest.approx(0.02)  # sample std: sqrt((.02² + 0 + .02²) / 2)
    half = 4.302653 * 0.02 / math.sqrt(3)  # t(0.975, 2 degrees of freedom) = 4.302653
    assert stats["ci95_low"] == pytest.approx(0.62 - half) and stats["ci95_high"] == pytest.approx(
        0.62 + half
    )
    one = multiseed.mean_std_ci([0.7])
    assert one["mean"] == 0.7 and one["std"] is None and one["ci95_low"] is None


def test_confidence_intervals_stay_in_the_metrics_range():
    # Three seeds' ECE near 0 with a wide spread: mean - t * std / sqrt(3) is below 0.
    ece = multiseed.aggregate([{"ece": 0.002}, {"ece": 0.03}, {"ece": 0.004}, {"ece": None}])["ece"]
    assert ece["n"] == 3 and ece["ci95_low"] == 0.0 and 0 < ece["ci95_high"] < 1
    acc = multiseed.aggregate([{"accuracy": v} for v in (0.999, 0.9, 0.998)])["accuracy"]
    assert acc["ci95_high"] == 1.0 and 0 < acc["ci95_low"] < acc["mean"]
    seconds = multiseed.aggregate([{"train_seconds": v} for v in (10.0, 400.0, 12.0)])["train_seconds"]
    assert seconds["ci95_low"] == 0.0 and seconds["ci95_high"] > 400
    assert multiseed.metric_bounds("precision/angry") == multiseed.metric_bounds("val_macro_f1") == (0.0, 1.0)
    assert multiseed.metric_bounds("nll") == (0.0, math.inf)


def test_t_quantiles_table_and_expansion():
    assert multiseed.t_quantile_975(1) == pytest.approx(12.706205)
    assert multiseed.t_quantile_975(30) == pytest.approx(2.042272)
    assert multiseed.t_quantile_975(31) == pytest.approx(2.0395134464, abs=1e-7)  # scipy's value
    assert multiseed.t_quantile_975(100) == pytest.approx(1.9839715185, abs=1e-7)
    assert multiseed.t_quantile_975(10**6) == pytest.approx(1.959966, abs=1e-6)


def test_parse_seeds():
    assert multiseed.parse_seeds("0,1,2") == [0, 1, 2]
    assert multiseed.parse_seeds("3-5") == [3, 4, 5]
    for bad in ("", "1,1", "a,b", "-1"):
        with pytest.raises(ValueError, match="seeds"):
            multiseed.parse_seeds(bad)


# ------------------------------------------------------------------------------------ leaderboard


def _write_run(workdir, *, variant, params, records, summary=None, reports=(), data=None, classes=None):
    os.makedirs(os.path.join(workdir, "eval"), exist_ok=True)
    derived = {"num_params": params}
    if classes is not None:
        derived["data_spec"] = {"class_names": classes, "image_size": [48, 48], "channels": 1}
    with open(os.path.join(workdir, "config.json"), "w") as f:
        json.dump(
            {
                "config": {"model_name": "cnn", "model": {"variant": variant}, "data": {"path": data}},
                "derived": derived,
            },
            f,
        )
    with open(os.path.join(workdir, "metrics.jsonl"), "w") as f:
        for i, r in enumerate(records):
            f.write(json.dumps({"time": 1000.0 + i, **r}) + "\n")
    if summary is not None:
        with open(os.path.join(workdir, "summary.json"), "w") as f:
            json.dump(summary, f)
    for name, report in reports:
        with open(os.path.join(workdir, "eval", name), "w") as f:
            json.dump(report, f)


def _test_report(tta, accuracy, **extra):
    base = {"split": "test", "num_models": 1, "checkpoint": "best", "tta": tta, "accuracy": accuracy}
    return {**base, "balanced_accuracy": 0.6, "macro_f1": 0.55, "nll": 1.0, "ece": 0.05, **extra}


def test_leaderboard_by_hand(tmp_path):
    _write_run(
        tmp_path / "run_a",
        variant="small",
        params=1_234_567,
        records=[
            {"step": 10, "train/images_per_sec": 100.0},  # first window: compilation, left out
            {"step": 10, "val/accuracy": 0.5, "val/macro_f1": 0.4, "val/balanced_accuracy": 0.45},
            {"step": 20, "train/images_per_sec": 200.0},
            {"step": 20, "val/accuracy": 0.7, "val/macro_f1": 0.6, "val/balanced_accuracy": 0.65},
            {"step": 30, "train/images_per_sec": 300.0},
            {"step": 30, "val/accuracy": 0.6, "val/macro_f1": 0.7, "val/balanced_accuracy": 0.7},
        ],
        summary={"best_step": 20, "train_seconds_this_run": 3725.4},
        reports=[
            ("test-best-flip.json", _test_report("flip", 0.99)),  # TTA none is preferred
            ("test-best-none.json", _test_report("none", 0.66)),
            ("val-best-none.json", {**_test_report("none", 0.98), "split": "val"}),
            ("ensemble2-test-best-none.json", _test_report("none", 0.97, num_models=2)),
        ],
    )
    _write_run(  # still running (no summary), a resumed step logged twice, never tested
        tmp_path / "group" / "run_b",
        variant="tiny",
        params=45_000,
        records=[
            {"step": 3, "train/images_per_sec": 40.0, "train/seconds": 61.0},  # windows' times add up
            {"step": 5, "train/images_per_sec": 50.0, "train/seconds": 10.0},
            {"step": 5, "val/accuracy": 0.9, "val/macro_f1": 0.1, "val/balanced_accuracy": 0.1},
            {"step": 5, "val/accuracy": 0.8, "val/macro_f1": 0.75, "val/balanced_accuracy": 0.7},
        ],
    )
    decoy = tmp_path / "run_a" / "checkpoints" / "decoy"
    decoy.mkdir(parents=True)
    (decoy / "config.json").write_text("{}")  # not a run: checkpoint folders are not searched
    # Runs on real data score lower than the synthetic demo, and rank among themselves: per data set.
    for name, data, classes, accuracy in (
        ("real_1", "/data/fer2013/fer2013.csv.gz", None, 0.66),
        ("real_2", "fer2013.csv", None, 0.68),
        ("plus", "/data/ferplus/ferplus_trainval.tar.gz", [f"c{i}" for i in range(8)], 0.83),
    ):
        _write_run(tmp_path / name, variant="cpu_fast", params=980_000, data=data, classes=classes,
                   records=[{"step": 1, "val/accuracy": accuracy}], summary={"best_step": 1})  # fmt: skip

    table = leaderboard.leaderboard([str(tmp_path)])
    rows = [line for line in table.splitlines() if line.startswith("| ") and not line.startswith("| #")]
    assert rows == [
        "| 1 | real_2 | fer2013 (7 classes) | cnn | cpu_fast | 0.98M | 0.6800 | — | — | — | — | — | — | — |",
        "| 2 | real_1 | fer2013 (7 classes) | cnn | cpu_fast | 0.98M | 0.6600 | — | — | — | — | — | — | — |",
        "| 1 | plus | ferplus_trainval (8 classes) | cnn | cpu_fast | 0.98M | 0.8300 | — | — | — | — | — | — "
        "| — |",
        "| 1 | group/run_b (running) | synthetic (7 classes) | cnn | tiny | 45.0k | 0.8000 | 0.7500 | 0.7000 "
        "| — | — | — | 0:01:11 | 50 |",
        "| 2 | run_a | synthetic (7 classes) | cnn | small | 1.23M | 0.7000 | 0.6000 | 0.6500 | 0.6600 "
        "| 0.5500 | 0.6000 | 1:02:05 | 250 |",
    ]
    assert "never used to rank" in table and "within each data set" in table
    with pytest.raises(FileNotFoundError, match="no training runs"):
        leaderboard.leaderboard([str(tmp_path / "group" / "run_b" / "eval")])


# ----------------------------------------------------------------------- multi-seed, end to end


@pytest.mark.slow
def test_multiseed_resumes_trains_evaluates_and_aggregates(trained_run, tmp_path):
    # seed_0 is the shared finished run (resumed: not retrained); seed_1 is trained here.
    root = tmp_path / "seeds"
    shutil.copytree(trained_run, root / "seed_0")
    seed0_log = (root / "seed_0" / "metrics.jsonl").read_text()
    config = tiny_config()
    config.wandb.mode = "offline"  # also exercises the training loop's wandb evaluation media
    config.wandb.histogram_every_steps = 0
    config.curves_png = True
    result = multiseed.run(config, [0, 1], str(root), eval_splits=("val", "test"), announce=lambda *_: None)
    assert (root / "seed_0" / "metrics.jsonl").read_text() == seed0_log
    assert json.loads((root / "seed_1" / "summary.json").read_text())["final_step"] == 4

    # Training-time outputs of seed 1: curves.png at the end, and at each evaluation (steps 2 and 4)
    # the confusion matrix (also in the JSONL) and a grid of sample predictions in wandb.
    assert (root / "seed_1" / "curves.png").read_bytes()[:4] == b"\x89PNG"
    media = glob.glob(
        str(root / "seed_1" / "wandb" / "offline-run-*" / "files" / "media" / "images" / "val" / "*")
    )
    assert sorted(os.path.basename(p).rsplit("_", 1)[0] for p in media) == [
        "confusion_matrix_2", "confusion_matrix_4", "predictions_2", "predictions_4",
    ]  # fmt: skip
    val_logged = [r for r in tracking.read_metrics(root / "seed_1" / "metrics.jsonl") if "val/accuracy" in r]
    assert [np.sum(r["val/confusion"]) for r in val_logged] == [64, 64]

    for split in ("val", "test"):
        reports = [
            json.loads((root / f"seed_{s}" / "eval" / f"{split}-best-none.json").read_text()) for s in (0, 1)
        ]
        for metric, key in (("accuracy", "accuracy"), ("nll", "nll"), ("f1/happy", None)):
            values = [r["per_class"]["happy"]["f1"] if key is None else r[key] for r in reports]
            stats = result["splits"][split][metric]
            assert stats["values"] == values
            assert stats["mean"] == pytest.approx(np.mean(values))
            assert stats["std"] == pytest.approx(np.std(values, ddof=1))
            half = 12.706205 * np.std(values, ddof=1) / math.sqrt(2)
            low, high = multiseed.metric_bounds(metric)  # two seeds' interval is wide: clipped to the range
            assert stats["ci95_low"] == pytest.approx(min(max(np.mean(values) - half, low), high))
            assert stats["ci95_high"] == pytest.approx(min(max(np.mean(values) + half, low), high))
    assert result["splits"]["test"]["accuracy"]["n"] == 2
    best_val = [leaderboard.run_record(str(root / f"seed_{s}"))["best_val_accuracy"] for s in (0, 1)]
    assert result["training"]["best_val_accuracy"]["values"] == best_val
    # Training time comes from the runs' metrics, so the seed trained before this call counts too.
    seconds = result["training"]["train_seconds"]["values"]
    assert all(s > 0 for s in seconds), seconds
    logged = [
        r["train/seconds"]
        for r in tracking.read_metrics(root / "seed_0" / "metrics.jsonl")
        if "train/seconds" in r
    ]
    assert seconds[0] == pytest.approx(sum(logged))

    saved = json.loads((root / "multiseed.json").read_text())
    assert saved["splits"]["test"]["macro_f1"] == result["splits"]["test"]["macro_f1"]
    md = (root / "multiseed.md").read_text()
    assert "## test (best checkpoint, TTA none)" in md and " ± " in md and "| seed 0 | seed 1 |" in md

    # The leaderboard of the two seeds shows their test results, ranked by validation accuracy.
    table = leaderboard.leaderboard([str(root)])
    rows = [line.split(" | ") for line in table.splitlines() if "seed_" in line]
    assert len(rows) == 2 and all(row[9] != "—" for row in rows)
    assert [row[6] for row in rows] == [f"{v:.4f}" for v in sorted(best_val, reverse=True)]

    with pytest.raises(ValueError, match=r"--eval_splits=.tset. is not one of"):
        multiseed.run(tiny_config(), [0], str(root), eval_splits=("tset",))
