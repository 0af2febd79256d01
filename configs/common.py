"""Defaults shared by every experiment config.

Each experiment file calls `get_base_config()` and overrides what it needs. Every key that a run may read
is declared here, so `--config.some.typo=1` is rejected by ml_collections instead of silently ignored.
Keys whose default is "unset" are declared with `placeholder(type)` so they stay overridable.
The valid values of every key are in `fer_flax/config/` (`choices.CHOICES` for the choice keys), and
`fer_flax.config.schema.validate` checks a config before a run reads any data.
"""

from ml_collections import ConfigDict, config_dict

from fer_flax.config.schema import check_choice


def get_base_config() -> ConfigDict:
    c = ConfigDict()
    c.seed = 0

    # Model: `model_name` picks the module fer_flax/models/<model_name>.py, `model.variant` a size in its
    # VARIANTS table; any other key under `model` overrides that variant's constructor argument.
    c.model_name = "cnn"
    c.model = ConfigDict({"variant": "small"})
    c.dtype = "float32"  # compute dtype (float32 | bfloat16); parameters and optimizer state stay float32
    # CPU runs via `fer_flax.main`: split the CPU into this many JAX devices (0 = auto: one per core,
    # reduced until it divides the batch sizes) so the data-parallel step uses every core, because
    # XLA:CPU runs each convolution on one thread. 1 disables. Ignored when XLA_FLAGS fixes the count.
    c.cpu_devices = 0
    c.aux_loss_weight = 0.3  # weight of auxiliary-classifier losses (GoogLeNet) in the training loss
    c.label_smoothing = 0.0

    # Training loss (fer_flax/core/losses.py); class counts and prior come from the TRAINING split only.
    c.loss = ConfigDict()
    # Per-class loss weights (config_schema.CLASS_WEIGHTINGS): none | inverse (1/n_c) | sqrt_inverse
    # (1/sqrt(n_c)) | explicit (loss.class_weights); normalised so their mean over the training label
    # distribution is 1.
    c.loss.class_weighting = "none"
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

    # Data: no path means the built-in synthetic faces. A path is a FER2013 CSV (.csv / .csv.gz), an
    # image-folder tree (train/<class>/*.jpg, test/<class>/...), a FER+ folder (FER2013Train/label.csv,
    # ...) or a .tar/.tar.gz of one (docs/data.md).
    c.data = ConfigDict()
    c.data.path = config_dict.placeholder(str)
    # What the path holds (config_schema.DATA_FORMATS): auto (a CSV is FER2013; a folder or archive is
    # FER+ when it has FER2013Train/Valid/Test folders, else an image-folder set) | fer2013 | folder |
    # ferplus.
    c.data.format = "auto"
    # FER+ label mode (config_schema.LABEL_MODES, fer_flax/data/labels.py): majority | probability |
    # crossentropy | multi_target. Accuracy is always measured against the majority vote.
    c.data.label_mode = "majority"
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
    # Class-balanced sampling of the training stream (config_schema.SAMPLING_MODES): none | balanced |
    # sqrt | explicit.
    c.data.sampling = "none"
    c.data.class_weights = config_dict.placeholder(tuple)  # one per class, used when sampling == "explicit"
    c.data.num_workers = 0  # Grain worker processes; 0 is fastest on small CPU machines
    # Where the training stream is made (config_schema.PIPELINES): "grain" (host: Grain samples and
    # batches, each batch is copied to the devices) or "device" (the whole split on the devices, the
    # epoch order drawn and each batch gathered there, inside the jitted step: the host only
    # dispatches). Same sampling modes and distributions, and the same resume guarantees; see
    # docs/training.md. Fixed for a workdir.
    c.data.pipeline = "grain"
    # data.pipeline == "device": the images "replicated" on every device or "sharded" over them (each
    # process places only its devices' rows); "auto" replicates on one process and shards across several.
    c.data.device_layout = "auto"

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

    # Optimisation; batch sizes are global (across all devices and hosts).
    c.batch_size = 128
    c.eval_batch_size = 512
    # Test-time augmentation of the training loop's evaluations (and so of best-checkpoint selection):
    # none | flip | tencrop (of augment.crop_size). Match the training views: tencrop after ten_crop.
    c.eval_tta = "none"
    c.num_epochs = 10.0
    c.optim = ConfigDict()
    c.optim.name = "sgd"  # sgd | adamw
    c.optim.lr = 0.1  # peak learning rate, for the global batch size
    c.optim.momentum = 0.9
    c.optim.nesterov = True
    c.optim.b1 = 0.9
    c.optim.b2 = 0.999
    c.optim.weight_decay = 5e-4  # decoupled for adamw, L2 for sgd; never applied to biases or norms
    c.optim.schedule = "cosine"  # cosine | constant | step | plateau
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
    c.ema.select = "best"

    # Train steps per host call: k > 1 runs up to k steps in one compiled loop (metrics summed on the
    # device), so the per-step dispatch cost vanishes for small models. Calls still end at every log,
    # evaluation, checkpoint and histogram step, so those land on exact steps whatever k is.
    c.steps_per_call = 1

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
    c.nonfinite = "stop"
    # Fine-tuning (fer_flax/training/init_from.py): start a new run from another run's weights and BatchNorm
    # statistics, "WORKDIR[:best|latest|STEP]" (default best); the classifier head is re-initialised when
    # the class count differs. init_weights: its raw or EMA weights (EMA: a full checkpoint, latest or a
    # step). init_skip: a regex of parameter paths not to load.
    c.init_from = config_dict.placeholder(str)
    c.init_weights = "raw"
    c.init_skip = config_dict.placeholder(str)
    # Knowledge distillation (fer_flax/training/distill.py, docs/distillation.md): train against the
    # temperature-softened probabilities of finished runs. teachers: their workdirs, each optionally
    # "WORKDIR:best|latest|STEP" like init_from (any families; several are an ensemble); empty = off.
    # Loss: alpha * CE(true labels, smoothed) + (1 - alpha) * T^2 * KL(teachers_T || student_T).
    # mode (config_schema.DISTILL_MODES): cached (the teachers' probabilities of each clean training
    # image, computed once and stored beside the data cache) | on_the_fly (the teachers run on every
    # augmented batch inside the train step). tta: the teachers' test-time views (none | flip | tencrop);
    # unset = each teacher's own eval_tta.
    c.distill = ConfigDict()
    c.distill.teachers = ()
    c.distill.alpha = 0.5
    c.distill.temperature = 4.0
    c.distill.mode = "cached"
    c.distill.tta = config_dict.placeholder(str)
    c.wandb = ConfigDict()
    c.wandb.mode = "offline"  # offline | online | disabled
    c.wandb.project = "fer_flax"
    c.wandb.entity = config_dict.placeholder(str)
    # Runs of one experiment shown together in wandb (research.sweep.study sets it to the sweep's name).
    c.wandb.group = config_dict.placeholder(str)
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
