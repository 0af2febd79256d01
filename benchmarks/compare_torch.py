"""fer_flax against the same networks in PyTorch: training images/s side by side in one process, CPU or GPU.

  python -m benchmarks.compare_torch [--models cnn,beefy,resnet18] [--batch 128] [--windows 5]
      [--steps 5] [--warmup 3] [--torch_memory_format channels_last|contiguous] [--torch_threads N]
      [--dtype float32|bfloat16] [--augment | --no_augment] [--torch_compile auto|on|off]
      [--torch_compile_mode default|reduce-overhead|max-autotune] [--malloc reuse|defaults] [--json out.json]

Needs PyTorch (`pip install -e ".[bench]"`, i.e. torch==2.13.0).

The PyTorch models below are written from the same fer_flax module fields (widths, blocks, stems, head,
dropout) as the flax ones, with the same layers: 3×3 convs without bias before BatchNorm, BatchNorm with
flax's momentum 0.9 (= torch's 0.1) and eps 1e-5, 2×2 max-pooling, global average pooling, the same heads
and dropouts. Before timing, the script asserts that each PyTorch model has exactly as many parameters as
fer_flax's and copies fer_flax's initial weights into it (`load_flax_variables`: conv HWIO → OIHW, dense
(in, out) → (out, in), BatchNorm scale/bias/mean/var), so both start from the same network;
tests/benchmarks/test_compare_torch.py checks that both then give the same eval-mode logits.

Both sides train on the same random uint8 batch (default 128 × 48×48×1), normalised like
`fer_flax.core.augment.preprocess` inside the step, with softmax cross-entropy with label smoothing 0.1 and
SGD with Nesterov momentum 0.9 and L2 weight decay 5e-4 on conv/linear weights only (the SGD recipe of
configs/common.py). The fer_flax step is the real `training.steps.train_step`, jitted with donated state
as in train_throughput.py (it also computes accuracy and the gradient norm); the PyTorch step is eager
mode with `torch.optim.SGD`, its learning rate set at every step to the value of fer_flax's schedule
(train_throughput.py's warmup + cosine) at the same step, so both do the same updates and the losses they
end with (in the JSON lines) are comparable, not one diverging at the peak rate. Augmentation is off on
both sides by default (`--no_augment`); `--augment` turns on the recipe's pad-crop 4, flip, ±10° rotation
and erasing 0.25 on both sides (fer_flax's own on-device augmentation; in PyTorch the equivalent batched
work: one affine_grid + grid_sample resample with mirrored borders and a random-erasing mask).

PyTorch runs eager, and with `--torch_compile on` (the default `auto` on a GPU) a second copy of the
same network, with the same weights and its own optimizer, runs with the model under `torch.compile`
(Inductor, default mode: the forward and backward passes compiled, the SGD update eager): the
"compiled" columns, and the seconds its first step took (the compilation).

Timing: `--warmup` steps of each (plus fer_flax's and torch.compile's compilation), then `--windows`
rounds of a PyTorch window of `--steps` steps (eager, then compiled) followed by a fer_flax window of
`--steps` steps, so slow drifts of the machine hit all alike. Reported: the median images/s over each
one's windows and fer_flax / PyTorch.
PyTorch runs on `--torch_threads` threads (default: every CPU) in `channels_last` memory format (its
fastest on CPU; `--torch_memory_format contiguous` for NCHW). The process starts as every fer_flax entry
point does (`fer_flax.runtime.start()`), so it runs with the CPU corner's glibc malloc settings
(`fer_flax.cpu.allocator`), which PyTorch then shares; `--malloc defaults` keeps glibc's for both.
Minor page faults per timed step are reported for each side.

On a GPU (JAX's default backend is "gpu"; PyTorch must be a CUDA build) both frameworks run there:
PyTorch with `cudnn.benchmark` and TF32 matrix products (as XLA uses TF32 for float32 by default on
such hardware), the timer stopped after synchronising the device; the malloc settings are left alone.
`--dtype bfloat16` computes in bfloat16 on both sides (fer_flax's `config.dtype`, PyTorch's autocast),
with float32 weights. Give the GPU a batch that fills it, e.g. `--batch 1024`. Tiny settings for a
quick check:

  python -m benchmarks.compare_torch --models cnn --batch 8 --windows 1 --steps 1
"""

from __future__ import annotations

import argparse
import gc
import importlib
import json
import os
import platform
import resource
import statistics
import time
from typing import Any

import jax
import numpy as np
import torch

from benchmarks.torch_models import TORCH_MODELS, count_flax_params
from benchmarks.torch_step import torch_twins
from benchmarks.train_step_setup import build_train_step, make_config
from fer_flax import models, runtime
from fer_flax.core import parallel
from fer_flax.cpu import allocator, devices

MEMORY_FORMATS = {"channels_last": torch.channels_last, "contiguous": torch.contiguous_format}

# -------------------------------------------------------------------------------- the comparison

MODEL_ALIASES = {
    "cnn": ("cnn", "small"),
    "resnet18": ("resnet", "resnet18"),
    "resnet": ("resnet", "resnet18"),
}


def beefy_default_variant() -> str:
    """BeefyModel's DEFAULT_VARIANT if its module names one, else the variant configs/beefy.py trains."""
    preferred = getattr(importlib.import_module("fer_flax.models.beefy"), "DEFAULT_VARIANT", None)
    if preferred in models.variants("beefy"):
        return preferred
    return importlib.import_module("configs.beefy").get_config().model.variant


def resolve_model(spec: str) -> tuple[str, str]:
    """`cnn`, `beefy`, `resnet18`, or any `family:variant` of the three families."""
    if ":" in spec:
        family, variant = spec.split(":", 1)
    elif spec == "beefy":
        family, variant = "beefy", beefy_default_variant()
    elif spec in MODEL_ALIASES:
        family, variant = MODEL_ALIASES[spec]
    else:
        raise ValueError(f"Unknown model {spec!r}: cnn, beefy, resnet18 or family:variant")
    if family not in TORCH_MODELS:
        raise ValueError(f"No PyTorch counterpart for family {family!r}; have {', '.join(TORCH_MODELS)}")
    if variant not in models.variants(family):
        raise ValueError(f"Unknown {family} variant {variant!r}; valid: {', '.join(models.variants(family))}")
    return family, variant


def compare(
    family: str,
    variant: str,
    *,
    batch: int,
    windows: int,
    steps: int,
    warmup: int,
    memory_format: str,
    augment: bool,
    mesh,
    dtype: str = "float32",
    device: str = "cpu",
    torch_compile: bool = False,
    compile_options: dict | None = None,
) -> dict[str, Any]:
    """Times fer_flax's step on `mesh` against PyTorch's on `device` ("cpu" or "cuda"), both
    computing in `dtype` (fer_flax's config.dtype; PyTorch's autocast for bfloat16); PyTorch eager,
    and with `torch_compile` also with the model under `torch.compile` (its own copy, same start;
    `compile_options`: torch.compile's mode and backend)."""
    config = make_config(family, variant, batch, augment, dtype)
    # fer_flax: the step every speed benchmark times (benchmarks/train_step_setup.py).
    setup = build_train_step(config, mesh)
    modes = ("eager", "compile") if torch_compile else ("eager",)
    torch_steps, torch_params = torch_twins(
        setup,
        config,
        modes=modes,
        device=device,
        memory_format=MEMORY_FORMATS[memory_format],
        augment=augment,
        dtype=dtype,
        compile_options=compile_options,
        # The same learning rate at every step as fer_flax's schedule (its warmup, at these step counts):
        # a constant peak rate from step 0 makes a fresh net diverge, and then the two would not be
        # doing the same arithmetic any more.
        learning_rates=np.asarray(jax.vmap(setup.schedule)(np.arange(max(warmup, 1) + windows * steps + 1))),
    )
    flax_params = count_flax_params(setup.state.params)
    last_loss: dict[str, float] = {}
    faults = dict.fromkeys(("flax", *modes), 0)  # minor page faults during the timed windows

    def run_flax(n: int) -> float:
        f0, t0 = _minor_faults(), time.perf_counter()
        metrics = setup.run(n)
        jax.block_until_ready((setup.state, metrics))
        seconds = time.perf_counter() - t0
        faults["flax"] += _minor_faults() - f0
        last_loss["flax"] = float(metrics["loss"])
        return seconds

    def run_torch(mode: str, n: int) -> float:
        f0, t0 = _minor_faults(), time.perf_counter()
        for _ in range(n):
            loss = torch_steps[mode]()
        if device == "cuda":
            torch.cuda.synchronize()  # on a CPU the work is done when the eager call returns
        seconds = time.perf_counter() - t0
        faults[mode] += _minor_faults() - f0
        last_loss[mode] = loss.detach().item()
        return seconds

    compile_s = run_flax(1)  # compilation + the first step
    if warmup > 1:
        run_flax(warmup - 1)
    first = {mode: run_torch(mode, 1) for mode in modes}  # torch.compile compiles at its first step
    for mode in modes:
        if warmup > 1:
            run_torch(mode, warmup - 1)
    rates: dict[str, list[float]] = {key: [] for key in ("flax", *modes)}
    faults.update(dict.fromkeys(faults, 0))
    for _ in range(windows):
        for mode in modes:
            rates[mode].append(steps * batch / run_torch(mode, steps))
        rates["flax"].append(steps * batch / run_flax(steps))
    median = {key: statistics.median(values) for key, values in rates.items()}
    per_step = windows * steps
    row = {
        "model": family,
        "variant": variant,
        "dtype": dtype,
        "torch_device": device,
        "params": flax_params,
        "torch_params": torch_params,
        "torch_images_per_s": median["eager"],
        "flax_images_per_s": median["flax"],
        "ratio_flax_over_torch": median["flax"] / median["eager"],
        "torch_window_images_per_s": rates["eager"],
        "flax_window_images_per_s": rates["flax"],
        "flax_compile_s": compile_s,
        "torch_page_faults_per_step": faults["eager"] / per_step,
        "flax_page_faults_per_step": faults["flax"] / per_step,
        "torch_final_loss": last_loss["eager"],
        "flax_final_loss": last_loss["flax"],
    }
    if torch_compile:
        row.update(
            torch_compile_images_per_s=median["compile"],
            ratio_flax_over_torch_compile=median["flax"] / median["compile"],
            torch_compile_window_images_per_s=rates["compile"],
            torch_compile_s=first["compile"],  # torch.compile's compilation + the first step
            torch_compile_page_faults_per_step=faults["compile"] / per_step,
            torch_compile_final_loss=last_loss["compile"],
        )
    return row


def _minor_faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def settings_lines(args, threads: int, device: str, malloc: str, torch_compile: bool = False) -> list[str]:
    c = make_config("cnn", "small", args.batch, args.augment)
    a, o = c.augment, c.optim
    aug = (
        f"the recipe's (pad-crop {a.pad_crop}, flip {a.flip}, ±{a.rotate_degrees:g}° rotation, "
        f"erase {a.erase_prob:g}) on both sides"
        if args.augment
        else "none on either side"
    )
    return [
        f"jax {jax.__version__} ({jax.device_count()} {jax.devices()[0].platform} device(s)), "
        f"torch {torch.__version__} (eager{' and torch.compile' if torch_compile else ''} on {device}"
        + (f" {torch.cuda.get_device_name()}, cudnn.benchmark, TF32" if device == "cuda" else "")
        + (f", {threads} threads" if device == "cpu" else "")
        + f", {args.torch_memory_format}); "
        f"{platform.machine()}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at start"
        + ("" if os.getloadavg()[0] < 0.5 * (os.cpu_count() or 1) else " (NOT quiet: figures unreliable)"),
        f"batch {args.batch} {args.dtype} 48x48x1; softmax CE + label smoothing {c.label_smoothing:g}; "
        f"SGD{' Nesterov' if o.nesterov else ''} momentum {o.momentum:g}, weight decay "
        f"{o.weight_decay:g} on conv/linear weights; augmentation: {aug}",
        f"{args.windows} alternating windows of {args.steps} steps "
        f"({'torch eager, torch.compile' if torch_compile else 'torch'}, then fer_flax) after "
        f"{args.warmup} warm-up steps each; medians over the windows; glibc malloc: {malloc}",
    ]


def print_table(rows: list[dict]) -> None:
    """One line per model; with torch.compile rows, its images/s, fer_flax's ratio to it and its
    compilation seconds too."""
    compiled = any("torch_compile_images_per_s" in r for r in rows)
    header = f"{'model':<8} {'variant':<16} {'dtype':<9} {'params':>12} {'torch img/s':>12} "
    if compiled:
        header += f"{'compiled img/s':>15} "
    header += f"{'fer_flax img/s':>15} "
    header += f"{'flax/torch':>10} "
    if compiled:
        header += f"{'flax/compiled':>13} {'compile s':>9} "
    header += f"{'faults/step torch, flax':>24}"
    print(header)
    print("-" * len(header))
    for r in rows:
        line = f"{r['model']:<8} {r['variant']:<16} {r['dtype']:<9} {r['params']:>12,} "
        line += f"{r['torch_images_per_s']:>12,.1f} "
        if compiled:
            line += f"{r.get('torch_compile_images_per_s', float('nan')):>15,.1f} "
        line += f"{r['flax_images_per_s']:>15,.1f} {r['ratio_flax_over_torch']:>9.2f}x "
        if compiled:
            line += f"{r.get('ratio_flax_over_torch_compile', float('nan')):>12.2f}x "
            line += f"{r.get('torch_compile_s', float('nan')):>9.1f} "
        line += f"{r['torch_page_faults_per_step']:>12,.0f}, {r['flax_page_faults_per_step']:>9,.0f}"
        print(line)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", default="cnn,beefy,resnet18", help="comma-separated; or family:variant")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--windows", type=int, default=5, help="timed windows per framework")
    parser.add_argument("--steps", type=int, default=5, help="training steps per window")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps of each framework first")
    parser.add_argument("--torch_memory_format", choices=tuple(MEMORY_FORMATS), default="channels_last")
    parser.add_argument("--torch_threads", type=int, default=os.cpu_count())
    parser.add_argument(
        "--dtype",
        choices=("float32", "bfloat16"),
        default="float32",
        help="compute dtype on both sides: fer_flax's config.dtype, PyTorch's autocast (float32 weights)",
    )
    parser.add_argument("--augment", dest="augment", action="store_true", help="the recipe's, both sides")
    parser.add_argument("--no_augment", dest="augment", action="store_false", help="(default) neither side")
    parser.set_defaults(augment=False)
    parser.add_argument(
        "--cpu_devices",
        type=int,
        default=0,
        help="JAX CPU devices for fer_flax's data-parallel step, as config.cpu_devices (0 = one per core)",
    )
    parser.add_argument(
        "--malloc",
        choices=("reuse", "defaults"),
        default="reuse",
        help="reuse: the CPU corner's glibc settings, as every entry point applies them (the process "
        "is shared, so PyTorch runs with them too); defaults: glibc's defaults for both",
    )
    parser.add_argument(
        "--torch_compile",
        choices=("auto", "on", "off"),
        default="auto",
        help="also time PyTorch with the model under torch.compile (auto: on a GPU only; on a CPU "
        "Inductor needs a C++ compiler and minutes)",
    )
    parser.add_argument("--torch_compile_mode", default="default", help="torch.compile's mode")
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args()
    if args.windows < 1 or args.steps < 1:
        parser.error("--windows and --steps must be >= 1")
    # Before JAX starts its CPU client (arena settings reach only threads that have not allocated yet).
    if args.malloc == "defaults":
        os.environ[allocator.KEEP_DEFAULTS_ENV] = "1"
    runtime.start()
    malloc_applied = allocator.in_effect()
    # As the training entry point does before JAX starts: one JAX device per core by default
    # (PyTorch's intra-op threads are its way to use them all).
    devices.configure_cpu_devices(args.cpu_devices, (args.batch,))
    # On a GPU both frameworks run there; the host allocator then does not matter (and is left alone).
    device = "cuda" if jax.default_backend() == "gpu" else "cpu"
    if device == "cpu" and args.malloc == "reuse" and not malloc_applied:
        parser.error("--malloc reuse needs glibc on Linux and a CPU backend; use --malloc defaults")
    if device == "cuda":
        if not torch.cuda.is_available():
            parser.error("JAX runs on a GPU but this PyTorch build sees none: install a CUDA build of torch")
        # PyTorch at its fastest, as XLA autotunes: cuDNN's algorithm search, and TF32 for float32
        # matrix products as XLA uses it by default on this hardware (cuDNN convolutions have it already).
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
    if device == "cuda":
        malloc = "not changed (GPU run)"
    elif malloc_applied:
        malloc = "fer_flax.cpu.allocator's reuse settings (for both)"
    else:
        malloc = "defaults (for both)"

    torch_compile = args.torch_compile == "on" or (args.torch_compile == "auto" and device == "cuda")
    torch.set_num_threads(args.torch_threads)
    torch.manual_seed(0)
    specs = [resolve_model(s) for s in args.models.split(",") if s]
    mesh = parallel.make_mesh()
    lines = settings_lines(args, torch.get_num_threads(), device, malloc, torch_compile)
    print("\n".join(lines), flush=True)
    rows = []
    for family, variant in specs:
        row = compare(
            family,
            variant,
            batch=args.batch,
            windows=args.windows,
            steps=args.steps,
            warmup=args.warmup,
            memory_format=args.torch_memory_format,
            augment=args.augment,
            mesh=mesh,
            dtype=args.dtype,
            device=device,
            torch_compile=torch_compile,
            compile_options={"mode": args.torch_compile_mode},
        )
        rows.append(row)
        gc.collect()  # free this model's state before the next one is built
        print(json.dumps(row), flush=True)
        if args.json:  # after every row: a time limit keeps what was measured
            with open(args.json, "w") as f:
                json.dump({"settings": vars(args), "description": lines, "rows": rows}, f, indent=2)
    print()
    print("\n".join(lines))
    print_table(rows)


if __name__ == "__main__":
    main()
