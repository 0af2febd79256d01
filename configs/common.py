"""Defaults shared by every experiment config.

Each experiment file calls `get_base_config()` and overrides what it needs. Every key that a run may read
is declared here, so `--config.some.typo=1` is rejected by ml_collections instead of silently ignored.
Keys whose default is "unset" are declared with `placeholder(type)` so they stay overridable.
"""

from ml_collections import ConfigDict, config_dict


def get_base_config() -> ConfigDict:
    c = ConfigDict()
    c.seed = 0

    # Model: `model_name` picks the module fer_flax/models/<model_name>.py, `model.variant` a size in its
    # VARIANTS table; any other key under `model` overrides that variant's constructor argument.
    c.model_name = "cnn"
    c.model = ConfigDict({"variant": "small"})
    c.dtype = "float32"  # compute dtype; parameters and optimizer state are always float32
    c.aux_loss_weight = 0.3  # weight of auxiliary-classifier losses (GoogLeNet) in the training loss
    c.label_smoothing = 0.0

    # Data: no path means the built-in synthetic faces. A path is a FER2013 CSV (.csv / .csv.gz) or an
    # image-folder tree (train/<class>/*.jpg, test/<class>/...) or a .tar/.tar.gz of one.
    c.data = ConfigDict()
    c.data.path = config_dict.placeholder(str)
    c.data.cache_dir = config_dict.placeholder(str)  # default: .fer_flax_cache beside the workdir
    c.data.synthetic_train = 8000
    c.data.synthetic_val = 1000
    c.data.synthetic_test = 1000
    c.data.synthetic_seed = 0
    # Class-balanced sampling of the training stream: none | balanced | sqrt | explicit.
    c.data.sampling = "none"
    c.data.class_weights = config_dict.placeholder(tuple)  # 7 weights, used when sampling == "explicit"
    c.data.num_workers = 0  # Grain worker processes; 0 is fastest on small CPU machines

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

    # Optimisation; batch sizes are global (across all devices and hosts).
    c.batch_size = 128
    c.eval_batch_size = 512
    c.num_epochs = 10.0
    c.optim = ConfigDict()
    c.optim.name = "sgd"  # sgd | adamw
    c.optim.lr = 0.1  # peak learning rate, for the global batch size
    c.optim.momentum = 0.9
    c.optim.nesterov = True
    c.optim.b1 = 0.9
    c.optim.b2 = 0.999
    c.optim.weight_decay = 5e-4  # decoupled for adamw, L2 for sgd; never applied to biases or norms
    c.optim.schedule = "cosine"  # cosine | constant | step
    c.optim.warmup_epochs = 1.0
    c.optim.step_epochs = (
        30.0,
        60.0,
    )  # step schedule: epochs at which lr is multiplied by step_factor
    c.optim.step_factor = 0.1
    c.optim.grad_clip_norm = config_dict.placeholder(float)

    # Cadence, checkpoints and logging.
    c.log_every_steps = 50
    c.eval_every_epochs = 1.0
    # Full-state checkpoints for resume: every N steps, and always at each evaluation; 0 = only at
    # evaluations. Keep at least 2 so a corrupt newest checkpoint has a good one to fall back to.
    c.checkpoint_every_steps = 0
    c.checkpoint_keep = 2  # most recent checkpoints kept for resume
    c.checkpoint_keep_best = 1  # best-by-val-accuracy checkpoints kept
    c.progress_bar = True
    # A non-finite loss or gradient: "stop" raises (naming the step and the last good checkpoint);
    # "skip" keeps the previous parameters, optimizer state and BatchNorm statistics for that step
    # and counts it in `train/skipped_updates`. A non-finite state is never checkpointed either way.
    c.nonfinite = "stop"
    c.wandb = ConfigDict()
    c.wandb.mode = "offline"  # offline | online | disabled
    c.wandb.project = "fer_flax"
    c.wandb.entity = config_dict.placeholder(str)
    c.wandb.histogram_every_steps = 200  # weight and gradient histograms; 0 disables
    return c


def use_sgd_recipe(
    c: ConfigDict,
    *,
    lr: float = 0.1,
    epochs: float = 60.0,
    warmup_epochs: float = 2.0,
    weight_decay: float = 5e-4,
    label_smoothing: float = 0.1,
    erase_prob: float = 0.25,
) -> None:
    """The convolutional families' recipe: SGD with Nesterov momentum 0.9 (lr for batch 128), linear
    warmup then cosine, L2 weight decay on kernels, label smoothing, and pad-crop / flip / ±10°
    rotation / random-erasing augmentation."""
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
    c.wandb.mode = "disabled"


def check_arg(arg: str, valid: tuple[str, ...]) -> None:
    if arg not in valid:
        raise ValueError(f"Unknown config argument {arg!r}; valid: {', '.join(map(repr, valid))}")
