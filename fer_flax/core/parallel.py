"""Device mesh, shardings and multi-host start-up: one code path for 1 CPU, 8 GPUs or many hosts.

Everything runs under `jax.jit` over global arrays (no `pmap`, which is in maintenance mode in current
JAX): batches are sharded along the mesh's `data` axis, the train state is replicated, and XLA inserts
the all-reduces. Under jit, BatchNorm statistics and metrics are therefore global-batch values.

Several processes (hosts, or one process per GPU under SLURM) join with `initialize_distributed`, which
must run before anything else touches JAX (`fer_flax.runtime.start()` calls it). After it the same code
runs unchanged: `jax.devices()` lists every device of every process, and each process feeds its own
slice of each global batch. A process of the job that is lost (killed, crashed, stopped, cut off)
ends the others with one `error: ...` line within a bound (`fer_flax.core.liveness`).
"""

from __future__ import annotations

import dataclasses
import inspect
import os
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
from jax._src import distributed
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from fer_flax.core import coordinator, liveness

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


@dataclasses.dataclass
class _Job:
    """This process's part in a multi-process job: whether it joined one, its liveness watch, and in
    process 0 the coordination service's process (explicit settings only)."""

    joined: bool = False
    watch: liveness.PeerWatch | None = None
    service: coordinator.Coordinator | None = None


_JOB = _Job()


def initialize_distributed(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
) -> DistributedPlan:
    """Joins the multi-process job described by `resolve_distributed`; a no-op for a single process.

    Call it first: `jax.distributed.initialize` must run before any JAX computation or device query.
    With explicit settings, process 0 serves the coordination service from a process of its own
    (`fer_flax.core.coordinator`), so that the others outlive its loss. Every process then starts the
    liveness watch (`fer_flax.core.liveness`), which ends a survivor with one line when a process of
    the job is lost. JAX's own heartbeat timeout is set above the watch's.
    """
    plan = resolve_distributed(coordinator_address, num_processes, process_id)
    if plan.mode == "single":
        return plan
    timeout = liveness.host_timeout_s()
    options = {"heartbeat_timeout_seconds": liveness.jax_heartbeat_timeout_s(timeout)}
    # Cross-process collectives on CPU (tests, CPU clusters); GPUs use NCCL whatever this says.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    if plan.mode == "explicit":
        if plan.process_id == 0:
            options.update(_start_service(plan, options["heartbeat_timeout_seconds"], timeout))
        _jax_initialize(
            coordinator_address=plan.coordinator_address,
            num_processes=plan.num_processes,
            process_id=plan.process_id,
            # Explicit values are the whole truth: don't let SLURM/MPI detection narrow the devices.
            cluster_detection_method="deactivate",
            **options,
        )
    else:
        # JAX reads the coordinator (first node of the step), the count and the id from SLURM and
        # gives each task the GPU numbered by its SLURM_LOCALID. The service stays in process 0 here.
        _jax_initialize(**options)
    _JOB.joined = True
    state = getattr(distributed, "global_state", None)  # where JAX 0.10 and 0.11 keep the client
    if getattr(state, "client", None) is None:
        liveness.warn_unwatched("no liveness watch: this JAX keeps its distributed client elsewhere")
        return plan
    _JOB.watch = liveness.PeerWatch.start_or_warn(
        state.client, state.process_id, state.num_processes, timeout, state.coordinator_address or "?"
    )
    return plan


def _jax_accepts(name: str) -> bool:
    return name in inspect.signature(jax.distributed.initialize).parameters


def _jax_initialize(**options: Any) -> None:
    """`jax.distributed.initialize` without the options this JAX does not have (its heartbeat
    timeout: the watch then still speaks first when the timeout is below JAX's default, 100 s)."""
    jax.distributed.initialize(**{k: v for k, v in options.items() if _jax_accepts(k)})


def _start_service(plan: DistributedPlan, heartbeat_timeout_s: int, timeout_s: float) -> dict[str, str]:
    """Process 0: starts the coordination service's own process on the coordinator's port, and
    returns the option that keeps JAX's in-process service off that port. Without a JAX that takes
    that option, or a jaxlib whose service can be started this way, the service stays in process 0
    (with a warning: the others then abort when process 0 is lost)."""
    if not _jax_accepts("coordinator_bind_address"):
        liveness.warn_unwatched("this JAX cannot move the coordination service out of process 0")
        return {}
    port = plan.coordinator_address.rsplit(":", 1)[1]
    address = os.environ.get("JAX_COORDINATOR_BIND_ADDRESS") or f"[::]:{port}"
    # It outlives this process by the time the others need to notice its loss and end.
    linger = liveness.detection_bound_s(timeout_s) + 5
    try:
        _JOB.service = coordinator.start(address, plan.num_processes, heartbeat_timeout_s, linger)
    except coordinator.Unsupported as e:
        liveness.warn_unwatched(str(e))
        return {}
    # JAX starts a service in process 0 whatever it is told; this one binds a free loopback port and
    # serves nobody: every process, this one too, uses the service started above.
    return {"coordinator_bind_address": "127.0.0.1:0"}


def in_job() -> bool:
    """Whether this process has joined a multi-process job."""
    return _JOB.joined


def settle_after_error() -> str | None:
    """This process stops with an error: tells its peers, and waits until they are accounted for (a
    lost one ends this process with the lost line). Returns the line for a peer that had failed, if
    one had; None otherwise and for a single process (`liveness.PeerWatch.settle_after_error`)."""
    return _JOB.watch.settle_after_error() if _JOB.watch else None


def shutdown_distributed() -> None:
    """Leaves the job cleanly (all processes meet at a barrier); a no-op when not initialised. The
    watch keeps watching the peers through the barrier, then stops with the coordination service."""
    if _JOB.watch:
        _JOB.watch.finish()
    if jax.distributed.is_initialized():
        jax.distributed.shutdown()
    if _JOB.watch:
        _JOB.watch.close()
    if _JOB.service:
        _JOB.service.stop()
    _JOB.joined, _JOB.watch, _JOB.service = False, None, None
