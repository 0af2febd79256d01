"""Training images/s for the same global batch on 1 and on N simulated CPU devices.

  python benchmarks/device_scaling.py [--devices 1,4] [--family cnn] [--variant small] [--batch 128]
      [--steps 10]

XLA fixes the CPU device count when the backend starts, so each count runs in its own subprocess with
`XLA_FLAGS=--xla_force_host_platform_device_count=N`. Simulated devices share the machine's cores:
on a 2-core machine this measures the cost of the sharded code path (partitioning, all-reduces,
smaller per-device matrices), not a speed-up; on real devices the same step is what scales.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def child(args: argparse.Namespace) -> None:
    sys.path.insert(0, HERE)
    from fer_flax import runtime
    from fer_flax.core import parallel

    runtime.start()  # before JAX starts (the device count comes from this child's XLA_FLAGS)
    import jax
    from train_throughput import measure_train

    row = measure_train(args.family, args.variant, args.dtype, args.batch, args.steps, parallel.make_mesh())
    row["devices"] = jax.device_count()
    print("RESULT " + json.dumps(row), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--devices", default="1,4", help="comma-separated simulated device counts")
    parser.add_argument("--family", default="cnn")
    parser.add_argument("--variant", default="small")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--batch", type=int, default=128, help="global batch, the same for every count")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return

    rows = []
    for n in [int(x) for x in args.devices.split(",")]:
        env = {
            **os.environ,
            "XLA_FLAGS": f"--xla_force_host_platform_device_count={n}",
            "JAX_PLATFORMS": "cpu",
        }
        cmd = [sys.executable, os.path.abspath(__file__), "--child", *sys.argv[1:]]
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
        lines = [line for line in out.stdout.splitlines() if line.startswith("RESULT ")]
        if out.returncode or not lines:
            sys.exit(f"{n} device(s) failed (exit {out.returncode}):\n{out.stderr[-3000:]}")
        rows.append(json.loads(lines[-1][len("RESULT ") :]))

    print(f"{args.family}/{args.variant}, {args.dtype}, global batch {args.batch}, {args.steps} timed steps")
    print(f"{'devices':>7} {'per-device batch':>16} {'step ms':>8} {'images/s':>9} {'vs 1st':>7}")
    for r in rows:
        print(
            f"{r['devices']:>7} {args.batch // r['devices']:>16} {r['step_ms']:>8.1f} "
            f"{r['images_per_s']:>9.1f} {r['images_per_s'] / rows[0]['images_per_s']:>6.2f}x"
        )


if __name__ == "__main__":
    main()
