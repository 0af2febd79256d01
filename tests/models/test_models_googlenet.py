"""GoogLeNet / Inception v1: Table 1 shapes, parameter counts, aux-head behaviour, dtypes, training.

Forward passes with real values run for the two quarter-width variants (one with BatchNorm, one faithful:
no BN, LRN) and a short training run for the BN one; the full-width variants are checked with
`jax.eval_shape`, which traces the same code without compiling it.
"""

from __future__ import annotations

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import googlenet as faithful_config
from configs import googlenet_aux as modified_config
from fer_flax.core import model as model_lib
from fer_flax.models import create_model, googlenet, variants

TINY_VARIANTS = ("inception_v1_bn_tiny", "inception_v1_tiny")
TABLE1_OUT_CHANNELS = {
    "3a": 256, "3b": 480,
    "4a": 512, "4b": 512, "4c": 512, "4d": 528, "4e": 832,
    "5a": 832, "5b": 1024,
}  # fmt: skip


def _key(seed: int) -> jax.Array:
    # XLA:CPU spends ~1 s compiling each threefry draw and init makes ~60 of them; the counter-free
    # "unsafe_rbg" generator compiles several times faster. Randomness quality is irrelevant here.
    return jax.random.key(seed, impl="unsafe_rbg")


def _images(batch: int = 2, seed: int = 0) -> jax.Array:
    return jax.random.normal(jax.random.key(seed), (batch, 48, 48, 1), jnp.float32)


def _count(tree) -> int:
    return sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(tree))


def _abstract_init(model, train: bool = False):
    x = jax.ShapeDtypeStruct((2, 48, 48, 1), jnp.float32)
    return jax.eval_shape(lambda k, x: model.init({"params": k, "dropout": k}, x, train=train), _key(0), x)


@functools.cache
def _variant_params(variant: str):
    """Abstract parameters of a registered variant (tracing a full-width net takes ~0.5 s: cache it)."""
    return _abstract_init(create_model("googlenet", variant=variant))["params"]


def _abstract_apply(model, variables, train: bool, **kwargs):
    x = jax.ShapeDtypeStruct((2, 48, 48, 1), jnp.float32)

    def apply(v, x, k):
        return model.apply(v, x, train=train, rngs={"dropout": k}, **kwargs)

    return jax.eval_shape(apply, variables, x, _key(1))


def _intermediate_shapes(model, train: bool = False) -> dict[str, tuple[int, ...]]:
    """Output shape of every direct submodule, traced abstractly."""
    (_, _), state = _abstract_apply(
        model,
        _abstract_init(model),
        train,
        capture_intermediates=True,
        mutable=["intermediates", "batch_stats"],
    )
    return {
        name: tuple(out["__call__"][0].shape)
        for name, out in state["intermediates"].items()
        if name != "__call__"
    }


def _materialise(abstract_variables, seed: int = 0):
    """Concrete variables for an abstract `init` result, drawn in numpy like the model's initialisers
    (He-normal kernels, zero biases, BN scale 1, running var 1). Compiling a real `init` costs XLA:CPU
    ~10 s per model here (one RNG kernel per weight), so only one test pays for it."""
    rng = np.random.default_rng(seed)

    def leaf(path, s):
        name = path[-1].key
        if name == "kernel":
            std = np.sqrt(2.0 / np.prod(s.shape[:-1]))
            return jnp.asarray(rng.normal(0.0, std, s.shape), s.dtype)
        return jnp.full(s.shape, 1.0 if name in ("scale", "var") else 0.0, s.dtype)

    return jax.tree_util.tree_map_with_path(leaf, abstract_variables)


# The faithful tiny net (no BN: its init scale decides whether 22 plain ReLU layers stay finite) runs
# the real `init`; the BN one uses numpy-drawn values in the same structure.
REAL_INIT = {"inception_v1_tiny": True, "inception_v1_bn_tiny": False}


@functools.cache
def _forward(variant: str):
    """init(train=False), then one eval and one train forward, compiled together."""
    model = create_model("googlenet", variant=variant)
    x = _images()

    @jax.jit
    def run(key, variables):
        init_key, dropout_key = jax.random.split(key)
        if variables is None:
            variables = model.init({"params": init_key}, x, train=False)
        eval_out = model.apply(variables, x, train=False)
        train_out, new_state = model.apply(
            variables, x, train=True, rngs={"dropout": dropout_key}, mutable=["batch_stats"]
        )
        return variables, eval_out, train_out, new_state

    variables = None if REAL_INIT[variant] else _materialise(_abstract_init(model))
    # Compiled with XLA's cheap settings: what is checked is the arithmetic, and the random draws of
    # an init compile slowly with full optimisation.
    return model, model_lib.run_once(run, _key(0), variables)


def test_variants_are_listed_smallest_to_largest():
    names = variants("googlenet")
    assert set(names) >= {"inception_v1", "inception_v1_noaux", "inception_v1_bn", *TINY_VARIANTS}
    counts = [_count(_variant_params(v)) for v in names]
    assert counts == sorted(counts), dict(zip(names, counts, strict=True))


def test_faithful_param_count_matches_table1_arithmetic():
    # Every conv has a bias (no BN). Module params = in·(#1×1 + #3×3red + #5×5red + poolproj)
    #   + 9·#3×3red·#3×3 + 25·#5×5red·#5×5 + (sum of the six widths, the biases):
    # stem ("fer"): 3×3·1·64+64 = 640; 1×1 64·64+64 = 4,160; 3×3·64·192+192 = 110,784  -> 115,584
    # 3a in 192: 192·(64+96+16+32) + 9·96·128 + 25·16·32 + 368   = 163,696
    # 3b in 256: 256·(128+128+32+64) + 9·128·192 + 25·32·96 + 640 = 388,736
    # 4a in 480: 480·(192+96+16+64) + 9·96·208 + 25·16·48 + 624 = 376,176
    # 4b in 512: 512·(160+112+24+64) + 9·112·224 + 25·24·64 + 648 = 449,160
    # 4c in 512: 512·(128+128+24+64) + 9·128·256 + 25·24·64 + 664 = 510,104
    # 4d in 512: 512·(112+144+32+64) + 9·144·288 + 25·32·64 + 704 = 605,376
    # 4e in 528: 528·(256+160+32+128) + 9·160·320 + 25·32·128 + 1,024 = 868,352
    # 5a in 832: 832·(256+160+32+128) + 9·160·320 + 25·32·128 + 1,024 = 1,043,456
    # 5b in 832: 832·(384+192+48+128) + 9·192·384 + 25·48·128 + 1,264 = 1,444,080
    # head 1024·7+7 = 7,175.  Sum: 5,971,895 (the paper's 6.8M less its 1000-way FC, ~1.03M).
    # Aux heads (4×4 pool): 1×1 conv in·128+128; FC 2048·1024+1024 = 2,098,176; FC 1024·7+7 = 7,175
    #   aux_4a (in 512): 65,664 + 2,098,176 + 7,175 = 2,171,015
    #   aux_4d (in 528): 67,712 + 2,098,176 + 7,175 = 2,173,063            -> 4,344,078
    params = _variant_params("inception_v1")
    aux = {k: _count(v) for k, v in params.items() if k.startswith("aux_")}
    assert aux == {"aux_4a": 2_171_015, "aux_4d": 2_173_063}
    assert _count(params) == 5_971_895 + 4_344_078
    assert _count(_variant_params("inception_v1_noaux")) == 5_971_895


def test_bn_param_counts_match_hand_arithmetic():
    # inception_v1_bn_tiny: Table 1 widths / 4, convs without bias, BatchNorm adds 2 params per channel.
    # stem: 3×3·1·16 + 32 = 176; 16·16 + 32 = 288; 3×3·16·48 + 96 = 7,008        -> 7,472
    # 3a in 48:  48·(16+24+4+8) + 9·24·32 + 25·4·8 + 2·92       = 10,392
    # 3b in 64:  64·(32+32+8+16) + 9·32·48 + 25·8·24 + 2·160    = 24,576
    # 4a in 120: 120·(48+24+4+16) + 9·24·52 + 25·4·12 + 2·156   = 23,784
    # 4b in 128: 128·(40+28+6+16) + 9·28·56 + 25·6·16 + 2·162   = 28,356
    # 4c in 128: 128·(32+32+6+16) + 9·32·64 + 25·6·16 + 2·166   = 32,172
    # 4d in 128: 128·(28+36+8+16) + 9·36·72 + 25·8·16 + 2·176   = 38,144
    # 4e in 132: 132·(64+40+8+32) + 9·40·80 + 25·8·32 + 2·256   = 54,720
    # 5a in 208: 208·(64+40+8+32) + 9·40·80 + 25·8·32 + 2·256   = 65,664
    # 5b in 208: 208·(96+48+12+32) + 9·48·96 + 25·12·32 + 2·316 = 90,808
    # head 256·7+7 = 1,799.  Main network: 377,887.
    # Aux (2×2 pool, conv 32 + BN, FC 128): in·32 + 64; FC 4·32·128+128 = 16,512; FC 128·7+7 = 903
    #   aux_4a (in 128): 4,160 + 16,512 + 903 = 21,575;  aux_4d (in 132): 21,703   -> 43,278
    assert _count(_variant_params("inception_v1_bn_tiny")) == 377_887 + 43_278
    # inception_v1_tiny is the same network without BN: each conv channel holds 1 bias instead of
    # 2 BN params (1,820 conv channels: stem 80 + modules 1,740) -> main 377,887 - 1,820 = 376,067.
    # Aux (4×4 pool, FC 256): conv in·32+32; FC 16·32·256+256 = 131,328; FC 256·7+7 = 1,799
    #   aux_4a: 4,128 + 131,328 + 1,799 = 137,255;  aux_4d: 4,256 + 131,328 + 1,799 = 137,383
    assert _count(_variant_params("inception_v1_tiny")) == 376_067 + 137_255 + 137_383
    # inception_v1_bn (full width): the faithful main network with 7,280 conv biases replaced by
    # 14,560 BN params -> 5,979,175; aux (4×4 pool, FC 512): in·128 + 256 + (2048·512+512) + 3,591
    #   aux_4a: 65,792 + 1,049,088 + 3,591 = 1,118,471;  aux_4d: 67,840 + 1,049,088 + 3,591 = 1,120,519
    assert _count(_variant_params("inception_v1_bn")) == 5_979_175 + 1_118_471 + 1_120_519


def test_module_outputs_and_branches_follow_table1():
    model = create_model("googlenet", variant="inception_v1")
    shapes = _intermediate_shapes(model)
    spatial = {"3": 24, "4": 12, "5": 6}  # the "fer" stem: 48 -> 24 before 3a, then 12, then 6
    for name, channels in TABLE1_OUT_CHANNELS.items():
        assert shapes[f"inception_{name}"] == (2, spatial[name[0]], spatial[name[0]], channels), name
    # The four branches' kernels: each module reads the previous module's concatenated output.
    params = _variant_params("inception_v1")
    cin = 192  # the stem's last conv
    for stage in googlenet.INCEPTION_V1_STAGES:
        for name, (c1, c3r, c3, c5r, c5, pp) in stage:
            kernels = {k: v["conv"]["kernel"].shape for k, v in params[f"inception_{name}"].items()}
            assert kernels == {
                "b1": (1, 1, cin, c1),
                "b3_reduce": (1, 1, cin, c3r),
                "b3": (3, 3, c3r, c3),
                "b5_reduce": (1, 1, cin, c5r),
                "b5": (5, 5, c5r, c5),
                "pool_proj": (1, 1, cin, pp),
            }, name
            assert c1 + c3 + c5 + pp == TABLE1_OUT_CHANNELS[name]
            cin = TABLE1_OUT_CHANNELS[name]


@pytest.mark.parametrize(
    "stem, sizes", [("fer", (24, 12, 6)), ("fer_hires", (48, 24, 12)), ("imagenet", (6, 3, 2))]
)
def test_stem_spatial_sizes(stem, sizes):
    shapes = _intermediate_shapes(create_model("googlenet", variant="inception_v1_bn_tiny", stem=stem))
    assert [shapes[f"inception_{m}"][1] for m in ("3b", "4e", "5b")] == list(sizes)


def test_unknown_stem_and_variant_are_rejected():
    with pytest.raises(ValueError, match="stem"):
        _abstract_init(create_model("googlenet", variant="inception_v1_bn_tiny", stem="resnet"))
    with pytest.raises(ValueError, match="inception_v1_bn_tiny"):
        create_model("googlenet", variant="inception_v2")


@pytest.mark.parametrize("variant", TINY_VARIANTS)
def test_tiny_variant_forward_train_and_eval(variant):
    model, (variables, (logits, aux), (train_logits, train_aux), new_state) = _forward(variant)
    # init(train=False) must already hold the aux heads, exactly as init(train=True) would.
    assert {"aux_4a", "aux_4d"} <= set(variables["params"])
    assert jax.tree.structure(variables) == jax.tree.structure(_abstract_init(model, train=True))
    assert logits.shape == (2, 7) and logits.dtype == jnp.float32
    assert bool(jnp.all(jnp.isfinite(logits)))
    assert aux == {}
    assert train_logits.shape == (2, 7) and train_logits.dtype == jnp.float32
    assert bool(jnp.all(jnp.isfinite(train_logits)))
    assert set(train_aux) == {"aux_logits"} and len(train_aux["aux_logits"]) == 2
    for aux_logits in train_aux["aux_logits"]:
        assert aux_logits.shape == (2, 7) and aux_logits.dtype == jnp.float32
        assert bool(jnp.all(jnp.isfinite(aux_logits)))
    if model.batch_norm:
        old, new = variables["batch_stats"], new_state["batch_stats"]
        assert not np.allclose(old["aux_4a"]["conv"]["bn"]["mean"], new["aux_4a"]["conv"]["bn"]["mean"])
    else:
        assert "batch_stats" not in variables


@pytest.mark.parametrize("variant", [v for v in variants("googlenet") if v not in TINY_VARIANTS])
def test_full_variant_output_shapes(variant):
    # Training mode (aux heads, dropout); test_model_zoo runs every variant's inference forward.
    model = create_model("googlenet", variant=variant)
    variables = _abstract_init(model)
    (logits, aux), _ = _abstract_apply(model, variables, train=True, mutable=["batch_stats"])
    assert (logits.shape, logits.dtype) == ((2, 7), jnp.float32)
    expected = 2 if model.aux_heads else 0
    assert len(aux.get("aux_logits", ())) == expected
    assert all(a.shape == (2, 7) and a.dtype == jnp.float32 for a in aux.get("aux_logits", ()))


def test_aux_heads_run_only_in_training_and_can_be_switched_off():
    model = create_model("googlenet", variant="inception_v1_bn_tiny")
    assert not any(k.startswith("aux_") for k in _intermediate_shapes(model, train=False))
    assert {"aux_4a", "aux_4d"} <= set(_intermediate_shapes(model, train=True))
    off = create_model("googlenet", variant="inception_v1", aux_heads=False)
    variables = _abstract_init(off)
    assert not any(k.startswith("aux_") for k in variables["params"])
    (_, aux), _ = _abstract_apply(off, variables, train=True, mutable=["batch_stats"])
    assert aux == {}


@pytest.mark.parametrize("variant", ["inception_v1", "inception_v1_bn"])
def test_bfloat16_compute_keeps_float32_params_and_logits(variant):
    model = create_model("googlenet", variant=variant, dtype=jnp.bfloat16)
    variables = _abstract_init(model)
    assert {leaf.dtype for leaf in jax.tree.leaves(variables)} == {jnp.dtype(jnp.float32)}
    (logits, aux), state = _abstract_apply(
        model,
        variables,
        train=True,
        capture_intermediates=True,
        mutable=["intermediates", "batch_stats"],
    )
    assert logits.dtype == jnp.float32
    assert {a.dtype for a in aux["aux_logits"]} == {jnp.dtype(jnp.float32)}
    # The compute itself is bfloat16 (the inception modules' outputs).
    assert state["intermediates"]["inception_4a"]["__call__"][0].dtype == jnp.bfloat16


def test_adaptive_avg_pool_and_lrn_match_reference():
    x = np.random.default_rng(0).normal(size=(2, 12, 12, 3)).astype(np.float32)
    # 12 -> 4 is exactly the 3×3 stride-3 average pool the aux heads use at 12×12.
    ref = x.reshape(2, 4, 3, 4, 3, 3).mean(axis=(2, 4))
    np.testing.assert_allclose(googlenet.adaptive_avg_pool(jnp.asarray(x), 4), ref, rtol=1e-5, atol=1e-6)
    # Sizes that do not divide use overlapping cells (PyTorch's rule): 3 -> 2 averages rows {0,1}, {1,2}.
    np.testing.assert_allclose(googlenet._adaptive_pool_matrix(3, 2), [[0.5, 0.5, 0.0], [0.0, 0.5, 0.5]])
    y = np.random.default_rng(1).normal(scale=30.0, size=(1, 2, 2, 7)).astype(np.float32)
    padded = np.pad(y**2, ((0, 0), (0, 0), (0, 0), (2, 2)))
    window = np.stack([padded[..., c : c + 5].sum(-1) for c in range(7)], axis=-1)
    ref_lrn = y / (1.0 + 1e-4 / 5 * window) ** 0.75
    np.testing.assert_allclose(googlenet.local_response_norm(jnp.asarray(y)), ref_lrn, rtol=1e-5, atol=1e-6)


def test_training_steps_reduce_loss_and_reach_every_branch():
    # The smallest variant cut to the modules that carry the aux heads (4a, 4d) plus 3a before the
    # pool: every kind of branch, the stem, both aux heads and the classifier are still there, and the
    # backward pass compiles in a third of the time of all nine modules. Dropout is off so that the
    # loss on a fixed batch falls deterministically.
    table = dict(name_channels for stage in googlenet.INCEPTION_V1_STAGES for name_channels in stage)
    stages = ((("3a", table["3a"]),), (("4a", table["4a"]), ("4d", table["4d"])))
    model = create_model(
        "googlenet",
        variant="inception_v1_bn_tiny",
        stages=stages,
        dropout=0.0,
        aux_dropout=0.0,
        spatial_dropout=0.0,
    )
    x = _images(8, seed=3)
    labels = jnp.arange(8) % 7
    tx = optax.adam(3e-3)

    def loss_fn(params, batch_stats):
        (logits, aux), state = model.apply(
            {"params": params, "batch_stats": batch_stats}, x, train=True, mutable=["batch_stats"]
        )
        ce = lambda z: optax.softmax_cross_entropy_with_integer_labels(z, labels).mean()
        loss = ce(logits) + 0.3 * sum(ce(a) for a in aux["aux_logits"])
        return loss, state["batch_stats"]

    @jax.jit
    def step(params, batch_stats, opt_state):
        (loss, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, batch_stats)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), batch_stats, opt_state, loss, grads

    variables = _materialise(_abstract_init(model))
    params, batch_stats = variables["params"], variables["batch_stats"]
    assert {"aux_4a", "aux_4d"} <= set(params)
    opt_state = tx.init(params)
    losses = []
    for i in range(6):
        params, batch_stats, opt_state, loss, grads = step(params, batch_stats, opt_state)
        losses.append(float(loss))
        if i == 0:
            # Every kernel of every branch, stem layer and aux head gets a gradient.
            dead = [
                jax.tree_util.keystr(path)
                for path, g in jax.tree_util.tree_leaves_with_path(grads)
                if not np.any(np.asarray(g))
            ]
            assert dead == []
    assert np.all(np.isfinite(losses))
    assert all(b < a for a, b in itertools.pairwise(losses)), losses
    assert losses[-1] < 0.4 * losses[0], losses


@pytest.mark.parametrize("config_module", [faithful_config, modified_config])
def test_configs_build_their_variants(config_module):
    for arg in ("", "smoke"):
        c = config_module.get_config(arg)
        assert c.model_name == "googlenet" and c.data.path is None
        overrides = {k: v for k, v in c.model.items() if k != "variant"}
        create_model("googlenet", variant=c.model.variant, **overrides)
    smoke = config_module.get_config("smoke")
    assert smoke.model.variant in TINY_VARIANTS and smoke.wandb.mode == "disabled"
    assert faithful_config.get_config("").model.variant == "inception_v1"
    assert modified_config.get_config("").model.variant == "inception_v1_bn"
    with pytest.raises(ValueError, match="smoke"):
        config_module.get_config("huge")
