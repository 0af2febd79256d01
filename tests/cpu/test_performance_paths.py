"""The CPU speed-ups (fer_flax.cpu) must not change what is computed: the reshape-based max-pool and its
hand-written gradient against flax's pool, the single-channel convolution against lax's, gradients
compiled with the XLA:CPU option against eager execution, the allocator settings' effect on page faults,
and the CPU-device split against its contract."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fer_flax import cpu
from fer_flax.cpu.compiler import CPU_COMPILER_OPTIONS, XLA_DEFAULT_OPTIONS
from fer_flax.cpu.kernels import conv_general_dilated, max_pool
from fer_flax.models import create_model
from tests.helpers import REPO as REPO_PATH
from tests.helpers.models import compiled_init

REPO = str(REPO_PATH)

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
    # After ReLU many windows are all zeros: one of the tied inputs (the first) takes the gradient, and
    # each window passes on exactly its output's gradient.
    x = jnp.zeros((1, 4, 4, 1)).at[0, 0, 0, 0].set(1.0)
    g = jax.grad(lambda x: jnp.sum(max_pool(x, (2, 2), (2, 2))))(x)[0, :, :, 0]
    assert float(g[0, 0]) == 1.0 and float(g[0, 1]) == 0.0  # the unique maximum takes it all
    assert float(g[2, 2]) == 1.0 and float(g[2:, 2:].sum()) == 1.0  # an all-zero window: the first
    np.testing.assert_allclose(float(g.sum()), 4.0)


def test_max_pool_gradient_equals_flax_including_ties():
    # Ties placed on purpose (all-zero windows, pairs, a 4-way tie): the first maximum in row-major
    # order takes the gradient, exactly as in nn.max_pool's select-and-scatter.
    x = jax.random.normal(jax.random.key(3), (2, 8, 6, 3))
    x = x.at[0, :2, :2, 0].set(0.0).at[1, 2:4, 2:4, 1].set(5.0).at[0, 4, 4:6, 2].set(2.5)
    cot = jax.random.normal(jax.random.key(4), (2, 4, 3, 3))
    ours = jax.jit(jax.grad(lambda x: jnp.sum(max_pool(x, (2, 2)) * cot)))(x)
    ref = jax.grad(lambda x: jnp.sum(nn.max_pool(x, (2, 2), strides=(2, 2)) * cot))(x)
    np.testing.assert_array_equal(np.asarray(ours), np.asarray(ref))
    assert float(ours[1, 2, 2, 1]) == float(cot[1, 1, 1, 1]) and float(ours[1, 3, 3, 1]) == 0.0


def _ynnpack_fused_ops(hlo_text: str) -> set[str]:
    """The HLO op names inside the compiled program's YNNPACK fusions."""
    ops: set[str] = set()
    for match in re.finditer(r"calls=%([\w.\-]+).*__ynn_fusion", hlo_text):
        start = hlo_text.index(f"%{match.group(1)} ")
        body = hlo_text[start : hlo_text.index("\n}\n", start)]
        ops.update(re.findall(r"= \S+ ([a-z][\w\-]*)\(", body))
    return ops


def test_the_option_keeps_convolutions_out_of_ynnpack(monkeypatch):
    # Per-program options, so both settings compile in this process (the product sets the same option
    # process-wide through XLA_FLAGS; tests/cpu/test_cpu_corner.py checks that route).
    model = create_model("cnn", variant="tiny", num_classes=7, **cpu.model_ops())
    x = jnp.zeros((4, 48, 48, 1))
    variables = compiled_init(model, x)

    def loss(params, x):
        (logits, _), _ = model.apply(
            {"params": params, "batch_stats": variables["batch_stats"]},
            x,
            train=True,
            mutable=["batch_stats"],
        )
        return jnp.sum(logits)

    def compiled(options):
        return jax.jit(jax.grad(loss), compiler_options=options).lower(variables["params"], x).compile()

    ours_hlo = compiled(CPU_COMPILER_OPTIONS).as_text()
    ours = _ynnpack_fused_ops(ours_hlo)
    defaults = _ynnpack_fused_ops(compiled(XLA_DEFAULT_OPTIONS).as_text())
    # XLA's defaults put the convolutions in YNNPACK (the check would be empty otherwise); ours keep
    # only the BatchNorm reductions there, so no reduce-window tree is left for XLA:CPU to run.
    assert "convolution" in defaults
    assert "reduce" in ours and "convolution" not in ours and "dot" not in ours
    assert "reduce-window" not in ours_hlo


@pytest.mark.slow
@pytest.mark.parametrize("ops", ["cpu", "stock"])
def test_compiled_training_gradient_of_a_batchnorm_cnn_equals_eager(ops):
    # The pools' backward pass once found each window's maximum by comparing the input with the pooled
    # output. Compiled, in a BatchNorm network in training mode, XLA recomputed the compared values
    # differently and the gradient came out wrong (relative error 1.8 here) or NaN (with YNNPACK's
    # fusions). Eager execution runs op by op and is the reference. (small_bn at initialisation is
    # well-conditioned: a 1e-6 input perturbation moves no gradient by 1e-3.) Compiled with the
    # product's XLA:CPU option, with the CPU kernels and with the stock ops.
    kernels = cpu.model_ops() if ops == "cpu" else {}
    model = create_model("cnn", variant="small_bn", num_classes=7, dropout=0.0, **kernels)
    x = jax.random.uniform(jax.random.key(1), (16, 48, 48, 1))
    variables = compiled_init(model, x)

    def loss(params):
        (logits, _), _ = model.apply(
            {"params": params, "batch_stats": variables["batch_stats"]},
            x,
            train=True,
            mutable=["batch_stats"],
        )
        return jnp.sum(jax.nn.log_softmax(logits)[:, 0])

    compiled = jax.jit(jax.grad(loss), compiler_options=CPU_COMPILER_OPTIONS)(variables["params"])
    with jax.disable_jit():
        eager = jax.grad(loss)(variables["params"])
    eager_leaves = jax.tree.leaves(eager)
    for (path, c), e in zip(jax.tree_util.tree_leaves_with_path(compiled), eager_leaves, strict=True):
        name = jax.tree_util.keystr(path)
        scale = float(np.max(np.abs(np.asarray(e))))
        np.testing.assert_allclose(np.asarray(c), np.asarray(e), rtol=0, atol=1e-3 * scale, err_msg=name)


def _python(code: str, **env_overrides: str) -> subprocess.CompletedProcess:
    # conftest fixes 4 devices and keeps glibc's malloc defaults: a fresh process starts as users' do.
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", cpu.allocator.KEEP_DEFAULTS_ENV)}
    env.update(env_overrides)
    return subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=120
    )


def test_configure_cpu_devices_contract():
    code = """
import jax
from fer_flax.cpu import devices
cores = devices.usable_cpu_cores()
set_to = devices.configure_cpu_devices(0, (128, 512))
expected = max(c for c in range(1, cores + 1) if 128 % c == 0 and 512 % c == 0)
assert (set_to or 1) == expected == jax.device_count(), (set_to, expected, jax.device_count())
# Once JAX has started nothing changes (a library caller keeps its devices).
assert devices.configure_cpu_devices(0, (128,)) is None
print("ok")
"""
    out = _python(code)
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr[-2000:]

    explicit = _python(
        "import jax; from fer_flax.cpu import devices\n"
        "assert devices.configure_cpu_devices(3, (6, 9)) == 3 and jax.device_count() == 3\n"
        "try:\n    devices.configure_cpu_devices(3, (128,))\nexcept ValueError as e:\n    print(e)\n"
    )
    assert explicit.returncode == 0, explicit.stderr[-2000:]
    assert "config.cpu_devices=3 does not divide the batch sizes [128]" in explicit.stdout

    # XLA_FLAGS that fix the device count win.
    fixed = _python(
        "import jax; from fer_flax.cpu import devices\n"
        "assert devices.configure_cpu_devices(2, (128,)) is None and jax.device_count() == 3\n",
        XLA_FLAGS="--xla_force_host_platform_device_count=3",
    )
    assert fixed.returncode == 0, fixed.stderr[-2000:]


_FAULTS_PER_STEP = """
import resource, sys
from fer_flax import cpu
cpu.configure_process()
applied = cpu.allocator.in_effect()
import jax, jax.numpy as jnp
x = jnp.ones((64, 48, 48, 64))  # 37.7 MB, past glibc's largest mmap threshold (32 MiB); so is the output
step = jax.jit(lambda x: jnp.tanh(x) * 2.0 + 1.0)
faults = []
for _ in range(30):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    step(x).block_until_ready()
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
# The reused heap still grows now and then (XLA frees some buffers after the next step has
# allocated), most over the first ten steps: the median of the last twenty is the steady state.
print(applied, sorted(faults[10:])[10])
"""


@pytest.mark.skipif(
    sys.platform != "linux" or os.environ.get("JAX_PLATFORMS", "cpu") != "cpu",
    reason="glibc malloc settings on a CPU backend",
)
@pytest.mark.slow
def test_host_allocator_reuses_pages_across_steps():
    # Page faults, not timings: with glibc's defaults every step maps its 38 MB output afresh (a fault
    # per 4 KiB page at least); with the CPU corner's allocator settings the freed pages come back. The
    # settings must be made before JAX starts (hence the fresh processes).
    reused = _python(_FAULTS_PER_STEP)
    defaults = _python(_FAULTS_PER_STEP, FER_FLAX_CPU_TUNING="0")
    for out in (reused, defaults):
        assert out.returncode == 0, out.stderr[-2000:]
    applied, reused_faults = reused.stdout.split()
    not_applied, default_faults = defaults.stdout.split()
    assert (applied, not_applied) == ("True", "False")
    assert float(default_faults) > 37.7e6 / 4096  # the premise: every page faults again by default
    assert float(reused_faults) < float(default_faults) / 4, (reused_faults, default_faults)


def test_host_allocator_leaves_accelerator_processes_alone():
    out = _python(
        "from fer_flax.cpu import allocator\nprint(allocator.reuse_freed_memory())",
        JAX_PLATFORMS="cuda",
    )
    assert out.returncode == 0 and out.stdout.strip() == "False", out.stderr[-2000:]


# (input shape, kernel, strides, padding): the stems of the families, odd sizes, strided, patch-like.
SINGLE_CHANNEL_CONVS = [
    ((4, 48, 48, 1), (3, 3), (1, 1), "SAME"),  # cnn / beefy / resnet s1 / vit conv stems
    ((4, 48, 48, 1), (3, 3), (2, 2), ((1, 1), (1, 1))),  # resnet s2 stem
    ((3, 47, 45, 1), (7, 7), (2, 2), ((3, 3), (3, 3))),  # resnet / googlenet 7x7 stems, odd sizes
    ((2, 48, 48, 1), (6, 6), (6, 6), "VALID"),  # non-overlapping patches
]


@pytest.mark.parametrize("shape,kernel,strides,padding", SINGLE_CHANNEL_CONVS)
def test_single_channel_conv_matches_lax(shape, kernel, strides, padding):
    from jax import lax

    dn = lax.conv_dimension_numbers(shape, (*kernel, 1, 16), ("NHWC", "HWIO", "NHWC"))
    x = jax.random.normal(jax.random.key(0), shape)
    w = jax.random.normal(jax.random.key(1), (*kernel, 1, 16))

    def ref(x, w):
        return lax.conv_general_dilated(x, w, strides, padding, dimension_numbers=dn)

    def ours(x, w):
        return conv_general_dilated(x, w, strides, padding, dimension_numbers=dn)

    compiled = jax.jit(ours).lower(x, w).compile().as_text()
    assert "convolution(" not in compiled  # the shifted multiply-adds, not XLA's im2col convolution
    np.testing.assert_allclose(jax.jit(ours)(x, w), jax.jit(ref)(x, w), rtol=0, atol=1e-5)
    g = jax.random.normal(jax.random.key(2), ref(x, w).shape)
    for a, b in zip(jax.vjp(ours, x, w)[1](g), jax.vjp(ref, x, w)[1](g), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-5)


def test_conv_general_dilated_leaves_multichannel_convs_to_xla():
    x, w = jnp.ones((2, 12, 12, 3)), jnp.ones((3, 3, 3, 8))
    fn = jax.jit(
        lambda x, w: conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    )
    assert "convolution(" in fn.lower(x, w).compile().as_text()
