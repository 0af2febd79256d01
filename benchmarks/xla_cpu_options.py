"""What XLA:CPU's YNNPACK settings are worth: a model's batch gradient compiled five ways, same process.

  python benchmarks/xla_cpu_options.py --models resnet:resnet18,beefy:base --batch 32 --reps 3
  python benchmarks/xla_cpu_options.py --models cnn:small --batch 128 --reps 5

Settings of `xla_cpu_experimental_ynn_fusion_type` (per compilation, through `jax.jit`'s
compiler_options, which override the process's XLA_FLAGS): XLA's defaults; YNNPACK for dot products
only; YNNPACK off; YNNPACK for dots and convolutions; YNNPACK for reductions only (the option
`fer_flax.cpu.compiler` sets for the whole process). The process starts as every entry point does
(`fer_flax.runtime.start()`: glibc's malloc with the CPU corner's settings), and the models use the
seam's CPU kernels (`fer_flax.cpu.model_ops()`).
Each setting's jitted `jax.grad` of a training-mode loss (BatchNorm on batch statistics) is timed in
alternating rounds, median reported; non-finite gradients are flagged. One JAX device (the JAX default
here).
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from fer_flax import cpu, runtime
from fer_flax.cpu.compiler import FLAG, XLA_DEFAULT_OPTIONS
from fer_flax.models import create_model

DOT = "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT"
CONV = "LIBRARY_FUSION_TYPE_INDIVIDUAL_CONVOLUTION"
REDUCE = "LIBRARY_FUSION_TYPE_REDUCE"
SETTINGS = {
    "XLA defaults": XLA_DEFAULT_OPTIONS,
    "YNN dots only": {FLAG: DOT},
    "YNNPACK off": {FLAG: ""},
    "YNN dots + convs": {FLAG: f"{DOT},{CONV}"},
    "YNN reductions": {FLAG: REDUCE},
}


def time_model(family: str, variant: str, batch: int, reps: int) -> dict[str, float]:
    model = create_model(family, variant=variant, num_classes=7, **cpu.model_ops())
    x = jax.random.uniform(jax.random.key(1), (batch, 48, 48, 1))
    variables = model.init({"params": jax.random.key(0)}, x, train=False)
    extra = {k: v for k, v in variables.items() if k != "params"}

    def loss(params):
        (logits, _), _ = model.apply(
            {"params": params, **extra},
            x,
            train=True,
            mutable=list(extra),
            rngs={"dropout": jax.random.key(2)},
        )
        return jnp.sum(jax.nn.log_softmax(logits)[:, 0])

    grads = {name: jax.jit(jax.grad(loss), compiler_options=o) for name, o in SETTINGS.items()}
    for name, fn in grads.items():  # compile, and check the result once
        g = jax.block_until_ready(fn(variables["params"]))
        if not all(np.all(np.isfinite(np.asarray(leaf))) for leaf in jax.tree.leaves(g)):
            print(f"  {family}/{variant} {name}: NON-FINITE gradient")
    times: dict[str, list[float]] = {name: [] for name in grads}
    for _ in range(reps):
        for name, fn in grads.items():
            start = time.perf_counter()
            jax.block_until_ready(fn(variables["params"]))
            times[name].append(time.perf_counter() - start)
    return {name: 1000 * float(np.median(t)) for name, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", default="resnet:resnet18,beefy:base,cnn:small", help="family:variant,...")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    runtime.start()  # before JAX starts, as every entry point
    print(f"batch {args.batch}, median of {args.reps}, ms per batch gradient, {jax.device_count()} device(s)")
    print(f"{'model':<24}" + "".join(f"{name:>18}" for name in SETTINGS))
    for spec in args.models.split(","):
        family, variant = spec.split(":")
        ms = time_model(family, variant, args.batch, args.reps)
        print(f"{spec:<24}" + "".join(f"{ms[name]:>18.0f}" for name in SETTINGS), flush=True)


if __name__ == "__main__":
    main()
