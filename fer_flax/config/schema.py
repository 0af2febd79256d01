"""The configuration schema: every check of a config's values.

`validate(config)` runs once at start-up, before any data is read or anything is compiled, and raises one
`ConfigError` listing every bad value, each naming the key, the value and what is allowed. The modules
that read the config (optim, losses, mixing, augment, tta, tracking, input_pipeline) trust a validated
config and do not check it again. Library functions that take a plain value rather than a config key
(`tta.views(images, mode)`, `losses.class_weights(counts, weighting)`, a command-line flag) check it
with `check_choice`, so every "not one of" message has the same shape.

The choice keys are checked against `fer_flax.config.defaults.CHOICES`, derived from the declarations
that give each choice key its default and its valid values. This module imports only the config
package, the data constants and the model registry, so every other module can import it without an
import circle. `model.variant` is not in `CHOICES` because its valid values depend on `model_name`
(`fer_flax.models.variants`).

Every config holds every declared key: the experiment configs start from `get_base_config()`, and a
run's config.json written before some keys existed is completed from the defaults when it is loaded
(`fer_flax.run.workdir`), so no code reads a key with a fallback. A config that lacks declared keys all
the same (a dict built by hand) is refused, naming them; its other values are still checked.
"""

from __future__ import annotations

import dataclasses
import importlib
import math
import numbers
import re
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from fer_flax import models
from fer_flax.base.errors import ConfigError, check_choice, choice_problem
from fer_flax.config.choices import TTA_MODES
from fer_flax.config.defaults import CHOICES, KEYS
from fer_flax.data.spec import CHANNEL_COUNTS, FERPLUS
from fer_flax.data.splits import IMAGE_SIZE, NUM_CLASSES

# Model constructor fields that a config may not set under `model`: Flax's own, the ones the code sets
# from other keys (num_classes from the data, dtype from config.dtype), and the conv / pool modules a
# platform substitutes.
_RESERVED_MODEL_FIELDS = frozenset({"parent", "name", "num_classes", "dtype", "conv", "max_pool"})

_MISSING = object()


def class_weights_problem(key: str, weights: Any, num_classes: int | None = NUM_CLASSES) -> str | None:
    """Why `weights` is not `num_classes` finite non-negative numbers with a positive one, or None
    (`num_classes` None: any count, for a config whose class count is known only from its data)."""
    sequence = isinstance(weights, Sequence) and not isinstance(weights, (str, bytes))
    if not sequence or len(weights) != (num_classes or len(weights)):
        return f"{key}={weights!r} must be {num_classes or 'the'} weights, one per class"
    if not all(_is_number(w) and math.isfinite(w) and w >= 0 for w in weights):
        return f"{key}={tuple(weights)!r} must be finite numbers >= 0"
    if not any(w > 0 for w in weights):
        return f"{key}={tuple(weights)!r} are all zero; at least one must be positive"
    return None


def check_class_weights(key: str, weights: Any, num_classes: int | None = NUM_CLASSES) -> None:
    """Raises ConfigError unless `weights` are valid explicit class weights (see class_weights_problem)."""
    problem = class_weights_problem(key, weights, num_classes)
    if problem:
        raise ConfigError(problem)


def _lookup(config: Any, key: str) -> Any:
    """config[key] for a dotted key, or _MISSING."""
    node = config
    for part in key.split("."):
        if node is None or not hasattr(node, "keys") or part not in node:
            return _MISSING
        node = node[part]
    return node


def expected_num_classes(config: Any) -> int | None:
    """The class count a config's data will have, when the config alone says it: `data.classes`, FER+
    (8), FER2013 or the synthetic faces (7); None when only the data can tell (format "auto" or
    "folder" on a path)."""
    classes = _lookup(config, "data.classes")
    if _names(classes):
        return len(classes)
    fmt = _lookup(config, "data.format")
    if fmt == "ferplus":
        return FERPLUS.num_classes
    return NUM_CLASSES if fmt == "fer2013" or _unset(_lookup(config, "data.path")) else None


def expected_image_side(config: Any) -> int:
    """The smaller side of the images a config trains on, as far as the config says (48 otherwise)."""
    size = _lookup(config, "data.image_size")
    ok = isinstance(size, Sequence) and len(size) == 2 and all(_is_int(v) and v > 0 for v in size)
    return min(size) if ok else IMAGE_SIZE


def _is_number(v: Any) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


def _is_int(v: Any) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _finite(v: Any) -> bool:
    return _is_number(v) and math.isfinite(v)


def _pair(lo_min: float, hi_max: float) -> Callable[[Any], bool]:
    """A (min, max) pair with lo_min < min <= max <= hi_max."""

    def ok(v: Any) -> bool:
        if isinstance(v, (str, bytes)) or not isinstance(v, Sequence) or len(v) != 2:
            return False
        lo, hi = v
        return _finite(lo) and _finite(hi) and lo_min < lo <= hi <= hi_max

    return ok


class _Checker:
    """Collects the problems of one config, so a single error lists them all."""

    def __init__(self, config: Any):
        self.config = config
        self.problems: list[str] = []

    def get(self, key: str) -> Any:
        return _lookup(self.config, key)

    def choice(self, key: str, choices: Iterable[Any] | None = None) -> bool:
        """Records a problem unless config[key] is one of `choices` (by default its declared ones,
        `CHOICES[key]`); True when it is (or is absent)."""
        value = self.get(key)
        choices = CHOICES[key] if choices is None else choices
        problem = None if value is _MISSING else choice_problem(f"config.{key}", value, choices)
        if problem:
            self.problems.append(problem)
        return problem is None

    def require(self, key: str, ok: Callable[[Any], bool], allowed: str) -> None:
        value = self.get(key)
        if value is not _MISSING and not ok(value):
            self.problems.append(f"config.{key}={value!r} must be {allowed}")

    def class_weights(self, key: str, mode_key: str) -> None:
        """`key` holds explicit class weights, set exactly when config[mode_key] is "explicit"."""
        mode, weights = self.get(mode_key), self.get(key)
        if mode is _MISSING or weights is _MISSING:
            return
        if mode == "explicit":
            problem = class_weights_problem(f"config.{key}", weights, expected_num_classes(self.config))
            if problem:
                self.problems.append(f"{problem} (config.{mode_key}='explicit')")
        elif weights is not None:
            self.problems.append(
                f"config.{key}={tuple(weights)!r} is set but config.{mode_key}={mode!r}; set "
                f"config.{mode_key}='explicit' to use the weights, or drop them"
            )


# Predicates of one value, named by what they accept.
_positive_int = lambda v: _is_int(v) and v >= 1
_non_negative_int = lambda v: _is_int(v) and v >= 0
_positive = lambda v: _finite(v) and v > 0
_non_negative = lambda v: _finite(v) and v >= 0
_fraction = lambda v: _finite(v) and 0 <= v < 1  # in [0, 1)
_probability = lambda v: _finite(v) and 0 <= v <= 1  # in [0, 1]


def _group_name(v: Any) -> bool:
    return _unset(v) or (isinstance(v, str) and 0 < len(v) <= 128)


def _unset(v: Any) -> bool:
    return v is None or v is _MISSING


def model_options(model_name: str) -> frozenset[str]:
    """The keys besides `variant` that `config.model` may set for a family: its constructor arguments."""
    check_choice("config.model_name", model_name, models.FAMILIES)
    family = importlib.import_module(f"fer_flax.models.{model_name}")
    return frozenset(f.name for f in dataclasses.fields(family.MODEL)) - _RESERVED_MODEL_FIELDS


def _check_model(c: _Checker) -> None:
    """model_name, dtype, model.variant and the model.* overrides."""
    c.choice("dtype")
    if not c.choice("model_name") or c.get("model_name") is _MISSING:
        return
    name = c.get("model_name")
    model = c.get("model")
    if model is _MISSING or not hasattr(model, "keys"):
        c.problems.append(f"config.model={model!r} must be a dict with at least `variant`")
        return
    c.choice("model.variant", models.variants(name))
    options = model_options(name)
    unknown = sorted(set(model.keys()) - options - {"variant"})
    if unknown:
        c.problems.append(
            f"config.model has option(s) {unknown} that {name!r} does not take; valid options: "
            f"variant, {', '.join(sorted(options))}"
        )


def _check_optim(c: _Checker) -> None:
    c.choice("optim.name")
    c.require("optim.lr", _positive, "a finite number > 0 (the peak learning rate)")
    c.require("optim.warmup_epochs", _non_negative, "a finite number >= 0")
    c.require("optim.weight_decay", _non_negative, "a finite number >= 0")
    c.require("optim.momentum", _fraction, "in [0, 1)")
    c.require("optim.b1", _fraction, "in [0, 1)")
    c.require("optim.b2", _fraction, "in [0, 1)")
    c.require("optim.grad_clip_norm", lambda v: v is None or _positive(v), "unset or a finite number > 0")
    if not c.choice("optim.schedule"):
        return
    schedule = c.get("optim.schedule")
    if schedule == "step":
        c.require("optim.step_factor", _positive, "a finite number > 0")
        c.require(
            "optim.step_epochs",
            lambda v: isinstance(v, Sequence) and not isinstance(v, str) and all(_non_negative(e) for e in v),
            "a sequence of epochs >= 0",
        )
    if schedule == "plateau":
        c.require("optim.plateau_factor", lambda v: _finite(v) and 0 < v < 1, "in (0, 1)")
        c.require("optim.plateau_patience", _positive_int, "an integer >= 1")
        c.require("optim.plateau_cooldown", _non_negative_int, "an integer >= 0")
        c.require("optim.plateau_min_delta", _non_negative, "a finite number >= 0")
        c.require("optim.plateau_min_scale", _probability, "in [0, 1]")


def _check_loss_and_mix(c: _Checker) -> None:
    c.require("label_smoothing", _fraction, "in [0, 1)")
    c.require("aux_loss_weight", _non_negative, "a finite number >= 0")
    c.choice("loss.class_weighting")
    c.class_weights("loss.class_weights", "loss.class_weighting")
    c.require("loss.logit_adjustment_tau", _non_negative, "a finite number >= 0 (0 disables)")
    c.require("mix.mixup_alpha", _non_negative, "a finite number >= 0 (0 disables mixup)")
    c.require("mix.cutmix_alpha", _non_negative, "a finite number >= 0 (0 disables cutmix)")
    c.require("mix.prob", _probability, "a probability in [0, 1]")
    c.require("mix.switch_prob", _probability, "a probability in [0, 1]")


def _check_augment(c: _Checker) -> None:
    side = expected_image_side(c.config)
    c.require("augment.pad_crop", lambda v: _is_int(v) and 0 <= v < side, f"an integer in [0, {side})")
    c.require("augment.rrc_scale", _pair(0, 1), "(min, max) area fractions with 0 < min <= max <= 1")
    c.require("augment.rrc_ratio", _pair(0, math.inf), "(min, max) aspect ratios with 0 < min <= max")
    c.require("augment.rotate_degrees", _non_negative, "a finite number >= 0 (the range is ±d)")
    c.require("augment.erase_prob", _probability, "a probability in [0, 1]")
    c.require("augment.erase_scale", _pair(0, 1), "(min, max) area fractions with 0 < min <= max <= 1")
    # The crop side matters for ten-crop training and for ten-crop TTA in the evaluations.
    if c.get("augment.ten_crop") is True or c.get("eval_tta") == "tencrop":
        c.require("augment.crop_size", lambda v: _is_int(v) and 0 < v <= side, f"an integer in [1, {side}]")


def _names(v: Any) -> bool:
    """Two or more distinct non-empty strings."""
    if isinstance(v, str) or not isinstance(v, Sequence) or len(v) < 2:
        return False
    return all(isinstance(n, str) and n.strip() for n in v) and len({n.lower() for n in v}) == len(v)


def _regex(v: Any) -> bool:
    """Unset, or a non-empty regular expression that compiles."""
    try:
        return v is None or (isinstance(v, str) and v != "" and re.compile(v) is not None)
    except re.error:
        return False


def _check_data(c: _Checker) -> None:
    c.choice("data.sampling")
    c.choice("data.pipeline")
    c.choice("data.device_layout")
    c.class_weights("data.class_weights", "data.sampling")
    for key in ("synthetic_train", "synthetic_val", "synthetic_test", "num_workers"):
        c.require(f"data.{key}", _non_negative_int, "an integer >= 0")
    c.require("data.synthetic_seed", _non_negative_int, "an integer >= 0")
    c.choice("data.format")
    c.choice("data.label_mode")
    c.require("data.classes", lambda v: v is None or _names(v), "unset or 2+ distinct class names")
    c.require("data.class_folders", lambda v: v is None or _names(v), "unset or 2+ distinct folder names")
    classes, folders = c.get("data.classes"), c.get("data.class_folders")
    if not _unset(folders) and (_unset(classes) or len(folders) != len(classes)):
        c.problems.append(
            f"config.data.class_folders={tuple(folders)!r} needs config.data.classes, one class per folder"
        )
    c.require(
        "data.image_size",
        lambda v: v is None or (isinstance(v, Sequence) and len(v) == 2 and all(_positive_int(s) for s in v)),
        "unset or (height, width), two integers >= 1",
    )
    c.require("data.channels", lambda v: v is None or v in CHANNEL_COUNTS, f"unset or in {CHANNEL_COUNTS}")
    if c.get("data.pipeline") == "device" and c.get("data.label_mode") not in (_MISSING, None, "majority"):
        c.problems.append(
            f"config.data.pipeline='device' carries integer labels only, not the soft targets of "
            f"config.data.label_mode={c.get('data.label_mode')!r}: use config.data.pipeline='grain'"
        )
    if c.get("data.label_mode") == "multi_target":
        for key in ("label_smoothing", "mix.mixup_alpha", "mix.cutmix_alpha"):
            value = c.get(key)
            if value not in (_MISSING, 0, 0.0):
                c.problems.append(
                    f"config.{key}={value!r} must be 0 with config.data.label_mode='multi_target' (its "
                    "targets are sets of acceptable classes, not distributions to smooth or mix)"
                )


def _check_init(c: _Checker) -> None:
    """Fine-tuning: init_from, init_skip, init_weights and optim.freeze."""
    c.require(
        "init_from",
        lambda v: v is None or (isinstance(v, str) and v.strip() != "" and not v.startswith(":")),
        "unset or 'WORKDIR', 'WORKDIR:best', 'WORKDIR:latest' or 'WORKDIR:STEP'",
    )
    c.require("init_skip", _regex, "unset or a regular expression of parameter paths")
    c.require("optim.freeze", _regex, "unset or a regular expression of parameter paths")
    c.choice("init_weights")
    if not _unset(c.get("init_skip")) and _unset(c.get("init_from")):
        c.problems.append("config.init_skip is set but config.init_from is not: there is nothing to skip")


def _workdir_list(v: Any) -> bool:
    """Distinct 'WORKDIR[:best|latest|STEP]' strings (none at all too)."""
    strings = not isinstance(v, str) and isinstance(v, Sequence) and all(isinstance(t, str) for t in v)
    return strings and len(set(v)) == len(v) and all(t.strip() != "" and not t.startswith(":") for t in v)


def _check_distill(c: _Checker) -> None:
    """Knowledge distillation (the teachers' workdirs are checked on disk by fer_flax.training.distill)."""
    c.require("distill.teachers", _workdir_list, "distinct 'WORKDIR[:best|latest|STEP]' strings")
    c.require("distill.alpha", _probability, "in [0, 1] (the weight of the true-label loss)")
    c.require("distill.temperature", _positive, "a finite number > 0")
    c.choice("distill.mode")
    c.require(
        "distill.tta", lambda v: v is None or v in TTA_MODES, f"unset or one of: {', '.join(TTA_MODES)}"
    )
    if c.get("distill.teachers") and c.get("distill.mode") == "cached" and c.get("data.pipeline") == "device":
        c.problems.append(
            "config.distill.mode='cached' needs config.data.pipeline='grain' (the device pipeline carries "
            "integer labels only), or use config.distill.mode='on_the_fly'"
        )


def _check_loop(c: _Checker) -> None:
    """Run length, cadence, checkpoints, EMA, failure handling and logging."""
    c.require("seed", _non_negative_int, "an integer >= 0")
    c.require("num_epochs", _positive, "a finite number > 0")
    c.require("batch_size", _positive_int, "an integer >= 1 (the global batch size)")
    c.require("cpu_devices", _non_negative_int, "an integer >= 0 (0: one per core)")
    c.require("eval_every_epochs", _positive, "a finite number > 0")
    c.require("log_every_steps", _positive_int, "an integer >= 1")
    c.require("steps_per_call", _positive_int, "an integer >= 1 (train steps per host call)")
    c.require(
        "checkpoint_every_steps", _non_negative_int, "an integer >= 0 (0: checkpoint at each evaluation only)"
    )
    c.require("checkpoint_keep", _positive_int, "an integer >= 1 (2 recommended)")
    c.require("checkpoint_keep_best", _positive_int, "an integer >= 1")
    c.choice("nonfinite")
    c.choice("eval_tta")
    c.require("ema.decay", _fraction, "in [0, 1) (0 disables EMA)")
    c.choice("ema.select")
    c.choice("wandb.mode")
    c.require("wandb.histogram_every_steps", _non_negative_int, "an integer >= 0 (0 disables)")
    c.require("wandb.group", _group_name, "unset or a name of 1 to 128 characters")


def validate(config: Any, *, for_training: bool = True) -> None:
    """Raises ConfigError listing every bad value of `config` (a ConfigDict or a dict of dicts).

    `for_training=False` checks only what restoring a model for inference reads (the model, its dtype,
    eval_batch_size), so evaluating an old run is not refused over a training setting."""
    c = _Checker(config)
    missing = [key for key in KEYS if c.get(key) is _MISSING]
    if missing:
        c.problems.append(
            f"config lacks the declared key(s) {', '.join(missing)}: start a config from "
            "fer_flax.config.defaults.get_base_config()"
        )
    _check_model(c)
    c.require("eval_batch_size", _positive_int, "an integer >= 1 (the global batch size)")
    if for_training:
        _check_loop(c)
        _check_optim(c)
        _check_loss_and_mix(c)
        _check_augment(c)
        _check_data(c)
        _check_init(c)
        _check_distill(c)
    if len(c.problems) == 1:
        raise ConfigError(c.problems[0])
    if c.problems:
        raise ConfigError(f"{len(c.problems)} config problems:\n  " + "\n  ".join(c.problems))
