"""Prints the foundation's speed figures on this machine:

  1. cache load time of the real FER2013 (cold parse once, then the warm cache load; must be < 1 s),
  2. Grain loader throughput (images/s) for the training stream, and
  3. training images/s of the CNN train step (steady state, after compilation),
and the ratio loader / train, which must be >= 5 so the loader is never the bottleneck.

  python benchmarks/input_and_train_speed.py [--data ../shared/data/fer2013/fer2013.csv.gz]
      [--variant small] [--batch 128] [--steps 30]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from configs import simple_cnn
from fer_flax import input_pipeline, optim, parallel, train
from fer_flax.data.cache import load_fer2013_cached
from fer_flax.data.synthetic import generate_synthetic


def time_cache(path: str) -> None:
    with tempfile.TemporaryDirectory() as cache_dir:
        t0 = time.perf_counter()
        cold = load_fer2013_cached(path, ("train", "val"), cache_dir)
        cold_s = time.perf_counter() - t0
        warm_times = []
        for _ in range(3):
            t0 = time.perf_counter()
            warm = load_fer2013_cached(path, ("train", "val"), cache_dir)
            warm_times.append(time.perf_counter() - t0)
        n = sum(len(s) for s in warm.values())
        assert n == sum(len(s) for s in cold.values())
        print(f"real data: {path}")
        print(f"  cold parse + cache write: {cold_s:.2f} s for {n} images")
        print(f"  warm cache load: median {np.median(warm_times) * 1000:.0f} ms (3 loads)")


def loader_images_per_sec(split, batch: int, seconds: float = 3.0) -> float:
    it = input_pipeline.make_train_iterator(split, global_batch_size=batch, seed=0, sampling="balanced")
    next(it)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        b = next(it)
        n += b["image"].shape[0]
    return n / (time.perf_counter() - t0)


def train_images_per_sec(split, variant: str, batch: int, steps: int) -> float:
    config = simple_cnn.get_config()
    config.model.variant = variant
    config.batch_size = batch
    mesh = parallel.make_mesh()
    model = train.create_model(config)
    schedule = optim.create_learning_rate_schedule(config.optim, steps_per_epoch=100, total_steps=1000)
    state = train.create_train_state(
        model, optim.create_optimizer(config.optim, schedule), jax.random.key(0), mesh
    )
    step = jax.jit(
        lambda s, b, r: train.train_step(s, b, r, config=config, schedule=schedule),
        donate_argnums=(0,),
    )
    it = input_pipeline.make_train_iterator(split, global_batch_size=batch, seed=0)
    rng = jax.random.key(1)
    batches = [parallel.to_global_batch(next(it), mesh) for _ in range(steps)]
    state, m = step(state, batches[0], rng)  # compile
    jax.block_until_ready(m)
    window = max(steps // 3, 1)
    rates = []
    for w in range(3):
        t0 = time.perf_counter()
        for b in batches[w * window : (w + 1) * window]:
            state, m = step(state, b, rng)
        jax.block_until_ready(m)
        rates.append(window * batch / (time.perf_counter() - t0))
    return float(np.median(rates))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    default_data = os.path.join(
        os.path.dirname(__file__), "..", "..", "shared", "data", "fer2013", "fer2013.csv.gz"
    )
    parser.add_argument("--data", default=default_data)
    parser.add_argument("--variant", default="small")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=30)
    args = parser.parse_args()
    print(f"jax {jax.__version__}, devices: {jax.devices()}")
    if os.path.exists(args.data):
        time_cache(os.path.abspath(args.data))
    else:
        print(f"real data not found at {args.data}: skipping the cache benchmark")
    split = generate_synthetic(10_000, 0, 0, seed=0)["train"]
    loader = loader_images_per_sec(split, args.batch)
    print(f"loader (balanced sampling, batch {args.batch}): {loader:,.0f} images/s")
    trainer = train_images_per_sec(split, args.variant, args.batch, args.steps)
    print(f"train step cnn/{args.variant} (batch {args.batch}, fp32): {trainer:,.1f} images/s")
    print(f"loader / train ratio: {loader / trainer:.1f}x (must be >= 5)")


if __name__ == "__main__":
    main()
