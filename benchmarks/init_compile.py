"""What a model's initialisation costs to compile, against its forward pass: why training initialises
through `model_lib.run_once` (one program, XLA's cheap settings) and why the tests do the same
instead of calling `model.init` eagerly (each random draw its own program, fully optimised).

  python benchmarks/init_compile.py [--family googlenet --variant inception_v1]

Each measurement compiles in a fresh compilation cache (none is persisted), on one CPU device.
Prints seconds: init compiled once with the cheap settings, the forward pass with the same settings,
and eager init (the first call compiles every op; a second call, all compiled, is shown for scale).
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp

from fer_flax import models
from fer_flax.core import model as model_lib


def _seconds(fn) -> float:
    start = time.perf_counter()
    jax.block_until_ready(fn())
    return time.perf_counter() - start


def main() -> None:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=formatter)
    parser.add_argument("--family", default="googlenet", choices=models.FAMILIES)
    parser.add_argument("--variant", default="inception_v1")
    args = parser.parse_args()
    jax.config.update("jax_enable_compilation_cache", False)
    model = models.create_model(args.family, variant=args.variant)
    x = jnp.zeros((1, 48, 48, 1))
    rngs = {"params": jax.random.key(0)}

    def init(r, x):
        return model.init(r, x, train=False)

    init_s = _seconds(lambda: model_lib.run_once(jax.jit(init), rngs, x))
    variables = model_lib.run_once(jax.jit(init), rngs, x)
    forward = jax.jit(lambda v, x: model.apply(v, x, train=False))
    forward_s = _seconds(lambda: model_lib.compile_once(forward.lower(variables, x)))
    eager_s = _seconds(lambda: init(rngs, x))
    again_s = _seconds(lambda: init(rngs, x))
    print(f"{args.family}/{args.variant}, CPU backend:")
    print(f"  init, one program, cheap settings (compile + run): {init_s:7.1f} s")
    print(f"  forward, cheap settings (compile):                  {forward_s:7.1f} s")
    print(f"  init, eager, first call:                            {eager_s:7.1f} s")
    print(f"  init, eager, second call:                           {again_s:7.1f} s")


if __name__ == "__main__":
    main()
