"""The recipes shared by the experiment configs, and their start: `get_base_config()`.

Each experiment file calls `get_base_config()` and overrides what it needs, often through a recipe
below. The default of every key, and the valid values of every choice key beside its default, are
declared in the package (`fer_flax/config/defaults.py`, re-exported here), so an installed fer_flax
restores any run without this folder; `fer_flax.config.schema.validate` checks a config before a run
reads any data.
"""

from ml_collections import ConfigDict

from fer_flax.config.defaults import get_base_config
from fer_flax.config.schema import check_choice

__all__ = [
    "FER2013_STEPS_PER_EPOCH",
    "check_arg",
    "get_base_config",
    "use_adamw_recipe",
    "use_cpu_budget",
    "use_gpu_settings",
    "use_sgd_recipe",
    "use_smoke_settings",
    "use_strong_augmentation",
]

# FER2013's 28,709 Training faces at batch 128: ceil(28709 / 128) = 225 steps an epoch (= 9 x 25).
FER2013_STEPS_PER_EPOCH = 225


def use_sgd_recipe(
    c: ConfigDict,
    *,
    lr: float = 0.1,
    epochs: float = 60.0,
    warmup_epochs: float = 2.0,
    weight_decay: float = 5e-4,
    label_smoothing: float = 0.1,
    erase_prob: float = 0.25,
    ema_decay: float = 0.999,
    eval_tta: str = "flip",
) -> None:
    """The convolutional families' recipe: SGD with Nesterov momentum 0.9 (lr for batch 128), linear
    warmup then cosine, L2 weight decay on kernels, label smoothing, pad-crop / flip / ±10°
    rotation / random-erasing augmentation, an EMA of the weights (best/ keeps whichever of raw and
    EMA validates better) and flip test-time augmentation in the evaluations."""
    c.batch_size = 128
    c.num_epochs = epochs
    c.optim.update(
        name="sgd",
        lr=lr,
        momentum=0.9,
        nesterov=True,
        weight_decay=weight_decay,
        schedule="cosine",
        warmup_epochs=warmup_epochs,
    )
    c.label_smoothing = label_smoothing
    c.augment.update(pad_crop=4, flip=True, rotate_degrees=10.0, erase_prob=erase_prob)
    c.ema.decay = ema_decay
    c.eval_tta = eval_tta


def use_adamw_recipe(
    c: ConfigDict,
    *,
    lr: float,
    epochs: float = 100.0,
    warmup_epochs: float = 5.0,
    weight_decay: float = 0.05,
    grad_clip_norm: float = 1.0,
) -> None:
    """The transformers' recipe: AdamW with decoupled weight decay on kernels, long warmup then cosine,
    gradient clipping, label smoothing 0.1 and the same mild augmentation. ViTs trained from scratch
    on ~29k images need long schedules, hence 100 epochs."""
    use_sgd_recipe(c, epochs=epochs)
    c.optim.update(
        name="adamw",
        lr=lr,
        weight_decay=weight_decay,
        warmup_epochs=warmup_epochs,
        grad_clip_norm=grad_clip_norm,
    )


def use_strong_augmentation(c: ConfigDict, *, erase_prob: float = 0.5) -> None:
    """The augmentation of the long FER2013 recipes the GPU configs follow (Khaireddin & Chen 2021's
    VGG: random rescaling, shifts, flips, ±10° rotations and random erasing at p 0.5; the ResNet
    recipes are alike): random-resized crops of 80-100% of the face (aspect 0.9-1.1) composed with the
    pad-crop shift of ±4 pixels, the flip and the rotation into one resampling, then erasing."""
    c.augment.update(
        pad_crop=4,
        random_resized_crop=True,
        rrc_scale=(0.8, 1.0),
        rrc_ratio=(0.9, 1.1),
        flip=True,
        rotate_degrees=10.0,
        erase_prob=erase_prob,
        erase_scale=(0.02, 0.2),
    )


def use_gpu_settings(c: ConfigDict, *, epochs: int, evaluations: int = 10, steps_per_call: int = 25) -> None:
    """One GPU: bfloat16 compute (parameters and optimizer state stay float32), the training split on
    the device (`data.pipeline=device`) and `steps_per_call` steps per host call, a log record every
    epoch and `evaluations` evaluations (each also a checkpoint) spread evenly over `epochs`.

    `steps_per_call` divides FER2013's 225 steps an epoch and every evaluation falls on a whole epoch,
    so each call of the run has the same length and the run compiles one training program (a call
    cut short by a log or evaluation step would compile a second, one-step program)."""
    if FER2013_STEPS_PER_EPOCH % steps_per_call or epochs % evaluations:
        raise ValueError(
            f"steps_per_call={steps_per_call} must divide {FER2013_STEPS_PER_EPOCH} and "
            f"evaluations={evaluations} must divide epochs={epochs}"
        )
    c.dtype = "bfloat16"
    c.data.pipeline = "device"
    c.steps_per_call = steps_per_call
    c.log_every_steps = FER2013_STEPS_PER_EPOCH
    c.num_epochs = float(epochs)
    c.eval_every_epochs = float(epochs // evaluations)
    c.wandb.histogram_every_steps = 0


def use_cpu_budget(c: ConfigDict, *, epochs: float, evaluations: int = 5) -> None:
    """The CPU-budget comparison's settings (every family's `:cpu` config, benchmarks/cpu_comparison.sh):
    `epochs` sized so that training fits about 25 of the 30 minutes on 2 CPU cores, one warmup epoch,
    no random erasing (it pays off only in long runs), an EMA of 0.998, `evaluations` evaluations, one
    JAX device (RESULTS.md, "Devices") and no weight histograms."""
    c.num_epochs = float(epochs)
    c.optim.warmup_epochs = 1.0
    c.augment.erase_prob = 0.0
    c.ema.decay = 0.998
    c.eval_every_epochs = float(epochs) / evaluations
    c.cpu_devices = 1
    c.log_every_steps = 50
    c.wandb.histogram_every_steps = 0


def use_smoke_settings(c: ConfigDict, variant: str | None = None) -> None:
    """A few steps on a little synthetic data with nothing written but the essentials: for tests."""
    if variant is not None:
        c.model.variant = variant
    c.data.update(synthetic_train=256, synthetic_val=128, synthetic_test=128)
    c.batch_size = 32
    c.eval_batch_size = 64
    c.num_epochs = 1.0
    c.optim.warmup_epochs = 0.25
    c.log_every_steps = 2
    c.progress_bar = False
    c.curves_png = False
    c.wandb.mode = "disabled"
    # Tests of a family need one evaluation per run, not four (raw/EMA x flip): EMA and TTA have
    # their own tests.
    c.ema.decay = 0.0
    c.eval_tta = "none"


def check_arg(arg: str, valid: tuple[str, ...]) -> None:
    """Rejects a `get_config(arg)` argument (the part after ':' in --config=file.py:arg) not in `valid`."""
    check_choice("config argument", arg, valid)
