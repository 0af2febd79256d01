"""Device mesh, shardings and multi-host start-up: one code path for 1 CPU, 8 GPUs or many hosts.

Everything runs under `jax.jit` over global arrays (no `pmap`, which is in maintenance mode in current
JAX): batches are sharded along the mesh's `data` axis, the train state is replicated, and XLA inserts
the all-reduces. Under jit, BatchNorm statistics and metrics are therefore global-batch values.

Several processes (hosts, or one process per GPU under SLURM) join with `initialize_distributed`, which
must run before anything else touches JAX. After it the same code runs unchanged: `jax.devices()` lists
every device of every process, and each process feeds its own slice of each global batch.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
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


# ------------------------------------------------------------------------------------- multi-host

ENV_COORDINATOR = "FER_FLAX_COORDINATOR"
ENV_NUM_PROCESSES = "FER_FLAX_NUM_PROCESSES"
ENV_PROCESS_ID = "FER_FLAX_PROCESS_ID"
# What JAX's own SLURM detection reads (jax/_src/clusters/slurm_cluster.py); all are set inside an
# `srun` step but not all in a plain `sbatch` script, where starting JAX's detection would fail late.
_SLURM_STEP_VARS = ("SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_NTASKS", "SLURM_PROCID", "SLURM_LOCALID")


@dataclasses.dataclass(frozen=True)
class DistributedPlan:
    """How this process joins the job: `single` (no initialisation), `explicit` (given address, count
    and id) or `slurm` (JAX reads them from the SLURM step, one process per local GPU)."""

    mode: str
    coordinator_address: str | None = None
    num_processes: int = 1
    process_id: int = 0


def _int_from(value: Any, name: str) -> int | None:
    if value is None or value == "":
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be an integer, got {value!r}") from None


def resolve_distributed(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    env: Mapping[str, str] | None = None,
) -> DistributedPlan:
    """Decides how to start, without starting anything (so it is testable without processes).

    Precedence: explicit arguments (the `--coordinator_address/--num_processes/--process_id` flags),
    then `FER_FLAX_COORDINATOR/FER_FLAX_NUM_PROCESSES/FER_FLAX_PROCESS_ID`, then a SLURM step with
    more than one task, else a single process. `num_processes=1` forces a single process even under
    SLURM (what `launch.sh` sets for a one-node run in which one process drives every GPU).
    """
    env = os.environ if env is None else env
    address = coordinator_address or env.get(ENV_COORDINATOR) or None
    count = (
        num_processes
        if num_processes is not None
        else _int_from(env.get(ENV_NUM_PROCESSES), ENV_NUM_PROCESSES)
    )
    pid = process_id if process_id is not None else _int_from(env.get(ENV_PROCESS_ID), ENV_PROCESS_ID)

    if count == 1 and address is None:
        if pid not in (None, 0):
            raise ValueError(f"process_id={pid} but num_processes=1: a single process has id 0")
        return DistributedPlan("single")
    if address is not None or count is not None or pid is not None:
        missing = [
            f"--{flag} (or {var})"
            for flag, var, value in (
                ("coordinator_address", ENV_COORDINATOR, address),
                ("num_processes", ENV_NUM_PROCESSES, count),
                ("process_id", ENV_PROCESS_ID, pid),
            )
            if value is None
        ]
        if missing:
            raise ValueError(
                "A multi-process run needs the coordinator address, the process count and this process's "
                f"id; missing: {', '.join(missing)}. Example for 2 processes on one machine: "
                "--coordinator_address=127.0.0.1:12345 --num_processes=2 --process_id=0 (and =1)."
            )
        if count < 1 or not 0 <= pid < count:
            raise ValueError(f"process_id must be in [0, num_processes={count}), got {pid}")
        if ":" not in address:
            raise ValueError(f"coordinator address must be HOST:PORT, got {address!r}")
        return DistributedPlan("explicit", address, count, pid)

    tasks = _int_from(env.get("SLURM_NTASKS"), "SLURM_NTASKS") or 1
    if tasks > 1:
        absent = [v for v in _SLURM_STEP_VARS if v not in env]
        if absent:
            raise ValueError(
                f"SLURM_NTASKS={tasks} but this process is not inside an srun step ({', '.join(absent)} "
                "unset). Start it with srun (./launch.sh does), or set FER_FLAX_NUM_PROCESSES=1 to run "
                "a single process."
            )
        return DistributedPlan("slurm", None, tasks, _int_from(env["SLURM_PROCID"], "SLURM_PROCID"))
    return DistributedPlan("single")


def initialize_distributed(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
) -> DistributedPlan:
    """Joins the multi-process job described by `resolve_distributed`; a no-op for a single process.

    Call it first: `jax.distributed.initialize` must run before any JAX computation or device query.
    """
    plan = resolve_distributed(coordinator_address, num_processes, process_id)
    if plan.mode == "single":
        return plan
    # Cross-process collectives on CPU (tests, CPU clusters); GPUs use NCCL whatever this says.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    if plan.mode == "explicit":
        jax.distributed.initialize(
            coordinator_address=plan.coordinator_address,
            num_processes=plan.num_processes,
            process_id=plan.process_id,
            # Explicit values are the whole truth: don't let SLURM/MPI detection narrow the devices.
            cluster_detection_method="deactivate",
        )
    else:
        # JAX reads the coordinator (first node of the step), the count and the id from SLURM and
        # gives each task the GPU numbered by its SLURM_LOCALID.
        jax.distributed.initialize()
    return plan


def shutdown_distributed() -> None:
    """Leaves the job cleanly (all processes meet at a barrier); a no-op when not initialised."""
    if jax.distributed.is_initialized():
        jax.distributed.shutdown()


def usable_cpu_cores() -> int:
    """Cores this process may run on (its affinity mask, e.g. a SLURM or container limit)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS has no affinity masks
        return os.cpu_count() or 1


def configure_cpu_devices(requested: int, batch_sizes: tuple[int, ...]) -> int | None:
    """Splits the host CPU into several JAX devices so data parallelism uses every core.

    Why: the data-parallel step (the same code that drives 8 GPUs) then runs each device's share of
    the batch concurrently. When XLA:CPU handed convolutions to YNNPACK, which barely used a second
    core, this made the small CNN ~1.4x faster on 2 cores; with XLA's own convolutions (fer_flax.xla_cpu)
    every convolution uses all cores already, and two devices still pay for the larger nets
    (BeefyModel/base 21.3 against 18.6 images/s, ResNet-18 17.4 against 16.5 at batch 128) and are a
    wash for the small CNNs (benchmarks/RESULTS.md). The numerics are those of the one-device run up to
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
