"""Splitting the host CPU into several JAX devices, so the data-parallel step uses every core.

`fer_flax.runtime.start(config)` calls `configure_cpu_devices` with `config.cpu_devices` and the batch
sizes. It is a choice the config makes (not switched off with the rest of the CPU corner), and it only
acts on the CPU backend before JAX starts.
"""

from __future__ import annotations

import os

import jax


def usable_cpu_cores() -> int:
    """Cores this process may run on (its affinity mask, e.g. a SLURM or container limit)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS has no affinity masks
        return os.cpu_count() or 1


def configure_cpu_devices(requested: int, batch_sizes: tuple[int, ...]) -> int | None:
    """Splits the host CPU into several JAX devices so data parallelism uses every core.

    Why: the data-parallel step (the same code that drives 8 GPUs) then runs each device's share of
    the batch concurrently, which keeps cores busy in the parts of a step that XLA:CPU runs on one
    thread. XLA's own convolutions (fer_flax.cpu.compiler) already use every core, so the gain depends
    on the network (benchmarks/RESULTS.md). The numerics are those of the one-device run up to
    summation order: BatchNorm statistics and losses are global-batch values under jit, and random
    draws do not depend on the sharding.

    `requested`: 0 = auto (one device per usable core, reduced to the largest count dividing every
    batch size) or a positive count; 1 leaves JAX's default of one CPU device. Returns the count set,
    or None when nothing was changed: JAX already started (a library caller, or tests), the device
    count is already fixed by XLA_FLAGS or jax_num_cpu_devices, or several processes share the job
    (each is then expected to own its cores). Must run before anything touches a JAX device.
    """
    # No public aliases in JAX 0.10-0.11; jax.process_count() itself would start the backends.
    from jax._src import distributed, xla_bridge

    if requested == 0:
        count = usable_cpu_cores()
        while count > 1 and any(b % count for b in batch_sizes):
            count -= 1
    elif requested >= 1:
        bad = [b for b in batch_sizes if b % requested]
        if bad:
            raise ValueError(
                f"config.cpu_devices={requested} does not divide the batch sizes {bad}; "
                "choose a divisor of every batch size, or 0 (auto)"
            )
        count = requested
    else:
        raise ValueError(f"config.cpu_devices must be 0 (auto) or a positive integer, not {requested!r}")
    if (
        count <= 1
        or xla_bridge.backends_are_initialized()
        or "xla_force_host_platform_device_count" in os.environ.get("XLA_FLAGS", "")
        or jax.config.jax_num_cpu_devices != -1
        or (distributed.global_state.num_processes or 1) > 1
    ):
        return None
    jax.config.update("jax_num_cpu_devices", count)
    return count
