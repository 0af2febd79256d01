"""The configuration schema: every shipped config validates, and every bad value is named with its key,
its value and what is allowed. No training, no compilation."""

from __future__ import annotations

import importlib
import json

import pytest
from ml_collections import ConfigDict

from configs.common import get_base_config
from fer_flax import models
from fer_flax.config import schema as config_schema
from fer_flax.config.choices import TTA_MODES
from fer_flax.config.defaults import CHOICES
from fer_flax.config.schema import ConfigError, check_choice, validate
from tests.helpers import REPO

CONFIG_DIR = REPO / "configs"

# Every experiment config and the `get_config(arg)` arguments its docstring documents.
CONFIG_ARGS = {
    "beefy": ("", "gpu", "smoke"),
    "cct": ("", "2_3x2", "smoke"),
    "cpu_recipe": ("", "tuned", "gpu", "smoke"),
    "cpu_teacher": ("", "wide", "smoke"),
    "distill_cpu": ("", "tuned", "smoke"),
    "ferplus": ("", "gpu", "smoke"),
    "googlenet": ("", "noaux", "smoke"),
    "googlenet_aux": ("", "gpu", "small", "smoke"),
    "resnet18": ("", "gpu", "cpu", "smoke"),
    "resnet34": ("", "smoke"),
    "resnet_complex": ("", "smoke"),
    "simple_cnn": ("", "real", "smoke"),
    "vit_hybrid": ("", "smoke"),
    "vit_small": ("", "gpu", "p4", "smoke"),
    "vit_spt_lsa": ("", "smoke"),
    "vit_tiny": ("", "p6_gap", "smoke"),
}


def with_value(key: str, value) -> ConfigDict:
    config = get_base_config()
    config.update_from_flattened_dict({key: value})
    return config


def rejected(config) -> str:
    with pytest.raises(ConfigError) as info:
        validate(config)
    return str(info.value)


def test_every_experiment_config_is_listed():
    files = {p.stem for p in CONFIG_DIR.glob("*.py")} - {"__init__", "common"}
    assert files == set(CONFIG_ARGS)


def test_base_config_validates():
    validate(get_base_config())


@pytest.mark.parametrize(("name", "arg"), [(name, arg) for name, args in CONFIG_ARGS.items() for arg in args])
def test_experiment_configs_validate(name, arg):
    validate(importlib.import_module(f"configs.{name}").get_config(arg))


def test_unknown_config_argument_names_the_choices():
    with pytest.raises(ConfigError, match=r"config argument='large' is not one of: '', noaux, smoke"):
        importlib.import_module("configs.googlenet").get_config("large")


def flatten(tree: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in tree.items():
        out.update(flatten(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def test_choices_cover_every_string_key_of_the_base_config():
    strings = {k for k, v in flatten(get_base_config().to_dict()).items() if isinstance(v, str)}
    free_text = {"model.variant", "wandb.project"}  # the variant depends on model_name
    assert strings - free_text == set(CHOICES)
    assert CHOICES["model_name"] == models.FAMILIES
    for key, choices in CHOICES.items():
        assert choices and all(isinstance(c, str) for c in choices), key


@pytest.mark.parametrize("key", sorted(CHOICES))
def test_bad_choice_names_key_value_and_every_choice(key):
    message = rejected(with_value(key, "no_such_value"))
    assert f"config.{key}='no_such_value'" in message
    assert "is not one of: " + ", ".join(CHOICES[key]) in message


@pytest.mark.parametrize("key", sorted(CHOICES))
def test_every_listed_choice_validates(key):
    for value in CHOICES[key]:
        config = with_value(key, value)
        if key == "model_name":
            config.model.variant = models.variants(value)[0]
        if value == "explicit":  # loss.class_weighting, data.sampling
            config[key.split(".")[0]].class_weights = (1.0,) * 7
        validate(config)


def test_check_choice_message_format():
    with pytest.raises(ConfigError) as info:
        check_choice("config.eval_tta", "tencrp", TTA_MODES)
    assert str(info.value) == "config.eval_tta='tencrp' is not one of: none, flip, tencrop"
    assert isinstance(info.value, ValueError)
    check_choice("--split", "val", ("train", "val", "test"))  # a valid value passes silently


def test_model_variant_and_options_are_checked_per_family():
    config = with_value("model_name", "resnet")
    assert "config.model.variant='small' is not one of: " + ", ".join(models.variants("resnet")) in rejected(
        config
    )
    config = get_base_config()
    config.model.depth = 3
    message = rejected(config)
    assert "config.model has option(s) ['depth']" in message and "stage_widths" in message
    # Set by the code from other keys, or substituted by a platform: never from config.model.
    for field in ("num_classes", "dtype", "conv", "max_pool", "name", "parent"):
        config = get_base_config()
        config.model[field] = 1
        assert f"['{field}']" in rejected(config)
        assert field not in config_schema.model_options("cnn")


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("num_epochs", -1.0),
        ("num_epochs", 0.0),
        ("num_epochs", float("nan")),
        ("num_epochs", float("inf")),
        ("optim.lr", -1.0),
        ("optim.lr", 0.0),
        ("batch_size", 0),
        ("eval_batch_size", -8),
        ("eval_every_epochs", 0.0),
        ("log_every_steps", 0),
        ("label_smoothing", 1.0),
        ("label_smoothing", -0.1),
        ("ema.decay", 1.0),
        ("ema.decay", -0.5),
        ("checkpoint_keep", 0),
        ("checkpoint_every_steps", -1),
        ("seed", -1),
        ("optim.weight_decay", -1e-4),
        ("optim.grad_clip_norm", 0.0),
        ("loss.logit_adjustment_tau", -1.0),
        ("loss.logit_adjustment_tau", float("nan")),
        ("mix.mixup_alpha", -0.1),
        ("mix.cutmix_alpha", -1.0),
        ("mix.prob", 1.5),
        ("mix.switch_prob", -0.5),
        ("augment.pad_crop", 48),
        ("augment.rotate_degrees", -5.0),
        ("augment.erase_prob", 1.5),
        ("augment.rrc_scale", (0.5, 1.5)),
        ("augment.erase_scale", (0.3, 0.1)),
        ("data.num_workers", -1),
    ],
)
def test_nonsense_numbers_are_rejected_naming_the_key(key, value):
    message = rejected(with_value(key, value))
    assert message.startswith(f"config.{key}={value!r} must be "), message


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"optim.plateau_factor": 1.0}, "config.optim.plateau_factor=1.0 must be in (0, 1)"),
        ({"optim.plateau_patience": 0}, "config.optim.plateau_patience=0 must be an integer >= 1"),
        ({"optim.plateau_cooldown": -1}, "config.optim.plateau_cooldown=-1 must be"),
        ({"optim.plateau_min_delta": -0.1}, "config.optim.plateau_min_delta=-0.1 must be"),
        ({"optim.plateau_min_scale": 2.0}, "config.optim.plateau_min_scale=2.0 must be in [0, 1]"),
    ],
)
def test_plateau_settings_are_checked_only_for_the_plateau_schedule(overrides, match):
    config = get_base_config()
    config.update_from_flattened_dict(overrides)
    validate(config)  # cosine: the plateau keys are not read
    config.optim.schedule = "plateau"
    assert match in rejected(config)


@pytest.mark.parametrize(
    ("weights", "match"),
    [
        (None, "must be 7 weights, one per class"),
        ((1.0, 2.0, 3.0), "must be 7 weights, one per class"),
        ((1, 1, 1, -1, 1, 1, 1), "must be finite numbers >= 0"),
        ((1, 1, 1, float("nan"), 1, 1, 1), "must be finite numbers >= 0"),
        ((0,) * 7, "are all zero"),
    ],
)
@pytest.mark.parametrize(
    ("mode_key", "weights_key"),
    [("loss.class_weighting", "loss.class_weights"), ("data.sampling", "data.class_weights")],
)
def test_explicit_class_weights(mode_key, weights_key, weights, match):
    config = with_value(mode_key, "explicit")
    config[weights_key.split(".")[0]].class_weights = weights
    message = rejected(config)
    assert f"config.{weights_key}=" in message and match in message
    assert f"config.{mode_key}='explicit'" in message


@pytest.mark.parametrize("section", ["loss", "data"])
def test_class_weights_without_explicit_mode_are_rejected(section):
    config = get_base_config()
    config[section].class_weights = (1.0,) * 7
    mode_key = "class_weighting" if section == "loss" else "sampling"
    assert f"set config.{section}.{mode_key}='explicit'" in rejected(config)


def test_crop_size_is_checked_for_ten_crop_training_and_ten_crop_tta():
    config = with_value("augment.crop_size", 49)
    validate(config)  # neither ten-crop training nor ten-crop TTA reads it
    config.augment.ten_crop = True
    assert "config.augment.crop_size=49 must be an integer in [1, 48]" in rejected(config)
    config.augment.ten_crop, config.eval_tta = False, "tencrop"
    assert "config.augment.crop_size=49" in rejected(config)


def test_every_problem_is_listed_in_one_error():
    config = get_base_config()
    config.update_from_flattened_dict({"num_epochs": 0.0, "optim.name": "adam", "ema.select": "ema_only"})
    message = rejected(config)
    assert message.startswith("3 config problems:")
    for key in ("config.num_epochs=0.0", "config.optim.name='adam'", "config.ema.select='ema_only'"):
        assert key in message


def test_a_config_lacking_declared_keys_is_refused_naming_them():
    """The code reads every key without a fallback: a config.json is completed when it is loaded
    (tests/config/test_defaults.py), and a config built by hand must hold every key too."""
    old = get_base_config().to_dict()
    del old["mix"], old["nonfinite"], old["loss"]["logit_adjustment_tau"]
    config = ConfigDict(json.loads(json.dumps(old)))  # tuples come back as lists, as from a file
    for for_training in (True, False):
        with pytest.raises(ConfigError) as info:
            validate(config, for_training=for_training)
        missing = "loss.logit_adjustment_tau, mix.cutmix_alpha, mix.mixup_alpha, mix.prob, mix.switch_prob"
        missing += ", nonfinite"
        assert f"config lacks the declared key(s) {missing}: " in str(info.value)
    config.optim.name = "adam"
    assert "config.optim.name='adam'" in rejected(config)  # the other values are still checked


def test_a_plain_dict_validates_like_a_config_dict():
    config = get_base_config().to_dict()
    validate(config)
    config["optim"]["lr"] = float("nan")
    assert rejected(config).startswith("config.optim.lr=nan must be a finite number > 0")


def test_inference_validation_checks_only_what_restoring_a_model_reads():
    config = get_base_config()
    config.update_from_flattened_dict({"num_epochs": -1.0, "optim.name": "adam"})
    validate(config, for_training=False)
    config.dtype = "float16"
    with pytest.raises(ConfigError, match=r"config\.dtype='float16' is not one of: float32, bfloat16"):
        validate(config, for_training=False)


def test_the_device_pipeline_refuses_soft_label_modes():
    config = with_value("data.pipeline", "device")
    validate(config)  # majority labels: fine
    config.data.label_mode = "crossentropy"
    assert "carries integer labels only" in rejected(config)
