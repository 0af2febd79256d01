"""The train step the speed benchmarks time, built one way for all of them.

fer_flax's real `train.train_step`, compiled with `fer_flax.xla_cpu.jit` and donated state, on a fixed
random uint8 batch (seed 0) and a fixed step key, with the learning-rate schedule the benchmarks share
(100 steps per epoch, 1000 in all). train_throughput.py, compare_torch.py, cpu_speedups.py and
profile_cpu_step.py all time this, so their figures measure the same program.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import numpy as np

from configs.common import get_base_config, use_sgd_recipe
from fer_flax import optim, parallel, train, xla_cpu
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
    parallel.check_batch_divisible(config.batch_size, mesh)
    model = train.create_model(config)
    schedule = optim.create_learning_rate_schedule(config.optim, steps_per_epoch=100, total_steps=1000)
    state = train.create_train_state(
        model, optim.create_optimizer(config.optim, schedule), jax.random.key(0), mesh
    )
    step = xla_cpu.jit(
        functools.partial(train.train_step, config=config, schedule=schedule), donate_argnums=(0,)
    )
    local = config.batch_size // jax.process_count()
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (local, IMAGE_SIZE, IMAGE_SIZE, 1), dtype=np.uint8)
    labels = rng.integers(0, NUM_CLASSES, local).astype(np.int32)
    device_batch = parallel.to_global_batch({"image": images, "label": labels}, mesh)
    return TrainStepSetup(model, schedule, state, step, images, labels, device_batch, jax.random.key(1))
