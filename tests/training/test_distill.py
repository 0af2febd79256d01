"""Knowledge distillation (fer_flax/training/distill.py): the softened targets and the loss by hand, a teacher
that is the student's own function teaches nothing, the cached targets are the on-the-fly ones on the
clean view and are kept per teacher for any ensemble to reuse, a distilled run trains end to end and
refuses another teacher set on resume, and bad teachers fail before training, named."""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs.common import get_base_config, use_smoke_settings
from fer_flax.config.schema import ConfigError, validate
from fer_flax.core import losses, parallel
from fer_flax.core import model as model_lib
from fer_flax.core import state as model_state
from fer_flax.core.augment import preprocess
from fer_flax.data.spec import FER2013
from fer_flax.run.workdir import IncompatibleWorkdirError
from fer_flax.training import distill, steps
from fer_flax.training import feed as train_feed
from fer_flax.training import loop as train
from tests.helpers.trained_runs import synthetic_split, tiny_config


def _constant_teacher(variables, x, train):
    """A fake teacher whose logits are variables["z"] for every image."""
    del train
    return jnp.broadcast_to(variables["z"], (x.shape[0], variables["z"].shape[0])), {}


def _first_pixel_teacher(variables, x, train):
    """A fake teacher whose logits are [top-left pixel, 0]: a flip moves another pixel there."""
    del variables, train
    return jnp.stack([x[:, 0, 0, 0], jnp.zeros(x.shape[0])], axis=-1), {}


def test_temperature_softened_targets_and_loss_by_hand():
    ln4 = math.log(4.0)
    # softmax([0, ln 4] / 2) = softmax([0, ln 2]) = [1/3, 2/3]; at T = 1 it is [1/5, 4/5].
    np.testing.assert_allclose(losses.tempered_softmax(jnp.array([0.0, ln4]), 2.0), [1 / 3, 2 / 3], rtol=1e-6)
    np.testing.assert_allclose(losses.tempered_softmax(jnp.array([0.0, ln4]), 1.0), [0.2, 0.8], rtol=1e-6)

    # Two teachers: [0, ln 4] -> [1/3, 2/3] and [ln 9, 0] -> softmax([ln 3, 0]) = [3/4, 1/4] at T = 2;
    # their probabilities are averaged: [13/24, 11/24].
    two = steps.TeacherModels((_constant_teacher,) * 2, ("none", "none"), (44, 44))
    variables = ({"z": jnp.array([0.0, ln4])}, {"z": jnp.array([math.log(9.0), 0.0])})
    probs = steps.teacher_probabilities(two, variables, jnp.zeros((3, 4, 4, 1)), 2.0)
    np.testing.assert_allclose(probs, [[13 / 24, 11 / 24]] * 3, rtol=1e-6)

    # One teacher's views average logits before softening: views [2 ln 4, 0] and [0, 0] give mean
    # logits [ln 4, 0] -> [2/3, 1/3] at T = 2 (averaging the views' probabilities would give
    # ([4/5, 1/5] + [1/2, 1/2]) / 2 = [0.65, 0.35]).
    image = jnp.zeros((1, 1, 2, 1)).at[0, 0, 0, 0].set(2 * ln4)
    flip = steps.TeacherModels((_first_pixel_teacher,), ("flip",), (44,))
    np.testing.assert_allclose(
        steps.teacher_probabilities(flip, ({},), image, 2.0), [[2 / 3, 1 / 3]], rtol=1e-6
    )

    # T^2 KL(p || q) with p = [1/3, 2/3], student logits [0, 0] (q = [1/2, 1/2]) at T = 2, and its
    # gradient T (q - p) = [1/3, -1/3].
    p = jnp.array([[1 / 3, 2 / 3]])
    kl = 4 * (1 / 3 * math.log(2 / 3) + 2 / 3 * math.log(4 / 3))
    np.testing.assert_allclose(losses.distillation_kl(jnp.zeros((1, 2)), p, 2.0), [kl], rtol=1e-5)
    grad = jax.grad(lambda z: losses.distillation_kl(z, p, 2.0).sum())(jnp.zeros((1, 2)))
    np.testing.assert_allclose(grad, [[1 / 3, -1 / 3]], rtol=1e-5)
    mixed = losses.distilled_loss(jnp.array([1.5]), jnp.zeros((1, 2)), p, alpha=0.3, temperature=2.0)
    np.testing.assert_allclose(mixed, [0.3 * 1.5 + 0.7 * kl], rtol=1e-5)


def _student(mode: str):
    """A small cnn without BatchNorm or dropout on 16 synthetic faces, distilling at T = 2, alpha 0."""
    c = get_base_config()
    use_smoke_settings(c, "plain")
    c.model.update(stage_widths=(8, 16), dense_widths=(32,))
    c.distill.update(teachers=("teacher",), alpha=0.0, temperature=2.0, mode=mode, tta="none")
    if mode == "cached":  # the cached targets are of the clean view: the student must see it too
        c.augment.update(pad_crop=0, flip=False, rotate_degrees=0.0)
    split = synthetic_split("train")
    batch = {"image": split.images[:16, :, :, None], "label": split.labels[:16].astype(np.int32)}
    return c, model_lib.create_model(c), parallel.make_mesh(jax.devices()[:1]), batch


@pytest.mark.parametrize("mode", ["on_the_fly", "cached"])
def test_a_teacher_that_is_the_students_initial_function_gives_no_distillation_gradient(mode):
    """The teacher runs in inference mode, the student in training mode: with BatchNorm (batch
    statistics against running ones) or dropout they would be different functions. This cnn has
    neither, so a teacher holding the student's initial variables computes exactly the student's
    initial function. On the fly the teacher sees the student's augmented batch; cached, the targets
    are of the clean images, so the test switches augmentation off. Either way the first train step's
    gradient vanishes with alpha 0 (all weight on the distillation term), and does not with a teacher
    initialised from another seed."""
    c, model, mesh, batch = _student(mode)
    schedule = optax.constant_schedule(0.1)
    teachers = steps.TeacherModels((model.apply,), ("none",), (44,))

    def first_step(teacher_seed: int) -> dict:
        def state_of(seed: int):
            return model_state.create_train_state(model, optax.sgd(0.1), jax.random.key(seed), mesh)

        state = state_of(0)  # the student; the teacher is a copy of its initial variables, or another's
        teacher = jax.tree.map(jnp.copy, model_state.variables(state_of(teacher_seed)))
        inputs = parallel.to_global_batch(batch, mesh)
        if mode == "cached":
            probs = jax.jit(steps.teacher_probabilities, static_argnums=(0, 3))
            inputs["teacher_probs"] = probs(teachers, (teacher,), preprocess(inputs["image"]), 2.0)
            step = train_feed.compile_train(c, schedule, np.ones(7), mesh)
        else:
            step = train_feed.compile_train(c, schedule, np.ones(7), mesh, teachers, (teacher,))
        return jax.device_get(step(state, inputs, jax.random.key(1))[1])

    same, other = first_step(0), first_step(7)
    assert same["grad_norm"] < 1e-5 and abs(same["distill_kl"]) < 1e-6
    assert other["grad_norm"] > 1e-2 and other["distill_kl"] > 1e-4


@pytest.mark.xdist_group("trained_run")  # shares the `trained_run` fixture (the teacher)
def test_cached_targets_equal_the_on_the_fly_teachers_on_the_clean_view(trained_run):
    """Two checkpoints of the tiny run as an ensemble, flip views: the host path through
    fer_flax.inference.engine (40 images in padded batches of 32) against the step's own function."""
    c = tiny_config()
    c.distill.update(teachers=(f"{trained_run}:2", f"{trained_run}:4"), temperature=3.0, tta="flip")
    d = distill.load_teachers(c, FER2013, parallel.make_mesh(), "/nonexistent/student")
    assert [t.restored.step for t in d.teachers] == [2, 4] and {t.tta_mode for t in d.teachers} == {"flip"}
    images = synthetic_split("train").images[:40]
    said = []
    cached = distill.teacher_targets(d, images, batch_size=32, say=said.append)
    assert cached.shape == (40, 7) and len(said) == 2 and "40/40 images" in said[-1]
    fn = jax.jit(functools.partial(steps.teacher_probabilities, d.models()), static_argnums=(2,))
    on_the_fly = fn(d.variables(), preprocess(jnp.asarray(images)), 3.0)
    np.testing.assert_allclose(cached, on_the_fly, atol=2e-6)
    assert not np.allclose(cached[:, 0], cached[0, 0])  # image-dependent targets: the test can fail


@pytest.mark.xdist_group("trained_run")  # shares the `trained_run` fixture (the teacher)
def test_cached_targets_are_kept_per_teacher_and_reused_by_any_ensemble(trained_run, tmp_path):
    """A pair of teachers writes one file each and trains on their mean; the first teacher alone, or
    the pair in the other order, then reads those files and computes nothing."""
    c = tiny_config()
    c.distill.update(teachers=(f"{trained_run}:2", f"{trained_run}:4"), temperature=3.0, tta="flip")
    mesh = parallel.make_mesh()
    full = synthetic_split("train")
    split = dataclasses.replace(full, images=full.images[:24], labels=full.labels[:24], targets=None)
    pair = distill.load_teachers(c, FER2013, mesh, "/nonexistent/student")
    said = []
    trained, pair = distill.with_targets(pair, split, c, mesh, str(tmp_path), said.append)
    assert len(set(pair.targets_files)) == 2 and sum("saved to" in line for line in said) == 2
    each = [np.load(f) for f in pair.targets_files]
    assert not np.allclose(each[0], each[1])  # two different teachers: the mean is a real mix
    np.testing.assert_allclose(trained.teacher_probs, (each[0] + each[1]) / 2, atol=1e-6)

    c.distill.teachers = (f"{trained_run}:4", f"{trained_run}:2")
    said = []
    swapped = distill.load_teachers(c, FER2013, mesh, "/nonexistent/student")
    again, swapped = distill.with_targets(swapped, split, c, mesh, str(tmp_path), said.append)
    assert swapped.targets_files == pair.targets_files[::-1]
    assert sum("(cached)" in line for line in said) == 2 and not any("images/s" in line for line in said)
    np.testing.assert_allclose(again.teacher_probs, trained.teacher_probs, atol=1e-6)

    c.distill.teachers = (f"{trained_run}:2",)
    alone = distill.load_teachers(c, FER2013, mesh, "/nonexistent/student")
    first, alone = distill.with_targets(alone, split, c, mesh, str(tmp_path), lambda *a: None)
    assert alone.targets_files == pair.targets_files[:1]
    np.testing.assert_allclose(first.teacher_probs, each[0], atol=0)


@pytest.mark.xdist_group("trained_run")  # shares the `trained_run` fixture (the teacher)
@pytest.mark.slow
def test_a_distilled_run_trains_records_its_teachers_and_refuses_others_on_resume(trained_run, tmp_path):
    c = tiny_config()
    c.distill.update(teachers=(trained_run,), alpha=0.5, temperature=2.0, mode="cached")
    c.steps_per_call, c.log_every_steps = 2, 2  # the cached targets stacked for calls of two steps
    workdir = str(tmp_path / "student")
    summary = train.train_and_evaluate(c, workdir)

    teachers = summary["distill"]["teachers"]
    assert [(t["workdir"], t["checkpoint"], t["tta"]) for t in teachers] == [(trained_run, "best", "none")]
    with open(os.path.join(workdir, "config.json")) as f:
        assert json.load(f)["derived"]["distill"]["teachers"] == teachers
    (targets_file,) = summary["distill"]["targets_files"]
    targets = np.load(targets_file)
    assert targets.shape == (128, 7) and np.allclose(targets.sum(axis=1), 1.0, atol=1e-5)
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        kl = [r["train/distill_kl"] for r in map(json.loads, f) if "train/distill_kl" in r]
    assert kl and all(np.isfinite(kl)) and summary["final_step"] == 4

    c.distill.teachers = (trained_run, f"{trained_run}:2")
    c.num_epochs = 3.0
    with pytest.raises(IncompatibleWorkdirError, match=r"distill\.teachers"):
        train.train_and_evaluate(c, workdir)


@pytest.mark.xdist_group("trained_run")  # shares the `trained_run` fixture (the teacher)
def test_bad_teachers_fail_before_training_and_are_named(trained_run, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    c = tiny_config()
    c.distill.teachers = (str(tmp_path / "missing"), trained_run, f"{empty}:latest")
    workdir = tmp_path / "student"
    with pytest.raises(distill.DistillError) as info:
        train.train_and_evaluate(c, str(workdir))
    message = str(info.value)
    assert str(tmp_path / "missing") in message and str(empty) in message and "no config.json" in message
    assert f"{trained_run!r}" not in message
    assert not workdir.exists()  # a failed first start leaves the workdir as it found it

    c.distill.update(teachers=("a", "a", ""), alpha=1.5, temperature=0.0, mode="live", tta="five")
    c.data.pipeline = "device"
    with pytest.raises(ConfigError) as info:
        validate(c)
    message = str(info.value)
    for key in ("teachers", "alpha", "temperature", "mode", "tta"):
        assert f"config.distill.{key}=" in message
    c.distill.update(teachers=("a",), alpha=0.5, temperature=2.0, mode="cached", tta=None)
    with pytest.raises(ConfigError, match=r"distill\.mode='cached' needs config\.data\.pipeline='grain'"):
        validate(c)
