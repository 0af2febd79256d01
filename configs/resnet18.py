"""ResNet-18 adapted to 48×48 faces (3×3 stride-1 stem, no max-pool; stages at 48-24-12-6).

Command (FER2013; the real run belongs on a GPU — ~2.3 GFLOP per image forward):
  python -m fer_flax.main --config configs/resnet18.py --workdir workdirs/resnet18 \
      --config.data.path=../shared/data/fer2013/fer2013.csv.gz

Without `--config.data.path` the same recipe runs on the built-in synthetic faces.
On one GPU add `--config.dtype=bfloat16 --config.data.pipeline=device --config.steps_per_call=25
--config.log_every_steps=25`: the split on the device, 25 steps per host call (docs/training.md);
benchmarks/gpu_suite.sh trains this config that way.
PublicTest accuracy: not measured yet (a GPU run); measured figures are in benchmarks/RESULTS.md.

`get_config(arg)` variants: '' (the recommended FER2013 recipe: SGD-Nesterov lr 0.1 at batch 128, cosine,
60 epochs, label smoothing 0.1, crop/flip/rotate/erase augmentation), 'cpu' (the same recipe on the
stride-2-stem half-width ResNet-18, ~1/16 of the FLOPs, for CPU-only machines), 'smoke' (a few steps of
the smallest ResNet, for tests). Other sizes: `--config.model.variant=resnet18_s2` etc. (see
fer_flax/models/resnet.py).
"""

from configs.common import check_arg, get_base_config, use_sgd_recipe, use_smoke_settings


def get_config(arg: str = ""):
    check_arg(arg, ("", "cpu", "smoke"))
    c = get_base_config()
    c.model_name = "resnet"
    c.model.variant = "resnet18"
    use_sgd_recipe(c)
    if arg == "cpu":
        c.model.variant = "resnet18_half_s2"
        c.num_epochs = 10.0
        c.optim.warmup_epochs = 1.0
    elif arg == "smoke":
        use_smoke_settings(c, "resnet10_half")
    return c
