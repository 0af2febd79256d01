"""BeefyModel, the course project's best network: a residual CNN (widen conv → residual blocks, max-pool
between stages) with a BatchNorm MLP head; variant 'base' (~8.2M parameters, ~2.2 GFLOP per image).

Command (FER2013; a GPU run):
  python -m fer_flax.main --config configs/beefy.py --workdir workdirs/beefy \
      --config.data.path=../shared/data/fer2013/fer2013.csv.gz

Without `--config.data.path` the same recipe runs on the built-in synthetic faces.
Accuracy and runtime figures are added here once measured.

`get_config(arg)` variants: '' (the recommended FER2013 recipe: SGD-Nesterov lr 0.1 at batch 128, cosine,
60 epochs, label smoothing 0.1, crop/flip/rotate/erase augmentation), 'smoke' (a few steps of the 'small'
variant, for tests). Other sizes: `--config.model.variant=small|wide|deep|large`; any BeefyModel field can
be overridden the same way, e.g. `--config.model.downsample=strided`.
"""

from configs.common import get_base_config


def get_config(arg: str = ""):
    c = get_base_config()
    c.model_name = "beefy"
    c.model.variant = "base"
    c.batch_size = 128
    c.num_epochs = 60.0
    c.optim.name = "sgd"
    c.optim.lr = 0.1
    c.optim.momentum = 0.9
    c.optim.nesterov = True
    c.optim.weight_decay = 5e-4
    c.optim.schedule = "cosine"
    c.optim.warmup_epochs = 2.0
    c.label_smoothing = 0.1
    c.augment.pad_crop = 4
    c.augment.flip = True
    c.augment.rotate_degrees = 10.0
    c.augment.erase_prob = 0.25
    if arg == "smoke":
        c.model.variant = "small"
        c.data.synthetic_train = 256
        c.data.synthetic_val = 128
        c.data.synthetic_test = 128
        c.batch_size = 32
        c.eval_batch_size = 64
        c.num_epochs = 1.0
        c.optim.warmup_epochs = 0.25
        c.log_every_steps = 2
        c.progress_bar = False
        c.wandb.mode = "disabled"
    elif arg:
        raise ValueError(f"Unknown config argument {arg!r}; valid: '', 'smoke'")
    return c
