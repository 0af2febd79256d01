"""launch.sh: syntax, help, the commands its dry run prints for one node and for SLURM, and its errors."""

import os
import subprocess

import pytest

from tests.helpers import REPO

LAUNCH = REPO / "launch.sh"


def launch(*args: str, **env: str) -> subprocess.CompletedProcess:
    # A clean environment: no SLURM allocation, no GPU settings, no nvidia-smi (PATH has only the
    # basics), whatever the machine running the tests has.
    base = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "CUDA_", "XLA_", "TF_CPP"))}
    base["PATH"] = "/usr/bin:/bin"
    return subprocess.run(
        ["bash", str(LAUNCH), *args],
        cwd=REPO,
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_syntax_and_help():
    subprocess.run(["bash", "-n", str(LAUNCH)], check=True, timeout=30)
    assert os.access(LAUNCH, os.X_OK), "launch.sh must be executable"
    out = launch("--help")
    assert out.returncode == 0
    assert "Usage: ./launch.sh CONFIG" in out.stdout and "--nodes N" in out.stdout


def test_single_node_dry_run_prints_the_training_command():
    out = launch("--dry-run", "configs/simple_cnn.py", "--workdir", "w d", "--config.optim.lr=0.05")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert lines[-1] == (
        "python3 -m fer_flax.main --config configs/simple_cnn.py --workdir w\\ d --config.optim.lr=0.05"
    )
    assert "export XLA_PYTHON_CLIENT_MEM_FRACTION=0.90" in lines
    assert "export FER_FLAX_NUM_PROCESSES=1" in lines  # one process for all local GPUs
    assert "srun" not in out.stdout


def test_single_node_defaults_workdir_from_config_and_limits_gpus():
    out = launch(
        "--dry-run", "--gpus-per-node=2", "configs/simple_cnn.py:smoke", XLA_PYTHON_CLIENT_MEM_FRACTION="0.5"
    )
    assert out.returncode == 0, out.stderr
    assert "--workdir workdirs/simple_cnn_smoke" in out.stdout
    assert "export CUDA_VISIBLE_DEVICES=0,1" in out.stdout
    assert "export XLA_PYTHON_CLIENT_MEM_FRACTION=0.5" in out.stdout  # the user's value wins


def test_multi_node_dry_run_prints_the_srun_line():
    out = launch(
        "--dry-run",
        "--nodes",
        "2",
        "--gpus-per-node",
        "4",
        "--srun-args",
        "--partition=gpu --time=1:00:00",
        "configs/simple_cnn.py",
        "--config.batch_size=256",
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == (
        "srun --nodes=2 --ntasks-per-node=4 --gpus-per-node=4 --kill-on-bad-exit=1 --partition=gpu "
        "--time=1:00:00 python3 -m fer_flax.main --config configs/simple_cnn.py "
        "--workdir workdirs/simple_cnn --config.batch_size=256"
    )
    assert "FER_FLAX_NUM_PROCESSES" not in out.stdout  # jax.distributed reads the SLURM step
    assert "8 processes" in out.stdout


def test_inside_an_sbatch_allocation_the_allocation_sets_nodes_and_gpus():
    out = launch(
        "--dry-run", "configs/simple_cnn.py", SLURM_JOB_ID="77", SLURM_NNODES="3", SLURM_GPUS_ON_NODE="8"
    )
    assert out.returncode == 0, out.stderr
    assert "srun --nodes=3 --ntasks-per-node=8 --gpus-per-node=8" in out.stdout
    one_node = launch("--dry-run", "configs/simple_cnn.py", SLURM_JOB_ID="77", SLURM_NNODES="1")
    assert "srun" not in one_node.stdout and "FER_FLAX_NUM_PROCESSES=1" in one_node.stdout


@pytest.mark.parametrize(
    "args, message",
    [
        (("configs/no_such.py:arg",), "config file 'configs/no_such.py' not found"),
        ((), "no config file given"),
        (("--nodes", "two", "configs/simple_cnn.py"), "--nodes must be a positive integer"),
        (("--dry-run", "--nodes", "2", "configs/simple_cnn.py"), "give --gpus-per-node G"),
        (("--nodes", "2", "--gpus-per-node", "4", "configs/simple_cnn.py"), "needs SLURM's srun"),
        (("configs/simple_cnn.py", "--workdir"), "--workdir needs a value"),
    ],
)
def test_mistakes_exit_nonzero_with_a_clear_message(args, message):
    out = launch(*args)
    assert out.returncode != 0
    assert message in out.stderr
