"""What XLA:CPU's code-generation flags cost in compile time and buy in step time: the train step of
each family's smoke config (its model and recipe at batch 32 on 4 simulated devices, as in the tests;
`benchmarks/train_step_setup.py` builds the step, on a fixed random batch), compiled and run in a fresh
process per flag set (XLA reads its flags when the backend starts).

  python benchmarks/codegen_flags.py                       # the families below, the flag sets below
  python benchmarks/codegen_flags.py simple_cnn beefy      # some configs only

Prints, per config and flag set: the compile time (wall and CPU seconds of `lowered.compile()`) and
the mean time of 5 training steps after a warm-up step. tests/conftest.py chooses the suite's flags
from these figures: the suite compiles hundreds of small programs and runs each a few steps.
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
import time

CONFIGS = ("simple_cnn", "beefy", "resnet18", "googlenet_aux", "vit_small")
DEVICES = "--xla_force_host_platform_device_count=4"
FLAG_SETS = {
    "XLA's defaults": "",
    "LLVM cheap (opt level 0, no expensive passes)": (
        "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
    ),
    "LLVM cheap + classic fusion emitters (the suite's)": (
        "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
        " --xla_cpu_use_fusion_emitters=false"
    ),
    "opt level 1, no expensive passes, classic fusion emitters": (
        "--xla_backend_optimization_level=1 --xla_llvm_disable_expensive_passes=true"
        " --xla_cpu_use_fusion_emitters=false"
    ),
}


def measure(config_name: str) -> str:
    """Compiles and times the smoke config's train step in this process (flags already set)."""
    import jax

    from benchmarks.train_step_setup import build_train_step
    from fer_flax import runtime
    from fer_flax.core import parallel

    runtime.start()
    config = importlib.import_module(f"configs.{config_name}").get_config("smoke")
    setup = build_train_step(config, parallel.make_mesh())
    lowered = setup.step.lower(setup.state, setup.device_batch, setup.key)
    wall, cpu = time.perf_counter(), time.process_time()
    compiled = lowered.compile()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    state, _ = compiled(setup.state, setup.device_batch, setup.key)
    jax.block_until_ready(state)
    start = time.perf_counter()
    for _ in range(5):
        state, metrics = compiled(state, setup.device_batch, setup.key)
    jax.block_until_ready((state, metrics))
    step_ms = (time.perf_counter() - start) / 5 * 1000
    return f"compile {wall:5.2f} s wall {cpu:5.2f} s CPU | step {step_ms:6.0f} ms"


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--one":
        print(measure(sys.argv[2]))
        return
    configs = sys.argv[1:] or CONFIGS
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for name in configs:
        print(f"{name} (smoke config's train step):")
        for label, flags in FLAG_SETS.items():
            env = {**os.environ, "XLA_FLAGS": f"{DEVICES} {flags}".strip(), "PYTHONPATH": repo}
            env.pop("JAX_COMPILATION_CACHE_DIR", None)  # every compile for real
            out = subprocess.run(
                [sys.executable, __file__, "--one", name], env=env, capture_output=True, text=True, cwd=repo
            )
            line = (
                out.stdout.strip().splitlines()[-1] if out.returncode == 0 else f"failed: {out.stderr[-300:]}"
            )
            print(f"  {line}  [{label}]", flush=True)


if __name__ == "__main__":
    main()
