"""The speed-ups of issue 8 must not change what is computed: the reshape-based max-pool against
flax's reduce-window one, and the CPU-device split against its contract."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fer_flax.models.layers import max_pool

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# (input spatial size, window, strides, padding): every pooling the model families use, plus odd sizes.
POOLS = [
    (48, (2, 2), (2, 2), "VALID"),  # cnn / beefy stages
    (7, (2, 2), (2, 2), "VALID"),  # odd size: the last row/column is dropped
    (24, (3, 3), (2, 2), ((1, 1), (1, 1))),  # resnet / vit conv stem
    (12, (3, 3), (2, 2), "SAME"),  # googlenet between stages
    (13, (3, 3), (2, 2), "SAME"),  # SAME with uneven padding
    (6, (3, 3), (1, 1), "SAME"),  # inception pooling branch
]


@pytest.mark.parametrize(("size", "window", "strides", "padding"), POOLS)
def test_max_pool_matches_flax_values_and_gradients(size, window, strides, padding):
    x = jax.random.normal(jax.random.key(size), (3, size, size + 1, 5))  # non-square on purpose
    ours = max_pool(x, window, strides, padding)
    ref = nn.max_pool(x, window, strides=strides, padding=padding)
    np.testing.assert_array_equal(np.asarray(ours), np.asarray(ref))
    # Continuous random inputs have a unique maximum in every window, so gradients agree exactly.
    cot = jax.random.normal(jax.random.key(1), ref.shape)
    g_ours = jax.grad(lambda x: jnp.sum(max_pool(x, window, strides, padding) * cot))(x)
    g_ref = jax.grad(lambda x: jnp.sum(nn.max_pool(x, window, strides=strides, padding=padding) * cot))(x)
    np.testing.assert_allclose(np.asarray(g_ours), np.asarray(g_ref), rtol=1e-6, atol=1e-6)


def test_max_pool_gradient_is_the_same_when_the_batch_is_sharded():
    # A maximum over strided slices was faster still, but XLA's SPMD partitioner returned gradients
    # up to 50% off for a batch sharded over 4 devices; this is the check that caught it.
    mesh = jax.sharding.Mesh(np.array(jax.devices()), ("data",))
    x = jax.random.normal(jax.random.key(0), (8, 12, 12, 3))
    cot = jax.random.normal(jax.random.key(1), (8, 6, 6, 3))

    def grad(x):
        return jax.grad(lambda x: jnp.sum(max_pool(jax.nn.relu(x), (2, 2)) * cot))(x)

    sharded = jax.device_put(x, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data")))
    np.testing.assert_allclose(np.asarray(jax.jit(grad)(sharded)), np.asarray(jax.jit(grad)(x)), atol=1e-6)


def test_max_pool_tied_maxima_keep_the_gradient_mass():
    # After ReLU many windows are all zeros: the gradient is shared among the tied inputs instead of
    # going to one of them, but each window still passes on exactly its output's gradient.
    x = jnp.zeros((1, 4, 4, 1)).at[0, 0, 0, 0].set(1.0)
    g = jax.grad(lambda x: jnp.sum(max_pool(x, (2, 2), (2, 2))))(x)[0, :, :, 0]
    assert float(g[0, 0]) == 1.0 and float(g[0, 1]) == 0.0  # the unique maximum takes it all
    np.testing.assert_allclose(np.asarray(g[2:, 2:]).sum(), 1.0)  # an all-zero window shares its 1
    np.testing.assert_allclose(float(g.sum()), 4.0)


def _python(code: str, **env_overrides: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # conftest fixes 4 devices
    env.update(env_overrides)
    return subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=120
    )


def test_configure_cpu_devices_contract():
    code = """
import jax
from fer_flax import parallel
cores = parallel.usable_cpu_cores()
set_to = parallel.configure_cpu_devices(0, (128, 512))
expected = max(c for c in range(1, cores + 1) if 128 % c == 0 and 512 % c == 0)
assert (set_to or 1) == expected == jax.device_count(), (set_to, expected, jax.device_count())
# Once JAX has started nothing changes (a library caller keeps its devices).
assert parallel.configure_cpu_devices(0, (128,)) is None
print("ok")
"""
    out = _python(code)
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr[-2000:]

    explicit = _python(
        "import jax; from fer_flax import parallel\n"
        "assert parallel.configure_cpu_devices(3, (6, 9)) == 3 and jax.device_count() == 3\n"
        "try:\n    parallel.configure_cpu_devices(3, (128,))\nexcept ValueError as e:\n    print(e)\n"
    )
    assert explicit.returncode == 0, explicit.stderr[-2000:]
    assert "config.cpu_devices=3 does not divide the batch sizes [128]" in explicit.stdout

    # XLA_FLAGS that fix the device count win.
    fixed = _python(
        "import jax; from fer_flax import parallel\n"
        "assert parallel.configure_cpu_devices(2, (128,)) is None and jax.device_count() == 3\n",
        XLA_FLAGS="--xla_force_host_platform_device_count=3",
    )
    assert fixed.returncode == 0, fixed.stderr[-2000:]


def test_command_line_splits_the_cpu_into_devices(tmp_path):
    workdir = tmp_path / "cli"
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    out = subprocess.run(
        [
            *(sys.executable, "-m", "fer_flax.main", "--config", "configs/simple_cnn.py:smoke"),
            *("--workdir", str(workdir), "--config.cpu_devices=2", "--config.num_epochs=0.25"),
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    with open(workdir / "config.json") as f:
        assert json.load(f)["derived"]["num_devices"] == 2
