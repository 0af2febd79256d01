"""Peak dense FLOP/s of the accelerators fer_flax's benchmarks report model FLOP utilisation (MFU) on.

Vendor datasheet figures without structured sparsity, per device, in TFLOP/s. A float32 train step is
compared with the TF32 tensor-core peak: XLA computes float32 convolutions and matrix products in TF32
on these GPUs unless asked for more precision. CPUs have no entry (their peak depends on the clock and
core count a VM exposes), so their MFU is not reported; the achieved TFLOP/s is.

The FLOP count of a step, `step_flops`, is `fer_flax.core.flops.step_flops` (imported here for the
benchmarks that report MFU).
"""

from __future__ import annotations

from fer_flax.core.flops import step_flops

__all__ = ["GPU_PEAK_TFLOPS", "peak_tflops", "step_flops"]

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
