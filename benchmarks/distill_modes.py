"""Which distillation mode pays: train images/s of the CPU recipe's student with no teacher, with cached
targets, and with 1 and 3 teachers on the fly, plus the one-off cost of the cached targets.

  python benchmarks/distill_modes.py [--teacher cnn:cpu_fast] [--teachers 1,3] [--tta flip]
      [--batch 128] [--steps 20] [--rounds 3] [--target_images 4096]

The student is configs/cpu_recipe.py (cnn/cpu_fast, its augmentation, label smoothing and EMA, one JAX
device) and each step is fer_flax's own train function (`train_feed.compile_train`, one step per call,
the state donated) on a fixed device-resident batch, so the figures exclude the input pipeline. The
teachers are randomly initialised models of `--teacher` (a step's cost does not depend on what they
learned), seen through `--tta` views (the CPU recipe's eval_tta, flip, is what its runs would use as
teachers). Every mode is compiled and warmed up, then the modes are timed in turn for `--rounds`
rounds of `--steps` steps each, so every mode sees the same mix of load. The median round is
reported as images/s of wall-clock time and as images per CPU-second of this process (the figure to
compare on a machine that other jobs share). The cached targets' one-off cost is the teachers'
inference images/s (`distill.teacher_targets`, the path training uses) over `--target_images` images,
and the time it projects for FER2013's 28,709 training images.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from configs import cpu_recipe
from configs.common import get_base_config
from fer_flax import runtime
from fer_flax.core import ema as ema_lib
from fer_flax.core import model as model_lib
from fer_flax.core import optim, parallel
from fer_flax.core import state as model_state
from fer_flax.data.splits import FER2013_TRAIN_COUNTS, IMAGE_SIZE, NUM_CLASSES
from fer_flax.run import trained
from fer_flax.training import distill
from fer_flax.training import feed as train_feed

FER2013_TRAIN = 28709


def _teachers(spec: str, count: int, tta: str, mesh) -> distill.Distillation:
    family, variant = spec.split(":")
    config = get_base_config()
    config.model_name, config.model.variant = family, variant
    model = model_lib.create_model(config)
    members = []
    for i in range(count):
        variables = parallel.replicate(model_lib.initial_variables(model, jax.random.key(100 + i)), mesh)
        restored = trained.Restored(f"random_{i}", model, variables, config, step=0)
        members.append(distill.Teacher(f"random_{i}", "best", restored, tta, 44))
    return distill.Distillation(tuple(members), "on_the_fly", alpha=0.3, temperature=2.0)


class _Mode:
    """One mode's compiled train function, its state and its batch, timed round by round."""

    def __init__(self, name: str, config, teachers, batch, mesh):
        schedule = optim.create_learning_rate_schedule(config.optim, steps_per_epoch=100, total_steps=1000)
        tx = optim.create_optimizer(config.optim, schedule)
        model = model_lib.create_model(config)
        ema = ema_lib.ema_enabled(config)
        self.name, self.batch, self.batch_size = name, batch, config.batch_size
        self.state = model_state.create_train_state(model, tx, jax.random.key(0), mesh, ema=ema)
        models_, variables = teachers.step_arguments() if teachers else (None, ())
        counts = np.asarray(FER2013_TRAIN_COUNTS)
        self.step = train_feed.compile_train(config, schedule, counts, mesh, models_, variables)
        self.wall: list[float] = []
        self.cpu: list[float] = []
        self.run(2)  # compile and warm up

    def run(self, steps_: int) -> tuple[float, float]:
        start, start_cpu = time.perf_counter(), time.process_time()
        for _ in range(steps_):
            self.state, metrics = self.step(self.state, self.batch, jax.random.key(1))
        jax.block_until_ready((self.state, metrics))
        return time.perf_counter() - start, time.process_time() - start_cpu

    def time_round(self, steps_: int) -> None:
        """One round: images/s of wall-clock time and images per CPU-second of this process."""
        wall, cpu = self.run(steps_)
        self.wall.append(steps_ * self.batch_size / wall)
        self.cpu.append(steps_ * self.batch_size / cpu)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--teacher", default="cnn:cpu_fast")
    parser.add_argument("--teachers", default="1,3", help="teacher counts timed on the fly")
    parser.add_argument("--tta", default="flip")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--target_images", type=int, default=4096)
    args = parser.parse_args()

    config = cpu_recipe.get_config()
    config.batch_size = args.batch
    runtime.start(config)
    mesh = parallel.make_mesh()
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (args.batch, IMAGE_SIZE, IMAGE_SIZE, 1), dtype=np.uint8)
    labels = rng.integers(0, NUM_CLASSES, args.batch).astype(np.int32)
    probs = rng.dirichlet(np.ones(NUM_CLASSES), args.batch).astype(np.float32)
    plain_batch = parallel.to_global_batch({"image": images, "label": labels}, mesh)
    cached_batch = parallel.to_global_batch({"image": images, "label": labels, "teacher_probs": probs}, mesh)

    counts = sorted({int(n) for n in args.teachers.split(",")})
    print(f"student cnn/cpu_fast (configs/cpu_recipe.py), batch {args.batch}, {jax.device_count()} device(s)")
    print(f"teachers {args.teacher}, {args.tta} views; median of {args.rounds} rounds of {args.steps} steps")
    print(f"load average at start: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    modes = [_Mode("plain (no teacher)", config, None, plain_batch, mesh)]
    config.distill.update(teachers=("teacher",), mode="cached", alpha=0.3, temperature=2.0)
    modes.append(_Mode("cached targets", config, None, cached_batch, mesh))
    config.distill.mode = "on_the_fly"
    for n in counts:
        teachers = _teachers(args.teacher, n, args.tta, mesh)
        modes.append(
            _Mode(f"on the fly, {n} teacher{'s' if n > 1 else ''}", config, teachers, plain_batch, mesh)
        )
    for _ in range(args.rounds):  # the modes in turn, so that each sees the same mix of load
        for mode in modes:
            mode.time_round(args.steps)
    print(f"{'mode':<24} {'images/s':>9} {'range':>13} {'vs plain':>9} {'images/CPU-s':>13} {'vs plain':>9}")
    plain, plain_cpu = statistics.median(modes[0].wall), statistics.median(modes[0].cpu)
    for mode in modes:
        rate, cpu = statistics.median(mode.wall), statistics.median(mode.cpu)
        spread = f"{min(mode.wall):.0f}-{max(mode.wall):.0f}"
        ratios = f"{rate / plain:8.2f}x {cpu:13.1f} {cpu / plain_cpu:8.2f}x"
        print(f"{mode.name:<24} {rate:9.1f} {spread:>13} {ratios}")

    # The cached targets' one-off cost: one teacher's inference over --target_images images.
    teacher = _teachers(args.teacher, 1, args.tta, mesh)
    target_images = rng.integers(0, 256, (args.target_images, IMAGE_SIZE, IMAGE_SIZE), dtype=np.uint8)
    eval_batch, quiet = config.eval_batch_size, lambda *a: None
    distill.teacher_targets(teacher, target_images[:eval_batch], batch_size=eval_batch, say=quiet)  # compile
    start, start_cpu = time.perf_counter(), time.process_time()
    distill.teacher_targets(teacher, target_images, batch_size=eval_batch, say=quiet)
    rate = args.target_images / (time.perf_counter() - start)
    cpu = args.target_images / (time.process_time() - start_cpu)
    print(
        f"cached targets, once: {rate:.0f} images/s per teacher, {cpu:.0f} images/CPU-s ({args.tta} "
        f"views, eval batch {eval_batch}): {FER2013_TRAIN / rate:.0f} s per teacher for FER2013's "
        f"{FER2013_TRAIN} training images, {max(counts) * FER2013_TRAIN / rate:.0f} s for {max(counts)}"
    )


if __name__ == "__main__":
    main()
