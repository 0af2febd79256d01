"""Host-memory reuse for XLA:CPU: glibc malloc settings that stop every step from page-faulting.

Why. XLA:CPU allocates each step's outputs and temporaries with `malloc` and frees them when the step
ends. glibc serves large blocks (from 128 KiB, a threshold that adapts up to 32 MiB) with a fresh
`mmap` and unmaps them on `free`, and XLA's worker threads get arenas of their own whose heaps are
capped at 64 MiB, past which blocks are mmapped too. So every step touches hundreds of megabytes of
new pages, each costing a page fault, and those faults are a large share of a small network's
step (benchmarks/RESULTS.md, "Page faults", has the measured counts and their share of a step).
`reuse_freed_memory()` serves every block from the main arena's heap (`M_ARENA_MAX=1`,
`M_MMAP_MAX=0`) and never gives that heap back to the system (`M_TRIM_THRESHOLD=-1`), so the next
step reuses the same, already-mapped pages once the heap has grown (a few steps).

The cost: the process keeps its peak heap resident and all threads share one arena (a few large blocks
per step).

Arena settings only reach threads that have not allocated yet, so this must run before JAX creates
its CPU client (before anything touches a device). `fer_flax.cpu.configure_process()` (called by
`fer_flax.runtime.start()`) applies it unless the CPU corner is switched off; benchmarks that compare
with glibc's defaults call `reuse_freed_memory()` themselves. It does nothing off Linux/glibc or when
an accelerator is expected (its steps' buffers live on the device).

`FER_FLAX_MALLOC_DEFAULTS=1` keeps glibc's defaults while the rest of the CPU corner stays on: the
benchmarks that compare the two allocators (`--malloc defaults`) set it. To switch the whole corner
off use `FER_FLAX_CPU_TUNING=0` (fer_flax.cpu).
"""

from __future__ import annotations

import ctypes
import importlib.util
import os
import platform

# mallopt parameters from glibc's <malloc.h>.
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
M_ARENA_MAX = -8

# mallopt(3): "Setting M_TRIM_THRESHOLD to -1 disables trimming completely." (The largest positive
# value, 2**31 - 1, is not enough: a large network's steps can leave more than 2 GiB free at the top of
# the heap, which is then trimmed and faulted back in at every step.)
_NEVER_TRIM = -1
SETTINGS: tuple[tuple[str, int, int], ...] = (
    ("M_ARENA_MAX", M_ARENA_MAX, 1),
    ("M_MMAP_MAX", M_MMAP_MAX, 0),
    ("M_TRIM_THRESHOLD", M_TRIM_THRESHOLD, _NEVER_TRIM),
)
KEEP_DEFAULTS_ENV = "FER_FLAX_MALLOC_DEFAULTS"
_ACCELERATOR_PLUGINS = ("jax_cuda12_plugin", "jax_cuda13_plugin", "jax_rocm60_plugin", "libtpu")

_applied: bool | None = None


def accelerator_expected() -> bool:
    """Whether this process will run on an accelerator: `JAX_PLATFORMS` names one first, or (unset)
    a GPU/TPU plugin is installed. Decided without starting JAX."""
    platforms = os.environ.get("JAX_PLATFORMS", "")
    if platforms:
        return platforms.split(",")[0].strip() not in ("cpu", "")
    return any(importlib.util.find_spec(name) is not None for name in _ACCELERATOR_PLUGINS)


def reuse_freed_memory() -> bool:
    """Apply `SETTINGS` to glibc's malloc once per process; returns whether they are in effect."""
    global _applied
    if _applied is not None:
        return _applied
    _applied = False
    if os.environ.get(KEEP_DEFAULTS_ENV, "") not in ("", "0"):
        return False
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc" or accelerator_expected():
        return False
    mallopt = ctypes.CDLL(None).mallopt
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    # mallopt returns 1 on success; a refused setting leaves glibc's default for that one.
    accepted = [mallopt(param, value) == 1 for _, param, value in SETTINGS]
    _applied = all(accepted)
    return _applied


def in_effect() -> bool:
    """Whether `reuse_freed_memory()` has run in this process and its settings were accepted."""
    return bool(_applied)
