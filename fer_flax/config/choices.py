"""The valid values of the config's choice keys, one tuple per kind of choice. `fer_flax.config.defaults`
declares each choice key with its default and one of these tuples (deriving `CHOICES`, what
`fer_flax.config.schema` checks); consumers such as `tta` and `evaluate` take their choices from here
too, so a value is listed once. The label modes (`fer_flax.data.labels.LABEL_MODES`) and the model
families (`fer_flax.models.FAMILIES`) are defined in those packages."""

from __future__ import annotations

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
# FER2013Train/Valid/Test folders, a folder with records.json is a records folder, else an image-folder
# set); fer_flax.data.sources reads each.
DATA_FORMATS: tuple[str, ...] = ("auto", "fer2013", "folder", "ferplus", "records")
# Knowledge distillation (training/distill.py): the teachers' probabilities computed once per training
# image ("cached") or by their forward pass inside each train step ("on_the_fly").
DISTILL_MODES: tuple[str, ...] = ("cached", "on_the_fly")
