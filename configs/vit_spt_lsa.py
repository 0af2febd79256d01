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
stochastic depth 0.1 (in the variant), mild augmentation, 100 epochs. Meant for a GPU. PublicTest
accuracy: not measured yet; measured figures are in benchmarks/RESULTS.md.
"""

from configs.common import check_arg, get_base_config, use_adamw_recipe, use_smoke_settings


def get_config(arg: str = ""):
    check_arg(arg, ("", "smoke"))
    c = get_base_config()
    c.model_name = "vit"
    c.model.variant = "vit_spt_lsa_tiny"
    use_adamw_recipe(c, lr=1e-3, warmup_epochs=10.0)
    if arg == "smoke":
        use_smoke_settings(c, "vit_spt_lsa_micro")
    return c
