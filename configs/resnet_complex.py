"""ResNet-18 trunk with the "complex" head: GAP → Dense(512) → BN → ReLU → Dropout(0.5) → Dense(256) → BN →
ReLU → Dropout(0.5) → Dense(7).

Command (FER2013; a GPU run — ~2.3 GFLOP per image forward):
  python -m fer_flax.main --config configs/resnet_complex.py --workdir workdirs/resnet_complex \
      --config.data.path=../shared/data/fer2013/fer2013.csv.gz

Without `--config.data.path` the same recipe runs on the built-in synthetic faces.
PublicTest accuracy: not measured yet (a GPU run); measured figures are in benchmarks/RESULTS.md.

`get_config(arg)` variants: '' (the recommended FER2013 recipe, as configs/resnet18.py: SGD-Nesterov lr 0.1
at batch 128, cosine, 60 epochs, label smoothing 0.1, crop/flip/rotate/erase augmentation), 'smoke' (a few
steps of the smallest ResNet with the complex head, for tests). The ResNet-34 version:
`--config.model.variant=resnet34_complex`.
"""

from configs.common import check_arg, get_base_config, use_sgd_recipe, use_smoke_settings


def get_config(arg: str = ""):
    check_arg(arg, ("", "smoke"))
    c = get_base_config()
    c.model_name = "resnet"
    c.model.variant = "resnet18_complex"
    use_sgd_recipe(c)
    if arg == "smoke":
        # The smallest trunk, with the complex head kept so the smoke run exercises it.
        use_smoke_settings(c, "resnet10_half")
        c.model.head_widths = (512, 256)
        c.model.head_dropout = 0.5
    return c
