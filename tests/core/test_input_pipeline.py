"""Tests for the Grain input pipeline: sampling weights, stream, resume, sharding, exact eval."""

import json
import multiprocessing
import os
import select
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from fer_flax.config.schema import ConfigError
from fer_flax.core import input_pipeline as ip
from fer_flax.data.splits import FER2013_TRAIN_COUNTS, NUM_CLASSES, ArraySplit
from tests.helpers import REPO

# FER2013's training imbalance scaled down 20x: (199, 21, 204, 360, 241, 158, 248), N = 1431.
SKEWED_COUNTS = tuple(c // 20 for c in FER2013_TRAIN_COUNTS)


def make_split(counts=SKEWED_COUNTS, seed=0) -> ArraySplit:
    """Labels in shuffled order; each image encodes its own index in two pixels so batches can be
    traced back to the examples they were gathered from."""
    labels = np.random.default_rng(seed).permutation(np.repeat(np.arange(NUM_CLASSES), counts))
    n = labels.size
    images = np.full((n, 48, 48), 7, np.uint8)
    images[:, 0, 0] = np.arange(n) % 256
    images[:, 0, 1] = np.arange(n) // 256
    return ArraySplit(images, labels.astype(np.int32))


def decode(batch) -> np.ndarray:
    img = batch["image"].astype(np.int64)
    return img[:, 0, 0, 0] + 256 * img[:, 0, 1, 0]


def take(it, k):
    return [next(it) for _ in range(k)]


def assert_same_batches(xs, ys):
    assert len(xs) == len(ys)
    for x, y in zip(xs, ys, strict=True):
        np.testing.assert_array_equal(x["image"], y["image"])
        np.testing.assert_array_equal(x["label"], y["label"])


# -------------------------------------------------------------------------------------------------
# class_sampling_weights


def test_class_sampling_weights_hand_computed():
    counts = (1, 4, 9, 16, 25, 36, 9)  # N = 100, sqrt = (1, 2, 3, 4, 5, 6, 3) summing to 24
    labels = np.repeat(np.arange(7), counts)
    np.testing.assert_allclose(ip.class_sampling_weights(labels, "none"), np.array(counts) / 100)
    np.testing.assert_allclose(ip.class_sampling_weights(labels, "balanced"), np.full(7, 1 / 7))
    np.testing.assert_allclose(
        ip.class_sampling_weights(labels, "sqrt"), np.array([1, 2, 3, 4, 5, 6, 3]) / 24
    )
    np.testing.assert_allclose(
        ip.class_sampling_weights(labels, "explicit", (1, 0, 0, 0, 0, 0, 3)),
        [0.25, 0, 0, 0, 0, 0, 0.75],
    )


def test_class_sampling_weights_absent_class_gets_zero():
    labels = np.repeat([0, 2, 3], [5, 20, 45])
    np.testing.assert_allclose(
        ip.class_sampling_weights(labels, "balanced"), [1 / 3, 0, 1 / 3, 1 / 3, 0, 0, 0]
    )
    sq = np.sqrt([5, 0, 20, 45, 0, 0, 0])
    np.testing.assert_allclose(ip.class_sampling_weights(labels, "sqrt"), sq / sq.sum())


@pytest.mark.parametrize(
    ("mode", "explicit", "match"),
    [
        ("inverse", None, "sampling='inverse' is not one of: none, balanced, sqrt, explicit"),
        ("explicit", None, "explicit=None must be 7 weights"),
        ("explicit", (1, 1, 1), "must be 7 weights"),
        ("explicit", (1, 1, 1, -1, 1, 1, 1), "finite numbers >= 0"),
        ("explicit", (1, 1, 1, float("nan"), 1, 1, 1), "finite numbers >= 0"),
        ("explicit", (0,) * 7, "all zero"),
        ("explicit", (1, 1, 0, 0, 0, 0, 1), r"classes \[6\] have positive weight but no examples"),
        ("balanced", (1,) * 7, "sampling='explicit'"),
    ],
)
def test_class_sampling_weights_errors(mode, explicit, match):
    labels = np.repeat([0, 1, 2, 3], 5)  # classes 4, 5, 6 are empty
    with pytest.raises(ValueError, match=match):
        ip.class_sampling_weights(labels, mode, explicit)


@pytest.mark.parametrize("labels", [np.array([], np.int32), np.array([0, 7]), np.array([-1, 2])])
def test_class_sampling_weights_bad_labels(labels):
    with pytest.raises(ValueError, match="labels"):
        ip.class_sampling_weights(labels, "none")


# -------------------------------------------------------------------------------------------------
# Training stream


def test_batch_format_and_gather():
    split = make_split()
    for sampling in ("none", "sqrt"):
        it = ip.make_train_iterator(split, global_batch_size=32, seed=0, sampling=sampling)
        for batch in take(it, 3):
            assert set(batch) == {"image", "label"}
            assert batch["image"].shape == (32, 48, 48, 1) and batch["image"].dtype == np.uint8
            assert batch["label"].shape == (32,) and batch["label"].dtype == np.int32
            # Images and labels come from the same examples.
            np.testing.assert_array_equal(batch["label"], split.labels[decode(batch)])


@pytest.mark.parametrize(
    ("sampling", "weights"),
    [("balanced", None), ("sqrt", None), ("explicit", (1, 4, 0, 1, 1, 2, 1))],
)
def test_weighted_sampling_frequencies(sampling, weights):
    split = make_split()
    target = ip.class_sampling_weights(split.labels, sampling, weights)
    it = ip.make_train_iterator(
        split, global_batch_size=500, seed=1, sampling=sampling, class_weights=weights
    )
    batches = take(it, 44)  # 22,000 draws
    labels = np.concatenate([b["label"] for b in batches])
    freq = np.bincount(labels, minlength=NUM_CLASSES) / labels.size
    np.testing.assert_allclose(freq, target, atol=0.02)
    natural = ip.class_sampling_weights(split.labels, "none")
    assert np.abs(freq - natural).max() > 0.05  # the stream really is re-weighted
    # Within a class, members are drawn uniformly: the rare class's 21 examples all show up.
    idx = np.concatenate([decode(b) for b in batches])
    if target[1] > 0:
        assert set(idx[labels == 1]) == set(np.flatnonzero(split.labels == 1))
    if target[2] == 0:
        assert not np.any(labels == 2)


def test_none_visits_every_example_once_per_epoch():
    split = make_split()
    n = len(split)
    it = ip.make_train_iterator(split, global_batch_size=128, seed=0)
    idx = np.concatenate([decode(b) for b in take(it, -(-3 * n // 128))])
    epochs = [idx[e * n : (e + 1) * n] for e in range(3)]
    for order in epochs:
        np.testing.assert_array_equal(np.sort(order), np.arange(n))
    # A fresh permutation every epoch, and not the identity.
    assert not np.array_equal(epochs[0], epochs[1])
    assert not np.array_equal(epochs[1], epochs[2])
    assert not np.array_equal(epochs[0], np.arange(n))


@pytest.mark.parametrize("sampling", ["none", "balanced"])
def test_determinism(sampling):
    split = make_split()
    make = lambda seed: ip.make_train_iterator(split, global_batch_size=64, seed=seed, sampling=sampling)
    assert_same_batches(take(make(3), 4), take(make(3), 4))
    a, b = take(make(3), 4), take(make(4), 4)
    assert not all(np.array_equal(x["label"], y["label"]) for x, y in zip(a, b, strict=True))
    # Adjacent seeds must not give the same stream shifted by an epoch (see derived_seed).
    n = len(split)
    one_epoch = -(-2 * n // 64)
    i3 = np.concatenate([decode(x) for x in take(make(3), one_epoch)])
    i4 = np.concatenate([decode(x) for x in take(make(4), one_epoch)])
    assert not np.array_equal(i3[n : 2 * n], i4[:n])


@pytest.mark.parametrize("sampling", ["none", "sqrt"])
def test_stream_does_not_depend_on_batch_size(sampling):
    split = make_split()
    stream = lambda b, k: np.concatenate(
        [
            decode(x)
            for x in take(ip.make_train_iterator(split, global_batch_size=b, seed=0, sampling=sampling), k)
        ]
    )
    np.testing.assert_array_equal(stream(96, 4), stream(32, 12))


@pytest.mark.parametrize("sampling", ["none", "sqrt"])
def test_resume_is_exact(sampling):
    split = make_split()
    make = lambda: ip.make_train_iterator(split, global_batch_size=128, seed=5, sampling=sampling)
    it = make()
    take(it, 7)
    state = it.get_state()
    expected = take(it, 9)  # runs across the epoch boundary (N = 1431 < 16 * 128)

    # The state survives a JSON round trip (what a checkpoint stores).
    restored = json.loads(json.dumps(state))
    fresh = make()
    fresh.set_state(restored)
    assert_same_batches(take(fresh, 9), expected)


@pytest.mark.parametrize("process_count", [2, 4])
@pytest.mark.parametrize("sampling", ["none", "balanced"])
def test_process_slices_partition_the_global_batch(sampling, process_count):
    split = make_split()
    batch = 64
    single = take(ip.make_train_iterator(split, global_batch_size=batch, seed=2, sampling=sampling), 6)
    per_process = [
        take(
            ip.make_train_iterator(
                split,
                global_batch_size=batch,
                seed=2,
                sampling=sampling,
                process_index=p,
                process_count=process_count,
            ),
            6,
        )
        for p in range(process_count)
    ]
    for g, whole in enumerate(single):
        parts = [per_process[p][g] for p in range(process_count)]
        assert all(part["label"].shape == (batch // process_count,) for part in parts)
        np.testing.assert_array_equal(np.concatenate([p["image"] for p in parts]), whole["image"])
        np.testing.assert_array_equal(np.concatenate([p["label"] for p in parts]), whole["label"])
        if sampling == "none":  # without replacement, the slices of an in-epoch batch are disjoint
            assert len(set(np.concatenate([decode(p) for p in parts]))) == batch


def test_worker_processes_give_the_same_stream_and_resume():
    split = make_split()
    make = lambda workers: ip.make_train_iterator(
        split, global_batch_size=32, seed=0, sampling="sqrt", num_workers=workers
    )
    expected = take(make(0), 6)
    it = make(1)
    try:
        got = take(it, 3)
        state = json.loads(json.dumps(it.get_state()))
        got += take(it, 3)
    finally:
        it.close()
    assert_same_batches(got, expected)
    it = make(1)
    try:
        it.set_state(state)
        assert_same_batches(take(it, 3), expected[3:])
    finally:
        it.close()


def test_worker_outlives_grain_thread_and_stops_cleanly():
    # Grain starts the worker process from its prefetch thread, which ends in close(). A parent-death
    # signal tied to that thread SIGTERMed the worker at a random point (exit code -15), sometimes
    # while it held the lock of Grain's stop event, so close() hung. The worker must see the stop
    # event and leave with exit code 0.
    it = ip.make_train_iterator(make_split(), global_batch_size=32, seed=0, num_workers=1)
    try:
        take(it, 2)
        workers = [p for p in multiprocessing.active_children() if p.name.startswith("grain")]
        assert len(workers) == 1
    finally:
        it.close()
    workers[0].join(timeout=30)
    assert workers[0].exitcode == 0


def test_worker_exits_when_the_trainer_is_killed():
    script = textwrap.dedent(
        f"""
        import multiprocessing, sys, time
        sys.path.insert(0, {str(REPO)!r})
        from tests.core.test_input_pipeline import make_split, take
        from fer_flax.core import input_pipeline as ip
        if __name__ == "__main__":
            it = ip.make_train_iterator(make_split(), global_batch_size=32, seed=0, num_workers=1)
            take(it, 1)
            workers = [p for p in multiprocessing.active_children() if p.name.startswith("grain")]
            print(*[p.pid for p in workers], flush=True)
            time.sleep(300)
        """
    )
    trainer = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        # Never block on a trainer that hangs before printing: a hang is what this guards against.
        ready, _, _ = select.select([trainer.stdout], [], [], 120)
        line = trainer.stdout.readline() if ready else ""
        assert line.strip(), "the trainer printed no worker PID within 120 s"
        worker_pid = int(line)
    finally:
        trainer.kill()
        trainer.wait()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            os.kill(worker_pid, 0)  # still there (a zombie counts until init reaps it)
        except ProcessLookupError:
            return
        if _is_zombie(worker_pid):
            return
        time.sleep(0.2)
    os.kill(worker_pid, signal.SIGKILL)
    pytest.fail(f"worker {worker_pid} still running 20 s after its trainer was killed")


def _is_zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return False


def test_layout_errors():
    split = make_split()
    with pytest.raises(ValueError, match=r"global_batch_size 10 is not divisible by process_count 3"):
        ip.make_train_iterator(split, global_batch_size=10, seed=0, process_count=3)
    with pytest.raises(ValueError, match=r"global_batch_size 10 is not divisible by process_count 4"):
        ip.eval_batches(split, global_batch_size=10, process_count=4)
    with pytest.raises(ValueError, match="must be positive"):
        ip.make_train_iterator(split, global_batch_size=0, seed=0)
    with pytest.raises(ValueError, match="process_index 2"):
        ip.make_train_iterator(split, global_batch_size=8, seed=0, process_index=2, process_count=2)
    with pytest.raises(ValueError, match="seed"):
        ip.make_train_iterator(split, global_batch_size=8, seed=-1)
    with pytest.raises(ConfigError, match="sampling='weighted' is not one of"):
        ip.make_train_iterator(split, global_batch_size=8, seed=0, sampling="weighted")


# -------------------------------------------------------------------------------------------------
# Evaluation batches


def test_num_eval_batches():
    assert ip.num_eval_batches(1431, 100) == 15
    assert ip.num_eval_batches(1400, 100) == 14
    assert ip.num_eval_batches(0, 100) == 0
    with pytest.raises(ValueError):
        ip.num_eval_batches(10, 0)


def test_eval_covers_every_example_once_in_order():
    split = make_split()
    n = len(split)
    batches = list(ip.eval_batches(split, global_batch_size=100))
    assert len(batches) == ip.num_eval_batches(n, 100) == 15
    for b in batches:
        assert b["image"].shape == (100, 48, 48, 1) and b["image"].dtype == np.uint8
        assert b["label"].shape == (100,) and b["label"].dtype == np.int32
        assert b["mask"].shape == (100,) and b["mask"].dtype == np.bool_
    mask = np.concatenate([b["mask"] for b in batches])
    assert mask.sum() == n and mask[:n].all()  # padding only at the end
    idx = np.concatenate([decode(b) for b in batches])[mask]
    np.testing.assert_array_equal(idx, np.arange(n))
    labels = np.concatenate([b["label"] for b in batches])
    np.testing.assert_array_equal(labels[mask], split.labels)
    last = batches[-1]
    assert not last["image"][~last["mask"]].any() and not last["label"][~last["mask"]].any()


@pytest.mark.parametrize("process_count", [2, 4])
def test_eval_process_slices(process_count):
    split = make_split()
    batch = 200  # the last global batch holds 31 real examples: some processes get only padding
    single = list(ip.eval_batches(split, global_batch_size=batch))
    per_process = [
        list(ip.eval_batches(split, global_batch_size=batch, process_index=p, process_count=process_count))
        for p in range(process_count)
    ]
    assert all(len(batches) == len(single) for batches in per_process)
    for g, whole in enumerate(single):
        for key in ("image", "label", "mask"):
            np.testing.assert_array_equal(
                np.concatenate([per_process[p][g][key] for p in range(process_count)]), whole[key]
            )
    assert sum(b["mask"].sum() for batches in per_process for b in batches) == len(split)
    assert not per_process[-1][-1]["mask"].any()
