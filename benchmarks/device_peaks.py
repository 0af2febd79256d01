"""Peak dense FLOP/s of the accelerators fer_flax's benchmarks report model FLOP utilisation (MFU) on.

Vendor datasheet figures without structured sparsity, per device, in TFLOP/s. A float32 train step is
compared with the TF32 tensor-core peak: XLA computes float32 convolutions and matrix products in TF32
on these GPUs unless asked for more precision. CPUs have no entry (their peak depends on the clock and
core count a VM exposes), so their MFU is not reported; the achieved TFLOP/s is.
"""

from __future__ import annotations

from typing import Any

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


def step_flops(lowered: Any) -> float | None:
    """XLA's FLOP count of a lowered jitted function: the count before optimisation where the backend
    gives one (no compilation needed), else the compiled executable's (jax's GPU backend answers None
    before compilation); None when neither has a count."""
    for analyse in (lowered.cost_analysis, lambda: lowered.compile().cost_analysis()):
        cost = analyse()
        cost = cost[0] if isinstance(cost, (list, tuple)) and cost else cost  # a list in older jax
        if cost and cost.get("flops", 0) > 0:
            return float(cost["flops"])
    return None
