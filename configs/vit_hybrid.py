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
(`--config.dtype=bfloat16` there). PublicTest accuracy: not measured yet; measured figures are in
benchmarks/RESULTS.md.
"""

from configs.common import check_arg, get_base_config, use_adamw_recipe, use_smoke_settings


def get_config(arg: str = ""):
    check_arg(arg, ("", "smoke"))
    c = get_base_config()
    c.model_name = "vit"
    c.model.variant = "vit_hybrid_small"
    use_adamw_recipe(c, lr=1e-3)
    if arg == "smoke":
        use_smoke_settings(c, "vit_hybrid_micro")
    return c
