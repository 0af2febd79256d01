"""The CPU corner (fer_flax.cpu): its kernels compute what the stock Flax ops compute, models built with
`cpu.model_ops()` use them on a CPU backend and stock ops with the corner switched off, and
`configure_process()` sets the XLA:CPU option once, only where it applies."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fer_flax import cpu, models
from fer_flax.models import create_model
from tests.helpers import REPO as REPO_PATH
from tests.helpers.models import compiled_init

REPO = str(REPO_PATH)

# Each family's smallest variant, shrunk further by model options (compiling a gradient twice per
# family must stay cheap), keeping what the seam touches: the single-channel stem convolution, the
# other convolutions and every kind of max-pool the family has. The check is the arithmetic, so a
# 16x16 input does.
SMALLEST = {
    "cnn": ("tiny", dict(stage_widths=(8, 16), dense_widths=(16,))),
    "beefy": ("small", dict(width=8, num_stages=2, head_widths=(16,))),
    "resnet": ("resnet10_half", dict(stage_sizes=(1, 1), widths=(8, 16))),
    "googlenet": (
        "inception_v1_bn_tiny",
        dict(stages=((("3a", (16, 16, 16, 8, 8, 8)),), (("4a", (16, 16, 16, 8, 8, 8)),)), aux_hidden=16),
    ),
    "vit": ("vit_hybrid_micro", dict(dim=16, depth=1, mlp_dim=16, stem_widths=(8, 16))),
}


def _loss_and_grads(model, variables, x):
    """Training-mode loss (BatchNorm on batch statistics, aux heads included) and its parameter
    gradients, compiled."""
    extra = {k: v for k, v in variables.items() if k != "params"}

    def loss(params):
        (logits, aux), _ = model.apply(
            {"params": params, **extra},
            x,
            train=True,
            mutable=list(extra),
            rngs={"dropout": jax.random.key(2)},
        )
        total = jnp.sum(jax.nn.log_softmax(logits)[:, 0])
        for aux_logits in aux.get("aux_logits", ()):
            total += 0.3 * jnp.sum(jax.nn.log_softmax(aux_logits)[:, 0])
        return total, logits

    (_, logits), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(variables["params"])
    return logits, grads


@pytest.mark.parametrize("family", list(SMALLEST))
def test_cpu_kernels_give_the_stock_logits_and_gradients(family):
    variant, options = SMALLEST[family]
    stock = create_model(family, variant=variant, **options)
    kernels = dict(conv=cpu.kernels.Conv, max_pool=cpu.kernels.max_pool)
    tuned = create_model(family, variant=variant, **kernels, **options)
    x = jax.random.uniform(jax.random.key(1), (4, 16, 16, 1))
    variables = compiled_init(stock, x)
    tuned_shapes = jax.eval_shape(lambda: tuned.init({"params": jax.random.key(0)}, x, train=False))
    assert jax.tree.structure(tuned_shapes) == jax.tree.structure(variables)
    logits_stock, grads_stock = _loss_and_grads(stock, variables, x)
    logits_tuned, grads_tuned = _loss_and_grads(tuned, variables, x)
    np.testing.assert_allclose(logits_tuned, logits_stock, rtol=1e-4, atol=1e-5)
    for (path, g), ref in zip(
        jax.tree_util.tree_leaves_with_path(grads_tuned), jax.tree.leaves(grads_stock), strict=True
    ):
        scale = float(np.max(np.abs(ref))) or 1.0
        np.testing.assert_allclose(g, ref, rtol=0, atol=1e-3 * scale, err_msg=jax.tree_util.keystr(path))


# The HLO users' processes compile: conftest's XLA_FLAGS may choose XLA:CPU's classic fusion emitters
# for the suite's speed, under which XLA rewrites some ops differently.
_USERS_EMITTERS = (
    {"xla_cpu_use_fusion_emitters": True}
    if "--xla_cpu_use_fusion_emitters=false" in os.environ.get("XLA_FLAGS", "")
    else {}
)


def _compiled_cnn(model):
    """The compiled HLO of the tiny CNN's forward pass, and the op names in its training-mode
    parameter gradient's."""
    x = jnp.zeros((2, 48, 48, 1))
    variables = compiled_init(model, x)
    lowered = jax.jit(lambda v, x: model.apply(v, x, train=False)[0]).lower(variables, x)
    forward = lowered.compile(_USERS_EMITTERS).as_text()

    def loss(params):
        (logits, _), _ = model.apply(
            {"params": params, "batch_stats": variables["batch_stats"]},
            x,
            train=True,
            mutable=["batch_stats"],
        )
        return jnp.sum(logits)

    backward = jax.jit(jax.grad(loss)).lower(variables["params"]).compile(_USERS_EMITTERS).as_text()
    return forward, set(re.findall(r"= \S+ ([a-z][\w\-]*)\(", backward))


def test_on_a_cpu_backend_models_are_built_with_the_cpu_kernels():
    assert jax.default_backend() == "cpu" and cpu.kernels_enabled()
    ops = cpu.model_ops()
    assert set(ops) == {"conv", "max_pool"} and ops["max_pool"] is cpu.kernels.max_pool
    assert cpu.model_ops()["conv"] is ops["conv"]  # the same objects every call
    model = create_model("cnn", variant="tiny", **ops)
    # Built twice, the models compare equal (jit's cache keys on them).
    assert model == create_model("cnn", variant="tiny", **cpu.model_ops())
    forward, backward = _compiled_cnn(model)
    assert forward.count("convolution(") == 2  # of 3: the grayscale stem is the fused multiply-adds
    assert not backward & {"select-and-scatter", "scatter"}  # the pools' saved-argmax gradient


def test_switched_off_the_families_use_stock_flax_ops(monkeypatch):
    monkeypatch.setenv(cpu.SWITCH_ENV, "0")
    assert not cpu.kernels_enabled() and cpu.model_ops() == {}
    model = create_model("cnn", variant="tiny", **cpu.model_ops())
    assert model.conv is nn.Conv and model.max_pool is nn.max_pool
    forward, backward = _compiled_cnn(model)
    assert forward.count("convolution(") == 3
    # nn.max_pool's gradient: select-and-scatter, which XLA:CPU rewrites into reduce-window + scatter.
    assert backward & {"select-and-scatter", "scatter"}


def test_config_options_exclude_the_seam():
    options = models.option_fields("cnn")
    assert "stage_widths" in options and not options & {"conv", "max_pool"}
    with pytest.raises(ValueError, match="are not options of") as error:
        create_model("cnn", variant="tiny", bogus=1)
    assert "max_pool" not in str(error.value)


_YNN_FUSED_OPS = r"""
import re
def ynn_fused_ops(hlo):
    ops = set()
    for match in re.finditer(r"calls=%([\w.\-]+).*__ynn_fusion", hlo):
        start = hlo.index(f"%{match.group(1)} ")
        ops.update(re.findall(r"= \S+ ([a-z][\w\-]*)\(", hlo[start : hlo.index("\n}\n", start)]))
    return sorted(ops)
"""

_CONFIGURE = (
    _YNN_FUSED_OPS
    + r"""
import json, os, warnings
from ml_collections import ConfigDict
from fer_flax import cpu, runtime
cpu.configure_process()
runtime.start(ConfigDict(dict(cpu_devices=0, batch_size=8, eval_batch_size=8)))  # a second time
flags = os.environ["XLA_FLAGS"]
import jax, jax.numpy as jnp
x, a, b = jnp.ones((64, 24, 24, 8)), jnp.ones((256, 64)), jnp.ones((64, 64))
hlo = jax.jit(lambda x, a, b: (jnp.mean(x, axis=(0, 1, 2)), a @ b)).lower(x, a, b).compile()
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    os.environ["XLA_FLAGS"] = ""
    late = cpu.compiler.add_to_xla_flags()  # the backend has started: too late, and it says so
print(json.dumps(dict(
    flags=flags, devices=jax.device_count(), fused=ynn_fused_ops(hlo.as_text()),
    allocator=cpu.allocator.in_effect(), late=late, late_flags=os.environ["XLA_FLAGS"],
    warned=[str(w.message) for w in caught],
)))
"""
)

_UNTOUCHED = r"""
import json, os
from fer_flax import cpu, models
before = os.environ.get("XLA_FLAGS", "")
cpu.configure_process()
after = os.environ.get("XLA_FLAGS", "")
print(json.dumps(dict(before=before, after=after, allocator=cpu.allocator.in_effect())))
"""


def _python(code: str, **env_overrides: str) -> dict:
    unset = ("XLA_FLAGS", cpu.SWITCH_ENV, "JAX_PLATFORMS", cpu.allocator.KEEP_DEFAULTS_ENV)
    env = {k: v for k, v in os.environ.items() if k not in unset}
    env.update(env_overrides)
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_configure_process_sets_the_compiler_option_once_keeping_other_flags():
    device_count = "--xla_force_host_platform_device_count=2"
    got = _python(_CONFIGURE, XLA_FLAGS=device_count)
    assert got["flags"] == f"{device_count} --xla_cpu_experimental_ynn_fusion_type=LIBRARY_FUSION_TYPE_REDUCE"
    assert got["devices"] == 2
    # YNNPACK takes the BatchNorm-like reduction and leaves the dot to XLA (by default it takes both).
    assert "reduce" in got["fused"] and "dot" not in got["fused"], got["fused"]
    assert got["allocator"] is (sys.platform == "linux")
    assert got["late"] is False and got["late_flags"] == ""
    assert any("cannot take effect" in message for message in got["warned"]), got["warned"]


@pytest.mark.parametrize(
    "env",
    [
        {cpu.SWITCH_ENV: "0", "XLA_FLAGS": "--xla_force_host_platform_device_count=2"},
        {"JAX_PLATFORMS": "cuda", "XLA_FLAGS": "--xla_force_host_platform_device_count=2"},
        # A user's own value of the option is kept.
        {"XLA_FLAGS": "--xla_cpu_experimental_ynn_fusion_type="},
    ],
    ids=["switched-off", "accelerator", "user-set"],
)
def test_configure_process_leaves_xla_flags_alone(env):
    got = _python(_UNTOUCHED, **env)
    assert got["after"] == got["before"] == env["XLA_FLAGS"]
    if "XLA_FLAGS" in env and len(env) == 1:
        assert got["allocator"] is (sys.platform == "linux")  # the allocator still applies
    else:
        assert got["allocator"] is False


def test_the_option_is_only_set_on_tested_jaxlib_versions():
    assert cpu.compiler.supported("0.10.2")
    assert not cpu.compiler.supported("0.11.0") and not cpu.compiler.supported("0.9.9")
