"""Recipe state that lives in the train state: the EMA of the weights and BatchNorm statistics, and the
reduce-on-plateau learning-rate scale kept in the optimizer state. Both must be checkpointed, resumed
bit-identically, and driven by validation accuracy only; the weight-decay mask is checked here on real
models too."""

from __future__ import annotations

import functools
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import traverse_util
from flax.training import train_state

from configs import simple_cnn
from configs.common import get_base_config, use_smoke_settings
from fer_flax import models
from fer_flax.config import schema as config_schema
from fer_flax.core import ema, input_pipeline, optim
from fer_flax.core import model as model_lib
from fer_flax.core import state as model_state
from fer_flax.data import NUM_CLASSES
from fer_flax.data.synthetic import generate_synthetic
from fer_flax.inference import engine as inference
from fer_flax.inference import evaluate
from fer_flax.research import leaderboard
from fer_flax.run import checkpoint as checkpoint_lib
from fer_flax.run import tracking
from fer_flax.run import workdir as workdir_lib
from fer_flax.run.interrupts import TrainingInterrupted
from fer_flax.run.workdir import IncompatibleWorkdirError
from fer_flax.training import loop as train
from fer_flax.training import steps, validation
from tests.helpers import REPO, fault_injection
from tests.helpers.models import compiled_initial_variables

# One worker trains the module's recipe run.
pytestmark = pytest.mark.xdist_group("recipe_run")


def assert_trees_equal(a: Any, b: Any) -> None:
    flat_a, flat_b = jax.tree_util.tree_leaves_with_path(a), jax.tree_util.tree_leaves_with_path(b)
    assert [p for p, _ in flat_a] == [p for p, _ in flat_b]
    for (path, x), (_, y) in zip(flat_a, flat_b, strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=jax.tree_util.keystr(path))


def host(tree: Any) -> Any:
    return jax.tree.map(lambda x: np.array(x), jax.device_get(tree))


# ------------------------------------------------------------------------------------ EMA arithmetic


def test_ema_decay_warmup_formula():
    # min(decay, (1 + t) / (10 + t)) with t the number of updates done before this one.
    got = [float(ema.decay_at(0.999, t, warmup=True)) for t in (0, 1, 2, 8, 10_000)]
    assert got == pytest.approx([1 / 10, 2 / 11, 3 / 12, 9 / 18, 0.999], rel=1e-6)
    assert float(ema.decay_at(0.2, 5, warmup=True)) == pytest.approx(0.2)  # 6/15 = 0.4 > 0.2
    assert float(ema.decay_at(0.999, 0, warmup=False)) == pytest.approx(0.999)


def test_ema_update_by_hand_over_three_steps():
    # Exact binary fractions, so the expectations are exact in float32.
    tree = {"params": {"w": jnp.array([0.0, 8.0])}, "batch_stats": {"mean": jnp.array([4.0])}}
    news = [
        {"params": {"w": jnp.array([8.0, 0.0])}, "batch_stats": {"mean": jnp.array([0.0])}},
        {"params": {"w": jnp.array([4.0, 4.0])}, "batch_stats": {"mean": jnp.array([8.0])}},
        {"params": {"w": jnp.array([0.0, 0.0])}, "batch_stats": {"mean": jnp.array([2.0])}},
    ]
    decays = [0.5, 0.75, 0.5]
    for new, d in zip(news, decays, strict=True):
        tree = ema.update(tree, new, d)
    # w[0]: 0 -> .5*0+.5*8 = 4 -> .75*4+.25*4 = 4 -> .5*4+.5*0 = 2
    # w[1]: 8 -> 4 -> .75*4+.25*4 = 4 -> 2;  mean: 4 -> 2 -> .75*2+.25*8 = 3.5 -> .5*3.5+.5*2 = 2.75
    np.testing.assert_array_equal(tree["params"]["w"], [2.0, 2.0])
    np.testing.assert_array_equal(tree["batch_stats"]["mean"], [2.75])
    # The EMA keeps each leaf's dtype (a bfloat16 leaf stays bfloat16).
    low = ema.update({"x": jnp.ones(2, jnp.bfloat16)}, {"x": jnp.zeros(2, jnp.bfloat16)}, 0.5)
    assert low["x"].dtype == jnp.bfloat16 and float(low["x"][0]) == 0.5


def _tiny_config(**overrides):
    c = get_base_config()
    use_smoke_settings(c, "tiny")
    c.batch_size = 8
    c.optim.update(schedule="constant", warmup_epochs=0.0, lr=0.1)
    c.update_from_flattened_dict(overrides)  # dotted keys: {"optim.lr": 0.1}
    return c


def test_train_step_updates_ema_by_hand_and_not_on_a_skipped_step(monkeypatch):
    """Three real train steps of the tiny CNN (EMA decay 0.9 with warmup): step 0 uses decay
    min(.9, 1/10) = .1, step 1 is made non-finite and skipped (nothing may change, EMA included),
    step 2 uses min(.9, 3/12) = .25. Parameters and BatchNorm statistics both."""
    config = _tiny_config(**{"ema.decay": 0.9, "ema.warmup": True, "nonfinite": "skip"})
    original = steps._loss_and_grads

    def poisoned(state, *args, **kwargs):
        loss, logits, batch_stats, grads, *rest = original(state, *args, **kwargs)
        factor = jnp.where(state.step == 1, jnp.nan, 1.0)
        return loss * factor, logits, batch_stats, jax.tree.map(lambda g: g * factor, grads), *rest

    monkeypatch.setattr(steps, "_loss_and_grads", poisoned)
    model = model_lib.create_model(config)
    schedule = optim.create_learning_rate_schedule(config.optim, steps_per_epoch=4, total_steps=4)
    tx = optim.create_optimizer(config.optim, schedule)
    variables = compiled_initial_variables(model, jax.random.key(0))
    state = model_state.EmaTrainState.create(
        apply_fn=model.apply,
        params=variables["params"],
        batch_stats=variables["batch_stats"],
        tx=tx,
        ema_params=variables["params"],
        ema_batch_stats=variables["batch_stats"],
    )
    assert variables["batch_stats"], "the tiny CNN has BatchNorm: its statistics must be averaged"
    step_fn = jax.jit(functools.partial(steps.train_step, config=config, schedule=schedule))
    faces = generate_synthetic(8, 0, 0, seed=1)["train"]
    batch = {"image": jnp.asarray(faces.images[..., None]), "label": jnp.asarray(faces.labels)}
    rng = jax.random.key(3)

    def ema_of(s):
        return host({"p": s.ema_params, "b": s.ema_batch_stats})

    def raw_of(s):
        return host({"p": s.params, "b": s.batch_stats})

    expected = raw_of(state)  # the EMA starts as a copy of the initial weights
    for step, decay in ((0, 0.1), (1, None), (2, 0.25)):
        before = host(state)
        state, m = step_fn(state, batch, rng)
        assert int(state.step) == step + 1
        if decay is None:
            assert not bool(m["finite"])
            assert_trees_equal(host(state.replace(step=before.step)), before)  # EMA included
            continue
        assert bool(m["finite"])
        expected = jax.tree.map(lambda e, n, d=decay: d * e + (1 - d) * n, expected, raw_of(state))
        got = ema_of(state)
        for (path, g), e in zip(
            jax.tree_util.tree_leaves_with_path(got), jax.tree.leaves(expected), strict=True
        ):
            np.testing.assert_allclose(g, e, rtol=1e-6, atol=1e-7, err_msg=jax.tree_util.keystr(path))
    # The check can fail: after two updates with decays .1 and .25 the EMA is not the raw weights.
    pairs = zip(jax.tree.leaves(ema_of(state)), jax.tree.leaves(raw_of(state)), strict=True)
    diff = max(float(np.max(np.abs(a - b))) for a, b in pairs)
    assert diff > 1e-4


# ----------------------------------------------------------------------------- reduce on plateau


def _plateau_optim(**kw):
    c = get_base_config().optim
    c.schedule = "plateau"
    c.update(kw)
    return c


def _run_plateau(c, accuracies):
    state = optim.scale_by_plateau().init(None)
    out = []
    for acc in accuracies:
        state = optim.plateau_update(state, acc, c)
        out.append((float(state.scale), float(state.best), int(state.bad_evals), int(state.cooldown)))
    return out


def test_plateau_scale_sequence_by_hand():
    c = _plateau_optim(
        plateau_factor=0.5,
        plateau_patience=2,
        plateau_min_delta=0.0,
        plateau_cooldown=1,
        plateau_min_scale=0.1875,
    )
    accs = [0.5, 0.625, 0.625, 0.5, 0.5, 0.75, 0.25, 0.25, 0.25, 0.25, 0.25, 0.25]
    got = _run_plateau(c, accs)
    # (scale, best, bad evaluations, cooldown left) after each evaluation:
    assert got == [
        (1.0, 0.5, 0, 0),  # improves on the initial -1
        (1.0, 0.625, 0, 0),  # improves
        (1.0, 0.625, 1, 0),  # equal is not better
        (0.5, 0.625, 0, 1),  # 2nd bad in a row: x0.5, count restarts, cooldown 1
        (0.5, 0.625, 0, 0),  # in cooldown: not counted
        (0.5, 0.75, 0, 0),  # improves
        (0.5, 0.75, 1, 0),
        (0.25, 0.75, 0, 1),  # 2nd bad: x0.5
        (0.25, 0.75, 0, 0),  # cooldown
        (0.25, 0.75, 1, 0),
        (0.1875, 0.75, 0, 1),  # 0.125 clamped to min_scale 0.1875
        (0.1875, 0.75, 0, 0),
    ]


def test_plateau_min_delta_and_patience_one():
    c = _plateau_optim(
        plateau_factor=0.1,
        plateau_patience=1,
        plateau_min_delta=0.125,
        plateau_cooldown=0,
        plateau_min_scale=0.0,
    )
    # 0.5 improves on -1; 0.5625 is within min_delta of 0.5 (bad: x0.1); 0.75 > 0.5 + 0.125 improves
    # (best becomes 0.75, not 0.5625); 0.8125 is within min_delta again (x0.1).
    got = _run_plateau(c, [0.5, 0.5625, 0.75, 0.8125])
    assert [g[1] for g in got] == [0.5, 0.5, 0.75, 0.75]
    assert [g[0] for g in got] == pytest.approx([1.0, 0.1, 0.1, 0.01], rel=1e-6)


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("plateau_factor", 1.0, "plateau_factor=1.0 must be in"),
        ("plateau_patience", 0, "plateau_patience=0 must be an integer >= 1"),
        ("plateau_min_scale", 2.0, "plateau_min_scale=2.0"),
    ],
)
def test_plateau_settings_are_checked(key, value, message):
    config = get_base_config()
    config.optim = _plateau_optim(**{key: value})
    with pytest.raises(ValueError, match=message):
        config_schema.validate(config)


def test_applied_learning_rate_is_schedule_times_plateau_scale():
    """SGD without momentum or decay: the update of a unit gradient is -lr, so the optimizer's own
    output shows the learning rate it applies: warmup then optim.lr, times the plateau scale."""
    c = _plateau_optim(
        name="sgd", lr=0.4, momentum=0.0, weight_decay=0.0, warmup_epochs=1.0, plateau_patience=1
    )
    schedule = optim.create_learning_rate_schedule(c, steps_per_epoch=4, total_steps=40)
    tx = optim.create_optimizer(c, schedule)
    params = {"Dense_0": {"kernel": jnp.ones((2,)), "bias": jnp.ones((1,))}}
    grads = jax.tree.map(jnp.ones_like, params)
    opt_state = tx.init(params)
    assert optim.get_plateau(opt_state) is not None
    applied = []
    for step in range(8):
        if step == 5:  # an evaluation without improvement (best is 0.75 from step 3): scale x0.5
            plateau = optim.plateau_update(optim.get_plateau(opt_state), 0.5, c)
            opt_state = optim.set_plateau(opt_state, plateau)
        if step == 3:
            opt_state = optim.set_plateau(
                opt_state, optim.plateau_update(optim.get_plateau(opt_state), 0.75, c)
            )
        updates, opt_state = tx.update(grads, opt_state, params)
        np.testing.assert_allclose(updates["Dense_0"]["kernel"], updates["Dense_0"]["kernel"][0])
        applied.append(-float(updates["Dense_0"]["bias"][0]))
        assert float(optim.plateau_scale(opt_state)) == (0.5 if step >= 5 else 1.0)
    expected = [float(schedule(s)) * (0.5 if s >= 5 else 1.0) for s in range(8)]
    assert expected[:5] == pytest.approx([0.0, 0.1, 0.2, 0.3, 0.4])  # the warmup, then lr
    assert applied == pytest.approx(expected, rel=1e-6)
    assert applied[5:] == pytest.approx([0.2, 0.2, 0.2])
    # Without the plateau schedule there is no plateau state and the scale is 1.
    c.schedule = "constant"
    plain = optim.create_optimizer(c, schedule).init(params)
    assert optim.get_plateau(plain) is None and float(optim.plateau_scale(plain)) == 1.0


# ----------------------------------------------------------------------- checkpoints (no training)


class _OldTrainState(train_state.TrainState):
    """The train state as it was before EMA existed: what old checkpoints hold."""

    batch_stats: Any = None


def _state(model, tx, cls=None, *, ema_on: bool, seed: int = 0):
    cls = cls or (model_state.EmaTrainState if ema_on else model_state.TrainState)
    variables = compiled_initial_variables(model, jax.random.key(seed))
    extra = {}
    if ema_on:
        extra = {
            "ema_params": jax.tree.map(lambda x: x * 0.5, variables["params"]),
            "ema_batch_stats": jax.tree.map(lambda x: x + 1.0, variables["batch_stats"]),
        }
    return cls.create(
        apply_fn=model.apply,
        params=variables["params"],
        batch_stats=variables["batch_stats"],
        tx=tx,
        **extra,
    )


def _iterator():
    faces = generate_synthetic(16, 0, 0, seed=0)["train"]
    return input_pipeline.make_train_iterator(faces, global_batch_size=8, seed=0)


def test_ema_and_plateau_state_survive_a_checkpoint_round_trip(tmp_path):
    config = _tiny_config(**{"ema.decay": 0.999, "optim.schedule": "plateau"})
    model = model_lib.create_model(config)
    schedule = optim.create_learning_rate_schedule(config.optim, steps_per_epoch=4, total_steps=8)
    tx = optim.create_optimizer(config.optim, schedule)
    state = _state(model, tx, ema_on=True, seed=1)
    plateau = optim.PlateauState(
        scale=jnp.float32(0.25), best=jnp.float32(0.625), bad_evals=jnp.int32(2), cooldown=jnp.int32(1)
    )
    state = state.replace(step=jnp.int32(7), opt_state=optim.set_plateau(state.opt_state, plateau))
    ckpt = checkpoint_lib.Checkpointer(str(tmp_path))
    ckpt.save(7, state, _iterator(), val_metrics={"accuracy": 0.5}, best_weights="ema")
    ckpt.wait_until_finished()

    template = _state(model, tx, ema_on=True, seed=2)  # other values, same structure
    restored = ckpt.restore_latest(template, _iterator())
    assert_trees_equal(host(restored), host(state))
    assert isinstance(optim.get_plateau(restored.opt_state), optim.PlateauState)
    assert float(optim.get_plateau(restored.opt_state).scale) == 0.25
    ckpt.close()
    # The inference view of the full checkpoint (read as fer_flax.inference.evaluate does, by a read-only
    # Checkpointer): raw or EMA weights under the same names.
    ckpt = checkpoint_lib.Checkpointer(str(tmp_path), read_only=True)
    names = {"params": template.params, "batch_stats": template.batch_stats}
    raw, _ = ckpt.restore_model(names, "latest")
    averaged, _ = ckpt.restore_model(names, "latest", weights="ema")
    assert_trees_equal(host(raw), host({"params": state.params, "batch_stats": state.batch_stats}))
    assert_trees_equal(
        host(averaged), host({"params": state.ema_params, "batch_stats": state.ema_batch_stats})
    )
    # best/ holds the selected (EMA) weights in the plain layout, and says so.
    best, step = ckpt.restore_model(names, "best")
    assert step == 7
    assert_trees_equal(host(best), host(averaged))
    assert ckpt.best_selection() == {"weights": "ema", "val_accuracy": 0.5}
    with pytest.raises(ValueError, match="best checkpoint holds only"):
        ckpt.restore_model(names, "best", weights="ema")
    ckpt.close()


def test_state_without_ema_restores_old_checkpoints(tmp_path):
    """EMA off: the state has no EMA fields at all, so a checkpoint written by the train state of
    before EMA existed restores into it, and a new one has exactly the old leaves."""
    config = _tiny_config()
    model = model_lib.create_model(config)
    tx = optim.create_optimizer(config.optim, optax.constant_schedule(0.1))
    old = _state(model, tx, _OldTrainState, ema_on=False, seed=1)
    ckpt = checkpoint_lib.Checkpointer(str(tmp_path))
    ckpt.save(3, old, _iterator(), val_metrics=None)
    ckpt.wait_until_finished()
    template = _state(model, tx, ema_on=False, seed=2)
    assert not model_state.has_ema(template)
    assert len(jax.tree.leaves(template)) == len(jax.tree.leaves(old))
    restored = ckpt.restore_latest(template, _iterator())
    assert type(restored) is model_state.TrainState
    assert_trees_equal(host(restored.params), host(old.params))
    assert_trees_equal(host(restored.opt_state), host(old.opt_state))
    ckpt.close()
    ckpt = checkpoint_lib.Checkpointer(str(tmp_path), read_only=True)
    with pytest.raises(ValueError, match=r"holds no EMA weights"):
        ckpt.restore_model({"params": template.params, "batch_stats": template.batch_stats}, 3, weights="ema")
    ckpt.close()


# -------------------------------------------------------------------------- end to end (training)

# 128 train images, batch 64: 2 steps per epoch, 4 epochs, an evaluation every epoch (steps 2, 4, 6,
# 8), a train record every 2 steps (so every window lies between two evaluations).
EMA_DECAY = 0.9
PLATEAU = dict(
    plateau_factor=0.5,
    plateau_patience=2,
    # Impossible to beat: every evaluation counts as bad, so the scale provably drops.
    plateau_min_delta=2.0,
    plateau_cooldown=1,
    plateau_min_scale=0.2,
)
# Evaluations 1..4: bad 1 (scale 1); bad 2 -> x0.5, cooldown 1; cooldown (not counted); bad 1.
EXPECTED_SCALES = [1.0, 0.5, 0.5, 0.5]


def recipe_config(num_epochs: float = 4.0):
    c = simple_cnn.get_config("smoke")
    c.data.update(synthetic_train=128, synthetic_val=64, synthetic_test=64)
    c.batch_size, c.eval_batch_size, c.num_epochs = 64, 32, num_epochs
    c.log_every_steps = 2
    c.optim.update(schedule="plateau", warmup_epochs=0.0, **PLATEAU)
    c.ema.update(decay=EMA_DECAY, warmup=True, select="ema")
    return c


@pytest.fixture(scope="module")
def recipe_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("recipe") / "run"
    summary = train.train_and_evaluate(recipe_config(), str(workdir))
    return workdir, summary


def _val_records(workdir: Path) -> dict[int, dict]:
    return {r["step"]: r for r in tracking.read_metrics(workdir / "metrics.jsonl") if "val/accuracy" in r}


def test_ema_run_logs_both_and_best_holds_the_selected_weights(recipe_run, tmp_path):
    workdir, summary = recipe_run
    val = _val_records(workdir)
    assert sorted(val) == [2, 4, 6, 8]
    for record in val.values():
        assert record["val_ema/num_examples"] == record["val/num_examples"] == 64
        assert record["selected/weights"] == "ema"
        assert record["selected/accuracy"] == record["val_ema/accuracy"]
    # The EMA weights are a different network (the check below can tell them apart).
    assert any(abs(r["val_ema/loss"] - r["val/loss"]) > 1e-3 for r in val.values())
    assert summary["final_val_ema"]["accuracy"] == val[8]["val_ema/accuracy"]
    assert summary["final_val"]["accuracy"] == val[8]["val/accuracy"]

    best_step = max(sorted(val), key=lambda s: val[s]["val_ema/accuracy"])  # earliest on a tie
    assert summary["best_step"] == best_step
    assert summary["best_weights"] == "ema"
    assert summary["best_val_accuracy"] == val[best_step]["val_ema/accuracy"]
    ckpt = checkpoint_lib.Checkpointer(str(workdir), read_only=True)
    assert ckpt.best_selection() == {"weights": "ema", "val_accuracy": val[best_step]["val_ema/accuracy"]}
    ckpt.close()

    # inference.evaluate on best/ (unchanged layout) reproduces the logged EMA numbers, not the raw ones.
    quiet = functools.partial(evaluate.evaluate_workdirs, figures=False, announce=lambda *a: None)
    best = quiet([str(workdir)], out=str(tmp_path / "best.json"))
    assert best["weights"] == "ema" and best["checkpoint_step"] == best_step
    assert best["accuracy"] == val[best_step]["val_ema/accuracy"]
    assert best["nll"] == pytest.approx(val[best_step]["val_ema/loss"], rel=1e-4)
    # The full latest checkpoint holds both sets: --weights picks one.
    latest_ema = quiet([str(workdir)], checkpoint="latest", weights="ema", out=str(tmp_path / "e.json"))
    latest_raw = quiet([str(workdir)], checkpoint="latest", out=str(tmp_path / "r.json"))
    assert (latest_ema["weights"], latest_raw["weights"]) == ("ema", "raw")
    assert latest_ema["accuracy"] == val[8]["val_ema/accuracy"]
    assert latest_ema["nll"] == pytest.approx(val[8]["val_ema/loss"], rel=1e-4)
    assert latest_raw["accuracy"] == val[8]["val/accuracy"]
    assert latest_raw["nll"] == pytest.approx(val[8]["val/loss"], rel=1e-4)
    with pytest.raises(ValueError, match="--weights ema needs --checkpoint latest"):
        quiet([str(workdir)], weights="ema")
    # The leaderboard reports the numbers of the weights best/ holds.
    row = leaderboard.run_record(str(workdir))
    assert row["best_step"] == best_step
    assert row["best_val_accuracy"] == val[best_step]["val_ema/accuracy"]
    assert row["val_macro_f1"] == val[best_step]["val_ema/macro_f1"]


def test_evaluate_command_weights_flag(recipe_run, tmp_path):
    workdir, _ = recipe_run
    val = _val_records(workdir)
    out = tmp_path / "ema.json"
    cmd = [sys.executable, "-m", "fer_flax.evaluate", "--workdir", str(workdir), "--checkpoint", "latest"]
    r = subprocess.run(
        [*cmd, "--weights", "ema", "--out", str(out)], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert r.returncode == 0, r.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["weights"] == "ema" and report["accuracy"] == val[8]["val_ema/accuracy"]

    # A run without EMA: a clear error before anything is restored.
    plain = tmp_path / "plain"
    plain.mkdir()
    info = json.loads((workdir / "config.json").read_text())
    info["config"]["ema"]["decay"] = 0.0
    (plain / "config.json").write_text(json.dumps(info))
    with pytest.raises(ValueError, match="kept no EMA"):
        evaluate.evaluate_workdirs([str(plain)], checkpoint="latest", weights="ema", figures=False)


def test_plateau_run_scales_the_learning_rate_from_validation_accuracy(recipe_run):
    workdir, summary = recipe_run
    val = _val_records(workdir)
    assert [val[s]["plateau/scale"] for s in (2, 4, 6, 8)] == EXPECTED_SCALES
    assert [val[s]["plateau/bad_evals"] for s in (2, 4, 6, 8)] == [1, 0, 0, 1]
    assert [val[s]["plateau/cooldown"] for s in (2, 4, 6, 8)] == [0, 1, 0, 0]
    assert summary["final_lr_scale"] == 0.5
    # The logged learning rate is the applied one: lr 0.1 (constant after no warmup) times the scale
    # in force during each window (the scale changes right after an evaluation).
    train_records = {
        r["step"]: r for r in tracking.read_metrics(workdir / "metrics.jsonl") if "train/loss" in r
    }
    lrs = [train_records[s]["train/learning_rate"] for s in (2, 4, 6, 8)]
    assert lrs == pytest.approx([0.1, 0.1, 0.05, 0.05], rel=1e-6)


def test_interrupted_recipe_run_resumes_to_the_same_final_state(recipe_run, tmp_path, monkeypatch):
    """SIGTERM after step 5 (between evaluations, after the plateau cut at step 4), then the same
    command again: the EMA, the plateau state in the optimizer state and everything else end exactly
    as in the uninterrupted run."""
    reference, expected = recipe_run
    work = tmp_path / "interrupted"
    with monkeypatch.context() as patched:
        patched.setattr(train, "compile_steps", train.compile_steps)  # restored on leaving
        patched.setattr(inference, "logits_fn", inference.logits_fn)
        fault_injection.install("step:5:TERM")
        with pytest.raises(TrainingInterrupted) as info:
            train.train_and_evaluate(recipe_config(), str(work))
    assert info.value.step == 5
    summary = train.train_and_evaluate(recipe_config(), str(work))

    for key in ("final_step", "final_val", "final_val_ema", "best_step", "best_weights", "final_lr_scale"):
        assert summary[key] == expected[key], key

    def plateau_and_val(workdir):
        return {s: {k: v for k, v in r.items() if k != "time"} for s, r in _val_records(workdir).items()}

    assert plateau_and_val(work) == plateau_and_val(reference)
    # The whole final state, optimizer (with its plateau state) and EMA included, bit for bit.
    config = recipe_config()
    model = model_lib.create_model(config)
    schedule = optim.create_learning_rate_schedule(config.optim, steps_per_epoch=2, total_steps=8)
    tx = optim.create_optimizer(config.optim, schedule)
    template = _state(model, tx, ema_on=True)

    def final_state(workdir):
        ckpt = checkpoint_lib.Checkpointer(str(workdir), read_only=True)
        try:
            return host(ckpt.restore_latest(template, _iterator()))
        finally:
            ckpt.close()

    got, want = final_state(work), final_state(reference)
    assert int(got.step) == 8 and float(optim.get_plateau(want.opt_state).scale) == 0.5
    assert_trees_equal(got, want)


def test_turning_ema_or_plateau_on_for_an_existing_run_is_refused(recipe_run, tmp_path):
    workdir, _ = recipe_run
    info = json.loads((workdir / "config.json").read_text())
    other = tmp_path / "run"
    other.mkdir()
    (other / "config.json").write_text(json.dumps(info))
    config = recipe_config()
    config.ema.decay = 0.0
    config.optim.schedule = "constant"
    with pytest.raises(IncompatibleWorkdirError) as err:
        workdir_lib.config_changes(str(other), config)
    message = str(err.value)
    assert "EMA (ema.decay > 0): True in the workdir -> False now" in message
    assert "reduce-on-plateau (optim.schedule == 'plateau'): True in the workdir -> False now" in message
    # Other EMA and plateau settings may change on resume.
    config = recipe_config()
    config.ema.decay, config.optim.plateau_patience = 0.99, 5
    assert set(workdir_lib.config_changes(str(other), config)) == {"ema.decay", "optim.plateau_patience"}


def test_ema_select_rule():
    raw, better, worse = {"accuracy": 0.5}, {"accuracy": 0.625}, {"accuracy": 0.375}
    assert validation.select_weights("best", raw, better) == "ema"
    assert validation.select_weights("best", raw, worse) == "raw"
    assert validation.select_weights("best", raw, dict(raw)) == "raw"  # a tie keeps the raw weights
    assert validation.select_weights("raw", raw, better) == "raw"
    assert validation.select_weights("ema", raw, worse) == "ema"
    config = _tiny_config(**{"ema.select": "newest"})
    with pytest.raises(ValueError, match=r"ema\.select.*'newest'.*raw, ema, best"):
        config_schema.validate(config)


# ------------------------------------------------------------------------ weight decay, real models


@pytest.mark.parametrize(
    "model_name, variant, must_have",
    [
        ("cnn", "tiny", {"batchnorm", "dense_bias"}),
        ("cnn", "plain", {"conv_bias", "dense_bias"}),  # no BatchNorm: its convs keep their biases
        ("beefy", "small", {"batchnorm", "dense_bias"}),
        ("resnet", "resnet10_half", {"batchnorm", "dense_bias"}),
        ("vit", "vit_micro", {"layernorm", "dense_bias", "embedding"}),
    ],
)
def test_weight_decay_mask_on_real_models(model_name, variant, must_have):
    """Only conv/dense kernels decay; BatchNorm scale/bias, Dense and Conv biases (and LayerNorm,
    position embeddings, class token) never do, on the real parameter trees of the model families."""
    model = models.create_model(model_name, variant=variant, num_classes=NUM_CLASSES)
    params = jax.eval_shape(lambda: model_lib.initial_variables(model, jax.random.key(0)))["params"]
    mask = traverse_util.flatten_dict(optim.weight_decay_mask(params))
    flat = traverse_util.flatten_dict(params)
    assert set(mask) == set(flat)
    assert {p for p, m in mask.items() if m} == {p for p in flat if p[-1] == "kernel"} != set()

    def kind(path):
        module, leaf = (path[-2] if len(path) > 1 else ""), path[-1]
        if leaf in ("scale", "bias") and ("BatchNorm" in module or "bn" in module):
            return "batchnorm"
        if leaf in ("scale", "bias") and "norm" in module:
            return "layernorm"
        if leaf == "bias" and module.startswith("Conv"):
            return "conv_bias"
        if leaf == "bias":
            return "dense_bias"  # Dense_k, classifier, head, mlp_in/out, qkv, the patch embedding
        if leaf in ("pos_embedding", "cls"):
            return "embedding"
        return "kernel" if leaf == "kernel" else leaf

    kinds: dict[str, list] = {}
    for path in flat:
        kinds.setdefault(kind(path), []).append(path)
    # Names the exclusions explicitly, so the test fails if a family stops having what it checks.
    assert must_have <= set(kinds), sorted(kinds)
    for name in must_have:
        assert not any(mask[p] for p in kinds[name]), name
    assert all(mask[p] for p in kinds["kernel"])
