"""The default of every config key, and the valid values of every choice key beside its default.

Each experiment file (the repository's `configs/`) calls `get_base_config()` and overrides what it needs.
Every key that a run may read is declared here, so `--config.some.typo=1` is rejected by ml_collections
instead of silently ignored, and no code reads a key with a fallback. Keys whose default is "unset" are
declared with `placeholder(type)` so they stay overridable. A choice key is declared with
`choice(default, VALUES)`: its valid values stand beside its default, and `CHOICES` (what
`fer_flax.config.schema.validate` checks them against) is derived from these declarations. The value
tuples themselves are in `fer_flax.config.choices`, except the label modes (`fer_flax.data.labels`) and
the model families (`fer_flax.models`), which the packages below this one define.

A run's config.json written before some keys existed is completed from these defaults when it is
loaded (`complete`, called by `fer_flax.run.workdir`), so an installed package restores any run without
the repository's `configs/`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from ml_collections import ConfigDict, config_dict

from fer_flax import models
from fer_flax.config.choices import (
    CLASS_WEIGHTINGS,
    DATA_FORMATS,
    DEVICE_LAYOUTS,
    DISTILL_MODES,
    DTYPE_NAMES,
    EMA_SELECT,
    NONFINITE_MODES,
    OPTIMIZERS,
    PIPELINES,
    SAMPLING_MODES,
    SCHEDULES,
    TTA_MODES,
    WANDB_MODES,
    WEIGHT_SETS,
)
from fer_flax.data.labels import LABEL_MODES


@dataclasses.dataclass(frozen=True)
class Choice:
    """The declaration of a choice key: its default and every value it accepts."""

    default: str
    values: tuple[str, ...]


def choice(default: str, values: tuple[str, ...]) -> Choice:
    """Declares a choice key, `c.optim.name = choice("sgd", OPTIMIZERS)`: `get_base_config()` holds the
    default there, and `CHOICES` the values."""
    if default not in values:
        raise ValueError(f"the default {default!r} is not one of its choices {values}")
    return Choice(default, tuple(values))


def _model_and_loss(c: ConfigDict) -> None:
    # Model: `model_name` picks the module fer_flax/models/<model_name>.py, `model.variant` a size in its
    # VARIANTS table; any other key under `model` overrides that variant's constructor argument.
    c.model_name = choice("cnn", models.FAMILIES)
    c.model = ConfigDict({"variant": "small"})
    # compute dtype (float32 | bfloat16); parameters and optimizer state stay float32
    c.dtype = choice("float32", DTYPE_NAMES)
    # CPU runs via `fer_flax.main`: split the CPU into this many JAX devices (0 = auto: one per core,
    # reduced until it divides the batch sizes) so the data-parallel step uses every core, because
    # XLA:CPU runs each convolution on one thread. 1 disables. Ignored when XLA_FLAGS fixes the count.
    c.cpu_devices = 0
    c.aux_loss_weight = 0.3  # weight of auxiliary-classifier losses (GoogLeNet) in the training loss
    c.label_smoothing = 0.0

    # Training loss (fer_flax/core/losses.py); class counts and prior come from the TRAINING split only.
    c.loss = ConfigDict()
    # Per-class loss weights: none | inverse (1/n_c) | sqrt_inverse (1/sqrt(n_c)) | explicit
    # (loss.class_weights); normalised so their mean over the training label distribution is 1.
    c.loss.class_weighting = choice("none", CLASS_WEIGHTINGS)
    c.loss.class_weights = config_dict.placeholder(tuple)  # one per class, for class_weighting == "explicit"
    # Logit-adjusted loss (Menon et al. 2021): train on logits + tau * log(prior); evaluation uses the
    # raw logits. 1.0 is the paper's choice; 0 disables.
    c.loss.logit_adjustment_tau = 0.0

    # Mixup / CutMix of training batches (core/mixing.py), after augmentation; an alpha of 0 disables.
    c.mix = ConfigDict()
    c.mix.mixup_alpha = 0.0  # lambda ~ Beta(alpha, alpha); 0.2 is a common choice
    c.mix.cutmix_alpha = 0.0  # box area fraction ~ Beta(alpha, alpha); 1.0 is a common choice
    c.mix.prob = 1.0  # probability that a batch is mixed at all
    c.mix.switch_prob = 0.5  # probability of cutmix rather than mixup when both alphas are > 0


def _data(c: ConfigDict) -> None:
    # Data: no path means the built-in synthetic faces. A path is a FER2013 CSV (.csv / .csv.gz), an
    # image-folder tree (train/<class>/*.jpg, test/<class>/...), a FER+ folder (FER2013Train/label.csv,
    # ...) or a .tar/.tar.gz of one (docs/data.md).
    c.data = ConfigDict()
    c.data.path = config_dict.placeholder(str)
    # What the path holds: auto (a CSV is FER2013; a folder or archive is FER+ when it has
    # FER2013Train/Valid/Test folders, else an image-folder set; a folder with records.json is ArrayRecord
    # files, read lazily: docs/data.md) | fer2013 | folder | ferplus | records.
    c.data.format = choice("auto", DATA_FORMATS)
    # FER+ label mode (fer_flax/data/labels.py): majority | probability | crossentropy | multi_target.
    # Accuracy is always measured against the majority vote.
    c.data.label_mode = choice("majority", LABEL_MODES)
    # An image-folder set that is not FER2013-shaped (RAF-DB, CK+, AffectNet, in-house): its class names
    # in label order, the folder of each class when it differs from the name (RAF-DB's "1".."7"),
    # (height, width), and 1 (grayscale) or 3 (RGB) channels. Unset: FER2013's 7 classes, 48x48x1.
    c.data.classes = config_dict.placeholder(tuple)
    c.data.class_folders = config_dict.placeholder(tuple)
    c.data.image_size = config_dict.placeholder(tuple)
    c.data.channels = config_dict.placeholder(int)
    # Resize images of another size and convert colour to grayscale (for a 1-channel set) instead of
    # rejecting them.
    c.data.convert_images = False
    c.data.cache_dir = config_dict.placeholder(str)  # default: .fer_flax_cache beside the workdir
    c.data.synthetic_train = 8000
    c.data.synthetic_val = 1000
    c.data.synthetic_test = 1000
    c.data.synthetic_seed = 0
    # Class-balanced sampling of the training stream: none | balanced | sqrt | explicit.
    c.data.sampling = choice("none", SAMPLING_MODES)
    c.data.class_weights = config_dict.placeholder(tuple)  # one per class, used when sampling == "explicit"
    c.data.num_workers = 0  # Grain worker processes; 0 is fastest on small CPU machines
    # Where the training stream is made: "grain" (host: Grain samples and batches, each batch is copied
    # to the devices) or "device" (the whole split on the devices, the epoch order drawn and each batch
    # gathered there, inside the jitted step: the host only dispatches). Same sampling modes and
    # distributions, and the same resume guarantees; see docs/training.md. Fixed for a workdir.
    c.data.pipeline = choice("grain", PIPELINES)
    # data.pipeline == "device": the images "replicated" on every device or "sharded" over them (each
    # process places only its devices' rows); "auto" replicates on one process and shards across several.
    c.data.device_layout = choice("auto", DEVICE_LAYOUTS)


def _augment(c: ConfigDict) -> None:
    # On-device augmentation (training only).
    c.augment = ConfigDict()
    c.augment.pad_crop = 4  # pad by this many pixels (reflect) then crop back to 48; 0 disables
    c.augment.random_resized_crop = False
    c.augment.rrc_scale = (0.8, 1.0)  # area fraction range for random-resized crop
    c.augment.rrc_ratio = (0.9, 1.1)  # aspect-ratio range for random-resized crop
    c.augment.flip = True
    c.augment.rotate_degrees = 10.0  # uniform in [-d, d]; 0 disables
    c.augment.erase_prob = 0.0  # random erasing probability per image
    c.augment.erase_scale = (0.02, 0.2)
    # Ten-crop training: each image becomes tta.py's 10 views (4 corners + centre of side crop_size,
    # resized back to 48, and their mirrors), the augmentations above applied per crop. The model and
    # BatchNorm then see 10x batch_size images per step. crop_size is also eval_tta's ten-crop size.
    c.augment.ten_crop = False
    c.augment.crop_size = 44


def _optim(c: ConfigDict) -> None:
    # Optimisation; batch sizes are global (across all devices and hosts).
    c.batch_size = 128
    c.eval_batch_size = 512
    # Test-time augmentation of the training loop's evaluations (and so of best-checkpoint selection):
    # none | flip | tencrop (of augment.crop_size). Match the training views: tencrop after ten_crop.
    c.eval_tta = choice("none", TTA_MODES)
    c.num_epochs = 10.0
    c.optim = ConfigDict()
    c.optim.name = choice("sgd", OPTIMIZERS)  # sgd | adamw
    c.optim.lr = 0.1  # peak learning rate, for the global batch size
    c.optim.momentum = 0.9
    c.optim.nesterov = True
    c.optim.b1 = 0.9
    c.optim.b2 = 0.999
    c.optim.weight_decay = 5e-4  # decoupled for adamw, L2 for sgd; never applied to biases or norms
    c.optim.schedule = choice("cosine", SCHEDULES)  # cosine | constant | step | plateau
    c.optim.warmup_epochs = 1.0
    c.optim.step_epochs = (
        30.0,
        60.0,
    )  # step schedule: epochs at which lr is multiplied by step_factor
    c.optim.step_factor = 0.1
    c.optim.grad_clip_norm = config_dict.placeholder(float)
    # A regex of parameter paths ("Conv_0/kernel", "BatchNorm_2/scale"; re.search) kept fixed: zero
    # updates through optax.multi_transform, and their BatchNorm statistics stay fixed too.
    c.optim.freeze = config_dict.placeholder(str)
    # schedule == "plateau": warmup, then optim.lr times a scale that drops by plateau_factor after
    # plateau_patience evaluations in a row whose validation accuracy did not beat the best by more
    # than plateau_min_delta. The plateau_cooldown evaluations after a drop are not counted, and the
    # scale never goes below plateau_min_scale. The state lives in the optimizer state (checkpointed).
    c.optim.plateau_factor = 0.5
    c.optim.plateau_patience = 3  # evaluations without improvement before a drop (>= 1)
    c.optim.plateau_min_delta = 0.0  # absolute accuracy gain that counts as an improvement
    c.optim.plateau_cooldown = 0  # evaluations after a drop that do not count as bad
    c.optim.plateau_min_scale = 0.01  # lower bound of the scale (0.01: lr never below lr / 100)

    # Exponential moving average of the weights and BatchNorm statistics, updated after every step
    # and kept in the train state (checkpointed, resumed). 0 disables it; 0.999 averages over about
    # the last 1000 steps. With EMA on, every evaluation also scores the EMA weights (val_ema/...).
    c.ema = ConfigDict()
    c.ema.decay = 0.0
    # Decay min(decay, (1 + step) / (10 + step)): the average forgets the random initialisation in
    # tens of steps instead of ~1/(1 - decay), which matters for short runs and early evaluations.
    c.ema.warmup = True
    # Which weights best/ keeps and which accuracy selects it: "raw", "ema", or "best" (whichever has
    # the higher validation accuracy at that evaluation; raw on a tie).
    c.ema.select = choice("best", EMA_SELECT)

    # Train steps per host call: k > 1 runs up to k steps in one compiled loop (metrics summed on the
    # device), so the per-step dispatch cost vanishes for small models. Calls still end at every log,
    # evaluation, checkpoint and histogram step, so those land on exact steps whatever k is.
    c.steps_per_call = 1


def _loop(c: ConfigDict) -> None:
    # Cadence, checkpoints and logging.
    c.log_every_steps = 50
    c.eval_every_epochs = 1.0
    # Full-state checkpoints for resume: every N steps, and always at each evaluation; 0 = only at
    # evaluations. Keep at least 2 so a corrupt newest checkpoint has a good one to fall back to.
    c.checkpoint_every_steps = 0
    c.checkpoint_keep = 2  # most recent checkpoints kept for resume
    # Best-by-val-accuracy checkpoints kept; 2 so that evaluating a damaged best one falls back to
    # the next best.
    c.checkpoint_keep_best = 2
    c.progress_bar = True
    # <workdir>/curves.png (loss and accuracy against step) at the end of a run.
    c.curves_png = True
    # A non-finite loss or gradient: "stop" raises (naming the step and the last good checkpoint);
    # "skip" keeps the previous parameters, optimizer state and BatchNorm statistics for that step
    # and counts it in `train/skipped_updates`. A non-finite state is never checkpointed either way.
    c.nonfinite = choice("stop", NONFINITE_MODES)


def _init_distill_and_wandb(c: ConfigDict) -> None:
    # Fine-tuning (fer_flax/training/init_from.py): start a new run from another run's weights and BatchNorm
    # statistics, "WORKDIR[:best|latest|STEP]" (default best); the classifier head is re-initialised when
    # the class count differs. init_weights: its raw or EMA weights (EMA: a full checkpoint, latest or a
    # step). init_skip: a regex of parameter paths not to load.
    c.init_from = config_dict.placeholder(str)
    c.init_weights = choice("raw", WEIGHT_SETS)
    c.init_skip = config_dict.placeholder(str)
    # Knowledge distillation (fer_flax/training/distill.py, docs/distillation.md): train against the
    # temperature-softened probabilities of finished runs. teachers: their workdirs, each optionally
    # "WORKDIR:best|latest|STEP" like init_from (any families; several are an ensemble); empty = off.
    # Loss: alpha * CE(true labels, smoothed) + (1 - alpha) * T^2 * KL(teachers_T || student_T).
    # mode: cached (the teachers' probabilities of each clean training image, computed once and stored
    # beside the data cache) | on_the_fly (the teachers run on every augmented batch inside the train
    # step). tta: the teachers' test-time views (none | flip | tencrop); unset = each teacher's own
    # eval_tta.
    c.distill = ConfigDict()
    c.distill.teachers = ()
    c.distill.alpha = 0.5
    c.distill.temperature = 4.0
    c.distill.mode = choice("cached", DISTILL_MODES)
    c.distill.tta = config_dict.placeholder(str)
    c.wandb = ConfigDict()
    c.wandb.mode = choice("offline", WANDB_MODES)  # offline | online | disabled
    c.wandb.project = "fer_flax"
    c.wandb.entity = config_dict.placeholder(str)
    # Runs of one experiment shown together in wandb (research.sweep.study sets it to the sweep's name).
    c.wandb.group = config_dict.placeholder(str)
    c.wandb.histogram_every_steps = 200  # weight and gradient histograms; 0 disables


def _declarations() -> ConfigDict:
    """Every key, the choice keys still holding their `Choice`."""
    c = ConfigDict()
    c.seed = 0
    for declare in (_model_and_loss, _data, _augment, _optim, _loop, _init_distill_and_wandb):
        declare(c)
    return c


def _settle(config: ConfigDict, prefix: str = "") -> dict[str, tuple[str, ...]]:
    """Replaces every `Choice` in `config` (in place, sections included) by its default; returns
    {dotted key: its valid values}. A key is deleted and set again, so it takes the default's type."""
    found: dict[str, tuple[str, ...]] = {}
    for key, value in list(config.items()):
        if isinstance(value, ConfigDict):
            found.update(_settle(value, f"{prefix}{key}."))
        elif isinstance(value, Choice):
            del config[key]
            config[key] = value.default
            found[f"{prefix}{key}"] = value.values
    return found


def get_base_config() -> ConfigDict:
    """A new config with every key at its default: the start of every experiment config."""
    config = _declarations()
    _settle(config)
    return config


# Dotted config key (without "config.") -> its valid values, from the `choice` declarations above.
# `model.variant` is not here: its valid values depend on `model_name` (`fer_flax.models.variants`).
CHOICES: dict[str, tuple[str, ...]] = _settle(_declarations())


def _leaves(tree: Mapping[str, Any], prefix: str = "") -> list[str]:
    """The dotted keys of the values (not the sections) of a config as a dict."""
    out = []
    for key, value in tree.items():
        out += _leaves(value, f"{prefix}{key}.") if isinstance(value, Mapping) else [f"{prefix}{key}"]
    return out


# Every declared key, dotted: what every config holds (`model`'s family options are not declared).
KEYS: tuple[str, ...] = tuple(_leaves(get_base_config().to_dict()))


def complete(saved: Mapping[str, Any]) -> dict[str, Any]:
    """`saved` (a config as a dict, such as a run's config.json holds) with every declared key it lacks
    set to its default, whole sections included. Its own values are kept, and so are keys that are no
    longer declared and `model`'s family options."""
    return _merged(get_base_config().to_dict(), saved)


def _merged(defaults: Mapping[str, Any], saved: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(defaults)
    for key, value in saved.items():
        default = defaults.get(key)
        both_sections = isinstance(value, Mapping) and isinstance(default, Mapping)
        out[key] = _merged(default, value) if both_sections else value
    return out
