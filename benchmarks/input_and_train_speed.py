"""The foundation's speed figures on this machine:

  1. cache load time of the real FER2013 (cold parse once, then the warm cache load; must be < 1 s),
  2. the Grain training stream's images/s (balanced sampling, including the copy to the device),
  3. training images/s of the CNN train step (steady state, after compilation),
and the ratio loader / train, which must be >= 5 so the loader is never the bottleneck.

  python benchmarks/input_and_train_speed.py [--data ../shared/data/fer2013/fer2013.csv.gz]
      [--variant small] [--batch 128] [--steps 20]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from train_throughput import measure_loader, measure_train

from fer_flax import runtime
from fer_flax.core import parallel
from fer_flax.cpu import devices
from fer_flax.data.cache import load_fer2013_cached
from fer_flax.data.synthetic import generate_synthetic

DEFAULT_DATA = os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "data", "fer2013", "fer2013.csv.gz"
)


def time_cache(path: str) -> None:
    with tempfile.TemporaryDirectory() as cache_dir:
        t0 = time.perf_counter()
        cold = load_fer2013_cached(path, ("train", "val"), cache_dir)
        cold_s = time.perf_counter() - t0
        warm_times = []
        for _ in range(5):
            t0 = time.perf_counter()
            warm = load_fer2013_cached(path, ("train", "val"), cache_dir)
            warm_times.append(time.perf_counter() - t0)
        n = sum(len(s) for s in warm.values())
        assert n == sum(len(s) for s in cold.values())
        print(f"real data: {os.path.abspath(path)}")
        print(f"  cold parse + cache write: {cold_s:.2f} s for {n} images")
        print(f"  warm cache load: median {np.median(warm_times) * 1000:.0f} ms over 5 loads")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", default=DEFAULT_DATA)
    parser.add_argument("--variant", default="small")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument(
        "--cpu_devices", type=int, default=0, help="as config.cpu_devices: 0 = one JAX device per core"
    )
    args = parser.parse_args()
    runtime.start()  # before JAX starts
    devices.configure_cpu_devices(args.cpu_devices, (args.batch,))
    print(f"jax {jax.__version__}, devices: {jax.devices()}")
    if os.path.exists(args.data):
        time_cache(args.data)
    else:
        print(f"real data not found at {args.data}: skipping the cache benchmark")
    mesh = parallel.make_mesh()
    split = generate_synthetic(10_000, 0, 0, seed=0)["train"]
    loader = measure_loader(split, args.batch, 3.0, mesh, num_workers=0)["images_per_s"]
    print(f"loader (balanced sampling, batch {args.batch}, + device copy): {loader:,.0f} images/s")
    trainer = measure_train("cnn", args.variant, "float32", args.batch, args.steps, mesh)["images_per_s"]
    print(f"train step cnn/{args.variant} (batch {args.batch}, float32): {trainer:,.1f} images/s")
    print(f"loader / train ratio: {loader / trainer:.1f}x (must be >= 5)")


if __name__ == "__main__":
    main()
