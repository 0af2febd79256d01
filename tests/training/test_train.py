"""End-to-end: the real training loop on tiny synthetic data, checkpoints, restore and resume."""

import json
import multiprocessing
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from configs import simple_cnn
from fer_flax.data import load_splits
from fer_flax.inference import engine as inference
from fer_flax.run import checkpoint as checkpoint_lib
from fer_flax.run import trained
from fer_flax.training import loop as train
from tests.helpers import REPO


def smoke_config(**overrides):
    c = simple_cnn.get_config("smoke")
    c.update_from_flattened_dict(overrides)  # dotted keys: {"optim.lr": 0.1}
    return c


def read_jsonl(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


def test_end_to_end_writes_outputs_and_best_checkpoint_reproduces_val_metrics(tmp_path):
    config = smoke_config()
    config.curves_png = True
    workdir = str(tmp_path / "run")
    summary = train.train_and_evaluate(config, workdir)

    assert summary["final_step"] == 16  # 512 images / batch 64 = 8 steps per epoch, 2 epochs
    records = read_jsonl(os.path.join(workdir, "metrics.jsonl"))
    train_records = [r for r in records if "train/loss" in r]
    val_records = {r["step"]: r for r in records if "val/accuracy" in r}
    assert [r["step"] for r in train_records] == [4, 8, 12, 16]
    assert sorted(val_records) == [8, 16]
    assert all(np.isfinite(r["train/loss"]) for r in train_records)
    assert train_records[-1]["train/loss"] < train_records[0]["train/loss"]
    assert val_records[16]["val/num_examples"] == 256
    # The confusion matrix of every evaluation is logged (and kept in the summary) as nested lists.
    confusion = np.asarray(val_records[16]["val/confusion"])
    assert confusion.shape == (7, 7) and confusion.sum() == 256
    assert np.trace(confusion) / 256 == val_records[16]["val/accuracy"]
    assert summary["final_val"]["confusion"] == val_records[16]["val/confusion"]
    with open(os.path.join(workdir, "curves.png"), "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    with open(os.path.join(workdir, "config.json")) as f:
        resolved = json.load(f)
    assert resolved["config"]["model_name"] == "cnn"
    assert resolved["derived"]["steps_per_epoch"] == 8
    assert resolved["derived"]["num_devices"] == jax.device_count() == 4

    # The best checkpoint, restored without optimizer state, gives exactly the metrics logged for it.
    ckpt = checkpoint_lib.Checkpointer(workdir, read_only=True)
    best_step = ckpt.best_step()
    assert best_step == max(val_records, key=lambda s: (val_records[s]["val/accuracy"], -s))
    ckpt.close()
    restored = trained.restore(workdir, "best")
    assert restored.step == best_step
    val = load_splits(config.data, ("val",), announce=lambda *_: None)["val"]
    logits = inference.predict_logits(restored.model, restored.variables, val, batch_size=128)
    again = inference.split_metrics(logits, val.labels)
    for key in ("accuracy", "balanced_accuracy", "macro_f1", "num_examples", "confusion"):
        assert again[key] == val_records[best_step][f"val/{key}"], key
    np.testing.assert_allclose(again["loss"], val_records[best_step]["val/loss"], rtol=1e-6)


@pytest.mark.slow
def test_grain_worker_processes_train_the_same_and_are_stopped(tmp_path):
    # The training stream does not depend on where it is produced, and train_and_evaluate stops its
    # worker process before returning (no orphan left holding memory).

    over = {"data.sampling": "sqrt", "num_epochs": 0.5}
    in_process = train.train_and_evaluate(smoke_config(**over), str(tmp_path / "w0"))
    worker_config = smoke_config(**over, **{"data.num_workers": 1})
    with_worker = train.train_and_evaluate(worker_config, str(tmp_path / "w1"))
    assert with_worker["final_val"] == in_process["final_val"]
    assert not [p for p in multiprocessing.active_children() if p.name.startswith("grain")]


@pytest.mark.parametrize(
    "override, message",
    [
        ({"model_name": "alexnet"}, "is not one of: cnn"),
        ({"model.variant": "huge"}, "is not one of: tiny, small"),
        ({"batch_size": 30}, "multiple of the 4 devices"),
        ({"data.path": "/nonexistent/fer2013.csv"}, "does not exist"),
        ({"optim.name": "lamb"}, "is not one of: sgd, adamw"),
        # Recipe settings read only inside the compiled step or at the first evaluation are checked
        # up front too.
        ({"eval_tta": "fivecrop"}, "config.eval_tta"),
        ({"loss.class_weighting": "bogus"}, "class_weighting"),
        ({"mix.mixup_alpha": -1.0}, "mixup_alpha"),
        ({"augment.ten_crop": True, "augment.crop_size": 60}, "crop_size"),
    ],
)
def test_config_mistakes_fail_before_training(tmp_path, override, message):
    workdir = tmp_path / "run"
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        train.train_and_evaluate(smoke_config(**override), str(workdir))
    assert not (workdir / "checkpoints").exists()


@pytest.mark.slow
def test_command_line_trains_on_the_configured_cpu_devices_and_rejects_unknown_keys(tmp_path):
    # The command users type: without a device count in XLA_FLAGS, `cpu_devices` splits the CPU
    # (conftest's cheap code-generation flags stay: they change compile time, not devices).
    repo = str(REPO)
    flags = [f for f in os.environ.get("XLA_FLAGS", "").split() if "host_platform_device_count" not in f]
    env = {**os.environ, "XLA_FLAGS": " ".join(flags)}
    base = [sys.executable, "-m", "fer_flax.main", "--config", "configs/simple_cnn.py:smoke"]
    ok = subprocess.run(
        [*base, "--workdir", str(tmp_path / "cli"), "--config.num_epochs=0.5", "--config.cpu_devices=2"],
        cwd=repo,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert ok.returncode == 0, ok.stderr[-3000:]
    assert "SYNTHETIC" in ok.stdout
    assert "Final validation accuracy" in ok.stdout
    with open(tmp_path / "cli" / "config.json") as f:
        assert json.load(f)["derived"]["num_devices"] == 2
    bad = subprocess.run(
        [*base, "--workdir", str(tmp_path / "bad"), "--config.optim.lrr=0.1"],
        cwd=repo,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert bad.returncode != 0
    assert "lrr" in bad.stderr
    # One line naming the flag and the key it probably meant, without a traceback.
    assert bad.stderr.startswith("error: --config.optim.lrr: the config has no key 'optim.lrr' (did you mean")
    assert "Traceback" not in bad.stderr and bad.stderr.count("\n") == 1
