"""Every family through the real training code: the smallest variant learns a fixed batch of synthetic
faces and every parameter receives gradient, and each family's experiment config trains end to end."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fer_flax import models
from fer_flax.core import model as model_lib
from fer_flax.core import optim, parallel
from fer_flax.core import state as model_state
from fer_flax.data.synthetic import generate_synthetic
from fer_flax.training import loop as train
from fer_flax.training import steps
from tests.helpers.models import init_shapes

# Every variant's parameter count with 7 classes, pinned: a change to any architecture shows up here
# (and in the README table, which benchmarks/model_table.py regenerates). The per-family test files
# derive the smaller variants' counts by hand.
PINNED_PARAMETER_COUNTS = {
    ("cnn", "tiny"): 319_351,
    ("cnn", "small"): 1_274_599,
    ("cnn", "medium"): 7_049_543,
    ("cnn", "large"): 13_069_511,
    ("cnn", "plain"): 1_274_375,
    ("cnn", "small_bn"): 1_274_855,
    ("cnn", "cpu"): 980_455,
    ("cnn", "cpu_fast"): 980_455,  # the same parameters as "cpu", pooled before BatchNorm
    ("beefy", "cpu"): 525_111,
    ("beefy", "small"): 515_943,
    ("beefy", "wide"): 8_070_791,
    ("beefy", "base"): 8_218_055,
    ("beefy", "deep"): 8_259_799,
    ("beefy", "large"): 14_488_775,
    ("resnet", "resnet10_half"): 1_227_623,
    ("resnet", "resnet18_half_s2"): 2_796_263,
    ("resnet", "resnet18_half"): 2_796_263,
    ("resnet", "resnet10"): 4_900_551,
    ("resnet", "resnet18_imagenet_stem"): 11_173_831,
    ("resnet", "resnet18_s2"): 11_171_271,
    ("resnet", "resnet18"): 11_171_271,
    ("resnet", "resnet18_complex"): 11_564_231,
    ("resnet", "resnet34"): 21_279_431,
    ("resnet", "resnet34_complex"): 21_672_391,
    ("googlenet", "inception_v1_bn_tiny"): 421_165,
    ("googlenet", "inception_v1_bn_tiny_s2"): 421_165,  # bn_tiny's parameters, a stride-2 stem
    ("googlenet", "inception_v1_tiny"): 650_705,
    ("googlenet", "inception_v1_bn_small"): 1_669_093,
    ("googlenet", "inception_v1_noaux"): 5_971_895,
    ("googlenet", "inception_v1_bn"): 8_218_165,
    ("googlenet", "inception_v1"): 10_315_973,
    ("vit", "vit_micro"): 74_055,
    ("vit", "vit_spt_lsa_micro"): 83_251,
    ("vit", "vit_hybrid_micro"): 83_767,
    ("vit", "cct_2_3x2"): 292_424,
    ("vit", "vit_cpu"): 544_135,
    ("vit", "vit_spt_lsa_tiny"): 2_713_427,
    ("vit", "cct_7_3x1"): 3_836_680,
    ("vit", "vit_tiny_p6_gap"): 5_359_495,
    ("vit", "vit_tiny_p4"): 5_371_207,
    ("vit", "vit_hybrid_small"): 20_047_047,
    ("vit", "vit_small_p6"): 21_336_199,
    ("vit", "vit_small_p4"): 21_359_239,
}


SMOKE_CONFIGS = {
    "cnn": "simple_cnn",
    "beefy": "beefy",
    "resnet": "resnet18",
    "googlenet": "googlenet_aux",
    "vit": "vit_small",
}


def _load_config(module_name: str, arg: str):
    import importlib

    return importlib.import_module(f"configs.{module_name}").get_config(arg)


@pytest.fixture(scope="module")
def fixed_batch():
    # 8 faces (2 per simulated device; BatchNorm's statistics are over the whole batch): each family
    # fits them within 10 Adam steps. The widest smallest variant (beefy "small", full-resolution
    # convolutions) makes these steps the test's main cost.
    faces = generate_synthetic(8, 0, 0, seed=3)["train"]
    return {"image": faces.images[..., None], "label": faces.labels.astype(np.int32)}


# GoogLeNet and the ViTs have the same check in their own files, on cut-down nets that compile faster
# (test_models_googlenet.py: every branch and aux head; test_models_vit.py: every parameter).
@pytest.mark.slow
@pytest.mark.parametrize("family", ("cnn", "beefy", "resnet"))
def test_smallest_variant_fits_a_fixed_batch(family, fixed_batch):
    config = _load_config(SMOKE_CONFIGS[family], "smoke")
    config.model_name, config.model.variant = family, models.variants(family)[0]
    for key in ("pad_crop", "rotate_degrees", "erase_prob"):
        config.augment[key] = 0
    config.augment.flip = False
    config.augment.random_resized_crop = False
    config.label_smoothing = 0.0
    config.optim.update(name="adamw", lr=3e-3, weight_decay=0.0, schedule="constant", warmup_epochs=0.0)
    config.optim.grad_clip_norm = 1.0
    mesh = parallel.make_mesh()
    schedule = optim.create_learning_rate_schedule(config.optim, steps_per_epoch=1, total_steps=1)
    state = model_state.create_train_state(
        model_lib.create_model(config),
        optim.create_optimizer(config.optim, schedule),
        jax.random.key(0),
        mesh,
    )
    step = jax.jit(functools.partial(steps.train_step, config=config, schedule=schedule), donate_argnums=0)
    batch = parallel.to_global_batch(fixed_batch, mesh)
    initial_params = jax.device_get(state.params)
    accuracies = []
    for _ in range(10):
        state, m = step(state, batch, jax.random.key(1))
        accuracies.append(m["accuracy"])
    accuracies = [float(a) for a in jax.device_get(accuracies)]
    assert max(accuracies[-3:]) > 0.9, accuracies
    # With Adam and no weight decay a parameter moves only if some gradient reached it.
    unchanged = jax.tree_util.tree_map_with_path(
        lambda path, before, after: jax.tree_util.keystr(path) if np.array_equal(before, after) else None,
        initial_params,
        jax.device_get(state.params),
    )
    frozen = jax.tree.leaves(unchanged)
    assert not frozen, f"no gradient reached {frozen}"


@pytest.mark.slow
@pytest.mark.parametrize("family", models.FAMILIES)
def test_family_config_trains_end_to_end(family, tmp_path):
    config = _load_config(SMOKE_CONFIGS[family], "smoke")
    assert config.model_name == family
    # The config as it is, on less data: 4 steps of 16, one evaluation of 2 batches. What is tested is
    # that the family's config file builds, trains, evaluates and checkpoints; the steps are the cost.
    config.data.update(synthetic_train=64, synthetic_val=32, synthetic_test=32)
    config.batch_size, config.eval_batch_size = 16, 16
    summary = train.train_and_evaluate(config, str(tmp_path / family))
    assert summary["final_step"] >= 1
    assert summary["final_val"]["num_examples"] == config.data.synthetic_val
    assert np.isfinite(summary["final_val"]["loss"])


def test_every_config_file_builds_its_model():
    import pathlib

    for path in sorted(pathlib.Path("configs").glob("*.py")):
        if path.stem in ("__init__", "common"):
            continue
        for arg in ("", "smoke"):
            config = _load_config(path.stem, arg)
            model = model_lib.create_model(config)
            shapes = jax.eval_shape(lambda m=model: model_lib.initial_variables(m, jax.random.key(0)))
            assert "params" in shapes, path


@pytest.mark.parametrize(
    "family, variant",
    [pytest.param(f, v, id=f"{f}-{v}") for f in models.FAMILIES for v in models.variants(f)],
)
def test_every_variant_has_its_pinned_parameter_count_and_its_logits(family, variant):
    # Every size of every family traced through initialisation and the inference forward pass
    # (every layer's shapes and dtypes), without compiling: compiling ~40 variants would cost
    # minutes on CI. The same code runs compiled, at the smallest sizes, in the fixed-batch fit above,
    # the end-to-end runs and the per-family files.
    model = models.create_model(family, variant=variant)
    shapes = init_shapes(model)
    assert (
        sum(p.size for p in jax.tree.leaves(shapes["params"])) == PINNED_PARAMETER_COUNTS[(family, variant)]
    )
    face = jax.ShapeDtypeStruct((1, 48, 48, 1), jnp.float32)
    logits, aux = jax.eval_shape(lambda v, x: model.apply(v, x, train=False), shapes, face)
    assert logits.shape == (1, 7) and logits.dtype == jnp.float32
    assert aux == {}  # extras (GoogLeNet's auxiliary logits) exist only in training


def test_every_variant_is_pinned():
    listed = {(f, v) for f in models.FAMILIES for v in models.variants(f)}
    assert listed == set(PINNED_PARAMETER_COUNTS), "a variant was added or removed: pin its count"
