"""Plain CNNs: per-stage conv counts and the BatchNorm head (the CPU recipe's net)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fer_flax.models import create_model
from tests.helpers.models import compiled_init, conv_bn_params, count_params, init_shapes, mlp_head_params


def test_cpu_variant_parameter_count_by_hand():
    # Four conv-BN stages 1→32→64→128→256 at 48, 24, 12, 6; four 2x2 pools leave 3x3x256 = 2304
    # features; head Dense(256, no bias) → BN → ReLU → Dense(7).
    convs = conv_bn_params(1, 32, 3) + conv_bn_params(32, 64, 3)
    convs += conv_bn_params(64, 128, 3) + conv_bn_params(128, 256, 3)
    expected = convs + mlp_head_params(3 * 3 * 256, (256,), 7)
    shapes = init_shapes(create_model("cnn", variant="cpu", num_classes=7))
    assert count_params(shapes["params"]) == expected == 980_455


def test_head_batch_norm_replaces_the_dense_bias_and_tracks_statistics():
    model = create_model("cnn", variant="small_bn", num_classes=7)
    x = jax.random.normal(jax.random.key(0), (8, 48, 48, 1))
    variables = compiled_init(model, x, {"params": jax.random.key(1)})
    params = variables["params"]
    assert set(params["Dense_0"]) == {"kernel"}  # BatchNorm's shift is the bias
    head_bn = [k for k in params if k.startswith("BatchNorm")][-1]
    assert params[head_bn]["scale"].shape == (256,)
    (_, _), updates = model.apply(
        variables, x, train=True, mutable=["batch_stats"], rngs={"dropout": jax.random.key(2)}
    )
    before = variables["batch_stats"][head_bn]["mean"]
    after = updates["batch_stats"][head_bn]["mean"]
    assert not np.allclose(np.asarray(before), np.asarray(after))  # the head's statistics move
    # Without the option the head is the plain Dense with a bias and no extra BatchNorm.
    plain = init_shapes(create_model("cnn", variant="small", num_classes=7))["params"]
    assert set(plain["Dense_0"]) == {"kernel", "bias"}
    assert len([k for k in plain if k.startswith("BatchNorm")]) == 3


def test_convs_per_stage_sequence_must_match_the_stages():
    per_stage = create_model("cnn", variant="small", num_classes=7, convs_per_stage=(1, 2, 1))
    uniform = create_model("cnn", variant="small", num_classes=7, convs_per_stage=1)
    extra = count_params(init_shapes(per_stage)["params"]) - count_params(init_shapes(uniform)["params"])
    assert extra == conv_bn_params(64, 64, 3)  # the second conv of the 64-wide stage
    bad = create_model("cnn", variant="small", num_classes=7, convs_per_stage=(1, 2))
    with pytest.raises(ValueError, match="one count per stage"):
        bad.init({"params": jax.random.key(0)}, jnp.zeros((1, 48, 48, 1)), train=False)


def test_pool_before_norm_is_the_same_net_with_cheaper_normalisation():
    # Without BatchNorm, ReLU and 2x2 max-pooling commute exactly: both orders give the same logits.
    x = jax.random.normal(jax.random.key(0), (4, 48, 48, 1))
    kwargs = dict(num_classes=7, batch_norm=False, convs_per_stage=(1, 2, 1, 1))
    after = create_model("cnn", variant="cpu", **kwargs)
    before = create_model("cnn", variant="cpu", pool_before_norm=True, **kwargs)
    variables = compiled_init(after, x, {"params": jax.random.key(1)})
    out_after = after.apply(variables, x, train=False)[0]
    out_before = before.apply(variables, x, train=False)[0]
    np.testing.assert_allclose(np.asarray(out_before), np.asarray(out_after), rtol=1e-5, atol=1e-5)
    # With BatchNorm (the cpu_fast variant) the parameters are those of "cpu"; the statistics of each
    # stage's BatchNorm are taken over the pooled map, so they have the same shapes too.
    fast = init_shapes(create_model("cnn", variant="cpu_fast", num_classes=7))
    slow = init_shapes(create_model("cnn", variant="cpu", num_classes=7))
    assert jax.tree.map(lambda a: a.shape, fast) == jax.tree.map(lambda a: a.shape, slow)
    model = create_model("cnn", variant="cpu_fast", num_classes=7)
    v = compiled_init(model, x, {"params": jax.random.key(1)})
    (logits, _), _ = model.apply(
        v, x, train=True, mutable=["batch_stats"], rngs={"dropout": jax.random.key(2)}
    )
    assert logits.shape == (4, 7) and np.all(np.isfinite(np.asarray(logits)))
