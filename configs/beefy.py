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
60 epochs, label smoothing 0.1, crop/flip/rotate/erase augmentation), 'gpu' (below), 'smoke' (a few steps
of the 'small' variant, for tests). Other sizes: `--config.model.variant=small|wide|deep|large`; any
BeefyModel field can be overridden the same way, e.g. `--config.model.downsample=strided`.

'gpu': BeefyModel's share of the one-call GPU comparison (benchmarks/gpu_comparison.sh), run alone with
  python -m fer_flax.main --config configs/beefy.py:gpu --workdir workdirs/beefy_gpu \
      --config.data.path=../shared/data/fer2013/fer2013.csv.gz
The ResNet-18 GPU recipe (configs/resnet18.py:gpu: SGD-Nesterov lr 0.1, cosine, label smoothing 0.1,
random-resized crops, shifts, flips, ±10° rotations, random erasing at p 0.5, EMA 0.999, flip TTA,
bfloat16, the device pipeline, 25 steps per call) for 60 epochs with 10 evaluations. Its 40-epoch
recipe reached 0.6897 on one H200, still rising (RESULTS.md, "Time to accuracy"). Estimated time on one
NVIDIA H200 (not measured): 29,789 images/s (measured for this net at batch 128 in bf16) is 0.96 s an
epoch, so about 58 s of training plus 10 evaluations with checkpoints at about 1.3 s: about 71 s.
PublicTest accuracy: not measured yet.
"""

from configs.common import (
    check_arg,
    get_base_config,
    use_cpu_budget,
    use_gpu_settings,
    use_sgd_recipe,
    use_smoke_settings,
    use_strong_augmentation,
)


def get_config(arg: str = ""):
    check_arg(arg, ("", "gpu", "cpu", "smoke"))
    c = get_base_config()
    c.model_name = "beefy"
    c.model.variant = "base"
    use_sgd_recipe(c)
    if arg == "gpu":
        use_sgd_recipe(c, epochs=60.0, erase_prob=0.5)
        use_strong_augmentation(c)
        use_gpu_settings(c, epochs=60, evaluations=10)
    if arg == "cpu":
        c.model.variant = "cpu"
        use_cpu_budget(c, epochs=8)
    if arg == "smoke":
        use_smoke_settings(c, "small")
    return c
