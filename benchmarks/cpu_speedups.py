"""What each CPU speed-up of fer_flax is worth: the train step with and without it, same model and batch.

  python benchmarks/cpu_speedups.py [--model cnn:small] [--batch 128] [--steps 10]

Each row runs in a fresh process (the CPU device count must be set before JAX starts) and times the real
jitted `train_step` (augmentation on, donated state) after warm-up, median of `--steps` steps:

  flax pool, XLA defaults, 1 device    nn.max_pool (select-and-scatter gradient), XLA:CPU's default
                                       compiler options, glibc's malloc defaults, JAX's default single
                                       CPU device
  fer_flax pool, XLA defaults          fer_flax.cpu.kernels.max_pool (saved-argmax gradient)
  ... YNNPACK off                      + YNNPACK off altogether
  ... fer_flax XLA options             + fer_flax.cpu.compiler's option (YNNPACK for reductions only)
  ... malloc reuse                     + fer_flax.cpu.allocator.reuse_freed_memory()
  ... fused stem                       + the single-channel stem conv as fused multiply-adds
                                       (fer_flax.cpu.kernels.Conv; earlier rows use nn.Conv)
  ... N devices                        + config.cpu_devices auto: one JAX device per core
  ... bfloat16                         the same with config.dtype=bfloat16 (float32 parameters)

It also reports the host's share of a step: the time `step(...)` takes to return (dispatch) against the
step's wall time, which bounds what running several steps per host call (a scanned multi-step) can save.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def worker(
    model: str, batch: int, steps: int, pool: str, devices: int, dtype: str, xla: str, malloc: str, stem: str
) -> dict:
    sys.path.insert(0, REPO)
    from fer_flax import runtime
    from fer_flax.cpu import allocator, compiler, kernels
    from fer_flax.cpu import devices as cpu_devices

    # Each piece of the CPU corner is chosen by the row; the parent runs this process with the
    # corner switched off (FER_FLAX_CPU_TUNING=0) so that runtime.start() applies none of them.
    # Before JAX starts (arena settings reach only threads that have not allocated yet).
    if malloc == "reuse" and not allocator.reuse_freed_memory():
        raise SystemExit("reuse_freed_memory() is not available here (glibc on Linux, CPU backend)")
    if xla == "fer_flax" and not compiler.add_to_xla_flags():
        raise SystemExit("this jaxlib is not one the XLA:CPU option is known to work with")
    runtime.start()
    cpu_devices.configure_cpu_devices(devices, (batch,))
    import time

    import jax
    import numpy as np

    from benchmarks.train_step_setup import build_train_step
    from configs.common import get_base_config
    from fer_flax.core import parallel

    options = {"defaults": compiler.XLA_DEFAULT_OPTIONS, "no-ynn": {compiler.FLAG: ""}, "fer_flax": None}[xla]
    ops = {"max_pool": kernels.max_pool} if pool == "fer_flax" else {}
    if stem == "fused":
        ops["conv"] = kernels.Conv
    family, variant = model.split(":")
    config = get_base_config()
    config.model_name, config.model.variant, config.dtype, config.batch_size = family, variant, dtype, batch
    setup = build_train_step(config, parallel.make_mesh(), ops=ops, compiler_options=options)
    setup.run(3)
    jax.block_until_ready(setup.state)
    walls, dispatches = [], []
    for _ in range(steps):
        t0 = time.perf_counter()
        metrics = setup.run(1)
        t1 = time.perf_counter()
        jax.block_until_ready(setup.state)
        walls.append(time.perf_counter() - t0)
        dispatches.append(t1 - t0)
    wall = float(np.median(walls))
    return {
        "model": model,
        "pool": pool,
        "xla": xla,
        "malloc": malloc,
        "stem": stem,
        "devices": jax.device_count(),
        "dtype": dtype,
        "batch": batch,
        "step_ms": 1000 * wall,
        "images_per_s": batch / wall,
        "dispatch_ms": 1000 * float(np.median(dispatches)),
        "finite_loss": bool(np.isfinite(float(metrics["loss"]))),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="cnn:small", help="family:variant")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--json", default=None)
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        pool, devices, dtype, xla, malloc, stem = args.worker.split(",")
        result = worker(args.model, args.batch, args.steps, pool, int(devices), dtype, xla, malloc, stem)
        print("RESULT " + json.dumps(result))
        return

    settings = [
        ("flax", 1, "float32", "defaults", "defaults", "xla"),
        ("fer_flax", 1, "float32", "defaults", "defaults", "xla"),
        ("fer_flax", 1, "float32", "no-ynn", "defaults", "xla"),
        ("fer_flax", 1, "float32", "fer_flax", "defaults", "xla"),
        ("fer_flax", 1, "float32", "fer_flax", "reuse", "xla"),
        ("fer_flax", 1, "float32", "fer_flax", "reuse", "fused"),
        ("fer_flax", 0, "float32", "fer_flax", "reuse", "fused"),
        ("fer_flax", 0, "bfloat16", "fer_flax", "reuse", "fused"),
    ]
    drop = ("XLA_FLAGS", "FER_FLAX_MALLOC_DEFAULTS")
    env = {k: v for k, v in os.environ.items() if k not in drop} | {"FER_FLAX_CPU_TUNING": "0"}
    rows = []
    for pool, devices, dtype, xla, malloc, stem in settings:
        out = subprocess.run(
            [
                *(sys.executable, __file__, "--model", args.model, "--batch", str(args.batch)),
                *("--steps", str(args.steps), "--worker", f"{pool},{devices},{dtype},{xla},{malloc},{stem}"),
            ],
            env=env,
            capture_output=True,
            text=True,
        )
        lines = [line for line in out.stdout.splitlines() if line.startswith("RESULT ")]
        if out.returncode or not lines:
            print(f"{pool},{devices},{dtype},{xla},{malloc},{stem} failed:\n{out.stderr[-2000:]}")
            continue
        rows.append(json.loads(lines[0][len("RESULT ") :]))
        print(json.dumps(rows[-1]), flush=True)
    print(f"\n{args.model}, batch {args.batch}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
    print(
        f"{'max_pool':<9} {'XLA options':<12} {'malloc':<9} {'stem':<6} {'devices':>7} {'dtype':<9} "
        f"{'step ms':>8} "
        f"{'images/s':>9} "
        f"{'dispatch ms':>12} {'vs 1st':>7}"
    )
    for r in rows:
        speedup = r["images_per_s"] / rows[0]["images_per_s"]
        print(
            f"{r['pool']:<9} {r['xla']:<12} {r['malloc']:<9} {r['stem']:<6} {r['devices']:>7} "
            f"{r['dtype']:<9} {r['step_ms']:>8.1f} "
            f"{r['images_per_s']:>9.1f} {r['dispatch_ms']:>12.2f} {speedup:>6.2f}x"
            + ("" if r["finite_loss"] else "  NON-FINITE loss")
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
