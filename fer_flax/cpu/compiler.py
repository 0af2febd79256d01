"""The XLA:CPU compiler option fer_flax runs with: YNNPACK fusions for reductions only.

XLA:CPU (jaxlib 0.10) hands convolutions, dot products and reductions to YNNPACK by default
(`__ynn_fusion` in the compiled HLO). fer_flax keeps YNNPACK for reductions only, the BatchNorm
statistics being the large ones:
- convolutions: XLA's own (Eigen) convolutions use every core; YNNPACK's use few of them.
- reductions: without YNNPACK, XLA rewrites every reduction over more than 32 elements into a tree of
  `reduce-window`s for accuracy, and XLA:CPU runs those element by element on one thread. YNNPACK's
  reductions are faster and also the more accurate ones (closer to a float64 reference).
The measured effect per model is in benchmarks/RESULTS.md ("XLA:CPU compiler option").

Why XLA_FLAGS rather than `jax.jit(..., compiler_options=...)`: the option is a process-wide choice
(every program on the CPU backend wants it), so setting it once lets every `jax.jit` in the product
stay plain. XLA reads XLA_FLAGS when the CPU backend starts, so `add_to_xla_flags()` must run before
anything touches a device. An unknown flag in XLA_FLAGS aborts the process, so the flag is only set
on jaxlib versions known to accept it (`TESTED_JAXLIB`); other versions keep XLA's defaults.

Benchmarks that compare with XLA's defaults pass `XLA_DEFAULT_OPTIONS` (or another value) to
`jax.jit(..., compiler_options=...)`: per-program options override XLA_FLAGS.

Gradients compiled with these options are compared with eager execution in
tests/cpu/test_performance_paths.py (YNNPACK fusions have been reported to miscompile gradients on other
jaxlib versions).
"""

from __future__ import annotations

import os
import warnings
from typing import Any

FLAG = "xla_cpu_experimental_ynn_fusion_type"
# The value lists the fusion kinds YNNPACK may take ("" = none).
CPU_COMPILER_OPTIONS: dict[str, Any] = {FLAG: "LIBRARY_FUSION_TYPE_REDUCE"}
# What XLA uses when the flag is not given (jaxlib 0.10): passing it per program compiles exactly
# what a process without fer_flax's flag compiles.
XLA_DEFAULT_OPTIONS: dict[str, Any] = {
    FLAG: "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_INDIVIDUAL_CONVOLUTION,"
    "LIBRARY_FUSION_TYPE_REDUCE"
}
# jaxlib versions (prefixes) on which XLA_FLAGS is known to accept the flag.
TESTED_JAXLIB: tuple[str, ...] = ("0.10.",)


def xla_flags_entry() -> str:
    """`--flag=value` as it goes into XLA_FLAGS."""
    return " ".join(f"--{name}={value}" for name, value in CPU_COMPILER_OPTIONS.items())


def supported(jaxlib_version: str | None = None) -> bool:
    """Whether this jaxlib is one on which the flag is known to be accepted."""
    if jaxlib_version is None:
        import jaxlib.version

        jaxlib_version = jaxlib.version.__version__
    return jaxlib_version.startswith(TESTED_JAXLIB)


def _backend_started() -> bool:
    from jax._src import xla_bridge  # no public alias in JAX 0.10; does not start a backend

    return xla_bridge.backends_are_initialized()


def add_to_xla_flags() -> bool:
    """Appends `xla_flags_entry()` to `os.environ["XLA_FLAGS"]`, keeping what it holds; returns
    whether the flag is there afterwards.

    Does nothing on an untested jaxlib, and leaves a user's own setting of the flag alone. Adds it at
    most once. If the CPU backend has already started the flag cannot take effect any more: it is then
    not added, and a warning says so.
    """
    current = os.environ.get("XLA_FLAGS", "")
    if f"--{FLAG}=" in current:
        return True
    if not supported():
        return False
    if _backend_started():
        warnings.warn(
            f"fer_flax.cpu: the XLA:CPU option --{FLAG} cannot take effect because JAX's backend has "
            "already started; call fer_flax.runtime.start() (or fer_flax.cpu.configure_process()) "
            "before anything touches a device.",
            RuntimeWarning,
            stacklevel=3,
        )
        return False
    os.environ["XLA_FLAGS"] = f"{current} {xla_flags_entry()}".strip()
    return True
