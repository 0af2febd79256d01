"""The valid values of every choice key of a config, in one table (`CHOICES`), and the tuples it is
built from. `fer_flax.config.schema` checks configs against them (and re-exports them); consumers
such as `tta` and `evaluate` take their choices from here, so a value is listed once."""

from __future__ import annotations

from fer_flax import models
from fer_flax.data.labels import LABEL_MODES

DTYPE_NAMES: tuple[str, ...] = ("float32", "bfloat16")
NONFINITE_MODES: tuple[str, ...] = ("stop", "skip")
# The weight sets a checkpoint of an EMA run holds (evaluate's --weights, checkpoint restore); ema.select
# picks one of them, or "best" of the two at each evaluation.
WEIGHT_SETS: tuple[str, ...] = ("raw", "ema")
EMA_SELECT: tuple[str, ...] = (*WEIGHT_SETS, "best")
TTA_MODES: tuple[str, ...] = ("none", "flip", "tencrop")
OPTIMIZERS: tuple[str, ...] = ("sgd", "adamw")
SCHEDULES: tuple[str, ...] = ("cosine", "constant", "step", "plateau")
CLASS_WEIGHTINGS: tuple[str, ...] = ("none", "inverse", "sqrt_inverse", "explicit")
SAMPLING_MODES: tuple[str, ...] = ("none", "balanced", "sqrt", "explicit")
# Where the training stream is made: Grain on the host, or the split on the devices
# (fer_flax/training/device_input.py); with the device pipeline, how the images are laid out on the devices.
PIPELINES: tuple[str, ...] = ("grain", "device")
DEVICE_LAYOUTS: tuple[str, ...] = ("auto", "replicated", "sharded")
WANDB_MODES: tuple[str, ...] = ("offline", "online", "disabled")
# What `data.path` holds ("auto": a CSV is FER2013; a folder or archive is FER+ when it has the
# FER2013Train/Valid/Test folders, else an image-folder set); fer_flax.data.sources reads each.
DATA_FORMATS: tuple[str, ...] = ("auto", "fer2013", "folder", "ferplus")
# Knowledge distillation (training/distill.py): the teachers' probabilities computed once per training
# image ("cached") or by their forward pass inside each train step ("on_the_fly").
DISTILL_MODES: tuple[str, ...] = ("cached", "on_the_fly")

# Dotted config key (without "config.") -> its valid values.
CHOICES: dict[str, tuple[str, ...]] = {
    "model_name": models.FAMILIES,
    "dtype": DTYPE_NAMES,
    "eval_tta": TTA_MODES,
    "nonfinite": NONFINITE_MODES,
    "ema.select": EMA_SELECT,
    "optim.name": OPTIMIZERS,
    "optim.schedule": SCHEDULES,
    "loss.class_weighting": CLASS_WEIGHTINGS,
    "data.sampling": SAMPLING_MODES,
    "data.format": DATA_FORMATS,
    "data.label_mode": LABEL_MODES,
    "init_weights": WEIGHT_SETS,
    "data.pipeline": PIPELINES,
    "data.device_layout": DEVICE_LAYOUTS,
    "wandb.mode": WANDB_MODES,
    "distill.mode": DISTILL_MODES,
}
