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
60 epochs, label smoothing 0.1, crop/flip/rotate/erase augmentation), 'gpu' (below), 'cpu' (the same
recipe on the stride-2-stem half-width ResNet-18, ~1/16 of the FLOPs, for CPU-only machines), 'smoke' (a
few steps of the smallest ResNet, for tests). Other sizes: `--config.model.variant=resnet18_s2` etc. (see
fer_flax/models/resnet.py).

'gpu': ResNet-18's share of the one-call GPU comparison (benchmarks/gpu_comparison.sh), run alone with
  python -m fer_flax.main --config configs/resnet18.py:gpu --workdir workdirs/resnet18_gpu \
      --config.data.path=../shared/data/fer2013/fer2013.csv.gz
SGD-Nesterov lr 0.1 at batch 128 with 2 warmup epochs then cosine, weight decay 5e-4, label smoothing
0.1, 70 epochs; random-resized crops (80-100%), ±4 pixel shifts, flips, ±10° rotations and random
erasing at p 0.5 (the long FER2013 recipes' augmentation, `use_strong_augmentation`); EMA 0.999, flip
TTA; bfloat16, the device pipeline, 25 steps per call, 10 evaluations. The 40-epoch recipe reached
0.7060 on one H200 and was still rising (RESULTS.md, "Time to accuracy"), hence more epochs with more
augmentation. Estimated time on one NVIDIA H200 (not measured): 29,125 images/s (measured for this net
at batch 128 in bf16) is 0.99 s an epoch, so about 69 s of training, plus 10 evaluations with their
checkpoints at about 1.3 s each: about 82 s. PublicTest accuracy: not measured yet.
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
    c.model_name = "resnet"
    c.model.variant = "resnet18"
    use_sgd_recipe(c)
    if arg == "gpu":
        use_sgd_recipe(c, epochs=70.0, erase_prob=0.5)
        use_strong_augmentation(c)
        use_gpu_settings(c, epochs=70, evaluations=10)
    elif arg == "cpu":
        c.model.variant = "resnet18_half_s2"
        use_cpu_budget(c, epochs=10)
    elif arg == "smoke":
        use_smoke_settings(c, "resnet10_half")
    return c
