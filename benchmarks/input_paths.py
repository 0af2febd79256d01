"""Training images/s of the two input pipelines and of several steps per call, as the loop runs them.

  python benchmarks/input_paths.py [--models cnn:cpu_fast,resnet:resnet18_half_s2]
      [--variants grain:1,device:1,device:4,device:16] [--batch 128] [--steps 32] [--rounds 3]
      [--data ../shared/data/fer2013/fer2013.csv.gz] [--cpu_devices 1] [--json out.json]

Each variant is `pipeline:steps_per_call`, or `device:k:rolled` for the scan as a loop rather than
unrolled (what train_feed compiles off the CPU), to show what XLA:CPU's while loops cost. The timed
work is exactly the loop's training part (`fer_flax.training.feed`): the feed's host work for each call
(Grain's batches and their copy to the devices, or the device pipeline's epoch orders and the call's
arguments) and the jitted call of `train_feed.compile_train`, for `--steps` steps (a multiple of every
k), with the recipe of configs/cpu_recipe.py (SGD, label smoothing, EMA, pad-crop/flip/rotation) on
the model given. Logging, evaluation and checkpoints are left out. Variants run round-robin for
`--rounds` rounds after one compiling call each, so a shared machine's load changes affect all of them
alike; each row gives the median and the range over the rounds, and the time of its first call (its
compilation).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import tempfile
import time

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from configs import cpu_recipe
from fer_flax import runtime
from fer_flax.core import ema as ema_lib
from fer_flax.core import model as model_lib
from fer_flax.core import optim, parallel
from fer_flax.core import state as model_state
from fer_flax.cpu import devices
from fer_flax.data import load_splits
from fer_flax.training import feed as train_feed
from fer_flax.training import multi_step, steps

DEFAULT_DATA = os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "data", "fer2013", "fer2013.csv.gz"
)


class Variant:
    """One model, pipeline and steps_per_call: its state, feed and compiled train function."""

    def __init__(self, model_spec: str, pipeline: str, k: int, rolled: bool, batch: int, split, mesh):
        family, variant = model_spec.split(":")
        self.name = f"{model_spec} {pipeline} k={k}" + (" rolled" if rolled else "")
        self.rolled = rolled
        self.config = cpu_recipe.get_config()
        self.config.update_from_flattened_dict(
            {
                "model_name": family,
                "model.variant": variant,
                "data.pipeline": pipeline,
                "steps_per_call": k,
                "batch_size": batch,
            }
        )
        self.k, self.batch, self.step = k, batch, 0
        per_epoch = -(-len(split) // batch)
        schedule = optim.create_learning_rate_schedule(
            self.config.optim, steps_per_epoch=per_epoch, total_steps=25 * per_epoch
        )
        self.state = model_state.create_train_state(
            model_lib.create_model(self.config),
            optim.create_optimizer(self.config.optim, schedule),
            jax.random.key(0),
            mesh,
            ema=ema_lib.ema_enabled(self.config),
        )
        self.feed = train_feed.make_feed(self.config, split, mesh)
        self.train = train_feed.compile_train(self.config, schedule, split.class_counts(), mesh)
        if rolled:
            step_fn = functools.partial(
                steps.train_step, config=self.config, schedule=schedule, class_counts=split.class_counts()
            )
            call = jax.jit(
                functools.partial(
                    multi_step.train_call,
                    step_fn=step_fn,
                    batch_fn=functools.partial(train_feed.device_batch, batch_size=batch),
                    num_steps=k,
                    unroll=False,
                ),
                donate_argnums=(0,),
            )
            self.train = lambda state, inputs, rng: call(
                state, {key: v for key, v in inputs.items() if key != "num_steps"}, rng
            )
        self.rng = jax.random.key(1)

    def run(self, steps: int) -> float:
        """Runs `steps` steps in calls of k; returns the seconds they took (until the state is ready)."""
        t0 = time.perf_counter()
        for _ in range(steps // self.k):
            inputs = self.feed.inputs(self.step + 1, self.k)
            self.state, metrics = self.train(self.state, inputs, self.rng)
            self.step += self.k
        jax.block_until_ready((self.state, metrics))
        return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", default="cnn:cpu_fast", help="family:variant,...")
    parser.add_argument("--variants", default="grain:1,device:1,device:4,device:16")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=32, help="timed steps per round (a multiple of every k)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--data", default=DEFAULT_DATA, help="FER2013 source (synthetic faces if absent)")
    parser.add_argument("--cache_dir", default=os.path.join(tempfile.gettempdir(), "fer_flax_cache"))
    parser.add_argument("--cpu_devices", type=int, default=1, help="as config.cpu_devices")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    runtime.start()
    devices.configure_cpu_devices(args.cpu_devices, (args.batch,))
    variants = [
        (v.split(":")[0], int(v.split(":")[1]), v.endswith(":rolled")) for v in args.variants.split(",")
    ]
    if any(args.steps % k for _, k, _ in variants):
        parser.error(f"--steps {args.steps} must be a multiple of every steps_per_call")

    data_config = cpu_recipe.get_config().data
    data_config.path = args.data if os.path.exists(args.data) else None
    split = load_splits(data_config, ("train",), cache_dir=args.cache_dir, announce=print)["train"]
    mesh = parallel.make_mesh()
    print(
        f"jax {jax.__version__}, {jax.device_count()} device(s) {jax.devices()[0].device_kind}, "
        f"{len(split)} training images, batch {args.batch}, {os.cpu_count()} CPUs, load "
        f"{os.getloadavg()[0]:.1f}"
    )
    rows = []
    for model in args.models.split(","):
        runs = []
        for pipeline, k, rolled in variants:
            v = Variant(model, pipeline, k, rolled, args.batch, split, mesh)
            t0 = time.perf_counter()
            v.run(k if k > 1 else 1)  # compiles the k-step program
            runs.append((v, time.perf_counter() - t0))
        seconds: dict[str, list[float]] = {v.name: [] for v, _ in runs}
        for r in range(args.rounds):
            for v, _ in runs:
                seconds[v.name].append(v.run(args.steps))
            print(
                f"round {r + 1}: "
                + ", ".join(f"{v.name} {args.steps * args.batch / seconds[v.name][-1]:.0f}" for v, _ in runs),
                flush=True,
            )
        for v, compile_s in runs:
            rates = [args.steps * args.batch / s for s in seconds[v.name]]
            rows.append(
                {
                    "model": model,
                    "pipeline": v.config.data.pipeline + (" rolled" if v.rolled else ""),
                    "steps_per_call": v.k,
                    "images_per_s_median": float(np.median(rates)),
                    "images_per_s_min": min(rates),
                    "images_per_s_max": max(rates),
                    "first_call_s": compile_s,
                }
            )
    print(f"\n{'model':<26} {'pipeline':<14} {'k':>3} {'images/s':>9} {'range':>15} {'first call':>11}")
    for r in rows:
        print(
            f"{r['model']:<26} {r['pipeline']:<14} {r['steps_per_call']:>3} {r['images_per_s_median']:>9.1f} "
            f"{r['images_per_s_min']:>7.1f}-{r['images_per_s_max']:<7.1f} {r['first_call_s']:>10.1f}s"
        )
    print(f"load average after: {os.getloadavg()[0]:.1f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"devices": str(jax.devices()), "rows": rows, "batch": args.batch}, f, indent=2)


if __name__ == "__main__":
    main()
