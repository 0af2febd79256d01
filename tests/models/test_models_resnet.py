"""ResNet family: every variant builds and runs, its parameter count is the architecture's, stems give the
documented resolutions, mixed precision keeps float32 params and logits, and a few steps learn."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import resnet18, resnet34, resnet_complex
from fer_flax import models
from fer_flax.models import resnet
from tests.helpers.models import (
    conv_bn_params,
    count_params,
    init_shapes,
    init_variables,
    mlp_head_params,
)

SMALLEST = next(iter(resnet.VARIANTS))


def _expected_params(
    stage_sizes, widths=(64, 128, 256, 512), stem="s1", head_widths=(), num_classes=7, **_
) -> int:
    """Parameter count re-derived from the module docstring, independently of the module code."""
    n = conv_bn_params(1, widths[0], 7 if stem == "imagenet" else 3)
    cin = widths[0]
    for i, (blocks, width) in enumerate(zip(stage_sizes, widths, strict=True)):
        for j in range(blocks):
            n += conv_bn_params(cin, width, 3) + conv_bn_params(width, width, 3)
            if cin != width or (i > 0 and j == 0):
                n += conv_bn_params(cin, width, 1)  # projection shortcut
            cin = width
    return n + mlp_head_params(cin, head_widths, num_classes)


def test_smallest_variant_param_count_by_hand():
    # resnet10_half: widths 32-64-128-256, one block per stage, 3×3 stride-1 stem, 7 classes.
    #   stem     3*3*1*32 = 288            + BN 2*32 = 64                                   =     352
    #   stage1   2 * 3*3*32*32 = 18432     + 2 BN 2*32 = 128 (identity shortcut)            =  18_560
    #   stage2   3*3*32*64 = 18432 + 3*3*64*64 = 36864 + 2 BN 256 + proj 32*64 = 2048 + BN 128 = 57_728
    #   stage3   3*3*64*128 = 73728 + 3*3*128*128 = 147456 + 512 + proj 8192 + 256          = 230_144
    #   stage4   3*3*128*256 = 294912 + 3*3*256*256 = 589824 + 1024 + proj 32768 + 512      = 919_040
    #   head     256*7 + 7                                                                  =   1_799
    #   total                                                                               1_227_623
    assert SMALLEST == "resnet10_half"
    model = models.create_model("resnet", variant=SMALLEST)
    assert count_params(init_shapes(model)["params"]) == 1_227_623


def test_resnet18_and_34_match_torchvision_counts():
    # torchvision's resnet18 has 11_689_512 params with a 3-channel 7×7 stem (7*7*3*64 = 9408) and a
    # 1000-way fc (512*1000 + 1000 = 513_000). Ours has a 1-channel 3×3 stem (576) and a 7-way
    # classifier (3591): 11_689_512 - 9408 - 513_000 + 576 + 3591 = 11_171_271.
    # ResNet-34 likewise: 21_797_672 - 9408 - 513_000 + 576 + 3591 = 21_279_431.
    for variant, expected in (("resnet18", 11_171_271), ("resnet34", 21_279_431)):
        model = models.create_model("resnet", variant=variant)
        assert count_params(init_shapes(model)["params"]) == expected


@pytest.mark.parametrize("variant", list(resnet.VARIANTS))
def test_variant_param_count_matches_architecture(variant):
    model = models.create_model("resnet", variant=variant)
    shapes = init_shapes(model)
    assert count_params(shapes["params"]) == _expected_params(**resnet.VARIANTS[variant])
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(shapes["params"]))


@pytest.fixture(scope="module")
def smallest():
    """The smallest variant initialised for real, plain and with `zero_init_residual`.

    Compiling init (the RNG) dominates this file's time, so both are built in one program; with the
    same key their kernels are the same computation, which XLA shares.
    """
    model = models.create_model("resnet", variant=SMALLEST)
    zero_model = models.create_model("resnet", variant=SMALLEST, zero_init_residual=True)
    x = jnp.zeros((2, 48, 48, 1))
    variables, zero_variables = jax.jit(lambda x: (init_variables(model, x), init_variables(zero_model, x)))(
        x
    )
    return model, variables, zero_model, zero_variables


def _forward_both_modes(model, variables, x):
    eval_out = model.apply(variables, x, train=False)
    train_out, new_state = model.apply(
        variables, x, train=True, rngs={"dropout": jax.random.key(2)}, mutable=["batch_stats"]
    )
    return eval_out, train_out, new_state


@pytest.mark.parametrize("variant", list(resnet.VARIANTS))
def test_every_variant_traces_both_modes(variant):
    # Abstract evaluation only: the big variants would cost minutes of CPU to run for real.
    model = models.create_model("resnet", variant=variant)
    x = jnp.zeros((2, 48, 48, 1))
    (eval_logits, eval_aux), (train_logits, train_aux), state = jax.eval_shape(
        lambda x: _forward_both_modes(model, init_variables(model, x), x), x
    )
    for logits in (eval_logits, train_logits):
        assert logits.shape == (2, 7)
        assert logits.dtype == jnp.float32
    assert eval_aux == {} and train_aux == {}
    assert set(state) == {"batch_stats"}


@pytest.mark.xdist_group("resnet_smallest")  # shares the module's `smallest` fixture
def test_smallest_forward_is_finite_and_updates_batch_stats(smallest):
    model, variables, _, _ = smallest
    x = jax.random.normal(jax.random.key(1), (2, 48, 48, 1))
    (eval_logits, _), (train_logits, _), new_state = jax.jit(lambda v, x: _forward_both_modes(model, v, x))(
        variables, x
    )
    for logits in (eval_logits, train_logits):
        assert logits.shape == (2, 7)
        assert logits.dtype == jnp.float32
        assert bool(jnp.all(jnp.isfinite(logits)))
    # Eval mode normalises with the running statistics, train mode with the batch's: they differ.
    assert not np.allclose(eval_logits, train_logits)
    old = jax.tree.leaves(variables["batch_stats"])
    new = jax.tree.leaves(new_state["batch_stats"])
    assert len(old) == len(new) == 2 * (1 + 4 * 2 + 3)  # mean and var: stem, 2 per block, 3 projections
    assert all(not np.allclose(a, b) for a, b in zip(old, new, strict=True))


@pytest.mark.parametrize(("stem", "first", "last"), [("s1", 48, 6), ("s2", 24, 3), ("imagenet", 12, 2)])
def test_stem_sets_stage_resolutions(stem, first, last):
    model = models.create_model("resnet", variant=SMALLEST, stem=stem)
    x = jnp.zeros((1, 48, 48, 1))

    def features(x):
        variables = init_variables(model, x)
        _, state = model.apply(
            variables, x, train=False, capture_intermediates=True, mutable=["intermediates"]
        )
        return state["intermediates"]

    inter = jax.eval_shape(features, x)
    assert inter["stage1_block1"]["__call__"][0].shape == (1, first, first, 32)
    assert inter["stage4_block1"]["__call__"][0].shape == (1, last, last, 256)


def test_complex_head_layers():
    model = models.create_model("resnet", variant="resnet18_complex")
    params = init_shapes(model)["params"]
    assert params["head_dense_0"]["kernel"].shape == (512, 512)
    assert params["head_dense_1"]["kernel"].shape == (512, 256)
    assert "bias" not in params["head_dense_0"]  # BatchNorm follows
    assert params["head_bn_1"]["scale"].shape == (256,)
    assert params["classifier"]["kernel"].shape == (256, 7)


@pytest.mark.xdist_group("resnet_smallest")  # shares the module's `smallest` fixture
def test_zero_init_residual_makes_blocks_start_as_identity(smallest):
    _, variables, zero_model, zero_variables = smallest
    params, zero_params = variables["params"], zero_variables["params"]
    blocks = [k for k in params if k.startswith("stage")]
    assert len(blocks) == 4
    for block in blocks:
        assert not np.any(zero_params[block]["bn_1"]["scale"])
        assert np.all(params[block]["bn_1"]["scale"] == 1)

    # Nothing else changes: the default's params with its last gammas zeroed are the same tree.
    def zero_last_gamma(path, leaf):
        keys = [p.key for p in path]
        return jnp.zeros_like(leaf) if keys[-2:] == ["bn_1", "scale"] else leaf

    expected = jax.tree_util.tree_map_with_path(zero_last_gamma, params)
    jax.tree.map(np.testing.assert_array_equal, expected, zero_params)
    # The residual branch contributes nothing yet: the identity block passes the post-ReLU stem through.
    x = jax.random.normal(jax.random.key(1), (2, 48, 48, 1))
    _, state = jax.jit(
        lambda v, x: zero_model.apply(
            v, x, train=False, capture_intermediates=True, mutable=["intermediates"]
        )
    )(zero_variables, x)
    inter = state["intermediates"]
    stem = nn.relu(inter["stem_bn"]["__call__"][0])
    assert float(stem.max()) > 0
    np.testing.assert_allclose(inter["stage1_block1"]["__call__"][0], stem, atol=1e-6)


def test_bfloat16_computes_in_bf16_with_float32_params_and_logits():
    model = models.create_model("resnet", variant=SMALLEST, dtype="bfloat16")
    x = jnp.zeros((2, 48, 48, 1))

    def run(x):
        variables = init_variables(model, x)
        out, state = model.apply(
            variables, x, train=False, capture_intermediates=True, mutable=["intermediates"]
        )
        return variables, out, state["intermediates"]

    variables, (logits, _), inter = jax.eval_shape(run, x)
    assert logits.dtype == jnp.float32
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(variables))
    assert inter["stage4_block1"]["__call__"][0].dtype == jnp.bfloat16
    assert inter["classifier"]["__call__"][0].dtype == jnp.bfloat16


def test_rejects_unknown_variant_and_options():
    with pytest.raises(ValueError, match="resnet10_half"):
        models.create_model("resnet", variant="resnet50")
    x = jnp.zeros((1, 48, 48, 1))
    model = models.create_model("resnet", variant=SMALLEST, stem="7x7")
    with pytest.raises(ValueError, match="stem"):
        jax.eval_shape(lambda x: init_variables(model, x), x)
    model = models.create_model("resnet", variant=SMALLEST, stage_sizes=(1, 1, 1))
    with pytest.raises(ValueError, match="same length"):
        jax.eval_shape(lambda x: init_variables(model, x), x)


@pytest.mark.parametrize(
    ("config_module", "variant"),
    [(resnet18, "resnet18"), (resnet34, "resnet34"), (resnet_complex, "resnet18_complex")],
)
def test_configs(config_module, variant):
    c = config_module.get_config("")
    assert c.model_name == "resnet"
    assert c.model.variant == variant
    assert c.data.path is None
    smoke = config_module.get_config("smoke")
    assert smoke.model.variant == SMALLEST
    assert smoke.num_epochs == 1.0 and smoke.wandb.mode == "disabled"
    overrides = {k: v for k, v in smoke.model.items() if k != "variant"}
    models.create_model("resnet", variant=smoke.model.variant, **overrides)
    with pytest.raises(ValueError, match="smoke"):
        config_module.get_config("nope")


def test_resnet18_cpu_config_uses_the_cheap_variant():
    assert resnet18.get_config("cpu").model.variant == "resnet18_half_s2"
