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
  'gpu'    vit_small_p6 sized for one GPU (below)
  'p4'     vit_small_p4: 4x4 patches → 144 tokens (6.6 GFLOPs/image)
  'smoke'  vit_micro on a few synthetic batches, for tests

Recipe: AdamW, lr 5e-4 at batch 128 (half ViT-Tiny's: the wider model is less stable early) with
5 warm-up epochs then cosine, weight decay 0.05 on kernels only, gradient clipping at 1.0, label
smoothing 0.1, stochastic depth 0.1 (in the variant), mild augmentation (pad-crop, flip, ±10°
rotation, random erasing), 100 epochs. Meant for a GPU (`--config.dtype=bfloat16` there); on a CPU
use configs/vit_tiny.py or the 'smoke' argument. PublicTest accuracy: not measured yet; measured
figures are in benchmarks/RESULTS.md.

'gpu': the ViT's share of the one-call GPU comparison (benchmarks/gpu_comparison.sh), run alone with
  python -m fer_flax.main --config configs/vit_small.py:gpu --workdir workdirs/vit_small_gpu \
      --config.data.path=../shared/data/fer2013/fer2013.csv.gz
The recipe above (AdamW lr 5e-4, 5 warmup epochs then cosine, weight decay 0.05, clipping at 1.0,
label smoothing 0.1, stochastic depth 0.1) for 60 epochs with 10 evaluations, with random-resized
crops (80-100%) added to the shifts, flips, rotations and erasing at p 0.25; EMA 0.999, flip TTA,
bfloat16, the device pipeline and 25 steps per call. A ViT trained from scratch on 29k faces wants
150-200 epochs; 60 is what the comparison's budget leaves it beside four other families. Estimated time
on one NVIDIA H200 (not measured): a training image costs 8.58 GFLOP (`fer_flax.core.flops`), about
ResNet-18's 8.33; its matrix products on 65 tokens of 384 should use the GPU a little less well than
ResNet-18's convolutions (24.5% of the bf16 peak): at about 22%, some 25,000 images/s, 1.15 s an
epoch, so about 69 s of training plus 10 evaluations with checkpoints at about 1.3 s: about 82 s.
PublicTest accuracy: not measured yet.
"""

from configs.common import (
    check_arg,
    get_base_config,
    use_adamw_recipe,
    use_cpu_budget,
    use_gpu_settings,
    use_smoke_settings,
    use_strong_augmentation,
)


def get_config(arg: str = ""):
    check_arg(arg, ("", "gpu", "cpu", "p4", "smoke"))
    c = get_base_config()
    c.model_name = "vit"
    c.model.variant = "vit_small_p4" if arg == "p4" else "vit_small_p6"
    use_adamw_recipe(c, lr=5e-4)
    if arg == "gpu":
        use_adamw_recipe(c, lr=5e-4, epochs=60.0)
        use_strong_augmentation(c, erase_prob=0.25)
        use_gpu_settings(c, epochs=60, evaluations=10)
    if arg == "cpu":
        c.model.variant = "vit_cpu"
        use_adamw_recipe(c, lr=1e-3)
        use_cpu_budget(c, epochs=14)  # also its epochs and one warmup epoch
    if arg == "smoke":
        use_smoke_settings(c, "vit_micro")
    return c
