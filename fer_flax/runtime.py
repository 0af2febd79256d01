"""The one start-up every entry point calls, before anything touches a JAX device.

    runtime.start(config, coordinator_address=..., num_processes=..., process_id=...)
    ...
    runtime.shutdown()

`start` runs, in this order: the process-wide CPU settings (`fer_flax.cpu.configure_process`: host
allocator and XLA:CPU compiler option, nothing on an accelerator or with FER_FLAX_CPU_TUNING=0); joining
a multi-process job (`parallel.initialize_distributed`: explicit arguments, FER_FLAX_* variables or a
SLURM step, else a single process); and, given a config, the split of the host CPU into
`config.cpu_devices` JAX devices that divide the batch sizes (`fer_flax.cpu.devices`). Each step is
idempotent, so a second call (a library caller, a test) changes nothing.
"""

from __future__ import annotations

from typing import Any

import jax

from fer_flax import cpu
from fer_flax.core import parallel
from fer_flax.cpu import devices


def start(
    config: Any | None = None,
    *,
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
) -> None:
    """Process start-up; `config` (a ConfigDict with `cpu_devices`, `batch_size`, `eval_batch_size`)
    is needed only for the CPU device split."""
    cpu.configure_process()
    if not jax.distributed.is_initialized():
        parallel.initialize_distributed(coordinator_address, num_processes, process_id)
    if config is not None:
        devices.configure_cpu_devices(config.cpu_devices, (config.batch_size, config.eval_batch_size))


def shutdown() -> None:
    """Leaves a multi-process job cleanly; a no-op for a single process."""
    parallel.shutdown_distributed()
