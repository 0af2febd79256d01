"""Host-side input pipeline: sampling, shuffling, batching and per-process slicing with Grain.

The data is small (FER2013 is ~80 MB as uint8), so it lives in memory as an `ArraySplit`. Grain
decides *which* example goes where, one integer index per position of a global stream; the pixels
are gathered once per batch with a single numpy fancy index (no per-record image work in Python).
Augmentation runs on the device (`fer_flax.core.augment`).

The global training stream is a function of (split, seed, sampling) only: position k holds the same
example whatever the batch size or process count. Global batch `g` is positions `[g*B, (g+1)*B)`;
process `p` of `P` takes the contiguous slice `[g*B + p*b, g*B + (p+1)*b)` with `b = B // P`.
Grain computes exactly those positions (`batch(b)` then `slice(p::P)`), so one process with batch B
and two with B/2 see identical global batches, and no process pays for the others' indices.
"""

from __future__ import annotations

import math
import multiprocessing
import os
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

import grain
import jax
import numpy as np
from absl import flags

from fer_flax.config.choices import SAMPLING_MODES
from fer_flax.config.schema import check_choice, check_class_weights
from fer_flax.data.splits import NUM_CLASSES, ArraySplit

# Tags hashed with the user's seed into well-separated 32-bit seeds. Grain's per-epoch shuffle seed
# is `seed + epoch`: passed through directly, seeds 0 and 1 would see the same epoch orders, shifted
# by one epoch.
_SHUFFLE_TAG = 0x5F3A
_SAMPLER_TAG = 0x77E1

# How often a worker process checks that the trainer that started it is still alive (seconds).
_PARENT_POLL_S = 1.0


def class_sampling_weights(
    labels: np.ndarray,
    mode: str,
    explicit: Sequence[float] | None = None,
    num_classes: int = NUM_CLASSES,
) -> np.ndarray:
    """Per-class target sampling probabilities (float64 [num_classes], sum 1) for a training stream.

    Modes:
      none      natural class frequencies (count / N).
      balanced  every class present in `labels` equally likely (per-example weight 1/count); classes
                with no examples get 0.
      sqrt      class probability proportional to sqrt(count) (per-example weight 1/sqrt(count)).
      explicit  `explicit` gives one non-negative weight per class, normalised to sum 1.

    Raises ConfigError for an unknown mode, or `explicit` weights that `fer_flax.config.schema.validate`
    would reject for `config.data.class_weights`, and ValueError for empty or out-of-range labels and a
    class with positive weight but no examples in `labels`.
    """
    labels = np.asarray(labels)
    check_choice("sampling", mode, SAMPLING_MODES)
    if labels.ndim != 1 or labels.size == 0:
        raise ValueError(f"labels must be a non-empty 1-D array, got shape {labels.shape}")
    if labels.min() < 0 or labels.max() >= num_classes:
        raise ValueError(f"labels must lie in 0..{num_classes - 1}, found {labels.min()}..{labels.max()}")
    if explicit is not None and mode != "explicit":
        raise ValueError(
            f"class weights were given but sampling={mode!r}; set sampling='explicit' to use "
            "them or drop the weights"
        )
    counts = np.bincount(labels, minlength=num_classes).astype(np.float64)

    if mode == "none":
        target = counts
    elif mode == "balanced":
        target = (counts > 0).astype(np.float64)
    elif mode == "sqrt":
        target = np.sqrt(counts)
    else:
        check_class_weights("explicit", explicit, num_classes)
        target = np.asarray(explicit, dtype=np.float64)
        empty = np.flatnonzero((target > 0) & (counts == 0))
        if empty.size:
            raise ValueError(
                f"classes {empty.tolist()} have positive weight but no examples in the split; "
                "give them weight 0"
            )
    return target / target.sum()


class _WeightedPick(grain.transforms.RandomMap):
    """Draws one example index with replacement: a class by its target probability, then a uniform
    member of that class. Same distribution as per-example weights target[c] / count[c]."""

    def __init__(self, labels: np.ndarray, class_probs: np.ndarray):
        # Examples grouped by class: class c owns order[starts[c]:starts[c] + counts[c]].
        self._order = np.argsort(labels, kind="stable").astype(np.int64)
        self._counts = np.bincount(labels, minlength=len(class_probs))
        self._starts = np.concatenate([[0], np.cumsum(self._counts)[:-1]])
        self._cdf = np.cumsum(class_probs)
        # A draw can round onto the top of the CDF: clamp to the last class that can be drawn.
        self._last = int(np.flatnonzero(class_probs > 0)[-1])

    def random_map(self, element: int, rng: np.random.Generator) -> int:
        del element  # the position in the stream only seeds `rng`
        c = min(int(np.searchsorted(self._cdf, rng.random(), side="right")), self._last)
        return int(self._order[self._starts[c] + rng.integers(self._counts[c])])


def _nhwc(images: np.ndarray) -> np.ndarray:
    """Images with a channel axis: grayscale [N, H, W] gets one."""
    return images[..., None] if images.ndim == 3 else images


class _Gather(grain.transforms.Map):
    """Turns a batch of example indices into a batch of images and labels (one fancy index each), plus
    the soft targets of a split that has them (FER+'s label modes) and its cached teacher
    probabilities (knowledge distillation)."""

    def __init__(self, split: ArraySplit):
        self._images = split.images
        self._labels = split.labels.astype(np.int32, copy=False)
        self._rows = {"target": split.targets, "teacher_probs": split.teacher_probs}

    def map(self, indices: np.ndarray) -> dict[str, np.ndarray]:
        batch = {"image": _nhwc(self._images[indices]), "label": self._labels[indices]}
        batch.update({key: rows[indices] for key, rows in self._rows.items() if rows is not None})
        return batch


def _stack_indices(indices: Sequence[int]) -> np.ndarray:
    return np.asarray(indices, dtype=np.int64)


def _die_with_parent(worker_index: int, worker_count: int) -> None:
    """Grain worker init: a daemon thread that ends this worker soon after its parent process dies,
    so a SIGKILLed trainer doesn't leave orphaned workers holding memory.

    Not `prctl(PR_SET_PDEATHSIG)`: Linux sends that signal when the *thread* that started the worker
    ends, and Grain starts workers from its own prefetch thread, which ends in `close()`. The SIGTERM
    then hit the worker at a random point, sometimes while it held the lock of Grain's stop event,
    and the trainer's `close()` waited on that lock forever (a hang seen in CI)."""
    del worker_index, worker_count
    # The PID the trainer had when it spawned us (not getppid(): the trainer may already be gone).
    spawner = multiprocessing.parent_process()
    parent = spawner.pid if spawner is not None else os.getppid()

    def exit_when_orphaned() -> None:
        while os.getppid() == parent:
            time.sleep(_PARENT_POLL_S)
        os._exit(1)

    threading.Thread(target=exit_when_orphaned, name="fer_flax-parent-watch", daemon=True).start()


def _check_layout(global_batch_size: int, process_index: int, process_count: int) -> int:
    if global_batch_size <= 0:
        raise ValueError(f"global_batch_size must be positive, got {global_batch_size}")
    if process_count <= 0 or not 0 <= process_index < process_count:
        raise ValueError(f"process_index {process_index} is not in [0, process_count={process_count})")
    if global_batch_size % process_count:
        raise ValueError(
            f"global_batch_size {global_batch_size} is not divisible by process_count {process_count}"
        )
    return global_batch_size // process_count


def derived_seed(seed: int, tag: int) -> int:
    """A well-separated 32-bit seed for one use (`tag`) of the user's `seed`."""
    return int(np.random.SeedSequence([seed, tag]).generate_state(1, dtype=np.uint32)[0])


def make_train_iterator(
    split: ArraySplit,
    *,
    global_batch_size: int,
    seed: int,
    sampling: str = "none",
    class_weights: Sequence[float] | None = None,
    process_index: int = 0,
    process_count: int = 1,
    num_workers: int = 0,
    num_threads: int = 1,
    prefetch: int = 4,
) -> grain.DatasetIterator:
    """Infinite, deterministic stream of this process's batches.

    Each element is `{'image': uint8 [b, H, W, C], 'label': int32 [b]}` (plus `'target'` float32 [b, K]
    when the split has soft targets, `'teacher_probs'` when it has cached teacher probabilities) with
    `b = global_batch_size // process_count`. sampling='none' shuffles without replacement, a fresh
    permutation per epoch (batches run across epoch boundaries, so every batch is full); the weighted
    modes ('balanced', 'sqrt', 'explicit', see `class_sampling_weights`) sample with
    replacement, position by position, like PyTorch's WeightedRandomSampler.

    The iterator's `get_state()` is a small JSON-serialisable dict; `set_state()` on a fresh
    iterator built with the same arguments resumes exactly. `num_workers > 0` adds Grain worker
    processes (spawned: the calling script needs a `__main__` guard; close the iterator when done).
    `num_threads`/`prefetch` size the in-process background prefetch (0 threads: batches are made
    synchronously in `next()`).
    """
    b = _check_layout(global_batch_size, process_index, process_count)
    if len(split) == 0:
        raise ValueError("cannot build a training stream from an empty split")
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")

    # Checks the labels and, with 'explicit', that every weighted class has examples.
    probs = class_sampling_weights(split.labels, sampling, class_weights, split.num_classes)
    if sampling == "none":
        # Shuffle before repeat: grain's repeat hands the absolute position to the shuffle, which
        # reseeds per epoch (seed + epoch), so every epoch is a new permutation of all N examples.
        positions = (
            grain.MapDataset.range(len(split)).shuffle(seed=derived_seed(seed, _SHUFFLE_TAG)).repeat(None)
        )
    else:
        # grain's random_map seeds each element's RNG from (seed, absolute stream position), so
        # the draw at position k is independent of batch size and process layout.
        positions = (
            grain.MapDataset.range(1)
            .repeat(None)
            .random_map(_WeightedPick(split.labels, probs), seed=derived_seed(seed, _SAMPLER_TAG))
        )
    ds = (
        positions.batch(b, batch_fn=_stack_indices)
        .slice(slice(process_index, None, process_count))
        .map(_Gather(split))
    )
    it_ds = ds.to_iter_dataset(
        grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=prefetch if num_threads else 0)
    )
    if num_workers > 0:
        # Grain's multiprocessing reads its absl flags. Under `app.run` they are parsed already;
        # from a notebook or a test they are not and grain fails in `next()`: take the defaults.
        if not flags.FLAGS.is_parsed():
            flags.FLAGS.mark_as_parsed()
        it_ds = it_ds.mp_prefetch(
            grain.MultiprocessingOptions(num_workers=num_workers), worker_init_fn=_die_with_parent
        )
    return iter(it_ds)


def training_stream(split: ArraySplit, config: Any) -> grain.DatasetIterator:
    """This process's training stream as `config` sets it (batch size, seed, sampling, workers)."""
    return make_train_iterator(
        split,
        global_batch_size=config.batch_size,
        seed=config.seed,
        sampling=config.data.sampling,
        class_weights=config.data.class_weights,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
        num_workers=config.data.num_workers,
    )


def num_eval_batches(num_examples: int, global_batch_size: int) -> int:
    """Number of global batches that cover `num_examples` exactly once (the last one padded)."""
    if global_batch_size <= 0:
        raise ValueError(f"global_batch_size must be positive, got {global_batch_size}")
    return math.ceil(num_examples / global_batch_size)


def eval_batches(
    split: ArraySplit, *, global_batch_size: int, process_index: int = 0, process_count: int = 1
) -> Iterator[dict[str, np.ndarray]]:
    """Every example exactly once, in order, as fixed-shape batches for exact evaluation.

    Yields `{'image': uint8 [b, H, W, C], 'label': int32 [b], 'mask': bool [b]}` with
    `b = global_batch_size // process_count`: this process's contiguous slice of each global batch.
    Positions past the end of the split are zero images with label 0 and mask False, so every batch
    has the same shape (one compilation) and metrics weighted by `mask` are exact.
    """
    # Validate now, not at the first `next()` as the generator below would.
    b = _check_layout(global_batch_size, process_index, process_count)
    return _eval_batches(split, global_batch_size, process_index * b, b)


def _eval_batches(
    split: ArraySplit, global_batch_size: int, offset: int, b: int
) -> Iterator[dict[str, np.ndarray]]:
    n = len(split)
    labels = split.labels.astype(np.int32, copy=False)
    for g in range(num_eval_batches(n, global_batch_size)):
        pos = g * global_batch_size + offset + np.arange(b)
        mask = pos < n
        idx = np.where(mask, pos, 0)
        image = _nhwc(split.images[idx])
        image[~mask] = 0
        label = np.where(mask, labels[idx], 0).astype(np.int32)
        yield {"image": image, "label": label, "mask": mask}


__all__ = [
    "SAMPLING_MODES",
    "class_sampling_weights",
    "derived_seed",
    "eval_batches",
    "make_train_iterator",
    "num_eval_batches",
    "training_stream",
]
