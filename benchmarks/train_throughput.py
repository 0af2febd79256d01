"""Training images/s of each model family, per compute dtype, plus the input pipeline's images/s.

  python -m benchmarks.train_throughput [--families cnn,resnet] [--variants resnet=resnet18]
      [--dtypes float32,bfloat16] [--batch 1024] [--steps 20] [--loader_seconds 3]
      [--configs configs/cpu_recipe.py:tuned,configs/cpu_teacher.py]
      [--data ../shared/data/fer2013/fer2013_images.tar.gz] [--cache_dir D] [--json out.json]

A family's variant is `--variants` when given, else its module's DEFAULT_VARIANT, else the first variant
its registry lists (`fer_flax.models.variants`). Families that cannot be imported yet are reported and
skipped. `--configs` adds config files, each at its own recipe, batch and dtype. The train step is the
real one (augmentation, loss, optimizer update, donated state) on a device-resident batch sharded
over every device, so the figure excludes the input pipeline, which is measured separately (Grain
iterator + transfer to the devices). Each row also gives the step's TFLOP/s (the convolution and
matrix FLOPs of the global step, `device_peaks.step_flops`, over the measured time) and, on a GPU
listed in `benchmarks/device_peaks.py`, the model FLOP utilisation against every device's dense peak
(bfloat16, or TF32 for float32). Small settings run on a CPU:

  python -m benchmarks.train_throughput --families cnn --batch 32 --steps 3
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import tempfile
import time
from typing import Any

import jax
import numpy as np

from benchmarks import device_peaks
from benchmarks.train_step_setup import build_train_step
from configs.common import get_base_config
from fer_flax import models, runtime
from fer_flax.core import input_pipeline, parallel
from fer_flax.cpu import allocator as cpu_allocator
from fer_flax.cpu import devices
from fer_flax.data import load_splits
from fer_flax.research.sweep import space as sweep_space


def default_variant(family: str) -> str:
    """The family's DEFAULT_VARIANT if its module names one, else the first variant it lists."""
    names = models.variants(family)  # raises ValueError for a family not in this version
    preferred = getattr(importlib.import_module(f"fer_flax.models.{family}"), "DEFAULT_VARIANT", None)
    return preferred if preferred in names else names[0]


def measure_train(family: str, variant: str, dtype: str, batch: int, steps: int, mesh) -> dict[str, Any]:
    config = get_base_config()
    config.model_name, config.model.variant, config.dtype = family, variant, dtype
    config.batch_size = batch
    return measure_config(config, steps, mesh)


def measure_config(config, steps: int, mesh) -> dict[str, Any]:
    """The train step of `config` (its model, recipe, batch and dtype) on a fixed batch."""
    family, variant, dtype, batch = config.model_name, config.model.variant, config.dtype, config.batch_size
    setup = build_train_step(config, mesh)
    num_params = sum(x.size for x in jax.tree.leaves(setup.state.params))
    # The global step's convolution and matrix FLOPs, counted from its jaxpr (no compilation).
    step_flops = device_peaks.step_flops(setup.step.trace(setup.state, setup.device_batch, setup.key))

    t0 = time.perf_counter()
    jax.block_until_ready(setup.run(1))
    compile_s = time.perf_counter() - t0
    setup.run(2)  # settle (allocator, autotuned kernels) before timing
    jax.block_until_ready(setup.state)
    t0 = time.perf_counter()
    metrics = setup.run(steps)
    jax.block_until_ready((setup.state, metrics))
    seconds = time.perf_counter() - t0
    loss = float(metrics["loss"])
    tflops_per_s = step_flops * steps / seconds / 1e12
    peak = device_peaks.peak_tflops(jax.devices()[0].device_kind, dtype)
    return {
        "family": family,
        "variant": variant,
        "dtype": dtype,
        "batch": batch,
        "params_m": num_params / 1e6,
        "compile_s": compile_s,
        "step_ms": 1000 * seconds / steps,
        "images_per_s": steps * batch / seconds,
        "step_gflop": step_flops / 1e9,
        "tflops_per_s": tflops_per_s,
        # Model FLOP utilisation against every device's peak (None where the peak is unknown).
        "mfu": tflops_per_s / (peak * jax.device_count()) if peak else None,
        "finite_loss": bool(np.isfinite(loss)),
    }


def measure_loader(split, batch: int, seconds: float, mesh, num_workers: int) -> dict[str, Any]:
    """The training stream as train_and_evaluate builds it (balanced sampling), including the copy
    of each batch onto the devices."""
    it = input_pipeline.make_train_iterator(
        split,
        global_batch_size=batch,
        seed=0,
        sampling="balanced",
        process_index=jax.process_index(),
        process_count=jax.process_count(),
        num_workers=num_workers,
    )
    jax.block_until_ready(parallel.to_global_batch(next(it), mesh))
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        jax.block_until_ready(parallel.to_global_batch(next(it), mesh))
        n += batch
    rate = n / (time.perf_counter() - t0)
    if num_workers:
        it.close()
    return {"batch": batch, "num_workers": num_workers, "images_per_s": rate, "num_train": len(split)}


def print_table(rows: list[dict], loader: dict | None) -> None:
    header = f"{'family':<10} {'variant':<24} {'dtype':<9} {'batch':>6} {'params':>8} {'compile':>8} "
    header += f"{'step ms':>8} {'images/s':>10} {'TFLOP/s':>8} {'MFU':>6}"
    print(header)
    print("-" * len(header))
    for r in rows:
        if "error" in r:
            print(f"{r['family']:<10} {r['variant']:<24} {r['dtype']:<9} {r['batch']:>6}  {r['error']}")
            continue
        # A config file's row is named by the file (its variant alone would not tell two apart).
        name = os.path.basename(r["config"]) if "config" in r else r["variant"]
        print(
            f"{r['family']:<10} {name:<24} {r['dtype']:<9} {r['batch']:>6} "
            f"{r['params_m']:>7.2f}M {r['compile_s']:>7.1f}s {r['step_ms']:>8.2f} "
            f"{r['images_per_s']:>10,.0f} "
            + f"{r['tflops_per_s']:>8.3f} "
            + (f"{r['mfu']:>6.1%}" if r["mfu"] is not None else f"{'-':>6}")
            + ("" if r["finite_loss"] else "  (non-finite loss!)")
        )
    if loader:
        print(
            f"{'input':<10} {'pipeline':<24} {'uint8':<9} {loader['batch']:>6} {'':>8} {'':>8} {'':>8} "
            f"{loader['images_per_s']:>10,.0f}  (Grain, {loader['num_workers']} workers, + device copy)"
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--families", default=",".join(models.FAMILIES), help="comma-separated")
    parser.add_argument("--variants", default="", help="family=variant,... (else the default)")
    parser.add_argument("--dtypes", default="float32,bfloat16")
    parser.add_argument(
        "--configs",
        default="",
        help="config files as --config takes them, path[:arg] separated by commas: each measured at its "
        "own batch and dtype, after the families (--families '' for these alone)",
    )
    parser.add_argument("--batch", type=int, default=256, help="global batch")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per measurement")
    parser.add_argument("--loader_seconds", type=float, default=3.0, help="0 skips the loader")
    parser.add_argument("--loader_workers", type=int, default=0)
    parser.add_argument("--data", default=None, help="FER2013 source for the loader (else synthetic)")
    parser.add_argument("--cache_dir", default=os.path.join(tempfile.gettempdir(), "fer_flax_cache"))
    parser.add_argument(
        "--cpu_devices", type=int, default=0, help="as config.cpu_devices: 0 = one JAX device per core"
    )
    parser.add_argument(
        "--malloc",
        choices=("reuse", "defaults"),
        default="reuse",
        help="reuse: the CPU corner's glibc settings (fer_flax.cpu.allocator), as every entry point; "
        "defaults: glibc's",
    )
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args()
    # The start-up of every entry point, before JAX starts; the allocator comparison keeps the rest on.
    if args.malloc == "defaults":
        os.environ[cpu_allocator.KEEP_DEFAULTS_ENV] = "1"
    runtime.start()
    devices.configure_cpu_devices(args.cpu_devices, (args.batch,))

    chosen = dict(kv.split("=", 1) for kv in args.variants.split(",") if kv)
    mesh = parallel.make_mesh()
    print(f"jax {jax.__version__}, {jax.device_count()} device(s): {jax.devices()[0].device_kind}")
    rows = []
    for family in [f for f in args.families.split(",") if f]:
        try:
            variant = chosen.get(family) or default_variant(family)
        except ValueError as e:
            print(f"skipping {family}: {e}")
            continue
        for dtype in [d for d in args.dtypes.split(",") if d]:
            try:
                row = measure_train(family, variant, dtype, args.batch, args.steps, mesh)
            except Exception as e:  # an OOM or a broken family must not lose the other rows
                row = {"family": family, "variant": variant, "dtype": dtype, "batch": args.batch}
                row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:120]}"
            rows.append(row)
            print(json.dumps(row), flush=True)
            _write_json(args.json, rows, None)  # after every row: a time limit keeps what was measured

    for spec in [c for c in args.configs.split(",") if c]:
        row = {"config": spec, **measure_config(sweep_space.load_config_file(spec), args.steps, mesh)}
        rows.append(row)
        print(json.dumps(row), flush=True)
        _write_json(args.json, rows, None)

    loader = None
    if args.loader_seconds > 0:
        if args.data:
            data_config = get_base_config().data
            data_config.path = args.data
            split = load_splits(data_config, ("train",), cache_dir=args.cache_dir, announce=print)["train"]
        else:
            from fer_flax.data.synthetic import generate_synthetic

            split = generate_synthetic(10_000, 0, 0, seed=0)["train"]
        loader = measure_loader(split, args.batch, args.loader_seconds, mesh, args.loader_workers)

    print()
    print_table(rows, loader)
    _write_json(args.json, rows, loader)


def _write_json(path: str | None, rows: list[dict], loader: dict | None) -> None:
    if path:
        with open(path, "w") as f:
            json.dump({"devices": str(jax.devices()), "train": rows, "loader": loader}, f, indent=2)


if __name__ == "__main__":
    main()
