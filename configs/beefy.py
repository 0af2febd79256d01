"""BeefyModel, the course project's best network: a residual CNN (widen conv → residual blocks, max-pool
between stages) with a BatchNorm MLP head; variant 'base' (~8.2M parameters, ~2.2 GFLOP per image).

Command (FER2013; a GPU run):
  python -m fer_flax.main --config configs/beefy.py --workdir workdirs/beefy \
      --config.data.path=../shared/data/fer2013/fer2013.csv.gz

Without `--config.data.path` the same recipe runs on the built-in synthetic faces.
On one GPU add `--config.dtype=bfloat16 --config.data.pipeline=device --config.steps_per_call=25
--config.log_every_steps=25`: the split on the device, 25 steps per host call (docs/training.md);
benchmarks/gpu_suite.sh trains this config that way.
PublicTest accuracy: not measured yet (a GPU run); measured figures are in benchmarks/RESULTS.md.

`get_config(arg)` variants: '' (the recommended FER2013 recipe: SGD-Nesterov lr 0.1 at batch 128, cosine,
60 epochs, label smoothing 0.1, crop/flip/rotate/erase augmentation), 'smoke' (a few steps of the 'small'
variant, for tests). Other sizes: `--config.model.variant=small|wide|deep|large`; any BeefyModel field can
be overridden the same way, e.g. `--config.model.downsample=strided`.
"""

from configs.common import check_arg, get_base_config, use_sgd_recipe, use_smoke_settings


def get_config(arg: str = ""):
    check_arg(arg, ("", "smoke"))
    c = get_base_config()
    c.model_name = "beefy"
    c.model.variant = "base"
    use_sgd_recipe(c)
    if arg == "smoke":
        use_smoke_settings(c, "small")
    return c
