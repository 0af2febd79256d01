"""BeefyModel: every variant builds and runs, its parameter count is the architecture's, both downsampling
modes give the documented resolutions, dropout is live only in training, mixed precision keeps float32
params and logits, and a few steps learn."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import beefy as beefy_config
from fer_flax import models
from fer_flax.models import beefy
from tests.helpers.models import (
    conv_bn_params,
    count_params,
    init_shapes,
    init_variables,
    mlp_head_params,
)

SMALLEST = next(iter(beefy.VARIANTS))


def _expected_params(
    width=64,
    num_stages=4,
    blocks_per_stage=1,
    head_widths=(512, 256),
    downsample="maxpool",
    pooling="avg",
    num_classes=7,
    **_,
) -> int:
    """Parameter count re-derived from the module docstring, independently of the module code."""
    blocks = (
        (blocks_per_stage,) * num_stages if isinstance(blocks_per_stage, int) else tuple(blocks_per_stage)
    )
    n = conv_bn_params(1, width, 3)  # widen conv of stage 1
    cin, size = width, 48
    for i in range(num_stages):
        w = width * 2**i
        if i > 0:
            size //= 2
            if downsample == "maxpool":
                n += conv_bn_params(cin, w, 3)  # widen conv before the pool
                cin = w
        for _ in range(blocks[i]):
            n += conv_bn_params(cin, w, 3) + conv_bn_params(w, w, 3)
            if cin != w:
                n += conv_bn_params(cin, w, 1)  # projection skip of a strided block
            cin = w
    features = cin if pooling == "avg" else cin * size * size
    return n + mlp_head_params(features, head_widths, num_classes)


def test_smallest_variant_param_counts_by_hand():
    # small: width 32, 3 stages (32-64-128), 1 block each, head (256,), 7 classes, max-pool downsampling.
    #   stem (widen)  3*3*1*32 = 288                  + BN 64      =     352
    #   stage1 block  2 * 3*3*32*32 = 18432           + 2 BN 128   =  18_560
    #   stage2 widen  3*3*32*64 = 18432               + BN 128     =  18_560
    #   stage2 block  2 * 3*3*64*64 = 73728           + 2 BN 256   =  73_984
    #   stage3 widen  3*3*64*128 = 73728              + BN 256     =  73_984
    #   stage3 block  2 * 3*3*128*128 = 294912        + 2 BN 512   = 295_424
    #   head          128*256 = 32768 (no bias)       + BN 512     =  33_280
    #   classifier    256*7 + 7                                    =   1_799
    #   total                                                        515_943
    assert SMALLEST == "small"
    model = models.create_model("beefy", variant=SMALLEST)
    assert count_params(init_shapes(model)["params"]) == 515_943
    # Strided downsampling drops the widen convs and adds a strided first block with a 1×1 skip:
    #   stage2 block  3*3*32*64 + 3*3*64*64 = 55296 + 2 BN 256 + proj 32*64 = 2048 + BN 128 =  57_728
    #   stage3 block  3*3*64*128 + 3*3*128*128 = 221184 + 512 + proj 8192 + 256             = 230_144
    #   total  352 + 18_560 + 57_728 + 230_144 + 33_280 + 1_799                             = 341_863
    model = models.create_model("beefy", variant=SMALLEST, downsample="strided")
    assert count_params(init_shapes(model)["params"]) == 341_863
    # Flattening the final 12×12×128 map instead of pooling it: the head Dense grows from 128*256 to
    # 12*12*128*256 = 4_718_592 weights, so 515_943 - 32_768 + 4_718_592 = 5_201_767.
    model = models.create_model("beefy", variant=SMALLEST, pooling="flatten")
    assert count_params(init_shapes(model)["params"]) == 5_201_767


@pytest.mark.parametrize("variant", list(beefy.VARIANTS))
def test_variant_param_count_matches_architecture(variant):
    model = models.create_model("beefy", variant=variant)
    shapes = init_shapes(model)
    assert count_params(shapes["params"]) == _expected_params(**beefy.VARIANTS[variant])
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(shapes["params"]))


def test_variants_are_ordered_and_sized_as_documented():
    counts = {
        v: count_params(init_shapes(models.create_model("beefy", variant=v))["params"])
        for v in beefy.VARIANTS
    }
    assert list(counts.values()) == sorted(counts.values())
    assert counts["small"] < 1_000_000
    # base, wide and deep are iso-parameter shape comparisons, all in the 5-15M range.
    for v in ("base", "wide", "deep", "large"):
        assert 5_000_000 < counts[v] < 15_000_000, (v, counts[v])
    assert counts["large"] > 1.5 * counts["base"]


def _forward_both_modes(model, variables, x, dropout_key):
    eval_out = model.apply(variables, x, train=False)
    train_out, new_state = model.apply(
        variables, x, train=True, rngs={"dropout": dropout_key}, mutable=["batch_stats"]
    )
    return eval_out, train_out, new_state


@pytest.mark.parametrize("variant", list(beefy.VARIANTS))
def test_every_variant_traces_both_modes(variant):
    # Abstract evaluation only: the big variants would cost minutes of CPU to run for real.
    model = models.create_model("beefy", variant=variant)
    x = jnp.zeros((2, 48, 48, 1))
    (eval_logits, eval_aux), (train_logits, train_aux), state = jax.eval_shape(
        lambda x: _forward_both_modes(model, init_variables(model, x), x, jax.random.key(2)), x
    )
    for logits in (eval_logits, train_logits):
        assert logits.shape == (2, 7)
        assert logits.dtype == jnp.float32
    assert eval_aux == {} and train_aux == {}
    assert set(state) == {"batch_stats"}


@pytest.fixture(scope="module")
def smallest():
    """The smallest variant initialised for real once (compiling init dominates this file's time)."""
    model = models.create_model("beefy", variant=SMALLEST)
    variables = jax.jit(lambda x: init_variables(model, x))(jnp.zeros((2, 48, 48, 1)))
    return model, variables


def test_smallest_forward_is_finite_dropout_live_only_in_training(smallest):
    model, variables = smallest
    x = jax.random.normal(jax.random.key(1), (2, 48, 48, 1))

    @jax.jit
    def run(variables, x):
        first = _forward_both_modes(model, variables, x, jax.random.key(2))
        (eval_again, _), (train_other_key, _), _ = _forward_both_modes(model, variables, x, jax.random.key(3))
        return first, eval_again, train_other_key

    ((eval_logits, _), (train_logits, _), new_state), eval_again, train_other_key = run(variables, x)
    for logits in (eval_logits, train_logits):
        assert logits.shape == (2, 7)
        assert logits.dtype == jnp.float32
        assert bool(jnp.all(jnp.isfinite(logits)))
    np.testing.assert_array_equal(eval_logits, eval_again)
    # Same batch statistics, different dropout masks.
    assert not np.allclose(train_logits, train_other_key)
    old = jax.tree.leaves(variables["batch_stats"])
    new = jax.tree.leaves(new_state["batch_stats"])
    assert len(old) == len(new) == 2 * (1 + 2 + 2 * 3 + 1)  # stem, 2 widen, 2 per block, head
    assert all(not np.allclose(a, b) for a, b in zip(old, new, strict=True))


@pytest.mark.parametrize("downsample", ["maxpool", "strided"])
def test_downsampling_halves_resolution_per_stage(downsample):
    model = models.create_model("beefy", variant=SMALLEST, downsample=downsample)
    x = jnp.zeros((1, 48, 48, 1))

    def features(x):
        _, state = model.apply(
            init_variables(model, x), x, train=False, capture_intermediates=True, mutable=["intermediates"]
        )
        return state["intermediates"]

    inter = jax.eval_shape(features, x)
    for i, (size, width) in enumerate([(48, 32), (24, 64), (12, 128)]):
        out = inter[f"stage{i + 1}_block1"]["__call__"][0]
        assert out.shape == (1, size, size, width)
    assert ("stage2_widen" in inter) == (downsample == "maxpool")


def test_options_activation_and_per_stage_blocks():
    x = jnp.zeros((1, 48, 48, 1))
    model = models.create_model("beefy", variant=SMALLEST, activation="gelu", blocks_per_stage=(1, 2, 3))
    shapes = jax.eval_shape(lambda x: init_variables(model, x), x)
    assert "stage3_block3" in shapes["params"] and "stage1_block2" not in shapes["params"]
    expected = _expected_params(**{**beefy.VARIANTS[SMALLEST], "blocks_per_stage": (1, 2, 3)})
    assert count_params(shapes["params"]) == expected


@pytest.mark.parametrize(
    ("override", "match"),
    [
        ({"activation": "swish2"}, "activation"),
        ({"downsample": "avgpool"}, "downsample"),
        ({"pooling": "max"}, "pooling"),
        ({"blocks_per_stage": (1, 1)}, "num_stages"),
    ],
)
def test_rejects_bad_options(override, match):
    model = models.create_model("beefy", variant=SMALLEST, **override)
    x = jnp.zeros((1, 48, 48, 1))
    with pytest.raises(ValueError, match=match):
        jax.eval_shape(lambda x: init_variables(model, x), x)


def test_rejects_unknown_variant():
    with pytest.raises(ValueError, match="small"):
        models.create_model("beefy", variant="huge")


def test_bfloat16_computes_in_bf16_with_float32_params_and_logits():
    model = models.create_model("beefy", variant=SMALLEST, dtype="bfloat16")
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
    assert inter["stage3_block1"]["__call__"][0].dtype == jnp.bfloat16
    assert inter["head_bn_0"]["__call__"][0].dtype == jnp.bfloat16
    assert inter["classifier"]["__call__"][0].dtype == jnp.bfloat16


def test_configs():
    c = beefy_config.get_config("")
    assert c.model_name == "beefy"
    assert c.model.variant == "base"
    assert c.data.path is None
    smoke = beefy_config.get_config("smoke")
    assert smoke.model.variant == SMALLEST
    assert smoke.num_epochs == 1.0 and smoke.wandb.mode == "disabled"
    assert smoke.data.synthetic_train == 256 and smoke.batch_size == 32
    with pytest.raises(ValueError, match="smoke"):
        beefy_config.get_config("nope")
