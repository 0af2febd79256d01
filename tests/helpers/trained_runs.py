"""The tiny trained run the evaluation, prediction and report tests share: its config and data.

The run itself is the `trained_run` fixture of tests/conftest.py, made once per test process from
`tiny_config(0)`. This module says what it was trained on, so tests can compare with it.
"""

from __future__ import annotations

import numpy as np

from configs import simple_cnn
from fer_flax.data.synthetic import generate_synthetic

NUM_TEST = 70  # not a multiple of EVAL_BATCH: the last evaluation batch is partial
EVAL_BATCH = 32


def tiny_config(seed: int = 0):
    """The smoke config at its smallest: 128 train / 64 val / 70 test synthetic faces, 2 epochs of
    2 steps (evaluations and checkpoints at steps 2 and 4)."""
    c = simple_cnn.get_config("smoke")
    c.seed = seed
    c.data.synthetic_train = 128
    c.data.synthetic_val = 64
    c.data.synthetic_test = NUM_TEST
    c.batch_size = 64
    c.eval_batch_size = EVAL_BATCH
    c.num_epochs = 2.0
    return c


# The command line of tiny_config(0), for the tests that run the training command.
TINY_FLAGS = [
    "--config=configs/simple_cnn.py:smoke", "--config.data.synthetic_train=128",
    "--config.data.synthetic_val=64", f"--config.data.synthetic_test={NUM_TEST}", "--config.batch_size=64",
    f"--config.eval_batch_size={EVAL_BATCH}", "--config.num_epochs=2",
]  # fmt: skip


def synthetic_split(split: str):
    """The exact images and labels the tiny run's config gives for `split`."""
    c = tiny_config()
    sizes = {"train": c.data.synthetic_train, "val": c.data.synthetic_val, "test": c.data.synthetic_test}
    args = [sizes[s] if s == split else 0 for s in ("train", "val", "test")]
    return generate_synthetic(*args, seed=c.data.synthetic_seed)[split]


def write_fer_csv(path, rows) -> None:
    """rows: (label, uint8 [48, 48] or a raw pixel string, usage)."""
    with open(path, "w") as f:
        f.write("emotion,pixels,Usage\n")
        for label, pixels, usage in rows:
            text = pixels if isinstance(pixels, str) else " ".join(map(str, np.asarray(pixels).ravel()))
            f.write(f"{label},{text},{usage}\n")
