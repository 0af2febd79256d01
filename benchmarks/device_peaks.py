"""Peak dense FLOP/s of the accelerators fer_flax's benchmarks report model FLOP utilisation (MFU) on.

Vendor datasheet figures without structured sparsity, per device, in TFLOP/s. A float32 train step is
compared with the TF32 tensor-core peak: XLA computes float32 convolutions and matrix products in TF32
on these GPUs unless asked for more precision. CPUs have no entry (their peak depends on the clock and
core count a VM exposes), so their MFU is not reported; the achieved TFLOP/s is.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.extend

# device_kind substring -> (bfloat16, TF32) dense tensor-core peaks.
GPU_PEAK_TFLOPS: dict[str, tuple[float, float]] = {
    "H200": (989.4, 494.7),  # SXM
    "H100 PCIe": (756.0, 378.0),  # before "H100": the first name found in device_kind wins
    "H100": (989.4, 494.7),  # SXM
    "A100": (312.0, 156.0),
    "L4": (121.0, 60.0),
}


def peak_tflops(device_kind: str, dtype: str) -> float | None:
    """The peak for a JAX `device.device_kind` computing in `dtype`, or None when unknown (e.g. a CPU)."""
    for name, (bf16, tf32) in GPU_PEAK_TFLOPS.items():
        if name in device_kind:
            return {"bfloat16": bf16, "float32": tf32}.get(dtype)
    return None


def step_flops(traced: Any) -> float:
    """The matrix FLOPs of a traced jitted function (`jax.jit(f).trace(*args)`): its convolutions and
    dot products, counted from the jaxpr, so the count is the same on every backend.

    XLA's own cost analysis cannot serve here: jax's GPU backend gives none before compilation, and
    the compiled executable's count leaves out the convolutions that run as cuDNN calls (nearly all
    of a CNN's work). Elementwise work (activations, normalisation, the optimizer) is not counted, as
    is usual for model FLOP utilisation. A scan's body counts once per iteration, a cond's costliest
    branch once, a while loop's body once (its trip count is not known when tracing).
    """
    return _matrix_flops(traced.jaxpr.jaxpr)


def _matrix_flops(jaxpr: Any) -> float:
    total = 0.0
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        if name == "dot_general":
            (contracting, _), _ = eqn.params["dimension_numbers"]
            lhs = eqn.invars[0].aval.shape
            total += 2.0 * math.prod(eqn.outvars[0].aval.shape) * math.prod(lhs[d] for d in contracting)
        elif name == "conv_general_dilated":
            # Each output element is a dot product over the kernel's input features and window.
            rhs = eqn.invars[1].aval.shape
            out_features = rhs[eqn.params["dimension_numbers"].rhs_spec[0]]
            total += 2.0 * math.prod(eqn.outvars[0].aval.shape) * math.prod(rhs) / out_features
        else:
            inner = [_matrix_flops(j) for j in _sub_jaxprs(eqn.params)]
            if name == "cond":  # one branch runs
                total += max(inner, default=0.0)
            else:  # a scan runs its body `length` times; a call, remat or while loop once
                total += sum(inner) * (eqn.params["length"] if name == "scan" else 1)
    return total


def _sub_jaxprs(params: dict[str, Any]) -> list[Any]:
    found = []
    for value in params.values():
        for v in value if isinstance(value, (tuple, list)) else (value,):
            if isinstance(v, jax.extend.core.ClosedJaxpr):
                found.append(v.jaxpr)
            elif isinstance(v, jax.extend.core.Jaxpr):
                found.append(v)
    return found
