"""Where a CPU train step's time goes: `perf` samples of a steady-state step, XLA's kernels named.

  python benchmarks/profile_cpu_step.py --model resnet:resnet18 --batch 32 [--seconds 10]
      [--ynn_fusion_type ""]

Runs fer_flax's jitted `train_step` (as benchmarks/compare_torch.py builds it: the SGD recipe, no
augmentation, one JAX device, the CPU corner's compiler option and malloc settings) in a child process,
samples it with `perf record` for `--seconds` once it is warm, and names the samples that fall in
XLA's JIT-compiled code (which `perf` cannot) by asking `gdb`, attached to the child, for the symbol
of each sampled address (XLA:CPU registers its kernels, e.g. `transpose_copy_fusion.64`, with gdb's
JIT interface). Unnamed JIT code is the convolutions' matrix-multiply kernel. Prints each kernel kind's
share of all samples, then the top symbols outside JIT code. Needs `perf` and `gdb` (Linux).
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def child(model: str, batch: int, ynn_fusion_type: str | None, ready_file: str) -> None:
    sys.path.insert(0, REPO)
    from fer_flax import runtime

    runtime.start()  # before JAX starts, as every entry point
    import jax

    from benchmarks.train_step_setup import build_train_step, make_config
    from fer_flax.core import parallel
    from fer_flax.cpu import compiler

    # Per-program options override the process's XLA_FLAGS.
    options = None if ynn_fusion_type is None else {compiler.FLAG: ynn_fusion_type}
    family, variant = model.split(":")
    setup = build_train_step(
        make_config(family, variant, batch, augment=False),
        parallel.make_mesh(jax.devices()[:1]),
        compiler_options=options,
    )
    jax.block_until_ready(setup.run(3))
    with open(ready_file, "w") as f:
        f.write(str(os.getpid()))
    while True:  # the parent kills this process when it has its samples
        jax.block_until_ready(setup.run(1))


def symbolize(pid: int, addresses: list[int]) -> list[str]:
    commands = [arg for a in addresses for arg in ("-ex", f"info symbol {a:#x}")]
    out = subprocess.run(["gdb", "-p", str(pid), "-batch", *commands], capture_output=True, text=True).stdout
    lines = [line for line in out.splitlines() if " in section " in line or "No symbol matches" in line]
    if len(lines) != len(addresses):
        raise RuntimeError(f"gdb named {len(lines)} of {len(addresses)} addresses")
    return ["" if "No symbol" in line else line.split(" + ")[0].split(" in section")[0] for line in lines]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="cnn:small", help="family:variant")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument(
        "--ynn_fusion_type",
        default=None,
        help="override fer_flax.cpu.compiler's YNNPACK setting for the step ('' = YNNPACK off)",
    )
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.model, args.batch, args.ynn_fusion_type, args.child)
        return
    for tool in ("perf", "gdb"):
        if shutil.which(tool) is None:
            parser.error(f"needs `{tool}` on PATH")
    with tempfile.TemporaryDirectory() as tmp:
        ready = os.path.join(tmp, "ready")
        env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
        command = [
            sys.executable,
            __file__,
            "--model",
            args.model,
            "--batch",
            str(args.batch),
            "--child",
            ready,
        ]
        if args.ynn_fusion_type is not None:
            command += ["--ynn_fusion_type", args.ynn_fusion_type]
        proc = subprocess.Popen(command, env=env)
        try:
            while not os.path.exists(ready):
                if proc.poll() is not None:
                    raise SystemExit(f"the training process exited with {proc.returncode}")
                time.sleep(0.5)
            time.sleep(1.0)
            data = os.path.join(tmp, "perf.data")
            subprocess.run(
                [
                    "perf",
                    "record",
                    "-F",
                    "999",
                    "-p",
                    str(proc.pid),
                    "-o",
                    data,
                    "--",
                    "sleep",
                    str(args.seconds),
                ],
                check=True,
                capture_output=True,
            )
            report = subprocess.run(
                ["perf", "report", "-i", data, "--no-children", "--sort", "dso,sym", "--stdio"],
                capture_output=True,
                text=True,
                check=True,
            ).stdout
            jit: collections.Counter[int] = collections.Counter()
            other: collections.Counter[str] = collections.Counter()
            for line in report.splitlines():
                parts = line.split()
                if not parts or not parts[0].endswith("%") or line.startswith("#"):
                    continue
                share = float(parts[0].rstrip("%"))
                if "[JIT]" in line:
                    jit[int(parts[-1], 16)] += share
                else:
                    other[" ".join(parts[1:])[:100]] += share
            names = symbolize(proc.pid, sorted(jit))
        finally:
            proc.kill()
            proc.wait()
    kinds: collections.Counter[str] = collections.Counter()
    for address, name in zip(sorted(jit), names, strict=True):
        kinds[re.sub(r"\.\d+$", "", name) or "unnamed JIT code (convolution GEMM kernel)"] += jit[address]
    print(f"{args.model}, batch {args.batch}, 1 device: share of perf samples over {args.seconds:g} s")
    print(f"JIT-compiled code: {sum(jit.values()):.1f}%")
    for name, share in kinds.most_common(15):
        print(f"  {share:6.2f}%  {name}")
    print("outside JIT code:")
    for name, share in other.most_common(10):
        print(f"  {share:6.2f}%  {name}")


if __name__ == "__main__":
    main()
