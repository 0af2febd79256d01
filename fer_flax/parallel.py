"""Device mesh and shardings: one code path for 1 CPU, 8 GPUs or many hosts.

Everything runs under `jax.jit` over global arrays (no `pmap`, which is in maintenance mode in current
JAX): batches are sharded along the mesh's `data` axis, the train state is replicated, and XLA inserts
the all-reduces. Under jit, BatchNorm statistics and metrics are therefore global-batch values.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

DATA_AXIS = "data"


def make_mesh(devices: list | None = None) -> Mesh:
    """A 1-D mesh over all (global) devices. Auto axis types: JAX 0.10 defaults to Explicit, which makes
    Linen dropout and concatenations fail with sharding type errors."""
    devices = jax.devices() if devices is None else devices
    return Mesh(
        np.asarray(devices).reshape(len(devices)),
        (DATA_AXIS,),
        axis_types=(jax.sharding.AxisType.Auto,),
    )


def batch_sharding(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P(DATA_AXIS))


def replicated_sharding(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def check_batch_divisible(global_batch_size: int, mesh: Mesh, *, name: str = "batch_size") -> None:
    """Fails early, naming the numbers to change, when a global batch cannot be split evenly."""
    n = mesh.devices.size
    if global_batch_size <= 0 or global_batch_size % n:
        lower = max(n, global_batch_size // n * n)
        raise ValueError(
            f"config.{name}={global_batch_size} must be a positive multiple of the {n} devices in use "
            f"({jax.process_count()} process(es)); use e.g. --config.{name}={lower} or "
            f"{lower + n}, or run on a device count that divides {global_batch_size}."
        )


def to_global_batch(local_batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """Each process holds its contiguous slice of the global batch; assemble the global arrays."""
    sharding = batch_sharding(mesh)
    return {
        k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in local_batch.items()
    }


def replicate(tree: Any, mesh: Mesh) -> Any:
    return jax.device_put(tree, replicated_sharding(mesh))
