"""Two-process jobs on localhost for the multi-host tests: the overrides that make a tiny job, a free
loopback port, each process's environment (2 simulated CPU devices) and a runner of both processes."""

import os
import socket
import subprocess
import sys
from pathlib import Path

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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def job_env(cache_dir: Path) -> dict[str, str]:
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


def job_command(workdir: Path, num_epochs: float, port: int, process_id: int) -> list[str]:
    """`python -m fer_flax.main` of process `process_id` of the tiny two-process job on `port`."""
    return [
        sys.executable, "-m", "fer_flax.main", "--config", "configs/simple_cnn.py:smoke",
        "--workdir", str(workdir), f"--config.num_epochs={num_epochs}",
        *(f"--config.{k}={v}" for k, v in OVERRIDES.items()),
        f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2", f"--process_id={process_id}",
    ]  # fmt: skip


def run_two_processes(workdir: Path, num_epochs: float, logs: Path) -> list[str]:
    """Starts both processes, waits for both (killing stragglers), returns their stdout."""
    port = free_port()
    procs, files = [], []
    for pid in range(2):
        out = open(logs / f"epochs{num_epochs}_process{pid}.log", "w")  # noqa: SIM115 (closed below)
        files.append(out)
        cmd = job_command(workdir, num_epochs, port, pid)
        procs.append(
            subprocess.Popen(
                cmd,
                cwd=REPO,
                env=job_env(logs / "jax_cache"),
                stdout=out,
                stderr=subprocess.STDOUT,
                text=True,
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
