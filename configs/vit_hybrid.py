"""Conv-stem hybrid ViT-Small (Xiao et al. 2021, "Early convolutions help transformers see better").

Three 3x3 conv-BN-ReLU layers (64, 128, 256 channels, strides 1, 2, 2) and a 1x1 conv replace the
patchify stem, giving 12x12 = 144 tokens; 11 transformer blocks instead of 12 pay for the stem, as
in the paper. The paper's finding is that this stem makes ViT optimisation far less sensitive to the
learning rate and the optimizer, and converge faster.

Command:
  python -m fer_flax.main --config configs/vit_hybrid.py --workdir workdirs/vit_hybrid

Real FER2013:
  --config.data.path=../shared/data/fer2013/fer2013.csv.gz

`get_config(arg)` variants:
  ''       vit_hybrid_small (20.0M parameters, 6.2 GFLOPs/image)
  'smoke'  vit_hybrid_micro (conv stem 16, 32 → 144 tokens, dim 64, depth 2), for tests

Recipe: AdamW, lr 1e-3 at batch 128 (the conv stem tolerates a higher rate than vit_small's 5e-4),
5 warm-up epochs then cosine, weight decay 0.05 on kernels only, gradient clipping at 1.0, label
smoothing 0.1, stochastic depth 0.1 (in the variant), mild augmentation, 100 epochs. Meant for a GPU
(`--config.dtype=bfloat16` there). Accuracy and runtime figures are added here once measured.
"""

from configs.common import get_base_config

_ARGS = ("", "smoke")


def get_config(arg: str = ""):
    if arg not in _ARGS:
        raise ValueError(f"Unknown config argument {arg!r}; valid: {', '.join(map(repr, _ARGS))}")
    c = get_base_config()
    c.model_name = "vit"
    c.model.variant = "vit_hybrid_small"
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
        c.model.variant = "vit_hybrid_micro"
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
