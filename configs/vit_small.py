"""ViT-Small (dim 384, depth 12, 6 heads) on 48x48 faces with small patches, trained from scratch.

Command:
  python -m fer_flax.main --config configs/vit_small.py --workdir workdirs/vit_small

Real FER2013 (add to any variant below):
  --config.data.path=../shared/data/fer2013/fer2013.csv.gz

On one GPU add `--config.dtype=bfloat16 --config.data.pipeline=device --config.steps_per_call=25
--config.log_every_steps=25`: the split on the device, 25 steps per host call (docs/training.md);
benchmarks/gpu_suite.sh trains this config that way.

`get_config(arg)` variants:
  ''       vit_small_p6: 6x6 patches → 64 tokens, CLS head (21.3M parameters, 2.9 GFLOPs/image)
  'p4'     vit_small_p4: 4x4 patches → 144 tokens (6.6 GFLOPs/image)
  'smoke'  vit_micro on a few synthetic batches, for tests

Recipe: AdamW, lr 5e-4 at batch 128 (half ViT-Tiny's: the wider model is less stable early) with
5 warm-up epochs then cosine, weight decay 0.05 on kernels only, gradient clipping at 1.0, label
smoothing 0.1, stochastic depth 0.1 (in the variant), mild augmentation (pad-crop, flip, ±10°
rotation, random erasing), 100 epochs. Meant for a GPU (`--config.dtype=bfloat16` there); on a CPU
use configs/vit_tiny.py or the 'smoke' argument. PublicTest accuracy: not measured yet; measured
figures are in benchmarks/RESULTS.md.
"""

from configs.common import check_arg, get_base_config, use_adamw_recipe, use_smoke_settings


def get_config(arg: str = ""):
    check_arg(arg, ("", "p4", "smoke"))
    c = get_base_config()
    c.model_name = "vit"
    c.model.variant = "vit_small_p4" if arg == "p4" else "vit_small_p6"
    use_adamw_recipe(c, lr=5e-4)
    if arg == "smoke":
        use_smoke_settings(c, "vit_micro")
    return c
