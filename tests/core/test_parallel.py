"""Data parallelism: 4 devices give what 1 device gives for the same global batch; multi-host set-up."""

import functools

import jax
import numpy as np
import pytest

from configs import simple_cnn
from fer_flax import models
from fer_flax.core import optim, parallel
from fer_flax.core import state as model_state
from fer_flax.data.splits import NUM_CLASSES
from fer_flax.training import steps

STEPS = 4
GLOBAL_BATCH = 32


def _run(mesh, config, model, batches):
    """STEPS real train steps on `mesh`; returns per-step losses and the final host-side state."""
    schedule = optim.create_learning_rate_schedule(config.optim, steps_per_epoch=2, total_steps=STEPS)
    tx = optim.create_optimizer(config.optim, schedule)
    state = model_state.create_train_state(model, tx, jax.random.key(0), mesh)
    step = jax.jit(functools.partial(steps.train_step, config=config, schedule=schedule))
    rng = jax.random.key(1)
    losses = []
    for local in batches:
        batch = parallel.to_global_batch(local, mesh)
        assert len(batch["image"].addressable_shards) == mesh.devices.size
        assert batch["image"].addressable_shards[0].data.shape[0] == GLOBAL_BATCH // mesh.devices.size
        state, metrics = step(state, batch, rng)
        losses.append(float(metrics["loss"]))
    assert state.params["Dense_0"]["kernel"].sharding.is_fully_replicated
    return np.array(losses), jax.device_get({"params": state.params, "batch_stats": state.batch_stats})


def test_four_devices_match_one_device_with_the_same_global_batch():
    assert jax.device_count() == 4, "conftest sets 4 simulated CPU devices"
    config = simple_cnn.get_config("smoke")
    # BatchNorm (statistics must be global-batch values), dropout and per-example augmentation (the
    # random bits must not depend on how the batch is split) all in play.
    model = models.create_model("cnn", variant="tiny", num_classes=NUM_CLASSES, dropout=0.3)
    rng = np.random.default_rng(0)
    batches = [
        {
            "image": rng.integers(0, 256, (GLOBAL_BATCH, 48, 48, 1), dtype=np.uint8),
            "label": rng.integers(0, NUM_CLASSES, GLOBAL_BATCH).astype(np.int32),
        }
        for _ in range(STEPS)
    ]
    losses1, state1 = _run(parallel.make_mesh(jax.devices()[:1]), config, model, batches)
    losses4, state4 = _run(parallel.make_mesh(), config, model, batches)

    assert np.all(np.isfinite(losses1)) and len(set(losses1.tolist())) == STEPS
    np.testing.assert_allclose(losses4, losses1, rtol=1e-5, atol=1e-5)
    flat1 = jax.tree_util.tree_leaves_with_path(state1)
    flat4 = jax.tree_util.tree_leaves_with_path(state4)
    assert [p for p, _ in flat1] == [p for p, _ in flat4]
    assert any("batch_stats" in jax.tree_util.keystr(p) for p, _ in flat1)
    for (path, a), (_, b) in zip(flat1, flat4, strict=True):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-5, err_msg=jax.tree_util.keystr(path))


def test_indivisible_batch_names_the_numbers_to_use():
    mesh = parallel.make_mesh()
    parallel.check_batch_divisible(32, mesh)
    with pytest.raises(ValueError, match=r"config.batch_size=30 .* 4 devices .*=28 or 32"):
        parallel.check_batch_divisible(30, mesh)
    with pytest.raises(ValueError, match=r"config.eval_batch_size=2 .*=4 or 8"):
        parallel.check_batch_divisible(2, mesh, name="eval_batch_size")


# ------------------------------------------------------------------------ multi-host set-up logic

SLURM_STEP = {
    "SLURM_JOB_ID": "4242",
    "SLURM_STEP_NODELIST": "gpu[001-002]",
    "SLURM_NTASKS": "16",
    "SLURM_PROCID": "9",
    "SLURM_LOCALID": "1",
}


@pytest.mark.parametrize(
    "args, env, expected",
    [
        ((), {}, parallel.DistributedPlan("single")),
        ((), {"SLURM_NTASKS": "1", "SLURM_JOB_ID": "7"}, parallel.DistributedPlan("single")),
        (
            (),
            {
                "FER_FLAX_COORDINATOR": "10.0.0.1:1234",
                "FER_FLAX_NUM_PROCESSES": "4",
                "FER_FLAX_PROCESS_ID": "3",
            },
            parallel.DistributedPlan("explicit", "10.0.0.1:1234", 4, 3),
        ),
        # Flags win over the environment, which fills in what the flags leave out.
        (
            ("h:9", None, 1),
            {"FER_FLAX_COORDINATOR": "x:1", "FER_FLAX_NUM_PROCESSES": "2", "FER_FLAX_PROCESS_ID": "0"},
            parallel.DistributedPlan("explicit", "h:9", 2, 1),
        ),
        ((), SLURM_STEP, parallel.DistributedPlan("slurm", None, 16, 9)),
        # launch.sh's one-node mode: one process drives all GPUs even inside a SLURM allocation.
        ((), {**SLURM_STEP, "FER_FLAX_NUM_PROCESSES": "1"}, parallel.DistributedPlan("single")),
    ],
)
def test_resolve_distributed(args, env, expected):
    assert parallel.resolve_distributed(*args, env=env) == expected


@pytest.mark.parametrize(
    "args, env, message",
    [
        (("127.0.0.1:1",), {}, r"missing: --num_processes \(or FER_FLAX_NUM_PROCESSES\), --process_id"),
        ((None, 2, 2), {"FER_FLAX_COORDINATOR": "h:1"}, r"process_id must be in \[0, num_processes=2\)"),
        (("localhost", 2, 0), {}, "HOST:PORT"),
        ((), {"FER_FLAX_NUM_PROCESSES": "two"}, "FER_FLAX_NUM_PROCESSES must be an integer"),
        ((None, 1, 1), {}, "a single process has id 0"),
        (
            (),
            {k: v for k, v in SLURM_STEP.items() if k != "SLURM_STEP_NODELIST"},
            "SLURM_NTASKS=16 but this process is not inside an srun step",
        ),
    ],
)
def test_resolve_distributed_rejects_incomplete_settings(args, env, message):
    with pytest.raises(ValueError, match=message):
        parallel.resolve_distributed(*args, env=env)


@pytest.fixture
def single_process_env(monkeypatch):
    """No coordinator, process count or SLURM job in the environment."""
    for var in (
        parallel.ENV_COORDINATOR,
        parallel.ENV_NUM_PROCESSES,
        parallel.ENV_PROCESS_ID,
        "SLURM_NTASKS",
    ):
        monkeypatch.delenv(var, raising=False)


def test_single_process_initialisation_is_a_no_op(single_process_env):
    assert parallel.initialize_distributed() == parallel.DistributedPlan("single")
    assert not jax.distributed.is_initialized()
    parallel.shutdown_distributed()  # nothing to shut down: must not raise


def test_runtime_start_is_idempotent_for_a_single_process(single_process_env, monkeypatch):
    from ml_collections import ConfigDict

    from fer_flax import runtime

    # The CPU corner off: this test process's XLA_FLAGS stay as conftest set them.
    monkeypatch.setenv("FER_FLAX_CPU_TUNING", "0")
    devices = jax.device_count()
    config = ConfigDict(dict(cpu_devices=0, batch_size=8, eval_batch_size=8))
    for _ in range(2):
        runtime.start(config)
    # JAX had started: the device split leaves the devices as they were.
    assert not jax.distributed.is_initialized() and jax.device_count() == devices
    runtime.shutdown()
