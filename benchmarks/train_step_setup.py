"""The train step the speed benchmarks time, built one way for all of them.

fer_flax's real `steps.train_step`, compiled with plain `jax.jit` and donated state (the process's
XLA options come from `fer_flax.runtime.start()`, which every benchmark calls first), on a fixed random
uint8 batch (seed 0) and a fixed step key, with the learning-rate schedule the benchmarks share (100
steps per epoch, 1000 in all). The model is the one `model_lib.create_model(config)` builds (the CPU
kernels on a CPU backend).
train_throughput.py and compare_torch.py both time this, so their figures measure the same program.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import numpy as np

from configs.common import get_base_config, use_sgd_recipe
from fer_flax.core import optim, parallel
from fer_flax.data.splits import IMAGE_SIZE, NUM_CLASSES


def make_config(family: str, variant: str, batch: int, augment: bool, dtype: str = "float32"):
    """The SGD recipe (label smoothing, Nesterov, weight decay) on `family:variant`; augmentation
    either the recipe's or switched off completely; `dtype` is the compute dtype (config.dtype)."""
    config = get_base_config()
    use_sgd_recipe(config)
    config.model_name, config.model.variant, config.dtype = family, variant, dtype
    config.batch_size = batch
    if not augment:
        config.augment.update(
            pad_crop=0, random_resized_crop=False, flip=False, rotate_degrees=0.0, erase_prob=0.0
        )
    elif config.augment.random_resized_crop:
        raise ValueError("the PyTorch augmentation has no random-resized crop")
    return config


@dataclasses.dataclass
class TrainStepSetup:
    model: Any
    schedule: Any
    state: Any  # advanced by `run`
    step: Any  # jitted (state, batch, key) -> (state, metrics), state donated
    images: np.ndarray  # this process's share of the batch, uint8 [b, 48, 48, 1]
    labels: np.ndarray
    device_batch: dict[str, jax.Array]
    key: jax.Array

    def run(self, steps: int) -> dict[str, jax.Array]:
        """`steps` train steps on the fixed batch; returns the last metrics (not waited for)."""
        metrics: dict[str, jax.Array] = {}
        for _ in range(steps):
            self.state, metrics = self.step(self.state, self.device_batch, self.key)
        return metrics


def build_train_step(config, mesh) -> TrainStepSetup:
    """`config.batch_size` must divide by the mesh's devices (checked, with a clear message)."""
    from fer_flax.core import model as model_lib
    from fer_flax.core import state as model_state  # the training library, imported when a step is built
    from fer_flax.training import steps

    parallel.check_batch_divisible(config.batch_size, mesh)
    model = model_lib.create_model(config)
    schedule = optim.create_learning_rate_schedule(config.optim, steps_per_epoch=100, total_steps=1000)
    state = model_state.create_train_state(
        model, optim.create_optimizer(config.optim, schedule), jax.random.key(0), mesh
    )
    step = jax.jit(
        functools.partial(steps.train_step, config=config, schedule=schedule),
        donate_argnums=(0,),
    )
    local = config.batch_size // jax.process_count()
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (local, IMAGE_SIZE, IMAGE_SIZE, 1), dtype=np.uint8)
    labels = rng.integers(0, NUM_CLASSES, local).astype(np.int32)
    device_batch = parallel.to_global_batch({"image": images, "label": labels}, mesh)
    return TrainStepSetup(model, schedule, state, step, images, labels, device_batch, jax.random.key(1))
