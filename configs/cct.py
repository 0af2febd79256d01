"""Compact Convolutional Transformer (Hassani et al. 2021, "Escaping the Big Data Paradigm").

A convolutional tokenizer (bias-free 3x3 conv → ReLU → 3x3/2 max-pool), no class token, and sequence
pooling (an attention-weighted average of the output tokens) in place of the CLS head.

Command:
  python -m fer_flax.main --config configs/cct.py --workdir workdirs/cct

Real FER2013:
  --config.data.path=../shared/data/fer2013/fer2013.csv.gz

`get_config(arg)` variants:
  ''         cct_7_3x1: 7 layers, dim 256, one conv stage → 24x24 = 576 tokens (3.8M parameters,
             6.7 GFLOPs/image: 48x48 input gives 2.25x the tokens of the paper's 32x32
             CIFAR setting)
  '2_3x2'    cct_2_3x2: 2 layers, dim 128, two conv stages → 144 tokens (0.29M, 0.16 GFLOPs/image);
             small enough for a CPU
  'smoke'    cct_2_3x2 on a few synthetic batches, for tests

Recipe: AdamW, lr 5.5e-4 at batch 128 with 5 warm-up epochs then cosine, weight decay 0.05 on
kernels only, gradient clipping at 1.0, label smoothing 0.1, attention dropout 0.1 and stochastic
depth 0.1 (in the variant), mild augmentation, 100 epochs. Meant for a GPU. PublicTest accuracy: not
measured yet; measured figures are in benchmarks/RESULTS.md.
"""

from configs.common import check_arg, get_base_config, use_adamw_recipe, use_smoke_settings


def get_config(arg: str = ""):
    check_arg(arg, ("", "2_3x2", "smoke"))
    c = get_base_config()
    c.model_name = "vit"
    c.model.variant = "cct_7_3x1" if arg == "" else "cct_2_3x2"
    use_adamw_recipe(c, lr=5.5e-4)
    if arg == "smoke":
        use_smoke_settings(c)
    return c
