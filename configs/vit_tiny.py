"""ViT-Tiny (dim 192, depth 12, 3 heads) on 48x48 faces with small patches, trained from scratch.

Command:
  python -m fer_flax.main --config configs/vit_tiny.py --workdir workdirs/vit_tiny

Real FER2013 (add to any variant below):
  --config.data.path=../shared/data/fer2013/fer2013.csv.gz

`get_config(arg)` variants:
  ''        vit_tiny_p4: 4x4 patches → 144 tokens, CLS head (5.4M parameters, 1.8 GFLOPs/image)
  'p6_gap'  vit_tiny_p6_gap: 6x6 patches → 64 tokens, global-average-pool head (0.7 GFLOPs/image)
  'smoke'   vit_micro on a few synthetic batches, for tests

Recipe: AdamW, lr 1e-3 at batch 128 with 5 warm-up epochs then cosine, weight decay 0.05 on kernels
only, gradient clipping at 1.0, label smoothing 0.1, stochastic depth 0.1 (in the variant), mild
augmentation (pad-crop, flip, ±10° rotation, random erasing). ViTs trained from scratch on ~29k
images need a long schedule, hence 100 epochs; this is meant for a GPU (`--config.dtype=bfloat16`
there). Accuracy and runtime figures are added here once measured.
"""

from configs.common import get_base_config

_ARGS = ("", "p6_gap", "smoke")


def get_config(arg: str = ""):
    if arg not in _ARGS:
        raise ValueError(f"Unknown config argument {arg!r}; valid: {', '.join(map(repr, _ARGS))}")
    c = get_base_config()
    c.model_name = "vit"
    c.model.variant = "vit_tiny_p6_gap" if arg == "p6_gap" else "vit_tiny_p4"
    c.batch_size = 128
    c.num_epochs = 100.0
    c.optim.name = "adamw"
    c.optim.lr = 1e-3
    c.optim.weight_decay = 0.05
    c.optim.schedule = "cosine"
    c.optim.warmup_epochs = 5.0
    c.optim.grad_clip_norm = 1.0
    c.label_smoothing = 0.1
    c.augment.pad_crop = 4
    c.augment.flip = True
    c.augment.rotate_degrees = 10.0
    c.augment.erase_prob = 0.25
    if arg == "smoke":
        c.model.variant = "vit_micro"
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
    return c
