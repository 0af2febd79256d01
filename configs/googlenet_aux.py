"""Modified GoogLeNet on FER2013: Inception v1's modules with BatchNorm after every conv, more dropout
(classifier 0.5, aux heads 0.5, channel dropout 0.1 after stages 3 and 4) and auxiliary heads sized for
the 12×12 maps of 4a/4d (4×4 adaptive pool → 1×1 conv 128 + BN → Dense 512), weighted 0.3 in the loss.
This is the family's recommended setup; the course project's version of it reached 0.59 accuracy.

Command (built-in synthetic faces unless a data path is given):
  python -m fer_flax.main --config configs/googlenet_aux.py --workdir workdirs/googlenet_aux

Real FER2013:
  python -m fer_flax.main --config configs/googlenet_aux.py --workdir workdirs/googlenet_aux \
      --config.data.path=../shared/data/fer2013/fer2013.csv.gz

PublicTest accuracy: not measured yet (a GPU run); measured figures are in benchmarks/RESULTS.md.

`get_config(arg)` variants: '' (inception_v1_bn, full Table 1 widths), 'gpu' (below), 'small' (half
widths, ~1/4 of the FLOPs), 'smoke' (a few steps of the quarter-width net cut to modules 3a, 4a and 4d).

'gpu': GoogLeNet's share of the one-call GPU comparison (benchmarks/gpu_comparison.sh), run alone with
  python -m fer_flax.main --config configs/googlenet_aux.py:gpu --workdir workdirs/googlenet_gpu \
      --config.data.path=../shared/data/fer2013/fer2013.csv.gz
The recipe above (SGD-Nesterov lr 0.1, cosine, label smoothing 0.1, sqrt-balanced sampling, aux heads
at 0.3) for 30 epochs with 6 evaluations, with the long recipes' augmentation (random-resized crops,
shifts, flips, ±10° rotations, random erasing at p 0.5), EMA 0.999, flip TTA, bfloat16, the device
pipeline and 25 steps per call. 30 epochs is what fits the comparison's budget after this network's
compilation, the longest of the five (the faithful GoogLeNet's first call compiled for about 110 s on
one H200, RESULTS.md "Time to accuracy"). Estimated time on one NVIDIA H200 (not measured): a training
image costs 6.49 GFLOP (convolutions and matrix products of the train step, `fer_flax.core.flops`),
and Inception's narrow 1x1 branches and concatenations should use the GPU about half as well as
ResNet-18 (24.5% of the bf16 peak): at about 10%, some 15,000 images/s, 1.9 s an epoch, so about 57 s
of training plus 6 evaluations with checkpoints at about 1.5 s: about 66 s. PublicTest accuracy: not
measured yet.
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
from fer_flax.models import googlenet


def get_config(arg: str = ""):
    check_arg(arg, ("", "gpu", "cpu", "small", "smoke"))
    c = get_base_config()
    c.model_name = "googlenet"
    c.model.variant = "inception_v1_bn_small" if arg == "small" else "inception_v1_bn"
    c.aux_loss_weight = 0.3
    # BatchNorm makes the usual ResNet recipe safe: SGD-Nesterov lr 0.1 at batch 128, cosine decay.
    use_sgd_recipe(c)
    # The course project found oversampling the rare classes essential. "sqrt" draws each class in
    # proportion to the square root of its size: disgust goes from 1.5% of the stream to ~4.9%, where
    # "balanced" (14%) would repeat its 436 images nine times as often and overfit them.
    c.data.sampling = "sqrt"
    if arg == "gpu":
        use_sgd_recipe(c, epochs=30.0, erase_prob=0.5)
        use_strong_augmentation(c)
        use_gpu_settings(c, epochs=30, evaluations=6)
    if arg == "cpu":
        c.model.variant = "inception_v1_bn_tiny_s2"
        use_cpu_budget(c, epochs=11)
    if arg == "smoke":
        use_smoke_settings(c, "inception_v1_bn_tiny")
        # Three of the nine modules: 3a, then 4a and 4d, which carry the auxiliary heads. Every branch
        # kind, the stem, both aux heads and the classifier remain; the step compiles ~3x faster.
        table = dict(module for stage in googlenet.INCEPTION_V1_STAGES for module in stage)
        c.model.stages = ((("3a", table["3a"]),), (("4a", table["4a"]), ("4d", table["4d"])))
    return c
