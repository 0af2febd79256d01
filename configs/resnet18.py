"""ResNet-18 adapted to 48×48 faces (3×3 stride-1 stem, no max-pool; stages at 48-24-12-6).

Command (FER2013; the real run belongs on a GPU — ~2.3 GFLOP per image forward):
  python -m fer_flax.main --config configs/resnet18.py --workdir workdirs/resnet18 \
      --config.data.path=../shared/data/fer2013/fer2013.csv.gz

Without `--config.data.path` the same recipe runs on the built-in synthetic faces.
Accuracy and runtime figures are added here once measured.

`get_config(arg)` variants: '' (the recommended FER2013 recipe: SGD-Nesterov lr 0.1 at batch 128, cosine,
60 epochs, label smoothing 0.1, crop/flip/rotate/erase augmentation), 'cpu' (the same recipe on the
stride-2-stem half-width ResNet-18, ~1/16 of the FLOPs, for CPU-only machines), 'smoke' (a few steps of
the smallest ResNet, for tests). Other sizes: `--config.model.variant=resnet18_s2` etc. (see
fer_flax/models/resnet.py).
"""

from configs.common import get_base_config


def get_config(arg: str = ""):
    c = get_base_config()
    c.model_name = "resnet"
    c.model.variant = "resnet18"
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
    if arg == "cpu":
        c.model.variant = "resnet18_half_s2"
        c.num_epochs = 10.0
        c.optim.warmup_epochs = 1.0
    elif arg == "smoke":
        c.model.variant = "resnet10_half"
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
        raise ValueError(f"Unknown config argument {arg!r}; valid: '', 'cpu', 'smoke'")
    return c
