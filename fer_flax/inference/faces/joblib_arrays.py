"""Numeric arrays out of a joblib file (optionally LZ4-compressed) without running pickled code.

The MTCNN weights (`fer_flax.inference.faces.mtcnn`) ship inside the `mtcnn` wheel as joblib dumps:
a pickle stream that names `joblib.numpy_pickle.NumpyArrayWrapper` once per array, each followed by
the array's raw bytes. `pickle.load` (and `joblib.load`, which is built on it) would import and call
whatever the stream names, so a tampered file could run code. This reader is a pickle machine whose
`find_class` knows three names only: the wrapper (replaced by an inert record of shape, order and
dtype), `numpy.ndarray` (a marker, never instantiated) and `numpy.dtype` (restricted to numeric
types); any other name, or an object array, stops the read with `UnsafeFileError`. Neither joblib nor
NumPy's pickle support runs.
"""

from __future__ import annotations

import io
import pickle
from typing import Any

import numpy as np

LZ4_MAGIC = b"\x04\x22\x4d\x18"


class UnsafeFileError(pickle.UnpicklingError):
    """The file names something other than numeric arrays, or is not a joblib array dump."""


class _ArrayRecord:
    """Stands in for joblib's NumpyArrayWrapper: receives its state (shape, order, dtype, ...)."""

    def __setstate__(self, state: dict) -> None:
        if not isinstance(state, dict):
            raise UnsafeFileError("unexpected array header")
        self.__dict__.update(state)


class _NdarrayMarker:
    """The `subclass` entry of joblib's header: only plain ndarrays are accepted."""


def _numeric_dtype(name: Any, align: bool = False, copy: bool = True) -> np.dtype:
    if not isinstance(name, str):
        raise UnsafeFileError(f"unexpected dtype {name!r}")
    dtype = np.dtype(name)
    if dtype.kind not in "fiub":
        raise UnsafeFileError(f"dtype {name!r} is not numeric")
    return dtype


_ALLOWED = {
    ("joblib.numpy_pickle", "NumpyArrayWrapper"): _ArrayRecord,
    ("numpy", "ndarray"): _NdarrayMarker,
    ("numpy", "dtype"): _numeric_dtype,
}


class _ArrayUnpickler(pickle._Unpickler):  # the pure-Python machine: its BUILD step can be extended
    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise UnsafeFileError(f"refusing to load {module}.{name}") from None

    def _build_array(self) -> None:
        """BUILD, then (as joblib does) read the array bytes that follow a wrapper's header."""
        pickle._Unpickler.load_build(self)
        if not isinstance(self.stack[-1], _ArrayRecord):
            return
        record = self.stack.pop()
        shape, order, dtype = record.__dict__.get("shape"), record.__dict__.get("order"), record.dtype
        if record.__dict__.get("subclass") is not _NdarrayMarker or order not in ("C", "F"):
            raise UnsafeFileError("only plain numeric arrays are accepted")
        if not isinstance(dtype, np.dtype) or not all(isinstance(n, int) and n >= 0 for n in shape):
            raise UnsafeFileError("malformed array header")
        if record.__dict__.get("numpy_array_alignment_bytes") is not None:
            padding = self._file_read(1)
            self._file_read(int.from_bytes(padding, "little"))
        count = int(np.prod(shape, dtype=np.int64))
        data = self._file_read(count * dtype.itemsize)
        if len(data) != count * dtype.itemsize:
            raise UnsafeFileError("the file ends inside an array")
        array = np.frombuffer(data, dtype, count).reshape(shape, order=order)
        self.stack.append(array.astype(dtype.newbyteorder("="), copy=True))

    dispatch = dict(pickle._Unpickler.dispatch)
    dispatch[pickle.BUILD[0]] = _build_array


def read_arrays(data: bytes) -> Any:
    """The object a joblib dump of numeric arrays holds (a list of arrays, say), from the file's bytes;
    LZ4-framed files (joblib's `.lz4`) are decompressed first, which needs the `lz4` package."""
    if data.startswith(LZ4_MAGIC):
        import lz4.frame

        data = lz4.frame.decompress(data)
    return _ArrayUnpickler(io.BytesIO(data)).load()
