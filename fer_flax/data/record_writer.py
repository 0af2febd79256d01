"""Writing a records folder (`fer_flax.data.records` describes the format): `RecordsFolder` writes one
atomically, into a temporary folder beside the destination renamed into place once every split is
complete, and `SplitWriter` takes each split in chunks, so a set never needs to be in memory whole. A
bad image or label fails with a `FERDataError` naming the source and the image's position in its split.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from fer_flax.base import atomic_files
from fer_flax.data import labels as labels_lib
from fer_flax.data.records import (
    FORMAT,
    KINDS,
    META,
    SHARD_SUFFIX,
    VERSION,
    WRITER_OPTIONS,
    _header_ints,
    _image_shape,
)
from fer_flax.data.spec import FERPLUS_VOTE_COLUMNS, DataSpec
from fer_flax.data.splits import FERDataError

DEFAULT_RECORDS_PER_SHARD = 10_000
PROGRESS_EVERY = 10_000


def num_shards(count: int, shards: int | None = None, records_per_shard: int | None = None) -> int:
    """The shard count of a split of `count` images: `shards`, or enough of `records_per_shard`
    (default DEFAULT_RECORDS_PER_SHARD) each; at least 1, at most one per image."""
    if shards is not None and records_per_shard is not None:
        raise ValueError("give shards or records_per_shard, not both")
    if shards is None:
        per = DEFAULT_RECORDS_PER_SHARD if records_per_shard is None else records_per_shard
        if per < 1:
            raise ValueError(f"records_per_shard must be >= 1, got {per}")
        shards = -(-count // per)
    if shards < 1:
        raise ValueError(f"shards must be >= 1, got {shards}")
    return max(1, min(shards, count))


class SplitWriter:
    """Writes one split's records, in order, in chunks (`write`), spread evenly over its shards."""

    def __init__(self, folder: RecordsFolder, split: str, total: int, shards: int):
        self.folder, self.split, self.total = folder, split, int(total)
        self.bounds = [i * self.total // shards for i in range(shards + 1)]
        self.files = [f"{split}-{i:05d}-of-{shards:05d}{SHARD_SUFFIX}" for i in range(shards)]
        self.position = 0
        self._shard = -1
        self._writer: Any = None
        self._rows: list[np.ndarray] = []

    def write(self, images: np.ndarray, labels: np.ndarray) -> None:
        """Appends a chunk: `images` uint8 [n, H, W(, C)] of the folder's spec and, per image, its
        label int32 [n] (vote data: its votes int32 [n, 10])."""
        images, rows = self._checked(np.asarray(images), np.asarray(labels))
        flat = images.reshape(len(images), -1)
        for i in range(len(images)):
            while self.position >= self.bounds[self._shard + 1]:
                self._next_shard()
            self._writer.write(rows[i].astype("<i4").tobytes() + flat[i].tobytes())
            self.position += 1
            if self.position % self.folder.every == 0 or self.position == self.total:
                self.folder.say(f"{self.split}: {self.position}/{self.total} records")
        self._rows.append(rows)

    def _checked(self, images: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        spec, kind, where = self.folder.spec, self.folder.kind, self.folder.source
        item = f"{self.split} image {self.position}"
        shape = _image_shape(spec)
        if spec.channels == 1 and images.ndim == 4 and images.shape[-1] == 1:
            images = images[..., 0]
        if images.dtype != np.uint8 or images.shape[1:] != shape:
            raise FERDataError(
                where,
                f"images are {images.dtype} {list(images.shape[1:])}, expected uint8 {list(shape)} (the "
                f"spec: {spec.describe()})",
                item=item,
            )
        width = _header_ints(kind)
        rows = rows.reshape(len(rows), width) if rows.ndim == 1 else rows
        if rows.shape != (len(images), width) or not np.issubdtype(rows.dtype, np.integer):
            raise FERDataError(where, f"{kind} {rows.shape} do not match {len(images)} images", item=item)
        top = spec.num_classes if kind == "labels" else np.iinfo(np.int32).max
        bad = np.flatnonzero(((rows < 0) | (rows >= top)).any(axis=1))
        if bad.size:
            raise FERDataError(
                where,
                f"{kind[:-1]} {rows[bad[0]].tolist()} is out of range 0..{top - 1}",
                item=f"{self.split} image {self.position + int(bad[0])}",
            )
        if self.position + len(images) > self.total:
            raise FERDataError(where, f"more than the {self.total} images announced", item=item)
        return images, rows.astype(np.int32)

    def _next_shard(self) -> None:
        from array_record.python.array_record_module import ArrayRecordWriter

        self._close_shard()
        self._shard += 1
        self._writer = ArrayRecordWriter(str(self.folder.tmp / self.files[self._shard]), WRITER_OPTIONS)

    def _close_shard(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def close(self) -> dict[str, Any]:
        """Finishes the split: its last shard and label file; returns its entry of `records.json`."""
        if self.position != self.total:
            raise FERDataError(self.folder.source, f"{self.split}: {self.position} of {self.total} images")
        while self._shard + 1 < len(self.files):  # shards of no records (only when total < shards)
            self._next_shard()
        self._close_shard()
        rows = np.concatenate(self._rows) if self._rows else np.zeros((0, _header_ints(self.folder.kind)))
        rows = rows.astype(np.int32)
        kind = self.folder.kind
        np.save(self.folder.tmp / f"{self.split}.{kind}.npy", rows[:, 0] if kind == "labels" else rows)
        hist_of = rows[:, 0] if kind == "labels" else labels_lib.majority_labels(rows)
        bins = self.folder.spec.num_classes if kind == "labels" else len(FERPLUS_VOTE_COLUMNS)
        return {
            "count": self.total,
            "histogram": np.bincount(hist_of, minlength=bins).tolist(),
            "shards": [
                {"file": f, "count": self.bounds[i + 1] - self.bounds[i]} for i, f in enumerate(self.files)
            ],
        }


class RecordsFolder:
    """A records folder being written: `with RecordsFolder(out, spec) as folder:` then, per split,
    `w = folder.split(name, count)`, `w.write(images, labels)` chunk by chunk. Everything goes to a
    temporary folder beside `out`, renamed to `out` when the block ends without an error (and removed
    when it raises), so `out` is either complete or absent. `out` must not exist yet."""

    def __init__(
        self,
        out: str | os.PathLike,
        spec: DataSpec,
        *,
        kind: str = "labels",
        source: str = "",
        shards: int | None = None,
        records_per_shard: int | None = None,
        say: Callable[[str], Any] = print,
        every: int = PROGRESS_EVERY,
    ):
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        num_shards(1, shards, records_per_shard)  # checks the two
        self.out, self.spec, self.kind, self.source = Path(out), spec, kind, source
        self.shards, self.records_per_shard, self.say, self.every = shards, records_per_shard, say, every
        self.splits: dict[str, dict[str, Any]] = {}
        self._open: SplitWriter | None = None
        self.tmp = Path()

    def __enter__(self) -> RecordsFolder:
        if self.out.exists():
            raise FileExistsError(f"{self.out} already exists: remove it or choose another output folder")
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = Path(tempfile.mkdtemp(dir=self.out.parent, prefix=f".{self.out.name}.", suffix=".tmp"))
        return self

    def split(self, name: str, count: int) -> SplitWriter:
        self._finish_split()
        if name in self.splits:
            raise ValueError(f"split {name!r} written twice")
        shards = num_shards(count, self.shards, self.records_per_shard)
        self._open = SplitWriter(self, name, count, shards)
        return self._open

    def _finish_split(self) -> None:
        if self._open is not None:
            self.splits[self._open.split] = self._open.close()
            self._open = None

    def meta(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "version": VERSION,
            "spec": self.spec.to_dict(),
            "kind": self.kind,
            "encoding": "raw",
            "source": self.source,
            "splits": self.splits,
        }

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is None:
                self._finish_split()
                atomic_files.write_json(str(self.tmp / META), self.meta())
                atomic_files.fsync_tree(self.tmp)
                os.rename(self.tmp, self.out)
                atomic_files.fsync_dir(self.out.parent)
        finally:
            if self._open is not None:
                self._open._close_shard()
            shutil.rmtree(self.tmp, ignore_errors=True)
