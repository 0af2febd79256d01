"""The on-device input pipeline and several steps per call: the same sampling as Grain, exact resume,
k steps in one call against k calls of one, and 4 devices against 1."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from configs import simple_cnn
from fer_flax.core import input_pipeline, optim, parallel
from fer_flax.core import model as model_lib
from fer_flax.core import state as model_state
from fer_flax.data.splits import FER2013_TRAIN_COUNTS, NUM_CLASSES, ArraySplit
from fer_flax.data.synthetic import generate_synthetic
from fer_flax.inference import engine as inference
from fer_flax.run import trained
from fer_flax.run import workdir as workdir_lib
from fer_flax.run.interrupts import TrainingInterrupted
from fer_flax.training import device_input, multi_step
from fer_flax.training import feed as train_feed
from fer_flax.training import loop as train
from tests.helpers import fault_injection

# FER2013's imbalance scaled down 20x: N = 1431 = 3 batches of 477.
COUNTS = tuple(c // 20 for c in FER2013_TRAIN_COUNTS)
SAMPLINGS = [("none", None), ("balanced", None), ("sqrt", None), ("explicit", (1, 4, 0, 1, 1, 2, 1))]


def skewed_split() -> ArraySplit:
    labels = np.random.default_rng(0).permutation(np.repeat(np.arange(NUM_CLASSES), COUNTS))
    return ArraySplit(np.zeros((labels.size, 48, 48), np.uint8), labels.astype(np.int32))


@pytest.mark.parametrize(("sampling", "weights"), SAMPLINGS)
def test_device_and_grain_streams_draw_the_same_class_frequencies(sampling, weights):
    split, batch, steps = skewed_split(), 477, 15  # 7,155 draws: exactly 5 epochs
    n = len(split)
    placed = device_input.place_split(
        split, parallel.make_mesh(), seed=3, sampling=sampling, class_weights=weights, global_batch_size=batch
    )
    orders = device_input.epoch_orders(placed, 0, 5)

    @jax.jit
    def stream(placed, orders):
        return jax.vmap(lambda s: device_input.batch_indices(placed, s, orders, 0, batch))(jnp.arange(steps))

    on_device = np.asarray(stream(placed, orders)).ravel()
    grain = input_pipeline.make_train_iterator(
        split, global_batch_size=batch, seed=3, sampling=sampling, class_weights=weights
    )
    from_grain = np.concatenate([next(grain)["label"] for _ in range(steps)])
    counts = {
        "device": np.bincount(split.labels[on_device], minlength=NUM_CLASSES),
        "grain": np.bincount(from_grain, minlength=NUM_CLASSES),
    }
    if sampling == "none":  # every epoch a permutation: exact counts
        assert (np.sort(on_device.reshape(5, n), axis=1) == np.arange(n)).all()
        for drawn in counts.values():
            np.testing.assert_array_equal(drawn, 5 * np.asarray(COUNTS))
        return
    target = input_pipeline.class_sampling_weights(split.labels, sampling, weights)
    live = target > 0
    bound = stats.chi2.ppf(1 - 1e-4, live.sum() - 1)
    for name, drawn in counts.items():
        assert drawn[~live].sum() == 0, name
        expected = steps * batch * target[live]
        assert ((drawn[live] - expected) ** 2 / expected).sum() < bound, (name, drawn, expected)
    # And against each other (two-sample chi-square).
    assert stats.chi2_contingency(np.stack([counts["device"][live], counts["grain"][live]])).pvalue > 1e-4


def test_interrupted_device_run_resumes_bit_identically(tmp_path, monkeypatch):
    # 12 steps of 32 over 256 examples (8 per epoch), 2 per call; log every 4, evaluate at the end.
    # SIGTERM during the call of steps 5-6 stops at 6, mid-epoch; the rerun then draws the epoch
    # orders afresh on the device and must end exactly where the uninterrupted run does.
    over = {
        "data.pipeline": "device",
        "steps_per_call": 2,
        "num_epochs": 1.5,
        "eval_every_epochs": 2.0,
        "batch_size": 32,
        "data.synthetic_train": 256,
        "data.synthetic_val": 64,
        "eval_batch_size": 64,
        "optim.schedule": "constant",
        "optim.warmup_epochs": 0.0,
        "optim.lr": 0.01,
    }

    def config():
        c = simple_cnn.get_config("smoke")
        c.update_from_flattened_dict(over)
        return c

    reference = train.train_and_evaluate(config(), str(tmp_path / "reference"))
    work = tmp_path / "interrupted"
    with monkeypatch.context() as patched:
        patched.setattr(train, "compile_steps", train.compile_steps)  # restored on leaving
        patched.setattr(inference, "logits_fn", inference.logits_fn)
        fault_injection.install("step:5:TERM")
        with pytest.raises(TrainingInterrupted) as info:
            train.train_and_evaluate(config(), str(work))
    assert info.value.step == 6
    (state_file,) = (work / "checkpoints" / "6" / "data").glob("process_0-of-*.json")
    assert json.loads(state_file.read_text())["position"] == 6
    resumed = train.train_and_evaluate(config(), str(work))
    assert resumed["final_step"] == reference["final_step"] == 12
    assert resumed["final_val"] == reference["final_val"]
    final = {
        name: trained.restore(str(tmp_path / name), "latest").variables
        for name in ("reference", "interrupted")
    }
    for a, b in zip(jax.tree.leaves(final["reference"]), jax.tree.leaves(final["interrupted"]), strict=True):
        np.testing.assert_array_equal(a, b)


def test_a_call_sums_its_metrics_as_its_steps_would_be_logged_one_by_one():
    loss = np.array([1.0, np.nan, 3.0, 5.0], np.float32)
    grad_norm = np.array([1.0, 9.0, 2.0, 3.0], np.float32)
    per_step = [
        {"loss": loss[i], "grad_norm": grad_norm[i], "finite": np.isfinite(loss[i])} for i in range(4)
    ]
    stacked = {k: np.stack([m[k] for m in per_step]) for k in per_step[0]}
    summed = jax.device_get(multi_step.sum_steps(stacked, jnp.arange(11, 15)))
    one_by_one = multi_step.window_summary([multi_step.as_sums(11 + i, m) for i, m in enumerate(per_step)])
    in_a_call = multi_step.window_summary([summed])
    assert np.isnan(in_a_call.pop("first_bad_loss")) and np.isnan(one_by_one.pop("first_bad_loss"))
    assert in_a_call == one_by_one
    assert in_a_call["means"] == {"loss": 3.0, "grad_norm": 2.0}  # the finite steps 11, 13, 14
    assert in_a_call["skipped"] == 1 and in_a_call["first_bad_step"] == 12
    assert in_a_call["first_bad_grad_norm"] == 9.0


def test_a_workdir_keeps_its_pipeline_and_older_workdirs_read_as_grain(tmp_path):
    grain = simple_cnn.get_config("smoke")
    old = grain.to_dict()
    del old["data"]["pipeline"], old["data"]["device_layout"], old["steps_per_call"]
    workdir_lib.write_json(str(tmp_path / workdir_lib.CONFIG_FILE), {"config": old, "derived": {}})
    # Absent keys read as their defaults: no change while the config keeps them.
    assert workdir_lib.config_changes(str(tmp_path), grain) == {}
    grain.steps_per_call = 2
    assert workdir_lib.config_changes(str(tmp_path), grain) == {"steps_per_call": (1, 2)}  # the default 1
    device = simple_cnn.get_config("smoke")
    device.data.pipeline = "device"
    with pytest.raises(workdir_lib.IncompatibleWorkdirError, match=r"data.pipeline: 'grain' in the workdir"):
        workdir_lib.config_changes(str(tmp_path), device)


# ------------------------------------------------------------------------------ one call, k steps


def test_calls_end_on_every_boundary_and_resume_with_the_same_grouping():
    every_5 = lambda s: s % 5 == 0
    plan = list(multi_step.call_plan(0, 13, 4, every_5))
    # Windows 1-5, 6-10, 11-13: calls of 4, then single steps; none crosses 5, 10 or the end.
    assert plan == [(4, 4), (5, 1), (9, 4), (10, 1), (11, 1), (12, 1), (13, 1)]
    # A run stopped after any call and resumed there makes the calls the uninterrupted run made.
    for i, (stop, _) in enumerate(plan):
        assert list(multi_step.call_plan(stop, 13, 4, every_5)) == plan[i + 1 :]


def _config(pipeline: str, k: int):
    c = simple_cnn.get_config("smoke")
    # lr 0.01: at the smoke recipe's 0.1 this batch of 32 diverges in a few steps, which amplifies the
    # rounding differences between two compiled programs far beyond any tolerance.
    c.update_from_flattened_dict(
        {"data.pipeline": pipeline, "steps_per_call": k, "batch_size": 32, "optim.lr": 0.01}
    )
    return c


@pytest.fixture(scope="module")
def tiny():
    """96 synthetic faces (3 batches of 32 per epoch: the second call of 2 steps crosses an epoch)
    and the smoke CNN's model and schedule."""
    split = generate_synthetic(96, 0, 0, seed=0)["train"]
    config = _config("device", 1)
    schedule = optim.create_learning_rate_schedule(config.optim, steps_per_epoch=3, total_steps=12)
    return split, model_lib.create_model(config), schedule, {}


def _run(tiny, config, mesh, lengths):
    """The parameters after calls of `lengths` steps from the initial state, and the first batch."""
    split, model, schedule, compiled = tiny
    key = (config.data.pipeline, config.steps_per_call, mesh.devices.size)
    if key not in compiled:
        compiled[key] = train_feed.compile_train(config, schedule, split.class_counts(), mesh)
    tx = optim.create_optimizer(config.optim, schedule)
    state = model_state.create_train_state(model, tx, jax.random.key(0), mesh)
    feed = train_feed.make_feed(config, split, mesh)
    step, first_batch = 0, None
    for n in lengths:
        inputs = feed.inputs(step + 1, n)
        if first_batch is None:
            first_batch = jax.device_get(feed.batch(inputs, state))
        state, _ = compiled[key](state, inputs, jax.random.key(1))
        step += n
    return jax.device_get(state.params), first_batch


def _assert_close(a, b):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-5)


@pytest.mark.xdist_group("device_input_tiny")  # shares the module's `tiny` fixture
@pytest.mark.parametrize("pipeline", ["device", "grain"])
def test_k_steps_per_call_give_the_parameters_of_k_single_steps(tiny, pipeline):
    mesh = parallel.make_mesh()
    single, _ = _run(tiny, _config(pipeline, 1), mesh, [1, 1, 1, 1])
    in_calls, _ = _run(tiny, _config(pipeline, 2), mesh, [2, 2])
    _assert_close(in_calls, single)


@pytest.mark.xdist_group("device_input_tiny")  # shares the module's `tiny` fixture
def test_four_devices_with_the_split_sharded_give_the_result_of_one(tiny):
    config = _config("device", 2)
    config.data.device_layout = "sharded"
    four, batch4 = _run(tiny, config, parallel.make_mesh(), [2, 2])
    one, batch1 = _run(tiny, config, parallel.make_mesh(jax.devices()[:1]), [2, 2])
    assert jax.device_count() == 4
    jax.tree.map(np.testing.assert_array_equal, batch4, batch1)  # the same examples, gathered exactly
    _assert_close(four, one)
