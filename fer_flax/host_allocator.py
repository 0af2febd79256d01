"""Host-memory reuse for XLA:CPU: glibc malloc settings that stop every step from page-faulting.

Why. XLA:CPU allocates each step's outputs and temporaries with `malloc` and frees them when the step
ends. glibc serves large blocks (from 128 KiB, a threshold that adapts up to 32 MiB) with a fresh
`mmap` and unmaps them on `free`, and XLA's worker threads get arenas of their own whose heaps are
capped at 64 MiB, past which blocks are mmapped too. So every step touches hundreds of megabytes of
new pages, each costing a page fault: 57,000 faults per step for the small CNN at batch 128 on the
2-core machine (about a third of its step time; benchmarks/RESULTS.md, "Page faults").
`reuse_freed_memory()` serves every block from the main arena's heap (`M_ARENA_MAX=1`,
`M_MMAP_MAX=0`) and never gives that heap back to the system (`M_TRIM_THRESHOLD=-1`), so the next
step reuses the same, already-mapped pages: 0-1 faults per step once the heap has grown (a few steps).

The cost: the process keeps its peak heap resident (the small CNN at batch 128: 1.3 GB against 0.9;
ResNet-18 at batch 128: 6.7 GB) and all threads share one arena (a few large blocks per step; no
measurable contention).

Arena settings only reach threads that have not allocated yet, so this must run before JAX creates
its CPU client (before anything touches a device): `python -m fer_flax.main` and the benchmarks call
it first; a script or notebook that wants the same calls `reuse_freed_memory()` before its first JAX
computation. It does nothing off Linux/glibc, when an accelerator plugin is installed (its steps'
buffers live on the device), or with `FER_FLAX_MALLOC_DEFAULTS=1` in the environment.
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
# value, 2**31 - 1, is not enough: ResNet-18's steps at batch 128 leave more than 2 GiB free at the top
# of the heap, which was then trimmed and faulted back in at every step, 560,000 faults each.)
_NEVER_TRIM = -1
SETTINGS: tuple[tuple[str, int, int], ...] = (
    ("M_ARENA_MAX", M_ARENA_MAX, 1),
    ("M_MMAP_MAX", M_MMAP_MAX, 0),
    ("M_TRIM_THRESHOLD", M_TRIM_THRESHOLD, _NEVER_TRIM),
)
KEEP_DEFAULTS_ENV = "FER_FLAX_MALLOC_DEFAULTS"
_ACCELERATOR_PLUGINS = ("jax_cuda12_plugin", "jax_cuda13_plugin", "jax_rocm60_plugin", "libtpu")

_applied: bool | None = None


def _accelerator_expected() -> bool:
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
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc" or _accelerator_expected():
        return False
    mallopt = ctypes.CDLL(None).mallopt
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    # mallopt returns 1 on success; a refused setting leaves glibc's default for that one.
    accepted = [mallopt(param, value) == 1 for _, param, value in SETTINGS]
    _applied = all(accepted)
    return _applied
