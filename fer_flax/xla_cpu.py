"""How fer_flax compiles its steps for XLA:CPU: `jit` is `jax.jit` plus these compiler options on a CPU.

XLA:CPU (jaxlib 0.10) hands convolutions, dot products, reductions and elementwise fusions to YNNPACK
by default (`__ynn_fusion` in the compiled HLO). fer_flax keeps YNNPACK for reductions only, the
BatchNorm statistics being the large ones:
- convolutions: XLA's own (Eigen) ones use every core; YNNPACK's barely used the second one here
  (a single convolution's figures on 2 and 1 cores are in benchmarks/RESULTS.md).
- reductions: without YNNPACK, XLA rewrites every reduction over more than 32 elements into a tree of
  `reduce-window`s for accuracy, and XLA:CPU runs those element by element on one thread: the mean and
  mean square of a (128, 48, 48, 32) activation took 30 ms, against 2.2 ms in YNNPACK (which is also
  the more accurate, 1.5e-7 against 1e-6 relative to float64). In the small CNN's train step the
  `reduce-window`s took 80 ms of 290.
Whole-model batch gradients on the 2-core machine against XLA's defaults (benchmarks/xla_cpu_options.py):
the small CNN 1.41x, BeefyModel/base 1.28x, ResNet-18 1.19x faster (YNNPACK off altogether: 1.10x,
1.09x, 1.03x in the same runs).

Other projects report YNNPACK fusions miscompiling gradients on jaxlib 0.11;
tests/test_performance_paths.py compares fer_flax's compiled training gradient with eager execution,
and our own NaN gradients with YNNPACK came from a pool formulation that was fragile under any
compilation (models/layers.py).

`FER_FLAX_XLA_CPU_DEFAULTS=1` in the environment keeps XLA's defaults (to benchmark the difference).
GPUs and TPUs compile with their defaults, and so does an XLA build that does not know the option.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import Any

import jax

# The value lists the fusion kinds YNNPACK may take ("" = none).
CPU_COMPILER_OPTIONS: dict[str, Any] = {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_REDUCE"}

_KEEP_DEFAULTS_ENV = "FER_FLAX_XLA_CPU_DEFAULTS"


def compiler_options() -> dict[str, Any] | None:
    """The options fer_flax compiles its steps with on this backend (None: XLA's defaults)."""
    if jax.default_backend() != "cpu" or os.environ.get(_KEEP_DEFAULTS_ENV, "") not in ("", "0"):
        return None
    return dict(CPU_COMPILER_OPTIONS) if _options_supported() else None


@functools.cache
def _options_supported() -> bool:
    """Whether this XLA build accepts the options (a future one may rename them): compile a trivial
    program with them once, and fall back to the defaults rather than fail every step."""
    try:
        jax.jit(lambda x: x + 1, compiler_options=CPU_COMPILER_OPTIONS).lower(1.0).compile()
    except Exception:  # XLA reports an unknown option or value as a runtime error
        return False
    return True


def jit(fun: Callable, **kwargs: Any) -> Callable:
    """`jax.jit(fun, **kwargs)` compiled with `compiler_options()`."""
    return jax.jit(fun, compiler_options=compiler_options(), **kwargs)
