"""Faithful GoogLeNet (Inception v1: Table 1 of Szegedy et al. 2014, LRN, no BatchNorm, both auxiliary
classifiers weighted 0.3 in the loss) on FER2013, with the stride-1 stem for 48×48 faces (see
fer_flax/models/googlenet.py for the spatial sizes).

Command (built-in synthetic faces unless a data path is given):
  python -m fer_flax.main --config configs/googlenet.py --workdir workdirs/googlenet

Real FER2013:
  python -m fer_flax.main --config configs/googlenet.py --workdir workdirs/googlenet \
      --config.data.path=../shared/data/fer2013/fer2013.csv.gz

Accuracy and runtime figures are added here once measured.

`get_config(arg)` variants: '' (the faithful network with aux heads), 'noaux' (the same without them, the
ablation of the paper's auxiliary classifiers), 'smoke' (a few steps of the quarter-width faithful net).
"""

from configs.common import get_base_config


def get_config(arg: str = ""):
    c = get_base_config()
    c.model_name = "googlenet"
    c.model.variant = "inception_v1"
    c.aux_loss_weight = 0.3  # the paper's weight for each auxiliary classifier's loss
    c.batch_size = 128
    c.num_epochs = 60.0
    # Without BatchNorm the 22-layer ReLU stack does not tolerate the lr 0.1 of the BN families: this is
    # the reference Caffe GoogLeNet solver's SGD (lr 0.01, momentum 0.9, weight decay 2e-4), with a short
    # warmup and a cosine decay instead of its step schedule, plus clipping against early spikes.
    c.optim.name = "sgd"
    c.optim.lr = 0.01
    c.optim.momentum = 0.9
    c.optim.nesterov = True
    c.optim.weight_decay = 2e-4
    c.optim.schedule = "cosine"
    c.optim.warmup_epochs = 2.0
    c.optim.grad_clip_norm = 5.0
    c.label_smoothing = 0.1
    if arg == "noaux":
        c.model.variant = "inception_v1_noaux"
    elif arg == "smoke":
        c.model.variant = "inception_v1_tiny"
        c.data.synthetic_train = 256
        c.data.synthetic_val = 128
        c.data.synthetic_test = 128
        c.batch_size = 32
        c.eval_batch_size = 64
        c.num_epochs = 1.0
        c.log_every_steps = 2
        c.progress_bar = False
        c.wandb.mode = "disabled"
    elif arg:
        raise ValueError(f"Unknown config argument {arg!r}; valid: '', 'noaux', 'smoke'")
    return c
