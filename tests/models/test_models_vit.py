"""Tests for the ViT family (plain ViT, conv-stem hybrid, CCT, SPT + LSA): fer_flax/models/vit.py.

Everything that computes runs under one `jax.jit` per model: on a small CPU, compiling one program is
much cheaper than eagerly dispatching (and compiling) each of a transformer's hundreds of small ops.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from fer_flax.core import model as model_lib
from fer_flax.models import create_model, variants, vit

# The test/CPU sizes get real forward passes; the rest are checked with eval_shape (no compute).
SMALL = ("vit_micro", "vit_spt_lsa_micro", "vit_hybrid_micro", "cct_2_3x2")
# Real bfloat16 forward passes for the flavours with their own numerics (LSA temperature and mask,
# sequence-pooling softmax); every variant's parameter dtypes are checked abstractly.
BF16_FORWARD = ("vit_spt_lsa_micro", "cct_2_3x2")
BIG = tuple(v for v in vit.VARIANTS if v not in SMALL)
RNGS = {"params": jax.random.key(0), "dropout": jax.random.key(1)}


def _images(batch: int = 2, seed: int = 0) -> jax.Array:
    return jax.random.normal(jax.random.key(seed), (batch, 48, 48, 1))


def _count(tree) -> int:
    return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(tree))


def _with_random_head(variables: dict, seed: int = 7) -> dict:
    """The head is zero-initialised, so every logit starts at 0; a random head makes the logits
    depend on the whole network, which the behavioural checks need."""
    params = dict(variables["params"])
    head = dict(params["head"])
    head["kernel"] = jax.random.normal(jax.random.key(seed), head["kernel"].shape)
    params["head"] = head
    return {**variables, "params": params}


@functools.cache
def _abstract_variables(name: str, **overrides) -> dict:
    """Shapes and dtypes of a variant's variables, without computing them."""
    model = create_model("vit", variant=name, **overrides)
    return jax.eval_shape(lambda: model.init(RNGS, jnp.zeros((1, 48, 48, 1)), train=False))


@functools.cache
def _run_small(name: str) -> dict:
    """Init + every forward pass the tests inspect for one small variant, compiled as one program."""
    model = create_model("vit", variant=name)
    bf16 = create_model("vit", variant=name, dtype="bfloat16")

    @jax.jit
    def run(x):
        variables = _with_random_head(model.init(RNGS, x, train=False))
        has_bn = "batch_stats" in variables
        eval_out, state = model.apply(variables, x, train=False, mutable=["intermediates"])
        train_out = model.apply(
            variables, x, train=True, rngs=RNGS, mutable=["batch_stats"] if has_bn else False
        )
        train_out = train_out[0] if has_bn else train_out
        out = dict(variables=variables, eval=eval_out, train=train_out, intermediates=state["intermediates"])
        if name in BF16_FORWARD:
            out["bf16"] = bf16.apply(variables, x, train=False)
        return out

    x = _images()
    return model_lib.run_once(run, x)  # cheap settings: init's random draws compile slowly


@pytest.mark.parametrize("name", SMALL)
def test_small_variant_forward(name):
    out = _run_small(name)
    for mode in ("eval", "train", "bf16"):
        if mode not in out:
            continue
        logits, aux = out[mode]
        assert logits.shape == (2, 7), mode
        assert logits.dtype == jnp.float32, mode
        assert bool(jnp.all(jnp.isfinite(logits))), mode
        assert aux == {}, mode
    # The random head makes two different images give different logits.
    assert not np.allclose(out["eval"][0][0], out["eval"][0][1])


@pytest.mark.parametrize("name", SMALL)
def test_bfloat16_compute_keeps_float32_params_and_logits(name):
    abstract = _abstract_variables(name, dtype="bfloat16")
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(abstract))
    if name not in BF16_FORWARD:
        return
    reference, bf16 = _run_small(name)["eval"][0], _run_small(name)["bf16"][0]
    assert bf16.dtype == jnp.float32
    # bfloat16 keeps ~3 significant digits; the logits must still be the same function.
    scale = float(jnp.abs(reference).max())
    np.testing.assert_allclose(bf16, reference, atol=0.1 * scale)


@pytest.mark.parametrize("name", BIG)
def test_big_variant_shapes(name):
    model = create_model("vit", variant=name)
    x = jnp.zeros((2, 48, 48, 1))
    # Training mode (dropout, stochastic depth); test_model_zoo runs every variant's inference forward.
    variables = _abstract_variables(name)
    mutable = ["batch_stats"] if "batch_stats" in variables else False
    out = jax.eval_shape(
        lambda v: model.apply(v, x, train=True, rngs={"dropout": jax.random.key(1)}, mutable=mutable),
        variables,
    )
    logits, aux = out[0] if mutable else out
    assert logits.shape == (2, 7)
    assert logits.dtype == jnp.float32
    assert aux == {}


def test_variants_listed_smallest_first():
    names = variants("vit")
    assert names[0] == "vit_micro"
    assert set(SMALL) <= set(names)
    counts = [_count(_abstract_variables(name)["params"]) for name in names]
    assert counts == sorted(counts)


# Parameter counts by hand. LN(d) = 2d (scale, bias); Dense(a→b) = ab + b. A pre-LN block of width d,
# MLP width m, with qkv bias: LN + qkv (3d² + 3d) + out (d² + d) + LN + MLP (dm + m + md + d).
#
# vit_micro: d=64, depth 2, 2 heads, m=128, 6x6 patches → 64 tokens, CLS head.
#   patch conv 6·6·1·64 + 64 = 2,368; pos-emb 64·64 = 4,096; cls 64
#   block: 128 + (12,288 + 192) + (4,096 + 64) + 128 + (8,192 + 128) + (8,192 + 64) = 33,472
#   two blocks 66,944; final LN 128; head 64·7 + 7 = 455
#   total 2,368 + 4,096 + 64 + 66,944 + 128 + 455 = 74,055
# vit_spt_lsa_micro: vit_micro with the SPT embedding, no qkv bias, 2 LSA temperatures per block.
#   SPT: 6·6·5 = 180 features; LN(180) = 360; Dense 180·64 + 64 = 11,584; pos 4,096; cls 64
#   block: 128 + 12,288 + 2 + 4,160 + 128 + 16,576 = 33,282; two blocks 66,564
#   total 360 + 11,584 + 4,096 + 64 + 66,564 + 128 + 455 = 83,251
# vit_hybrid_micro: conv 3·3·1·16 = 144, BN 32, conv 3·3·16·32 = 4,608, BN 64, 1x1 conv
#   32·64 + 64 = 2,112; 48/2/2 = 12 → 144 tokens: pos 144·64 = 9,216; cls 64; blocks 66,944
#   total 144 + 32 + 4,608 + 64 + 2,112 + 9,216 + 64 + 66,944 + 128 + 455 = 83,767
#   (+ BatchNorm statistics 2·16 + 2·32 = 96, not parameters)
# cct_2_3x2: d=128, depth 2, 2 heads, m=128, no qkv bias; bias-free convs 3·3·1·64 = 576 and
#   3·3·64·128 = 73,728; two 3x3/2 pools 48 → 24 → 12: 144 tokens, pos 144·128 = 18,432, no cls
#   block: 256 + 49,152 + 16,512 + 256 + 16,512 + 16,512 = 99,200; two blocks 198,400
#   final LN 256; sequence-pool Dense 128 + 1 = 129; head 128·7 + 7 = 903
#   total 576 + 73,728 + 18,432 + 198,400 + 256 + 129 + 903 = 292,424
# vit_tiny_p4: d=192, depth 12, m=768, 4x4 patches → 144 tokens.
#   patch 16·192 + 192 = 3,264; pos 144·192 = 27,648; cls 192
#   block: 384 + 111,168 + 37,056 + 384 + 148,224 + 147,648 = 444,864; x12 = 5,338,368
#   final LN 384; head 192·7 + 7 = 1,351; total 5,371,207
# vit_small_p6: d=384, depth 12, m=1536, 6x6 patches → 64 tokens.
#   patch 36·384 + 384 = 14,208; pos 64·384 = 24,576; cls 384
#   block: 768 + 443,520 + 147,840 + 768 + 591,360 + 590,208 = 1,774,464; x12 = 21,293,568
#   final LN 768; head 384·7 + 7 = 2,695; total 21,336,199
EXPECTED_PARAMS = {
    "vit_micro": 74_055,
    "vit_spt_lsa_micro": 83_251,
    "vit_hybrid_micro": 83_767,
    "cct_2_3x2": 292_424,
    "vit_tiny_p4": 5_371_207,
    "vit_small_p6": 21_336_199,
}


@pytest.mark.parametrize("name", sorted(EXPECTED_PARAMS))
def test_param_count_matches_hand_count(name):
    shapes = _abstract_variables(name)
    assert _count(shapes["params"]) == EXPECTED_PARAMS[name]
    assert _count(shapes.get("batch_stats", {})) == (96 if name == "vit_hybrid_micro" else 0)


def test_create_model_rejects_unknown_variant_and_options():
    with pytest.raises(ValueError, match=r"vit variant='vit_huge' is not one of: .*vit_micro"):
        create_model("vit", variant="vit_huge")
    bad = [
        (dict(pool="max"), "ViT pool='max' is not one of"),
        (dict(stem="swin"), "ViT stem='swin' is not one of"),
        (dict(pos_emb="rope"), "ViT pos_emb='rope' is not one of"),
        (dict(patch_size=5), "patch_size=5 does not tile"),
        (dict(stem="cct", stem_widths=(32,)), "stem_widths ending in dim=64"),
        (dict(stem="conv", stem_widths=(16,), stem_strides=()), "same non-zero length"),
    ]
    for overrides, message in bad:
        with pytest.raises(ValueError, match=message):
            _abstract_variables("vit_micro", **overrides)


@jax.jit
def _lsa_and_plain_weights(q, k):
    masked = vit.attention_weights(q, k, scale=jnp.full((3,), 8**-0.5), mask_self=True)
    plain = vit.attention_weights(q, k, scale=8**-0.5, mask_self=False)
    return masked, plain


def test_lsa_attention_masks_the_diagonal():
    q, k = jax.random.normal(jax.random.key(0), (2, 2, 5, 3, 8))  # each [B, N, heads, head_dim]
    masked, plain = (np.asarray(w) for w in _lsa_and_plain_weights(q, k))
    assert masked.shape == plain.shape == (2, 3, 5, 5)
    np.testing.assert_array_equal(np.diagonal(masked, axis1=-2, axis2=-1), 0.0)
    assert np.all(np.diagonal(plain, axis1=-2, axis2=-1) > 0)
    np.testing.assert_allclose(masked.sum(-1), 1.0, rtol=1e-6)
    # Off the diagonal, masking only renormalises: each row is the plain row without its self term.
    off = ~np.eye(5, dtype=bool)
    renorm = plain / (1.0 - np.diagonal(plain, axis1=-2, axis2=-1))[..., None]
    np.testing.assert_allclose(masked[..., off], renorm[..., off], rtol=1e-5)


def test_lsa_model_has_temperature_and_no_self_attention():
    out = _run_small("vit_spt_lsa_micro")
    temperature = out["variables"]["params"]["block0"]["attn"]["temperature"]
    np.testing.assert_allclose(temperature, [32**-0.5] * 2)  # 2 heads of 64 / 2 = 32 dims
    for block in ("block0", "block1"):
        (weights,) = out["intermediates"][block]["attn"]["attention_weights"]
        assert weights.shape == (2, 2, 65, 65)  # 64 SPT tokens + CLS
        np.testing.assert_array_equal(jnp.diagonal(weights, axis1=-2, axis2=-1), 0.0)
    # Plain attention keeps self-attention.
    (weights,) = _run_small("vit_micro")["intermediates"]["block0"]["attn"]["attention_weights"]
    assert bool(jnp.all(jnp.diagonal(weights, axis1=-2, axis2=-1) > 0))


def test_shifted_stack_moves_content_diagonally():
    x = jax.random.uniform(jax.random.key(0), (1, 8, 8, 1)) + 1.0  # strictly positive
    stacked = np.asarray(jax.jit(vit.shifted_stack, static_argnums=1)(x, 2))
    assert stacked.shape == (1, 8, 8, 5)
    img = np.asarray(x[0, :, :, 0])
    np.testing.assert_array_equal(stacked[0, ..., 0], img)
    # Channel order: moved down-right, down-left, up-right, up-left; zeros where the frame uncovers.
    expected = []
    for dy, dx in ((2, 2), (2, -2), (-2, 2), (-2, -2)):
        moved = np.zeros_like(img)
        src = img[max(-dy, 0) : 8 - max(dy, 0), max(-dx, 0) : 8 - max(dx, 0)]
        moved[max(dy, 0) : 8 + min(dy, 0), max(dx, 0) : 8 + min(dx, 0)] = src
        expected.append(moved)
    np.testing.assert_array_equal(stacked[0, ..., 1:], np.stack(expected, axis=-1))


def test_spt_token_count_and_feature_dim():
    params = _abstract_variables("vit_spt_lsa_micro")["params"]
    # 6x6 patches of the 5-channel stack → 180 features per token, 8x8 = 64 tokens at 48x48.
    assert params["spt_norm"]["scale"].shape == (180,)
    assert params["embedding"]["kernel"].shape == (180, 64)
    assert params["pos_embedding"].shape == (1, 64, 64)
    params = _abstract_variables("vit_spt_lsa_micro", patch_size=4)["params"]
    assert params["embedding"]["kernel"].shape == (80, 64)  # 4·4·5
    assert params["pos_embedding"].shape == (1, 144, 64)  # 12x12 tokens


def test_sequence_pooling_weights_are_a_distribution():
    out = _run_small("cct_2_3x2")
    assert "cls" not in out["variables"]["params"]
    (weights,) = out["intermediates"]["seq_pool_weights"]
    assert weights.shape == (2, 144)
    assert weights.dtype == jnp.float32
    assert bool(jnp.all(weights > 0))
    np.testing.assert_allclose(weights.sum(axis=1), 1.0, rtol=1e-6)


def test_pool_and_position_embedding_choices_change_the_param_tree():
    cls, gap, seq = (_abstract_variables("vit_micro", pool=p)["params"] for p in vit.POOLS)
    assert cls["cls"].shape == (1, 1, 64)
    assert "cls" not in gap and "cls" not in seq
    assert "seq_pool" in seq and "seq_pool" not in cls
    assert _count(cls) - _count(gap) == 64
    assert _count(seq) - _count(gap) == 65
    sincos = _abstract_variables("vit_micro", pos_emb="sincos")["params"]
    assert "pos_embedding" not in sincos and _count(cls) - _count(sincos) == 64 * 64
    pe = vit.posemb_sincos_2d(8, 8, 64)
    assert pe.shape == (1, 64, 64)
    assert len({row.tobytes() for row in pe[0]}) == 64  # every position distinct


def test_drop_path_drops_whole_examples():
    x = jnp.ones((64, 5, 3))
    rng = {"dropout": jax.random.key(0)}
    np.testing.assert_array_equal(vit.DropPath(1.0).apply({}, x, train=True, rngs=rng), 0.0)
    np.testing.assert_array_equal(vit.DropPath(0.5).apply({}, x, train=False), x)
    y = vit.DropPath(0.5).apply({}, x, train=True, rngs=rng)
    per_example = np.unique(np.asarray(y).reshape(64, -1), axis=1)
    assert per_example.shape == (64, 1)  # one decision per example
    assert set(np.unique(per_example)) == {0.0, 2.0}  # dropped, or kept and rescaled by 1/keep


def test_stochastic_depth_schedule_and_rng_dependence():
    """drop_path=1.0 at depth 2: block 0 keeps rate 0 and block 1 is always skipped, so training mode
    equals a depth-1 model with block 0's weights. Dropout makes training outputs depend on the
    dropout rng; evaluation does not."""
    deep = create_model("vit", variant="vit_micro", drop_path=1.0)
    shallow = create_model("vit", variant="vit_micro", depth=1)
    noisy = create_model("vit", variant="vit_micro", drop_path=0.5, dropout=0.1)
    micro = _run_small("vit_micro")
    variables = micro["variables"]

    @jax.jit
    def run(x):
        skipped = deep.apply(variables, x, train=True, rngs={"dropout": jax.random.key(3)})[0]
        shallow_params = {k: v for k, v in variables["params"].items() if k != "block1"}
        expected = shallow.apply({"params": shallow_params}, x, train=False)[0]
        trained = jax.vmap(lambda key: noisy.apply(variables, x, train=True, rngs={"dropout": key})[0])(
            jax.random.split(jax.random.key(1))
        )
        evaluated = noisy.apply(variables, x, train=False, rngs={"dropout": jax.random.key(2)})[0]
        return skipped, expected, trained, evaluated

    skipped, expected, trained, evaluated = run(_images())
    np.testing.assert_allclose(skipped, expected, rtol=1e-4, atol=1e-3)
    assert not np.allclose(trained[0], trained[1])
    # Without training, dropout and stochastic depth are off: exactly vit_micro's eval output.
    np.testing.assert_allclose(evaluated, micro["eval"][0], rtol=1e-4, atol=1e-3)


def test_adam_steps_reduce_loss_and_reach_every_parameter():
    """A few Adam steps on one small batch through SPT, LSA and sequence pooling at once."""
    model = create_model("vit", variant="vit_spt_lsa_micro", pool="seq")
    x = _images(4, seed=1)
    labels = jnp.arange(4)
    tx = optax.adam(3e-3)

    def loss_fn(params, stats):
        variables = {"params": params, "batch_stats": stats} if stats else {"params": params}
        (logits, _), new = model.apply(variables, x, train=True, rngs=RNGS, mutable=["batch_stats"])
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
        return loss, new.get("batch_stats", {})

    @jax.jit
    def train():
        variables = model.init(RNGS, x, train=False)
        params, stats = variables["params"], variables.get("batch_stats", {})

        def step(carry, _):
            p, opt, s = carry
            (loss, s), grads = jax.value_and_grad(loss_fn, has_aux=True)(p, s)
            updates, opt = tx.update(grads, opt, p)
            return (optax.apply_updates(p, updates), opt, s), loss

        (new_params, _, _), losses = jax.lax.scan(step, (params, tx.init(params), stats), length=8)
        return params, new_params, losses

    params, new_params, losses = model_lib.run_once(train)
    assert bool(jnp.all(jnp.isfinite(losses)))
    assert float(losses[-1]) < float(losses[0]) - 0.1
    # The head starts at zero, so a leaf that never moves would mean a branch gets no gradient.
    old_leaves = jax.tree_util.tree_flatten_with_path(params)[0]
    unchanged = [
        jax.tree_util.keystr(path)
        for (path, old), new in zip(old_leaves, jax.tree.leaves(new_params), strict=True)
        if np.array_equal(old, new)
    ]
    assert unchanged == []
