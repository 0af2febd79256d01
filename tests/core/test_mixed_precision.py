"""config.dtype='bfloat16': bf16 compute; float32 parameters, optimizer state, BatchNorm stats and loss."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import simple_cnn
from fer_flax import models
from fer_flax.core import model as model_lib
from fer_flax.core import optim, parallel
from fer_flax.core import state as model_state
from fer_flax.data.synthetic import generate_synthetic
from fer_flax.training import steps

STEPS = 30


def fixed_problem_config(dtype: str, model_name: str = "cnn", variant: str = "tiny"):
    c = simple_cnn.get_config("smoke")
    c.model_name, c.model.variant, c.dtype = model_name, variant, dtype
    c.label_smoothing = 0.0
    c.augment.pad_crop, c.augment.flip, c.augment.rotate_degrees = 0, False, 0.0
    c.optim.schedule, c.optim.warmup_epochs, c.optim.lr = "constant", 0.0, 0.01
    return c


def floating_dtypes(tree) -> set[str]:
    return {str(x.dtype) for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.floating)}


def _setup(config, mesh):
    model = model_lib.create_model(config)
    schedule = optim.create_learning_rate_schedule(config.optim, steps_per_epoch=10, total_steps=STEPS)
    state = model_state.create_train_state(
        model, optim.create_optimizer(config.optim, schedule), jax.random.key(0), mesh
    )
    return state, functools.partial(steps.train_step, config=config, schedule=schedule)


@pytest.fixture(scope="module")
def fixed_batch():
    split = generate_synthetic(32, 0, 0, seed=0)["train"]
    return {"image": split.images[:, :, :, None], "label": split.labels.astype(np.int32)}


def test_bfloat16_training_tracks_float32_and_keeps_float32_state(fixed_batch):
    mesh = parallel.make_mesh(jax.devices()[:1])  # precision, not sharding, is under test here
    batch = parallel.to_global_batch(fixed_batch, mesh)
    losses, states = {}, {}
    for dtype in ("float32", "bfloat16"):
        state, step_fn = _setup(fixed_problem_config(dtype), mesh)
        step = jax.jit(step_fn)
        trace = []
        for _ in range(STEPS):
            state, metrics = step(state, batch, jax.random.key(1))
            assert metrics["loss"].dtype == jnp.float32
            trace.append(float(metrics["loss"]))
        losses[dtype], states[dtype] = np.array(trace), state

    f32, bf16 = losses["float32"], losses["bfloat16"]
    assert not np.array_equal(f32, bf16), "bf16 run is bit-identical to float32: dtype had no effect"
    assert f32[-1] < f32[0] / 10 and bf16[-1] < bf16[0] / 10  # both actually learn the batch
    # Measured: largest per-step gap 0.08 (early, loss ~1.6), final losses ~0.004 apart by 1e-4.
    assert np.max(np.abs(bf16 - f32)) < 0.15, np.abs(bf16 - f32)
    assert abs(bf16[-1] - f32[-1]) < 0.01

    state = states["bfloat16"]
    assert floating_dtypes(state.params) == {"float32"}
    assert floating_dtypes(state.batch_stats) == {"float32"}
    assert floating_dtypes(state.opt_state) == {"float32"}
    # The convolutions really run in bf16 (the model casts its input), only the logits come back f32.
    jaxpr = str(
        jax.make_jaxpr(functools.partial(state.apply_fn, train=False))(
            {"params": state.params, "batch_stats": state.batch_stats}, jnp.zeros((2, 48, 48, 1))
        )
    )
    assert "conv_general_dilated" in jaxpr and "bf16[2,48,48,16]" in jaxpr


@pytest.mark.parametrize("family", models.FAMILIES)
def test_every_family_keeps_float32_state_under_bfloat16(family, fixed_batch):
    """Shapes and dtypes only (jax.eval_shape): a bf16 step leaves every stored number float32."""
    try:
        variant = models.variants(family)[0]
    except ValueError as e:  # a family not in this version yet
        pytest.skip(str(e))
    config = fixed_problem_config("bfloat16", family, variant)
    model = model_lib.create_model(config)
    tx = optim.create_optimizer(
        config.optim, optim.create_learning_rate_schedule(config.optim, steps_per_epoch=10, total_steps=STEPS)
    )

    def init_and_step(rng, batch):
        variables = model_lib.initial_variables(model, rng)
        state = model_state.TrainState.create(
            apply_fn=model.apply,
            params=variables["params"],
            batch_stats=variables.get("batch_stats", {}),
            tx=tx,
        )
        new_state, metrics = steps.train_step(state, batch, rng, config=config, schedule=lambda step: 0.01)
        logits, _ = model.apply(variables, batch["image"].astype(jnp.float32), train=False)
        return new_state, metrics, logits

    batch = {k: v[:4] for k, v in fixed_batch.items()}
    state, metrics, logits = jax.eval_shape(init_and_step, jax.random.key(0), batch)
    assert floating_dtypes(state.params) == {"float32"}
    assert floating_dtypes(state.opt_state) == {"float32"}
    assert floating_dtypes(state.batch_stats) <= {"float32"}  # ViTs have no BatchNorm
    assert metrics["loss"].dtype == jnp.float32 and logits.dtype == jnp.float32
