"""benchmarks/gpu_comparison.sh: its dry run end to end on a CPU (a tiny FER2013 CSV, five tiny families,
two steps each: the report, the summary and the weights within a size limit), and the parts it rests
on: the GPU configs' one-program call plans, the time to an accuracy, the pack's encodings and policy."""

from __future__ import annotations

import json
import os
import subprocess

import jax
import numpy as np
import pytest

from benchmarks import comparison_outputs as outputs
from benchmarks import comparison_warmup as warmup
from benchmarks import model_comparison as mc
from fer_flax.config.schema import validate
from fer_flax.core.model import create_model, initial_variables
from fer_flax.data.synthetic import generate_synthetic
from fer_flax.training.step_plan import step_plan
from tests.helpers import REPO
from tests.helpers.trained_runs import write_fer_csv

FER2013_TRAIN = 28709


@pytest.mark.parametrize("family", list(mc.FAMILIES))
def test_each_gpu_config_compiles_one_training_program(family):
    """Every call of a `:gpu` run on FER2013 has `steps_per_call` steps: the warm-up compiles the
    one program the run uses, and the run's evaluations fall on whole epochs."""
    args = mc.parse_args(["--out", "unused", "--data", "absent"])
    config = mc.family_config(family, args, FER2013_TRAIN)
    validate(config)
    plan = step_plan(config, FER2013_TRAIN)
    assert set(warmup.call_lengths(config, plan)) == {config.steps_per_call}
    assert plan["eval_every_steps"] % plan["steps_per_epoch"] == 0
    assert (config.dtype, config.data.pipeline, config.eval_tta) == ("bfloat16", "device", "flip")


def test_time_to_accuracy_leaves_out_the_first_windows_compilation():
    records = [
        {"step": 10, "time": 105.0, "train/seconds": 5.0, "train/images_per_sec": 200.0},  # 4 s compiling
        {"step": 20, "time": 107.0, "train/seconds": 1.0, "train/images_per_sec": 1000.0},
        {"step": 20, "time": 108.0, "val/accuracy": 0.69, "selected/accuracy": 0.71},
        {"step": 30, "time": 110.0, "train/seconds": 1.0, "train/images_per_sec": 1000.0},
        {"step": 30, "time": 111.0, "val/accuracy": 0.74},
    ]
    figures = outputs.curve_figures(records, start=100.0, steps_per_epoch=10, thresholds=(0.70, 0.73))
    assert figures["images_per_s"] == 1000.0 and figures["first_window_excess_s"] == pytest.approx(4.0)
    assert figures["time_to"]["0.70"] == {"train_s": 2.0, "wall_s": 8.0, "step": 20, "epoch": 2.0}
    assert figures["time_to"]["0.73"]["train_s"] == pytest.approx(3.0)
    assert figures["train_s"] == pytest.approx(3.0)


def test_int8_and_bfloat16_encodings_round_trip():
    rng = np.random.default_rng(0)
    variables = {
        "params": {"Conv_0": {"kernel": rng.normal(size=(3, 3, 16, 32)).astype(np.float32)}},
        "batch_stats": {"BatchNorm_0": {"mean": rng.normal(size=(32,)).astype(np.float32)}},
    }
    kernel = variables["params"]["Conv_0"]["kernel"]
    mean = variables["batch_stats"]["BatchNorm_0"]["mean"]
    for encoding in outputs.ENCODINGS:
        back = outputs.decode(outputs.encode(variables, encoding))
        assert jax.tree.structure(back) == jax.tree.structure(variables)
        # The statistics stay bfloat16 either way (8 bits of mantissa); the kernel's error is at most
        # half a step: of bfloat16, or of its output channel's int8 scale.
        np.testing.assert_allclose(back["batch_stats"]["BatchNorm_0"]["mean"], mean, rtol=1 / 128)
        per_channel = np.abs(kernel).reshape(-1, 32).max(axis=0) / 127
        step = per_channel if encoding == "int8" else np.abs(kernel) / 128
        assert np.all(np.abs(back["params"]["Conv_0"]["kernel"] - kernel) <= step / 2 + 1e-7)
    sizes = outputs.encoded_bytes(variables)
    assert sizes["int8"] < 0.6 * sizes["bfloat16"]


def test_the_pack_policy_goes_int8_largest_saving_first_then_leaves_out_the_worst():
    sizes = {
        "resnet": {"bfloat16": 100, "int8": 50},
        "vit": {"bfloat16": 200, "int8": 100},
        "cnn": {"bfloat16": 10, "int8": 6},
    }
    best_first = ["resnet", "vit", "cnn"]

    def plan(budget: int) -> tuple:
        encodings = outputs.plan_encodings(sizes, best_first, budget)
        return tuple(encodings[n] for n in best_first)

    assert plan(310) == ("bfloat16", "bfloat16", "bfloat16")
    assert plan(300) == ("bfloat16", "int8", "bfloat16")  # the ViT saves the most
    assert plan(160) == ("int8", "int8", "bfloat16")
    assert plan(155) == ("int8", "int8", None)  # all int8 is 156: the worst family is left out
    assert plan(99) == ("int8", None, None)
    assert plan(0) == (None, None, None)


def _tiny_fer_csv(path) -> None:
    """64 Training, 32 PublicTest and 4 PrivateTest faces in FER2013's CSV layout."""
    faces = generate_synthetic(64, 32, 4, seed=3)
    rows = []
    for split, usage in (("train", "Training"), ("val", "PublicTest"), ("test", "PrivateTest")):
        images, labels = faces[split].images, faces[split].labels
        rows += [(int(y), x, usage) for x, y in zip(images, labels, strict=True)]
    write_fer_csv(path, rows)


def _dry_run(tmp_path, *flags: str) -> tuple[str, dict]:
    """`bash benchmarks/gpu_comparison.sh dry_run` on a tiny FER2013 CSV with `flags`: its output
    folder and summary."""
    csv, out = tmp_path / "fer2013.csv", tmp_path / "out"
    _tiny_fer_csv(csv)
    command = ["bash", "benchmarks/gpu_comparison.sh", "dry_run", "--data", str(csv), "--out", str(out)]
    command += ["--workdir_root", str(tmp_path / "work"), *flags]
    if os.environ.get("JAX_COMPILATION_CACHE_DIR"):  # the test suite's cache: reruns compile nothing
        command += ["--compile_cache", os.environ["JAX_COMPILATION_CACHE_DIR"]]
    # One device, as on one GPU (the suite's four CPU devices would make it compile one family at a time).
    flags = os.environ.get("XLA_FLAGS", "").replace("device_count=4", "device_count=1")
    env = {**os.environ, "XLA_FLAGS": flags}
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return out, json.loads((out / "summary.json").read_text())


@pytest.mark.slow
def test_the_dry_run_trains_compares_and_packs_every_family(tmp_path):
    # Room for the report and summary (about 0.3 MiB) and the log's headroom, but not for the five
    # tiny nets in bfloat16 (about 1.3 MiB): the pack must re-encode or leave some out.
    limit_mib = mc.LOG_HEADROOM_MIB + 0.9
    out, summary = _dry_run(tmp_path, "--max_out_mib", str(limit_mib))

    files = sorted(os.listdir(out))
    assert files == ["report.html", "report.json", "report.md", "summary.json", "summary.md", "weights.npz"]
    assert summary["dry_run"] and list(summary["families"]) == list(mc.FAMILIES)
    for name, family in summary["families"].items():
        assert family["outcome"] == "finished" and family["final_step"] == 2, name
        assert 0 <= family["accuracy"] <= 1 and family["images_per_s"] > 0 and family["has_best"], name
        # The warm-up compiled every program the run needed: it only loaded them from the cache.
        assert family["compiled_in_training"]["cache_misses"] == 0, (name, family["compiled_in_training"])
    report = json.loads((out / "report.json").read_text())
    assert [r["name"] for r in report["runs"]] == list(mc.FAMILIES)
    assert "<html" in (out / "report.html").read_text()[:200].lower()
    assert len(summary["ensemble"]["members"]) == 5 and 0 <= summary["ensemble"]["accuracy"] <= 1
    assert "| resnet | configs/resnet18.py:gpu | finished |" in (out / "summary.md").read_text()

    # Within the limit, with the headroom left for the log (which a dry run does not write).
    size, count = outputs.folder_bytes(out)
    assert count <= 8 and size <= limit_mib * 2**20
    assert summary["pack"]["bytes"] <= summary["pack"]["budget_bytes"]
    encodings = {n: e["encoding"] for n, e in summary["pack"]["families"].items()}
    assert set(encodings) == set(mc.FAMILIES) and set(encodings.values()) != {"bfloat16"}
    packed = outputs.load_pack(str(out / "weights.npz"))
    assert set(packed) == {n for n, e in encodings.items() if e}
    for name, entry in packed.items():
        config = entry["manifest"]["config"]
        model = create_model(_config_dict(config))
        shapes = jax.eval_shape(lambda m=model: initial_variables(m, jax.random.key(0)))
        got = jax.tree.map(np.shape, entry["variables"])
        assert got == jax.tree.map(lambda s: s.shape, dict(shapes)), name
        assert 0 <= summary["pack"]["families"][name]["packed_accuracy"] <= 1


@pytest.mark.slow
def test_a_family_cut_by_its_cap_keeps_its_best_checkpoint(tmp_path):
    """Far more steps than 4 s allow, an evaluation every 4: the cap stops the run after a step, and
    its best checkpoint is reported, ensembled and packed."""
    flags = ["--families", "cnn", "--caps", "cnn=4", "--dry_run_steps", "100000", "--dry_run_eval_every", "4"]
    out, summary = _dry_run(tmp_path, *flags)
    cnn = summary["families"]["cnn"]
    assert cnn["outcome"] == "cut at its time cap" and cnn["cap_s"] == 4.0 and cnn["has_best"]
    assert 4 <= cnn["final_step"] < 100000 and cnn["best_step"] % 4 == 0
    assert summary["ensemble"]["members"] == ["cnn/tiny"]
    assert summary["pack"]["families"]["cnn"]["encoding"] == "bfloat16"
    assert (out / "report.html").exists()


def _config_dict(config: dict):
    from ml_collections import ConfigDict

    from fer_flax.config.defaults import complete

    return ConfigDict(complete(config))
