"""ViT with Shifted Patch Tokenization and Locality Self-Attention (Lee et al. 2021, "Vision
Transformer for Small-Size Datasets").

SPT concatenates the image with its four diagonal half-patch shifts before patchifying, so each
token sees a wider receptive field; LSA sharpens attention with a learnable per-head temperature
and by masking every token's attention to itself. The backbone is the paper's small-dataset ViT:
dim 192, depth 9, 12 heads of 16 dims, MLP ratio 2; 4x4 patches → 144 tokens at 48x48.

Command:
  python -m fer_flax.main --config configs/vit_spt_lsa.py --workdir workdirs/vit_spt_lsa

Real FER2013:
  --config.data.path=../shared/data/fer2013/fer2013.csv.gz

`get_config(arg)` variants:
  ''       vit_spt_lsa_tiny (2.7M parameters, 0.94 GFLOPs/image)
  'smoke'  vit_spt_lsa_micro (dim 64, depth 2, 6x6 patches), for tests

Recipe: AdamW, lr 1e-3 at batch 128, 10 warm-up epochs (small-data ViTs benefit from a long warm-up)
then cosine, weight decay 0.05 on kernels only, gradient clipping at 1.0, label smoothing 0.1,
stochastic depth 0.1 (in the variant), mild augmentation, 100 epochs. Accuracy and runtime figures
are added here once measured.
"""

from configs.common import get_base_config

_ARGS = ("", "smoke")


def get_config(arg: str = ""):
    if arg not in _ARGS:
        raise ValueError(f"Unknown config argument {arg!r}; valid: {', '.join(map(repr, _ARGS))}")
    c = get_base_config()
    c.model_name = "vit"
    c.model.variant = "vit_spt_lsa_tiny"
    c.batch_size = 128
    c.num_epochs = 100.0
    c.optim.name = "adamw"
    c.optim.lr = 1e-3
    c.optim.weight_decay = 0.05
    c.optim.schedule = "cosine"
    c.optim.warmup_epochs = 10.0
    c.optim.grad_clip_norm = 1.0
    c.label_smoothing = 0.1
    c.augment.pad_crop = 4
    c.augment.flip = True
    c.augment.rotate_degrees = 10.0
    c.augment.erase_prob = 0.25
    if arg == "smoke":
        c.model.variant = "vit_spt_lsa_micro"
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
