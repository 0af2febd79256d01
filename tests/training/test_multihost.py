"""Two processes on localhost (CPU collectives over gloo) train as one job and resume from their checkpoint.

Each process has 2 simulated CPU devices, so the job has the same 4 devices as the single-process
reference run in this (pytest) process, and the same global batch: results must agree up to the order
of floating-point reductions.
"""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from configs import simple_cnn
from fer_flax.training import loop as train
from tests.helpers import REPO

# 256 training images / global batch 64 = 4 steps per epoch; a constant learning rate makes a run of
# one epoch followed by a resume to two epochs comparable with two uninterrupted epochs.
OVERRIDES = {
    "data.synthetic_train": 256,
    "data.synthetic_val": 128,
    "optim.schedule": "constant",
    "optim.warmup_epochs": 0.0,
    # A gentle learning rate: at 0.02 the first steps are chaotic enough to turn rounding-order
    # differences of 1e-7 into 4e-4 by step 8; at 0.005 every figure agrees to ~1e-7.
    "optim.lr": 0.005,
    "log_every_steps": 2,
    # Smaller programs to compile; augmentation's sharding-independence is tested in test_parallel.
    "augment.pad_crop": 0,
    "augment.flip": False,
    "augment.rotate_degrees": 0.0,
}
TIMEOUT_S = 240


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(cache_dir: Path) -> dict[str, str]:
    # 2 devices per process; conftest's other XLA flags (its cheap machine-code settings) stay.
    flags = [f for f in os.environ.get("XLA_FLAGS", "").split() if "host_platform_device_count" not in f]
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("SLURM_", "FER_FLAX_", "JAX_COORDINATOR", "PYTEST_"))
    }
    env.update(
        XLA_FLAGS=" ".join([*flags, "--xla_force_host_platform_device_count=2"]),
        JAX_PLATFORMS="cpu",
        PYTHONPATH=str(REPO),
        WANDB_MODE="disabled",
        # The resumed run compiles exactly the programs the first one did: reuse them (half the time),
        # in the suite's shared cache when conftest set one.
        JAX_COMPILATION_CACHE_DIR=os.environ.get("JAX_COMPILATION_CACHE_DIR", str(cache_dir)),
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
        JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
    )
    return env


def run_two_processes(workdir: Path, num_epochs: float, logs: Path) -> list[str]:
    """Starts both processes, waits for both (killing stragglers), returns their stdout."""
    port = _free_port()
    procs, files = [], []
    for pid in range(2):
        out = open(logs / f"epochs{num_epochs}_process{pid}.log", "w")  # noqa: SIM115 (closed below)
        files.append(out)
        cmd = [
            sys.executable,
            "-m",
            "fer_flax.main",
            "--config",
            "configs/simple_cnn.py:smoke",
            "--workdir",
            str(workdir),
            f"--config.num_epochs={num_epochs}",
            *(f"--config.{k}={v}" for k, v in OVERRIDES.items()),
            f"--coordinator_address=127.0.0.1:{port}",
            "--num_processes=2",
            f"--process_id={pid}",
        ]
        procs.append(
            subprocess.Popen(
                cmd, cwd=REPO, env=_env(logs / "jax_cache"), stdout=out, stderr=subprocess.STDOUT, text=True
            )
        )
    try:
        for p in procs:
            p.wait(timeout=TIMEOUT_S)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        for f in files:
            f.close()
    outputs = [Path(f.name).read_text() for f in files]
    for pid, (p, text) in enumerate(zip(procs, outputs, strict=True)):
        assert p.returncode == 0, f"process {pid} exited {p.returncode}:\n{text[-4000:]}"
    return outputs


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
