"""Faithful GoogLeNet (Inception v1: Table 1 of Szegedy et al. 2014, LRN, no BatchNorm, both auxiliary
classifiers weighted 0.3 in the loss) on FER2013, with the stride-1 stem for 48×48 faces (see
fer_flax/models/googlenet.py for the spatial sizes).

Command (built-in synthetic faces unless a data path is given):
  python -m fer_flax.main --config configs/googlenet.py --workdir workdirs/googlenet

Real FER2013:
  python -m fer_flax.main --config configs/googlenet.py --workdir workdirs/googlenet \
      --config.data.path=../shared/data/fer2013/fer2013.csv.gz

PublicTest accuracy: not measured yet (a GPU run); measured figures are in benchmarks/RESULTS.md.
On one GPU add `--config.dtype=bfloat16 --config.data.pipeline=device --config.steps_per_call=25
--config.log_every_steps=25`: the split on the device, 25 steps per host call (docs/training.md);
benchmarks/gpu_suite.sh trains this config that way.

`get_config(arg)` variants: '' (the faithful network with aux heads), 'noaux' (the same without them, the
ablation of the paper's auxiliary classifiers), 'smoke' (a few steps of the quarter-width faithful net).
"""

from configs.common import check_arg, get_base_config, use_sgd_recipe, use_smoke_settings


def get_config(arg: str = ""):
    check_arg(arg, ("", "noaux", "smoke"))
    c = get_base_config()
    c.model_name = "googlenet"
    c.model.variant = "inception_v1_noaux" if arg == "noaux" else "inception_v1"
    c.aux_loss_weight = 0.3  # the paper's weight for each auxiliary classifier's loss
    # Without BatchNorm the 22-layer ReLU stack does not tolerate the lr 0.1 of the BN families: this is
    # the reference Caffe GoogLeNet solver's SGD (lr 0.01, momentum 0.9, weight decay 2e-4), with a short
    # warmup and a cosine decay instead of its step schedule, plus clipping against early spikes.
    use_sgd_recipe(c, lr=0.01, weight_decay=2e-4, erase_prob=0.0)
    c.optim.grad_clip_norm = 5.0
    if arg == "smoke":
        use_smoke_settings(c, "inception_v1_tiny")
    return c
