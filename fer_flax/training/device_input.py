"""On-device training input (`config.data.pipeline = "device"`): the whole training split lives on the
devices as one uint8 array, the stream's order is drawn there, and each batch is gathered inside the
jitted step, so the host only dispatches calls.

The stream has the same definition as the Grain pipeline's (`fer_flax.core.input_pipeline`): global batch
`g` is stream positions `[g*B, (g+1)*B)`, position `p` lies in epoch `p // N` at offset `p % N`.
  sampling 'none'   each epoch is a fresh permutation of the N examples (without replacement), drawn
                    with `jax.random.permutation` from a key derived from the seed and the epoch.
  weighted modes    each position independently draws a class by `class_sampling_weights` and then a
                    uniform member of that class (with replacement), from a key derived from the seed,
                    the epoch and the offset.
The orders differ from Grain's (other generators), the distributions are the same. Batch `g` is a pure
function of (split, seed, sampling, B, g), so the stream position is the step: `DeviceStream` stores
it in the checkpoint where the Grain pipeline stores its iterator state, and a resumed run continues
exactly.

Layout: the labels and sampling tables (a few hundred KB) are replicated. The images are replicated on
a single process ('auto'), or sharded along the example axis over every device ('sharded', the 'auto'
choice with several processes): each process then puts on its devices only their rows, and a batch is
gathered with one reduce-scatter (each device contributes the rows it holds, every device receives its
slice of the batch).
"""

from __future__ import annotations

import functools
import json
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from fer_flax.core import parallel
from fer_flax.core.input_pipeline import class_sampling_weights, derived_seed
from fer_flax.data.splits import NUM_CLASSES, ArraySplit

# Hashed with the seed into the stream's key (its own tag: the Grain pipeline's are 0x5F3A / 0x77E1).
_STREAM_TAG = 0xD15C


@flax.struct.dataclass
class DeviceSplit:
    """A training split on the devices. Arrays are pytree leaves; the rest is static (part of the
    compiled program's identity)."""

    images: jax.Array  # uint8 [N_padded, 48, 48]: replicated, or sharded along axis 0
    labels: jax.Array  # int32 [N], replicated
    by_class: jax.Array  # int32 [N]: example indices grouped by class (class c at class_start[c]...)
    class_start: jax.Array  # int32 [K]
    class_count: jax.Array  # int32 [K]
    class_cdf: jax.Array  # float32 [K]: cumulative target class probabilities (weighted modes)
    key: jax.Array  # uint32 [2]: raw key data of the stream's key
    num_examples: int = flax.struct.field(pytree_node=False)
    sampling: str = flax.struct.field(pytree_node=False)
    mesh: Mesh = flax.struct.field(pytree_node=False)
    sharded: bool = flax.struct.field(pytree_node=False)
    last_class: int = flax.struct.field(pytree_node=False)  # the last class with positive probability


def _global(array: np.ndarray, sharding: NamedSharding) -> jax.Array:
    """A global array from the same host array on every process (each places its devices' part)."""
    return jax.make_array_from_callback(array.shape, sharding, lambda index: array[index])


def place_split(
    split: ArraySplit,
    mesh: Mesh,
    *,
    seed: int,
    sampling: str = "none",
    class_weights: Any = None,
    layout: str = "auto",
    global_batch_size: int,
) -> DeviceSplit:
    """Puts `split` and its sampling tables on `mesh`'s devices (see the module docstring)."""
    n = len(split)
    if n == 0:
        raise ValueError("cannot build a training stream from an empty split")
    # Positions are formed in int32 as (step % N) * B + j (see `_epoch_and_offset`).
    if n * (global_batch_size + 1) >= 2**31:
        raise ValueError(
            f"the device pipeline needs N * (batch_size + 1) < 2**31, got N={n}, batch_size="
            f"{global_batch_size}; use data.pipeline='grain'"
        )
    probs = class_sampling_weights(split.labels, sampling, class_weights)
    sharded = layout == "sharded" or (layout == "auto" and jax.process_count() > 1)
    replicated = parallel.replicated_sharding(mesh)
    images = split.images
    if sharded:
        devices = mesh.devices.size
        padded = -(-n // devices) * devices
        images = np.concatenate([images, np.zeros((padded - n, *images.shape[1:]), np.uint8)])
    labels = split.labels.astype(np.int32)
    counts = np.bincount(labels, minlength=NUM_CLASSES).astype(np.int32)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int32)
    key = np.asarray(jax.random.key_data(jax.random.key(derived_seed(seed, _STREAM_TAG))), np.uint32)
    return DeviceSplit(
        images=_global(images, parallel.batch_sharding(mesh) if sharded else replicated),
        labels=_global(labels, replicated),
        by_class=_global(np.argsort(labels, kind="stable").astype(np.int32), replicated),
        class_start=_global(starts, replicated),
        class_count=_global(counts, replicated),
        class_cdf=_global(np.cumsum(probs).astype(np.float32), replicated),
        key=_global(key, replicated),
        num_examples=n,
        sampling=sampling,
        mesh=mesh,
        sharded=sharded,
        last_class=int(np.flatnonzero(probs > 0)[-1]),
    )


def epochs_per_call(num_steps: int, global_batch_size: int, num_examples: int) -> int:
    """How many epochs `num_steps` consecutive batches can touch: the depth of the order stack."""
    return -(-num_steps * global_batch_size // num_examples) + 1


def first_epoch(step: int, global_batch_size: int, num_examples: int) -> int:
    """The epoch of the first position of batch `step` (0-based), in exact integer arithmetic."""
    return step * global_batch_size // num_examples


def _epoch_and_offset(step: jax.Array, batch: int, n: int) -> tuple[jax.Array, jax.Array]:
    # step * B would overflow int32 on long runs: with step = q*N + r, step*B = q*N*B + r*B.
    q, r = step // n, step % n
    t = r * batch + jnp.arange(batch, dtype=jnp.int32)
    return q * batch + t // n, t % n


def _stream_key(split: DeviceSplit) -> jax.Array:
    return jax.random.wrap_key_data(split.key)


@functools.partial(jax.jit, static_argnums=(2,))
def _permutations(key_data: jax.Array, epochs: jax.Array, n: int) -> jax.Array:
    key = jax.random.wrap_key_data(key_data)

    def one(epoch):
        return jax.random.permutation(jax.random.fold_in(key, epoch), n).astype(jnp.int32)

    return jax.vmap(one)(epochs)


def epoch_orders(split: DeviceSplit, start_epoch: int, count: int) -> jax.Array:
    """int32 [count, N], replicated: the example order of epochs start_epoch .. start_epoch + count - 1
    with sampling 'none'; a [1, 1] placeholder for the weighted modes, which need none."""
    replicated = parallel.replicated_sharding(split.mesh)
    if split.sampling != "none":
        return _global(np.zeros((1, 1), np.int32), replicated)
    epochs = _global(np.arange(start_epoch, start_epoch + count, dtype=np.int32), replicated)
    return _permutations(split.key, epochs, split.num_examples)


def batch_indices(
    split: DeviceSplit, step: jax.Array, orders: jax.Array, start_epoch: jax.Array, batch: int
) -> jax.Array:
    """int32 [B]: the example index at each position of batch `step` (0-based). `orders` and
    `start_epoch` are `epoch_orders`' output and argument (sampling 'none' only)."""
    epoch, offset = _epoch_and_offset(step, batch, split.num_examples)
    if split.sampling == "none":
        return orders[epoch - start_epoch, offset]
    key = _stream_key(split)

    def pick(e, o):
        class_key, member_key = jax.random.split(jax.random.fold_in(jax.random.fold_in(key, e), o))
        u = jax.random.uniform(class_key)
        c = jnp.minimum(jnp.searchsorted(split.class_cdf, u, side="right"), split.last_class)
        member = jax.random.randint(member_key, (), 0, split.class_count[c])
        return split.by_class[split.class_start[c] + member]

    return jax.vmap(pick)(epoch, offset)


def _gather_sharded(images: jax.Array, idx: jax.Array, mesh: Mesh) -> jax.Array:
    axis = parallel.DATA_AXIS

    def local(shard, idx):
        rows = shard.shape[0]
        local_idx = idx - jax.lax.axis_index(axis) * rows
        held = (local_idx >= 0) & (local_idx < rows)
        rows_here = shard[jnp.clip(local_idx, 0, rows - 1)]
        mine = jnp.where(held[:, None, None], rows_here, jnp.zeros((), shard.dtype))
        # Exactly one device holds each row: the sum is that row, and each device keeps its slice.
        return jax.lax.psum_scatter(mine, axis, scatter_dimension=0, tiled=True)

    return jax.shard_map(local, mesh=mesh, in_specs=(P(axis), P()), out_specs=P(axis))(images, idx)


def gather_batch(split: DeviceSplit, idx: jax.Array) -> dict[str, jax.Array]:
    """`{'image': uint8 [B, 48, 48, 1], 'label': int32 [B]}` of examples `idx`, sharded like a batch."""
    sharding = parallel.batch_sharding(split.mesh)
    if split.sharded:
        images = _gather_sharded(split.images, idx, split.mesh)
    else:
        images = jax.lax.with_sharding_constraint(split.images[idx], sharding)
    labels = jax.lax.with_sharding_constraint(split.labels[idx], sharding)
    return {"image": images[..., None], "label": labels}


class DeviceStream:
    """The device pipeline's position in the stream, checkpointed where the Grain pipeline keeps its
    iterator state (`grain.checkpoint.CheckpointSave` accepts any object with these methods: the
    state is JSON bytes). The position is the number of batches consumed, which equals the state's
    step; the loop checks that the two agree."""

    def __init__(self, *, global_batch_size: int, seed: int, sampling: str, num_examples: int):
        self.identity = {
            "pipeline": "device",
            "global_batch_size": global_batch_size,
            "seed": seed,
            "sampling": sampling,
            "num_examples": num_examples,
        }
        self.position = 0

    def get_state(self) -> bytes:
        return json.dumps({**self.identity, "position": self.position}, indent=4).encode()

    def set_state(self, state: bytes) -> None:
        try:
            saved = json.loads(state)
        except ValueError:
            saved = None
        if not isinstance(saved, dict) or saved.get("pipeline") != "device":
            raise ValueError(
                "the checkpoint's data state was not written by the device pipeline (data.pipeline="
                "'grain' wrote it?): resume with the workdir's data.pipeline, or use a new --workdir"
            )
        differ = {k: (saved.get(k), v) for k, v in self.identity.items() if saved.get(k) != v}
        if differ:
            raise ValueError(f"the checkpoint's device stream differs from this run's: {differ}")
        self.position = int(saved["position"])

    def start_prefetch(self) -> None:
        """Nothing to prefetch (called by Grain's checkpoint handler after a restore)."""

    def close(self) -> None:
        """Nothing to release (the loop closes its iterator whatever the pipeline)."""
