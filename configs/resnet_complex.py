"""ResNet-18 trunk with the "complex" head: GAP → Dense(512) → BN → ReLU → Dropout(0.5) → Dense(256) → BN →
ReLU → Dropout(0.5) → Dense(7).

Command (FER2013; a GPU run — ~2.3 GFLOP per image forward):
  python -m fer_flax.main --config configs/resnet_complex.py --workdir workdirs/resnet_complex \
      --config.data.path=../shared/data/fer2013/fer2013.csv.gz

Without `--config.data.path` the same recipe runs on the built-in synthetic faces.
Accuracy and runtime figures are added here once measured.

`get_config(arg)` variants: '' (the recommended FER2013 recipe, as configs/resnet18.py: SGD-Nesterov lr 0.1
at batch 128, cosine, 60 epochs, label smoothing 0.1, crop/flip/rotate/erase augmentation), 'smoke' (a few
steps of the smallest ResNet with the complex head, for tests). The ResNet-34 version:
`--config.model.variant=resnet34_complex`.
"""

from configs.common import get_base_config


def get_config(arg: str = ""):
    c = get_base_config()
    c.model_name = "resnet"
    c.model.variant = "resnet18_complex"
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
        # The smallest trunk, with the complex head kept so the smoke run exercises it.
        c.model.variant = "resnet10_half"
        c.model.head_widths = (512, 256)
        c.model.head_dropout = 0.5
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
