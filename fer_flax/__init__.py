"""fer_flax: facial-expression recognition on FER2013 with JAX, Flax (linen), Optax, Orbax and Grain.

The Python API is `fer_flax.Recognizer` (`fer_flax.inference.recognizer`): faces and their
expressions in images. It is imported on first use, so `import fer_flax` starts no JAX.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["Face", "Recognizer", "__version__"]

if TYPE_CHECKING:
    from fer_flax.inference.recognizer import Face, Recognizer

_LAZY = {"Recognizer": "fer_flax.inference.recognizer", "Face": "fer_flax.inference.recognizer"}


def __getattr__(name: str) -> Any:
    """`Recognizer` and `Face`, imported when first asked for (they import JAX)."""
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'fer_flax' has no attribute {name!r}")
