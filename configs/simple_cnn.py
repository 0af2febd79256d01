"""Plain CNN on FER2013-shaped data: the first command a new user runs.

Command (built-in synthetic faces, no download):
  python -m fer_flax.main --config configs/simple_cnn.py --workdir workdirs/simple_cnn

Result: validation accuracy 0.991 after 4 epochs, 1 min 13 s on 2 CPU cores (benchmarks/RESULTS.md,
"Demo on the built-in synthetic faces").

Real FER2013:
  python -m fer_flax.main --config configs/simple_cnn.py:real --workdir workdirs/simple_cnn_real \
      --config.data.path=../shared/data/fer2013/fer2013.csv.gz

`get_config(arg)` variants: '' (synthetic demo), 'real' (a longer schedule sized for FER2013),
'smoke' (a few steps, for tests).
"""

from configs.common import check_arg, get_base_config


def get_config(arg: str = ""):
    c = get_base_config()
    c.model_name = "cnn"
    c.model.variant = "tiny"
    c.batch_size = 128
    c.num_epochs = 4.0
    # AdamW is the robust choice for a 4-epoch demo: over seeds it reaches 0.99 validation accuracy
    # where SGD at lr 0.1 sometimes sat on a plateau for two epochs and ended near 0.90.
    c.optim.name = "adamw"
    c.optim.lr = 3e-3
    c.optim.weight_decay = 1e-4
    c.optim.warmup_epochs = 0.5
    c.label_smoothing = 0.1
    c.log_every_steps = 20
    if arg == "real":
        c.model.variant = "small"
        c.num_epochs = 30.0
        c.optim.update(name="sgd", lr=0.1, weight_decay=5e-4, warmup_epochs=1.0)
        c.augment.erase_prob = 0.25
    elif arg == "smoke":
        # Tests calibrate their tolerances on this exact recipe (SGD-Nesterov 0.1): keep it fixed.
        c.optim.update(name="sgd", lr=0.1, weight_decay=5e-4)
        c.data.synthetic_train = 512
        c.data.synthetic_val = 256
        c.data.synthetic_test = 256
        c.batch_size = 64
        c.eval_batch_size = 128
        c.num_epochs = 2.0
        c.log_every_steps = 4
        c.progress_bar = False
        c.curves_png = False  # tests that check the picture switch it on
        c.wandb.mode = "disabled"
    else:
        check_arg(arg, ("", "real", "smoke"))
    return c
