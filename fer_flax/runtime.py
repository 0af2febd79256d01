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

In a multi-process job a lost process (killed, crashed, stopped, cut off) ends every other one with
one `error: ...` line and status 1 (`fer_flax.core.liveness`); a process that stops with an error of
its own says so to the others first (`settle_after_error`) and ends through `end`.
"""

from __future__ import annotations

import os
import sys
from typing import Any, NoReturn

import jax

from fer_flax import cpu
from fer_flax.core import liveness, parallel
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


def in_job() -> bool:
    """Whether this process has joined a multi-process job (`start` with several processes)."""
    return parallel.in_job()


def settle_after_error() -> str | None:
    """Call when the command stops with an error. In a multi-process job: tells the other processes,
    and waits until each has shown a sign of life, finished or failed; one that was lost ends this
    process with the lost-process line instead (a collective's error here is most likely its
    consequence). Returns the line for another process that had failed first, if any; None otherwise
    and for a single process, at once."""
    return parallel.settle_after_error()


def end(status: int | str) -> NoReturn:
    """Ends the process like `sys.exit(status)` (a string is printed to stderr, status 1). In a
    multi-process job that did not finish, through `os._exit` after flushing the output: Python's own
    exit would run JAX's shutdown barrier, which a failed or lost process never reaches."""
    if not parallel.in_job():
        sys.exit(status)
    if isinstance(status, str):
        print(status, file=sys.stderr)
    liveness.flush_output(timeout_s=5.0)
    os._exit(status if isinstance(status, int) else 1)
