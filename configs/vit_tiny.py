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
there). PublicTest accuracy: not measured yet; measured figures are in benchmarks/RESULTS.md.
"""

from configs.common import check_arg, get_base_config, use_adamw_recipe, use_smoke_settings


def get_config(arg: str = ""):
    check_arg(arg, ("", "p6_gap", "smoke"))
    c = get_base_config()
    c.model_name = "vit"
    c.model.variant = "vit_tiny_p6_gap" if arg == "p6_gap" else "vit_tiny_p4"
    use_adamw_recipe(c, lr=1e-3)
    if arg == "smoke":
        use_smoke_settings(c, "vit_micro")
    return c
