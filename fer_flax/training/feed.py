"""What the training loop hands its compiled train function at each call, for either input pipeline.

  data.pipeline='grain'    host batches from Grain, copied to the devices: one for a single step (the
                           plain jitted `steps.train_step`), k stacked into one transfer for a call of
                           k steps (`multi_step.train_call` scans over them).
  data.pipeline='device'   the split on the devices (`training.device_input`) and the epoch orders the
                           call needs: `multi_step.train_call` gathers each step's batch itself.

`make_feed` builds the feed; its `iterator` is what the checkpoint stores as the data state (the Grain
iterator, or the device pipeline's `DeviceStream`), `inputs(first_step, n)` the argument of the call
that runs steps first_step .. first_step + n - 1 (1-based; n is 1 or steps_per_call, and
`inputs["num_steps"]` says which when it is not 1), `batch(inputs, state)` the global batch of the
call's first step (for gradient histograms). `compile_train` jits the matching programs.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
import optax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
from ml_collections import ConfigDict

from fer_flax.base.errors import ConfigError
from fer_flax.core import input_pipeline, parallel
from fer_flax.data import ArraySplit, records
from fer_flax.training import device_input, multi_step, steps


def _scalar(value: int, mesh: jax.sharding.Mesh) -> jax.Array:
    array = np.asarray(value, np.int32)
    return jax.make_array_from_callback((), parallel.replicated_sharding(mesh), lambda _: array)


class GrainFeed:
    """Host batches from the Grain pipeline: one per call, or k stacked."""

    def __init__(self, config: ConfigDict, split: ArraySplit, mesh: jax.sharding.Mesh):
        self.mesh = mesh
        self.iterator = input_pipeline.training_stream(split, config)

    def inputs(self, first_step: int, n: int) -> dict[str, Any]:
        del first_step  # the iterator holds the position
        if n == 1:
            return parallel.to_global_batch(next(self.iterator), self.mesh)
        local = [next(self.iterator) for _ in range(n)]
        stacked = NamedSharding(self.mesh, P(None, parallel.DATA_AXIS))
        # Every key of the batch: image, label and, where the split has them, soft targets
        # ("target") and cached teacher probabilities ("teacher_probs").
        inputs: dict[str, Any] = {
            key: jax.make_array_from_process_local_data(stacked, np.stack([b[key] for b in local]))
            for key in local[0]
        }
        inputs["num_steps"] = n
        return inputs

    def batch(self, inputs: dict, state: Any) -> dict[str, jax.Array]:
        del state
        if inputs.get("num_steps", 1) == 1:
            return inputs
        return {key: value[0] for key, value in inputs.items() if key != "num_steps"}


class DeviceFeed:
    """The split on the devices; the host passes the epoch orders and the call's length."""

    def __init__(self, config: ConfigDict, split: ArraySplit, mesh: jax.sharding.Mesh):
        self.k, self.batch_size = config.steps_per_call, config.batch_size
        self.split = device_input.place_split(
            split,
            mesh,
            seed=config.seed,
            sampling=config.data.sampling,
            class_weights=config.data.class_weights,
            layout=config.data.device_layout,
            global_batch_size=config.batch_size,
        )
        self.iterator = device_input.DeviceStream(
            global_batch_size=config.batch_size,
            seed=config.seed,
            sampling=config.data.sampling,
            num_examples=len(split),
        )
        self.depth = device_input.epochs_per_call(self.k, self.batch_size, len(split))
        self._orders: tuple[int, jax.Array] | None = None  # (first epoch, orders) of the last call

    def inputs(self, first_step: int, n: int) -> dict[str, Any]:
        if first_step - 1 != self.iterator.position:
            raise RuntimeError(
                f"device stream at batch {self.iterator.position}, but the loop is at step {first_step}"
            )
        epoch = device_input.first_epoch(first_step - 1, self.batch_size, self.split.num_examples)
        if self._orders is None or self._orders[0] != epoch:
            self._orders = (epoch, device_input.epoch_orders(self.split, epoch, self.depth))
        self.iterator.position += n
        return {
            "split": self.split,
            "orders": self._orders[1],
            "first_epoch": _scalar(epoch, self.split.mesh),
            "num_steps": n,
        }

    def batch(self, inputs: dict, state: Any) -> dict[str, jax.Array]:
        args = {key: v for key, v in inputs.items() if key != "num_steps"}
        return _device_batch_jit(args, 0, state.step, batch_size=self.batch_size)


def make_feed(config: ConfigDict, split: ArraySplit, mesh: jax.sharding.Mesh) -> GrainFeed | DeviceFeed:
    if config.data.pipeline == "device" and records.is_lazy(split):
        raise ConfigError(
            "config.data.pipeline='device' places the whole training split on the devices, but "
            f"config.data.path={config.data.path!r} is a records folder, read lazily so that the split "
            "need not fit in memory: use config.data.pipeline='grain'"
        )
    return (DeviceFeed if config.data.pipeline == "device" else GrainFeed)(config, split, mesh)


def _stacked_batch(
    inputs: dict, i: jax.Array, step: jax.Array, *, mesh: jax.sharding.Mesh
) -> dict[str, jax.Array]:
    del step
    sharding = parallel.batch_sharding(mesh)
    return {k: jax.lax.with_sharding_constraint(v[i], sharding) for k, v in inputs.items()}


def device_batch(inputs: dict, i: jax.Array, step: jax.Array, *, batch_size: int) -> dict[str, jax.Array]:
    """The global batch of 0-based step `step`, gathered from the split on the devices."""
    del i
    split = inputs["split"]
    idx = device_input.batch_indices(split, step, inputs["orders"], inputs["first_epoch"], batch_size)
    return device_input.gather_batch(split, idx)


_device_batch_jit = jax.jit(device_batch, static_argnames=("batch_size",))


def compile_train(
    config: ConfigDict,
    schedule: optax.Schedule,
    class_counts: np.ndarray,
    mesh: jax.sharding.Mesh,
    teachers: steps.TeacherModels | None = None,
    teacher_variables: Any = (),
) -> Callable:
    """The run's train function `(state, inputs, rng) -> (state, metrics)`, the state donated: one
    jitted program per call length (1, steps_per_call), compiled at first use. A single Grain step
    returns the step's metrics, every other call `multi_step` sums. On-the-fly distillation's
    `teachers` are bound into the programs and their `teacher_variables` passed to every call."""
    step_fn = functools.partial(
        steps.train_step,
        config=config,
        schedule=schedule,
        class_counts=class_counts,
        num_classes=len(class_counts),
        teachers=teachers,
    )
    k = config.steps_per_call
    if config.data.pipeline == "grain":
        batch_fn = functools.partial(_stacked_batch, mesh=mesh)
        single = jax.jit(step_fn, donate_argnums=(0,))
        if k == 1 and teachers is None:
            return single
    else:
        batch_fn = functools.partial(device_batch, batch_size=config.batch_size)
        single = _call(step_fn, batch_fn, 1, unroll=False)
    # XLA:CPU runs while-loop bodies far slower than straight-line code (multi_step's docstring).
    unroll = mesh.devices.flat[0].platform == "cpu"
    programs = {1: single, k: _call(step_fn, batch_fn, k, unroll=unroll)} if k > 1 else {1: single}

    def train(state: Any, inputs: dict, rng: jax.Array) -> tuple[Any, dict]:
        args = {key: v for key, v in inputs.items() if key != "num_steps"}
        return programs[inputs.get("num_steps", 1)](state, args, rng, teacher_variables)

    return train


def _call(step_fn: Callable, batch_fn: Callable, num_steps: int, *, unroll: bool) -> Callable:
    call = functools.partial(
        multi_step.train_call, step_fn=step_fn, batch_fn=batch_fn, num_steps=num_steps, unroll=unroll
    )
    return jax.jit(call, donate_argnums=(0,))
