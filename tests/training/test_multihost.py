"""Two processes on localhost (CPU collectives over gloo) train as one job and resume from their checkpoint.

Each process has 2 simulated CPU devices, so the job has the same 4 devices as the single-process
reference run in this (pytest) process, and the same global batch: results must agree up to the order
of floating-point reductions.
"""

import json
from pathlib import Path

import jax
import numpy as np
import pytest

from configs import simple_cnn
from fer_flax.training import loop as train
from tests.helpers.multihost import OVERRIDES, run_two_processes


def records(workdir: Path) -> dict[tuple[int, str], dict]:
    """metrics.jsonl keyed by (step, 'train'|'val'); fails on a duplicate (a second process writing)."""
    out = {}
    for line in (workdir / "metrics.jsonl").read_text().splitlines():
        r = json.loads(line)
        key = (r["step"], "val" if "val/accuracy" in r else "train")
        assert key not in out, f"duplicate record {key}: only process 0 may write metrics"
        out[key] = r
    return out


def assert_same_metrics(got: dict, want: dict) -> None:
    assert got.keys() == want.keys()
    for key, w in want.items():
        g = got[key]
        if key[1] == "train":
            assert g["train/accuracy"] == w["train/accuracy"], key
            for name in ("train/loss", "train/grad_norm"):
                np.testing.assert_allclose(g[name], w[name], rtol=1e-5, err_msg=f"{key} {name}")
        else:
            assert g["val/num_examples"] == w["val/num_examples"] == OVERRIDES["data.synthetic_val"]
            assert g["val/accuracy"] == w["val/accuracy"], key
            np.testing.assert_allclose(g["val/loss"], w["val/loss"], rtol=1e-5, err_msg=f"{key}")


@pytest.mark.slow
def test_two_processes_match_one_process_and_resume(tmp_path):
    assert jax.device_count() == 4, "the reference run needs the 4 devices conftest sets"
    config = simple_cnn.get_config("smoke")
    for key, value in {**OVERRIDES, "num_epochs": 2.0}.items():
        *parents, leaf = key.split(".")
        target = config
        for p in parents:
            target = target[p]
        target[leaf] = value
    train.train_and_evaluate(config, str(tmp_path / "reference"))
    reference = records(tmp_path / "reference")

    workdir = tmp_path / "two_processes"
    first = run_two_processes(workdir, 1.0, tmp_path)
    assert "Done. Final validation accuracy" in first[0]
    assert "Done." not in first[1] and "Model cnn/tiny" not in first[1]  # only process 0 reports
    assert "on 4 device(s)" in first[0]
    derived = json.loads((workdir / "config.json").read_text())["derived"]
    assert (derived["num_processes"], derived["num_devices"]) == (2, 4)
    # Every process saved its own Grain iterator position next to the shared model state.
    assert sorted(p.name for p in (workdir / "checkpoints" / "4" / "data").glob("process_*.json")) == [
        "process_0-of-2.json",
        "process_1-of-2.json",
    ]
    assert_same_metrics(records(workdir), {k: v for k, v in reference.items() if k[0] <= 4})

    second = run_two_processes(workdir, 2.0, tmp_path)
    assert f"Resumed from {workdir}/checkpoints/4 (step 4 of 8)" in second[0]
    summary = json.loads((workdir / "summary.json").read_text())
    assert summary["final_step"] == 8
    assert_same_metrics(records(workdir), reference)
