"""ResNet-34 adapted to 48×48 faces (3×3 stride-1 stem, no max-pool; stages at 48-24-12-6).

Command (FER2013; a GPU run — ~4.7 GFLOP per image forward):
  python -m fer_flax.main --config configs/resnet34.py --workdir workdirs/resnet34 \
      --config.data.path=../shared/data/fer2013/fer2013.csv.gz

Without `--config.data.path` the same recipe runs on the built-in synthetic faces.
PublicTest accuracy: not measured yet (a GPU run); measured figures are in benchmarks/RESULTS.md.

`get_config(arg)` variants: '' (the recommended FER2013 recipe, the same as configs/resnet18.py: SGD-Nesterov
lr 0.1 at batch 128, cosine, 60 epochs, label smoothing 0.1, crop/flip/rotate/erase augmentation),
'smoke' (a few steps of the smallest ResNet, for tests).
"""

from configs.common import check_arg, get_base_config, use_sgd_recipe, use_smoke_settings


def get_config(arg: str = ""):
    check_arg(arg, ("", "smoke"))
    c = get_base_config()
    c.model_name = "resnet"
    c.model.variant = "resnet34"
    use_sgd_recipe(c)
    if arg == "smoke":
        use_smoke_settings(c, "resnet10_half")
    return c
