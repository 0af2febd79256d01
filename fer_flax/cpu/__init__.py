"""The CPU corner: the only place where fer_flax's XLA:CPU-specific speed work lives.

Nothing else in fer_flax sets XLA flags, changes the host allocator or picks CPU kernels; the models
are written with stock Flax ops and a seam (`conv`, `max_pool`) through which this package hands them
faster CPU kernels. On a GPU or TPU none of it applies.

Public API:
  SWITCH_ENV          "FER_FLAX_CPU_TUNING": set to "0" and the whole corner is off (glibc's malloc
                      defaults, XLA's compiler defaults, stock Flax ops).
  configure_process() once per process, before anything touches a device (`fer_flax.runtime.start()`
                      calls it): on a process that will run on the CPU backend, the glibc allocator
                      settings (`allocator`) and the XLA:CPU compiler option (`compiler`).
  kernels_enabled()   whether models should be built with the CPU kernels (CPU backend, corner on).
  model_ops()         `{"conv": ..., "max_pool": ...}` for `fer_flax.models.create_model(..., **ops)`
                      when `kernels_enabled()`, else `{}` (the families' stock `nn.Conv`, `nn.max_pool`).
Modules: `allocator` (glibc malloc), `compiler` (XLA:CPU option), `kernels` (the CPU kernels),
`devices` (splitting the host CPU into several JAX devices).
"""

from __future__ import annotations

import os
from typing import Any

from fer_flax.cpu import allocator, compiler, kernels

SWITCH_ENV = "FER_FLAX_CPU_TUNING"

# The same objects on every call: Linen modules built with them compare equal, so jit's cache hits.
_MODEL_OPS: dict[str, Any] = {"conv": kernels.Conv, "max_pool": kernels.max_pool}


def switched_off() -> bool:
    """Whether `SWITCH_ENV` turns the corner off ("0", "false", "no" or "off")."""
    return os.environ.get(SWITCH_ENV, "").strip().lower() in ("0", "false", "no", "off")


def configure_process() -> None:
    """Process-wide CPU settings; idempotent. Call before anything touches a JAX device.

    Applies nothing when switched off or when the process is expected to run on an accelerator
    (`JAX_PLATFORMS` names one first, or a GPU/TPU plugin is installed); decided without starting JAX.
    """
    if switched_off() or allocator.accelerator_expected():
        return
    allocator.reuse_freed_memory()
    compiler.add_to_xla_flags()


def kernels_enabled() -> bool:
    """The CPU backend and the corner on. Starts JAX's backend (it asks which one is the default), so
    call it after `configure_process()`."""
    import jax

    return not switched_off() and jax.default_backend() == "cpu"


def model_ops() -> dict[str, Any]:
    """The seam's CPU kernels when `kernels_enabled()`, else `{}` (stock Flax ops)."""
    return dict(_MODEL_OPS) if kernels_enabled() else {}
