"""What a checkpoint save costs a run: Orbax's blocking part, the write that training now waits for,
and the checksum manifest written and verified after it (fer_flax/run/integrity.py).

  python benchmarks/checkpoint_save_cost.py [--config resnet18] [--saves 3]

Builds the config's initial train state (no training), saves it `--saves` times into a temporary
workdir through the same Orbax manager a run uses, and prints the state's size, the checkpoint's size
on disk and each phase's time per save.
"""

from __future__ import annotations

import argparse
import importlib
import os
import tempfile
import time

import grain
import jax
import orbax.checkpoint as ocp

from fer_flax.core import input_pipeline, optim, parallel
from fer_flax.core import model as model_lib
from fer_flax.core import state as model_state
from fer_flax.data.synthetic import generate_synthetic
from fer_flax.run import checkpoint
from fer_flax.run import integrity as checkpoint_integrity


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="resnet18", help="a module of configs/ (its default config)")
    parser.add_argument("--saves", type=int, default=3)
    args = parser.parse_args()
    config = importlib.import_module(f"configs.{args.config}").get_config()
    model = model_lib.create_model(config)
    schedule = optim.create_learning_rate_schedule(config.optim, steps_per_epoch=10, total_steps=100)
    tx = optim.create_optimizer(config.optim, schedule)
    state = model_state.create_train_state(model, tx, jax.random.key(0), parallel.make_mesh())
    data = generate_synthetic(256, 0, 0, seed=0)["train"]
    iterator = input_pipeline.make_train_iterator(
        data,
        global_batch_size=64,
        seed=0,
        sampling="none",
        class_weights=None,
        process_index=0,
        process_count=1,
        num_workers=0,
    )
    workdir = tempfile.mkdtemp()
    ckpt = checkpoint.Checkpointer(workdir, keep=args.saves)
    phases = {"save call (blocking)": [], "wait for the write": [], "manifest": [], "verify": []}
    for step in range(1, args.saves + 1):
        step_dir = os.path.join(workdir, "checkpoints", str(step))
        items = ocp.args.Composite(
            state=ocp.args.StandardSave(state), data=grain.checkpoint.CheckpointSave(iterator)
        )
        t0 = time.perf_counter()
        ckpt.latest.save(step, args=items)
        t1 = time.perf_counter()
        ckpt.latest.wait_until_finished()
        t2 = time.perf_counter()
        checkpoint_integrity.write_manifest(step_dir)
        t3 = time.perf_counter()
        assert checkpoint_integrity.problem(step_dir) is None
        t4 = time.perf_counter()
        for name, seconds in zip(phases, (t1 - t0, t2 - t1, t3 - t2, t4 - t3), strict=True):
            phases[name].append(seconds)
    ckpt.close()
    state_mb = sum(x.nbytes for x in jax.tree.leaves(state) if hasattr(x, "nbytes")) / 1e6
    disk_mb = (
        sum(
            os.path.getsize(os.path.join(root, name))
            for root, _, names in os.walk(os.path.join(workdir, "checkpoints", str(args.saves)))
            for name in names
        )
        / 1e6
    )
    print(f"{config.model_name}/{config.model.variant}: state {state_mb:.1f} MB, checkpoint {disk_mb:.1f} MB")
    for name, times in phases.items():
        print(f"  {name:<22}" + ", ".join(f"{t * 1000:.0f} ms" for t in times))


if __name__ == "__main__":
    main()
