"""Test-wide set-up: four simulated CPU devices, so every test exercises the sharded code path, and
the process start-up every entry point runs (`fer_flax.cpu.configure_process`: the XLA:CPU option
and allocator settings), so tests compile what users run (with LLVM's cheap settings for the machine
code, see below).

XLA reads its flags when the backend starts, so both happen before any test touches a device.
"""

import importlib.metadata
import os
import tempfile
from pathlib import Path

# Cheap code generation: the suite spends most of its time compiling small programs, and runs each
# only a few times. LLVM's cheap settings for the machine code, and XLA:CPU's classic loop emitters
# for fusions instead of its MLIR fusion emitters, which take three to four times longer to compile
# (benchmarks/RESULTS.md, "Test suite"). XLA's HLO optimisation is the one users run: the same
# fusion decisions (except that reductions stay outside loop fusions) and the same choice of
# libraries (the CPU option's YNNPACK reductions). An unknown flag aborts XLA, so the emitter choice
# is made only on the jaxlib it was checked on; others compile with their default emitters.
_CHEAP_CODEGEN = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
if importlib.metadata.version("jaxlib").startswith("0.10."):
    _CHEAP_CODEGEN += " --xla_cpu_use_fusion_emitters=false"
os.environ.setdefault("XLA_FLAGS", f"--xla_force_host_platform_device_count=4 {_CHEAP_CODEGEN}")
os.environ.setdefault("WANDB_SILENT", "true")
# Many tests compile the same small programs (the smoke CNN's steps, for instance), also in the
# subprocesses some tests start. A persistent compilation cache shared by all of them turns the
# repeats into cache hits; entries are keyed by program and jax version, so reuse is always safe.
# Every program is cached, however quick its compilation: the suite compiles hundreds of small ones.
os.environ.setdefault(
    "JAX_COMPILATION_CACHE_DIR", os.path.join(tempfile.gettempdir(), "fer_flax_test_xla_cache")
)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
# glibc's malloc defaults for the test processes (and the programs they start): the CPU corner's
# allocator settings make training steps stop page-faulting, but with one arena XLA's compiler threads
# contend for the heap, and this suite spends most of its time compiling. Numerics are the same either
# way; the allocator has its own tests in fresh processes (test_performance_paths, test_cpu_corner).
os.environ.setdefault("FER_FLAX_MALLOC_DEFAULTS", "1")

import pytest  # noqa: E402 (after the environment above, which XLA reads at start-up)

from fer_flax import cpu  # noqa: E402
from tests.helpers import REAL_DATA_DIR  # noqa: E402

cpu.configure_process()


@pytest.fixture
def real_data_dir() -> Path:
    """`../shared/data/fer2013` beside the repository; tests that need it skip cleanly without it."""
    if not (REAL_DATA_DIR / "fer2013.csv.gz").exists():
        pytest.skip(f"real FER2013 not found at {REAL_DATA_DIR}")
    return REAL_DATA_DIR


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory) -> str:
    """Workdir `<root>/seed_0` (the layout fer_flax.research.multiseed uses) of a tiny run trained
    from `tests.helpers.trained_runs.tiny_config(0)`: evaluations and checkpoints at steps 2 and 4.

    Training dominates the time of the tests that use it (mostly XLA compilation), so it is made once
    per test process, by whichever test asks first; tests that use it carry
    `pytest.mark.xdist_group("trained_run")`, so that one worker makes it. Tests treat it as
    read-only: anything they write goes to their own tmp_path (or to a copy of the run)."""
    from fer_flax.training import loop as train
    from tests.helpers.trained_runs import tiny_config

    workdir = str(tmp_path_factory.mktemp("trained_run") / "seed_0")
    train.train_and_evaluate(tiny_config(0), workdir)
    return workdir


def pytest_collection_modifyitems(config, items):
    # Modules with end-to-end runs (tests marked `slow`) first: handed out early, they finish before
    # the quick tests run out, and neither worker waits idle for the other's last long test. Modules
    # stay whole, so module-scoped fixtures are built once.
    slow_modules = {item.module.__name__ for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.module.__name__ not in slow_modules)
