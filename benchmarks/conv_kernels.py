"""The convolution kernels under fer_flax and PyTorch on this CPU: every convolution a model's train step
runs, timed alone in XLA (compiled with the process's XLA:CPU option, as fer_flax's steps) and in PyTorch
(oneDNN), forward and forward + both gradients.

  python benchmarks/conv_kernels.py [--models cnn,beefy,resnet18] [--batch 128] [--reps 5]
      [--split_gradients] [--malloc reuse|defaults] [--json out.json]

Needs PyTorch (the `bench` extra). For each model the multi-channel convolutions of its forward pass
are read from its jaxpr (shapes, strides, padding, and how often each occurs; the single-channel stem
is fer_flax's fused multiply-adds on the CPU, not a convolution, and is left out). Each distinct
convolution is timed as forward alone and as forward + input gradient + kernel gradient (one
`jax.vjp` under `jit`; `torch.ops.aten.convolution_backward` in PyTorch, channels_last), median of
`--reps` calls after a warm-up; with `--split_gradients` also the input gradient alone and the kernel
gradient alone, from a given output gradient. Summed over the model with the occurrence counts, this
gives the time the convolutions alone take per train step in each framework: fer_flax's step cannot
be faster than its convolutions, so the sum against `compare_torch.py`'s whole PyTorch step bounds the
ratio any change outside the convolution kernels can reach. The first line gives each framework's
rate on a 2048³ float32 matrix product, for reference (oneDNN's convolutions run faster than both).

One JAX device (XLA runs each convolution on every core); the process starts as every entry point does
(`fer_flax.runtime.start()`), with glibc's malloc defaults under `--malloc defaults`. Tiny settings
for a quick check:

  python benchmarks/conv_kernels.py --models cnn --batch 4 --reps 1
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import statistics
import sys
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import torch
import torch.nn.functional as F
from jax.extend import core as jax_core

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.compare_torch import resolve_model
from benchmarks.train_step_setup import build_model, make_config
from fer_flax import cpu, runtime
from fer_flax.cpu import allocator, kernels
from fer_flax.data.splits import IMAGE_SIZE

# (input NHWC, kernel HWIO, strides, padding ((lo, hi), (lo, hi))): one distinct convolution.
ConvSpec = tuple[tuple[int, ...], tuple[int, ...], tuple[int, int], tuple[tuple[int, int], ...]]


def model_convolutions(family: str, variant: str, batch: int) -> collections.Counter[ConvSpec]:
    """The 2-D convolutions of the model's training forward pass, with their occurrence counts."""
    model = build_model(make_config(family, variant, batch, augment=False), cpu.model_ops())
    images = jnp.zeros((batch, IMAGE_SIZE, IMAGE_SIZE, 1), jnp.float32)
    variables = model.init({"params": jax.random.key(0)}, images[:1], train=False)

    def forward(variables, images):
        return model.apply(
            variables, images, train=True, mutable=["batch_stats"], rngs={"dropout": jax.random.key(1)}
        )

    counts: collections.Counter[ConvSpec] = collections.Counter()
    _collect(jax.make_jaxpr(forward)(variables, images).jaxpr, counts)
    return counts


def _collect(jaxpr, counts: collections.Counter[ConvSpec]) -> None:
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "conv_general_dilated":
            lhs, rhs = (v.aval.shape for v in eqn.invars)
            dn = eqn.params["dimension_numbers"]
            if dn.lhs_spec != (0, 3, 1, 2) or dn.rhs_spec != (3, 2, 0, 1):
                raise ValueError(f"expected NHWC/HWIO convolutions, got {dn}")
            if eqn.params["feature_group_count"] != 1 or any(d != 1 for d in eqn.params["rhs_dilation"]):
                raise ValueError("grouped or dilated convolution: not covered by this benchmark")
            padding = tuple(tuple(p) for p in eqn.params["padding"])
            counts[(tuple(lhs), tuple(rhs), tuple(eqn.params["window_strides"]), padding)] += 1
        for sub in jax_core.jaxprs_in_params(eqn.params):
            _collect(sub, counts)


def conv_gflop(spec: ConvSpec) -> float:
    """Multiply-adds × 2 of the forward convolution, every tap counted (padding too, as dense kernels
    run it); each gradient costs the same again."""
    (n, h, w, _), (kh, kw, ci, co), (sh, sw), ((pt, pb), (pl, pr)) = spec
    ho, wo = (h + pt + pb - kh) // sh + 1, (w + pl + pr - kw) // sw + 1
    return 2 * n * ho * wo * kh * kw * ci * co / 1e9


def _median_seconds(call: Callable[[], object], reps: int) -> float:
    call()  # warm-up (and compilation)
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _conv_as_models_run_it(spec: ConvSpec) -> Callable:
    """(x NHWC, kernel HWIO) -> output, through the convolution fer_flax's models call on a CPU."""
    _, _, strides, padding = spec
    return lambda x, k: kernels.conv_general_dilated(
        x, k, strides, padding, dimension_numbers=("NHWC", "HWIO", "NHWC")
    )


def xla_conv(spec: ConvSpec) -> tuple[Callable, Callable]:
    """(forward, forward + both gradients) of the convolution as fer_flax's models run it, jitted;
    each takes (x NHWC, kernel HWIO). The gradients are those of the output against itself, a
    stand-in upstream gradient of the right shape."""
    conv = _conv_as_models_run_it(spec)

    def conv_and_grads(x, k):
        y, vjp = jax.vjp(conv, x, k)
        return vjp(y)

    return jax.jit(conv), jax.jit(conv_and_grads)


def _torch_padding(spec: ConvSpec) -> tuple[tuple[int, int, int, int] | None, tuple[int, int]]:
    """(F.pad widths to apply first or None, conv2d's symmetric padding): PyTorch pads symmetrically,
    so uneven padding pads the input explicitly."""
    (pt, pb), (pl, pr) = spec[3]
    return ((pl, pr, pt, pb), (0, 0)) if (pt, pl) != (pb, pr) else (None, (pt, pl))


def torch_conv(spec: ConvSpec) -> tuple[Callable, Callable]:
    """The same pair in PyTorch; each takes (x NCHW, kernel OIHW) and returns (output,) and
    (input gradient, kernel gradient). PyTorch pads symmetrically, so uneven padding pads the
    input first (inside the timed call)."""
    strides, ((pt, pb), (pl, pr)) = spec[2], spec[3]
    pre, padding = _torch_padding(spec)

    def forward(x, k):
        inp = F.pad(x, pre) if pre else x
        return inp, F.conv2d(inp, k, stride=strides, padding=padding)

    def forward_and_grads(x, k):
        inp, y = forward(x, k)
        grad_inp, grad_k, _ = torch.ops.aten.convolution_backward(
            y, inp, k, None, strides, padding, (1, 1), False, (0, 0), 1, (True, True, False)
        )
        if pre:  # the padded input's gradient, cropped back to the input
            grad_inp = grad_inp[:, :, pt : grad_inp.shape[2] - pb, pl : grad_inp.shape[3] - pr]
        return grad_inp, grad_k

    return (lambda x, k: forward(x, k)[1:]), forward_and_grads


def time_xla(spec: ConvSpec, reps: int) -> tuple[float, float]:
    """(forward, forward + both gradients) seconds in XLA."""
    x = jax.random.normal(jax.random.key(0), spec[0], jnp.float32)
    k = jax.random.normal(jax.random.key(1), spec[1], jnp.float32) * 0.05
    forward, backward = xla_conv(spec)
    t_fwd = _median_seconds(lambda: forward(x, k).block_until_ready(), reps)
    t_all = _median_seconds(lambda: jax.block_until_ready(backward(x, k)), reps)
    return t_fwd, t_all


def time_torch(spec: ConvSpec, reps: int) -> tuple[float, float]:
    """(forward, forward + both gradients) seconds in PyTorch, channels_last as compare_torch runs."""
    (n, h, w, ci), (kh, kw, _, co), _, _ = spec
    x = torch.randn(n, ci, h, w).contiguous(memory_format=torch.channels_last)
    k = (torch.randn(co, ci, kh, kw) * 0.05).contiguous(memory_format=torch.channels_last)
    forward, backward = torch_conv(spec)
    with torch.no_grad():
        t_fwd = _median_seconds(lambda: forward(x, k), reps)
        t_all = _median_seconds(lambda: backward(x, k), reps)
    return t_fwd, t_all


def time_gradients_separately(spec: ConvSpec, reps: int) -> dict[str, float]:
    """Seconds of the input gradient alone and the kernel gradient alone, from a given output
    gradient (no forward pass), in XLA and in PyTorch: which of the two backward kernels differs."""
    strides = spec[2]
    x = jax.random.normal(jax.random.key(0), spec[0], jnp.float32)
    k = jax.random.normal(jax.random.key(1), spec[1], jnp.float32) * 0.05
    conv = _conv_as_models_run_it(spec)
    g = jax.random.normal(jax.random.key(2), jax.eval_shape(conv, x, k).shape, jnp.float32)
    input_grad = jax.jit(lambda x, k, g: jax.vjp(lambda x: conv(x, k), x)[1](g)[0])
    kernel_grad = jax.jit(lambda x, k, g: jax.vjp(lambda k: conv(x, k), k)[1](g)[0])
    times = {
        "xla_input_grad": _median_seconds(lambda: input_grad(x, k, g).block_until_ready(), reps),
        "xla_kernel_grad": _median_seconds(lambda: kernel_grad(x, k, g).block_until_ready(), reps),
    }

    def to_torch(a, axes):  # NHWC -> NCHW or HWIO -> OIHW, channels_last in memory
        return torch.from_numpy(np.array(a).transpose(axes)).contiguous(memory_format=torch.channels_last)

    tx, tk, tg = to_torch(x, (0, 3, 1, 2)), to_torch(k, (3, 2, 0, 1)), to_torch(g, (0, 3, 1, 2))
    pre, torch_padding = _torch_padding(spec)
    if pre:
        tx = F.pad(tx, pre)

    def torch_backward(mask):
        return torch.ops.aten.convolution_backward(
            tg, tx, tk, None, strides, torch_padding, (1, 1), False, (0, 0), 1, mask
        )

    with torch.no_grad():
        times["torch_input_grad"] = _median_seconds(lambda: torch_backward((True, False, False)), reps)
        times["torch_kernel_grad"] = _median_seconds(lambda: torch_backward((False, True, False)), reps)
    return times


def gemm_rates(size: int = 2048, reps: int = 5) -> tuple[float, float]:
    """GFLOP/s of a size³ float32 matrix product in XLA (fer_flax's options) and in PyTorch."""
    a = jax.random.normal(jax.random.key(0), (size, size), jnp.float32)
    matmul = jax.jit(jnp.matmul)
    t_xla = _median_seconds(lambda: matmul(a, a).block_until_ready(), reps)
    ta = torch.from_numpy(np.array(a))
    t_torch = _median_seconds(lambda: ta @ ta, reps)
    gflop = 2 * size**3 / 1e9
    return gflop / t_xla, gflop / t_torch


def describe(spec: ConvSpec) -> str:
    (n, h, w, ci), (kh, kw, _, co), (sh, _), _ = spec
    return f"{n}x{h}x{w}x{ci} -> {co}, {kh}x{kw}/{sh}"


def measure_model(spec: str, batch: int, reps: int, split_gradients: bool = False) -> dict:
    family, variant = resolve_model(spec)
    convs = model_convolutions(family, variant, batch)
    rows = []
    for conv, count in sorted(convs.items(), key=lambda item: -conv_gflop(item[0]) * item[1]):
        xla_fwd, xla_all = time_xla(conv, reps)
        torch_fwd, torch_all = time_torch(conv, reps)
        gflop = conv_gflop(conv)
        row = {
            "conv": describe(conv),
            "count": count,
            "gflop_fwd": gflop,
            "xla_fwd_ms": xla_fwd * 1e3,
            "torch_fwd_ms": torch_fwd * 1e3,
            "xla_fwd_bwd_ms": xla_all * 1e3,
            "torch_fwd_bwd_ms": torch_all * 1e3,
        }
        rows.append(row)
        print(
            f"  {row['conv']:28s} x{count:<2d} fwd {row['xla_fwd_ms']:7.1f} vs {row['torch_fwd_ms']:7.1f} ms"
            f" ({gflop / xla_fwd:5.0f} vs {gflop / torch_fwd:5.0f} GFLOP/s);  fwd+grads"
            f" {row['xla_fwd_bwd_ms']:7.1f} vs {row['torch_fwd_bwd_ms']:7.1f} ms"
            f" ({3 * gflop / xla_all:5.0f} vs {3 * gflop / torch_all:5.0f} GFLOP/s)",
            flush=True,
        )
        if split_gradients:
            split = time_gradients_separately(conv, reps)
            row.update({f"{name}_ms": seconds * 1e3 for name, seconds in split.items()})
            print(
                f"  {'':28s}     input gradient {row['xla_input_grad_ms']:7.1f} vs"
                f" {row['torch_input_grad_ms']:7.1f} ms;  kernel gradient {row['xla_kernel_grad_ms']:7.1f}"
                f" vs {row['torch_kernel_grad_ms']:7.1f} ms",
                flush=True,
            )
    total = lambda key: sum(r[key] * r["count"] for r in rows)
    return {
        "model": f"{family}/{variant}",
        "batch": batch,
        "convs": rows,
        "xla_step_convs_ms": total("xla_fwd_bwd_ms"),
        "torch_step_convs_ms": total("torch_fwd_bwd_ms"),
        "step_gflop": 3 * sum(r["gflop_fwd"] * r["count"] for r in rows),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", default="cnn,beefy,resnet18", help="comma-separated; or family:variant")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--reps", type=int, default=5, help="timed calls per convolution (median)")
    parser.add_argument("--malloc", choices=("reuse", "defaults"), default="reuse")
    parser.add_argument(
        "--split_gradients",
        action="store_true",
        help="also time the input gradient and the kernel gradient alone, from a given output gradient",
    )
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args()
    if args.reps < 1 or args.batch < 1:
        parser.error("--reps and --batch must be >= 1")
    if args.malloc == "defaults":
        os.environ[allocator.KEEP_DEFAULTS_ENV] = "1"
    runtime.start()  # before JAX starts
    if args.malloc == "reuse" and not allocator.in_effect():
        parser.error("--malloc reuse needs glibc on Linux and a CPU backend; use --malloc defaults")
    torch.set_num_threads(os.cpu_count() or 1)
    xla_gemm, torch_gemm = gemm_rates()
    print(f"GEMM 2048^3 float32: XLA {xla_gemm:.0f} GFLOP/s, PyTorch {torch_gemm:.0f} GFLOP/s", flush=True)
    results = {"settings": vars(args), "gemm_gflops": {"xla": xla_gemm, "torch": torch_gemm}, "models": []}
    for spec in filter(None, args.models.split(",")):
        print(f"{spec} (batch {args.batch}): XLA vs PyTorch, median of {args.reps}", flush=True)
        result = measure_model(spec, args.batch, args.reps, args.split_gradients)
        results["models"].append(result)
        if args.json:
            with open(args.json, "w") as f:
                json.dump(results, f, indent=2)
    print()
    header = ("model", "conv GFLOP/step", "XLA convs ms", "PyTorch convs ms", "ratio")
    print("{:20s} {:>16s} {:>13s} {:>17s} {:>6s}".format(*header))
    for r in results["models"]:
        ratio = r["torch_step_convs_ms"] / r["xla_step_convs_ms"]
        print(
            f"{r['model']:20s} {r['step_gflop']:16.1f} {r['xla_step_convs_ms']:13.1f}"
            f" {r['torch_step_convs_ms']:17.1f} {ratio:6.2f}"
        )


if __name__ == "__main__":
    main()
