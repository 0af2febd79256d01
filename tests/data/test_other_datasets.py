"""Face sets other than FER2013: every family builds for any image shape and class count, an image-folder
set with its own classes, size and colour (RAF-DB's layout) trains and evaluates end to end, evaluation
across class sets goes through an explicit mapping, and a run fine-tunes from another one (init_from)
with a new head and frozen layers."""

from __future__ import annotations

import json
import os
import types

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from PIL import Image

from fer_flax import models
from fer_flax.base.errors import ConfigError
from fer_flax.core import class_mapping, optim, parallel
from fer_flax.core import model as model_lib
from fer_flax.core import state as model_state
from fer_flax.data.spec import FER2013, FERPLUS, DataSpec
from fer_flax.data.splits import ArraySplit
from fer_flax.inference import evaluate
from fer_flax.run import trained
from fer_flax.training import init_from
from fer_flax.training import loop as train
from tests.helpers import trained_runs
from tests.helpers.ferplus import face, write_split

RAF_CLASSES = ("Surprise", "Fear", "Disgust", "Happiness", "Sadness", "Anger", "Neutral")


@pytest.mark.parametrize("family", models.FAMILIES)
def test_every_family_builds_for_any_image_shape_and_class_count(family):
    model = models.create_model(family, variant=models.variants(family)[0], num_classes=8)
    variables = jax.eval_shape(lambda: model_lib.initial_variables(model, jax.random.key(0), (72, 60, 3)))
    logits, _ = jax.eval_shape(lambda v: model.apply(v, jnp.zeros((2, 72, 60, 3)), train=False), variables)
    assert logits.shape == (2, 8)


def _rafdb_tree(root) -> None:
    """RAF-DB's layout: <split>/<1..7>/<image>, 100x100 RGB; 2 train and 1 val image per class."""
    rng = np.random.default_rng(0)
    for split, per_class in (("train", 2), ("val", 1)):
        for c in range(len(RAF_CLASSES)):
            folder = root / split / str(c + 1)
            folder.mkdir(parents=True)
            for i in range(per_class):
                image = rng.integers(0, 256, (100, 100, 3), dtype=np.uint8)
                image[..., c % 3] = 255 - 30 * i  # a learnable colour cue
                Image.fromarray(image).save(folder / f"{split}_{i}.png")


def test_rafdb_style_folder_trains_and_evaluates_end_to_end(tmp_path):
    _rafdb_tree(tmp_path / "rafdb")
    c = trained_runs.tiny_config()
    c.data.update(
        path=str(tmp_path / "rafdb"),
        classes=RAF_CLASSES,
        class_folders=tuple("1234567"),
        image_size=(100, 100),
        channels=3,
    )
    c.update(batch_size=8, eval_batch_size=8, num_epochs=1.0)  # 14 images: 2 steps
    workdir = str(tmp_path / "run")
    summary = train.train_and_evaluate(c, workdir)
    assert summary["final_step"] == 2 and summary["final_val"]["num_examples"] == 7
    assert "recall/Happiness" in summary["final_val"]
    with open(os.path.join(workdir, "config.json")) as f:
        recorded = json.load(f)["derived"]["data_spec"]
    assert recorded == {"class_names": list(RAF_CLASSES), "image_size": [100, 100], "channels": 3}

    report = evaluate.evaluate_workdirs([workdir], split="val", figures=False, out=str(tmp_path / "r.json"))
    assert report["class_names"] == list(RAF_CLASSES) and report["num_examples"] == 7
    assert report["accuracy"] == summary["final_val"]["accuracy"] and report["class_mapping"] is None


def test_evaluation_across_class_sets_goes_through_an_explicit_mapping():
    mapping = class_mapping.parse("by_name", FERPLUS.class_names, FER2013.class_names)
    assert mapping.excluded_data_classes == ("contempt",) and mapping.unmapped_model_classes == ()
    assert dict(mapping.pairs)["happiness"] == "happy" and dict(mapping.pairs)["anger"] == "angry"
    probs = np.full((3, 7), 0.5 / 6)
    probs[:, FER2013.class_names.index("happy")] = 0.5
    labels = np.array([1, 7, 0])  # happiness, contempt, neutral
    mapped, new_labels, excluded = mapping.apply(probs, labels)
    assert excluded == {"contempt": 1} and new_labels.tolist() == [1, 0]  # FER+ order, contempt gone
    np.testing.assert_allclose(mapped.sum(axis=1), 1.0)
    assert mapped.argmax(axis=1).tolist() == [1, 1]  # "happy" is FER+'s "happiness" (index 1)

    reverse = class_mapping.parse("angry=anger,happy=happiness", FER2013.class_names, FERPLUS.class_names)
    assert reverse.excluded_data_classes == ("disgust", "fear", "sad", "surprise", "neutral")
    assert "contempt" in reverse.unmapped_model_classes
    with pytest.raises(ConfigError, match="'happy=joy' must be DATA_CLASS=MODEL_CLASS"):
        class_mapping.parse("happy=joy", FER2013.class_names, FERPLUS.class_names)
    member = types.SimpleNamespace(spec=FER2013, workdir="w")
    split = ArraySplit(np.zeros((2, 48, 48), np.uint8), np.zeros(2, np.int32), FERPLUS.class_names)
    with pytest.raises(ValueError, match="pass --class_map by_name"):
        evaluate.resolve_mapping([member], split, None)


def _flat(variables) -> dict[str, np.ndarray]:
    """{"Conv_0/kernel": ..., "BatchNorm_0/mean": ...} over params and batch statistics."""
    return {
        optim.param_path(path): np.asarray(leaf)
        for collection in ("params", "batch_stats")
        for path, leaf in jax.tree_util.tree_leaves_with_path(variables[collection])
    }


def _ferplus_config(tmp_path, source: str):
    """The tiny config for one step on a FER+ folder of 16 training faces, starting from `source`."""
    root = tmp_path / "ferplus"
    votes = [[9 if k == i % 8 else 0 for k in range(9)] + [1] for i in range(16)]  # majority: i % 8
    rows = [(f"fer{i:07d}.png", votes[i], face(i)) for i in range(16)]
    write_split(root, "train", rows)
    write_split(root, "val", rows[:8])
    c = trained_runs.tiny_config()
    c.data.update(path=str(root), label_mode="crossentropy")
    c.update(batch_size=8, eval_batch_size=8, num_epochs=0.5, init_from=source)  # one step
    c.optim.freeze = "^(Conv_0|BatchNorm_0)/"
    return c


def test_init_from_loads_layers_reinitialises_the_head_and_keeps_frozen_layers(tmp_path, trained_run):
    source = trained_run  # cnn/tiny on 7 synthetic classes
    c = _ferplus_config(tmp_path, source)
    model, mesh = model_lib.create_model(c, FERPLUS), parallel.make_mesh()
    plan = init_from.prepare(c, model, FERPLUS, mesh)
    assert plan.reinitialised == ("Dense_1/bias", "Dense_1/kernel") and not plan.skipped
    tx = optim.create_optimizer(c.optim, optax.constant_schedule(0.1))
    fresh = model_state.create_train_state(model, tx, jax.random.key(3), mesh)
    started = _flat(model_state.variables(init_from.apply(fresh, plan, tx, mesh)))
    src, new = _flat(plan.source.variables), _flat(model_state.variables(fresh))
    for path in plan.loaded:
        np.testing.assert_array_equal(started[path], src[path], err_msg=path)
    for path in plan.reinitialised:  # the fresh initialisation, for 8 classes
        np.testing.assert_array_equal(started[path], new[path], err_msg=path)

    workdir = str(tmp_path / "run")
    summary = train.train_and_evaluate(c, workdir)
    after = _flat(trained.restore(workdir, "latest").variables)
    for path in (
        "Conv_0/kernel",
        "BatchNorm_0/scale",
        "BatchNorm_0/bias",
        "BatchNorm_0/mean",
        "BatchNorm_0/var",
    ):
        np.testing.assert_array_equal(after[path], src[path], err_msg=path)  # frozen: unchanged
    assert not np.array_equal(after["Conv_1/kernel"], src["Conv_1/kernel"])  # trained
    assert summary["init_from"]["workdir"] == source and summary["init_from"]["reinitialised"]
    with open(os.path.join(workdir, "config.json")) as f:
        assert json.load(f)["derived"]["init_from"]["checkpoint_step"] == plan.source.step


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"init_from": "/no/such/run"}, "/no/such/run is not a fer_flax training workdir"),
        ({"model.variant": "small"}, "Conv_0/kernel (3, 3, 1, 16) in the source, (3, 3, 1, 32) here"),
        ({"init_skip": "^nothing$"}, "config.init_skip='^nothing$' matches no parameter"),
        ({"optim.freeze": "^Dense_9/"}, "config.optim.freeze='^Dense_9/' matches no parameter"),
    ],
)
def test_init_from_errors_name_what_does_not_fit(tmp_path, trained_run, overrides, message):
    c = _ferplus_config(tmp_path, trained_run)
    c.update_from_flattened_dict(overrides)
    spec = DataSpec(FERPLUS.class_names)
    model = model_lib.create_model(c, spec)
    with pytest.raises(init_from.InitFromError) as info:
        init_from.check_freeze(c, model, spec)
        init_from.prepare(c, model, spec, parallel.make_mesh())
    assert message in str(info.value)
