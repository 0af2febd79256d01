"""ArrayRecord folders: a data set's splits as sharded ArrayRecord files, read lazily during training.

A records folder holds:

  records.json                             the format and version, the `DataSpec`, what each record
                                           holds ("labels", or FER+ "votes"), and per split its image
                                           count, label histogram and shard files with their counts
  <split>-00000-of-00004.array_record ...  one record per image, in the source's order
  <split>.labels.npy                       int32 [N]: every image's label (vote data:
                                           <split>.votes.npy, int32 [N, 10])

A record is the image's label as int32 little-endian (vote data: its 10 vote counts) followed by its
pixels as raw uint8 (height x width x channels, row-major): a batch decodes with one `np.frombuffer`,
exactly, with no image codec. The labels are kept beside the shards too (4 bytes an image), so that
sampling, class weights and the drop rule of FER+ need no pass over the records.

`fer_flax.data.record_writer` writes one atomically, in chunks, so a set never needs to be in memory
whole.
`load_splits` returns `ArraySplit`s whose `images` are a `RecordImages`: indexing it with an array of
positions reads and decodes just those records (Grain's `ArrayRecordDataSource`), so the training
stream, exact evaluation and per-process slices work unchanged while a process holds only its batches.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fer_flax.data import labels as labels_lib
from fer_flax.data.spec import FERPLUS_VOTE_COLUMNS, DataSpec
from fer_flax.data.splits import ArraySplit, FERDataError

META = "records.json"
FORMAT = "fer_flax-records"
VERSION = 1
SHARD_SUFFIX = ".array_record"
# One record per group: what Grain's random access needs to read a record without its neighbours.
WRITER_OPTIONS = "group_size:1"
KINDS: tuple[str, ...] = ("labels", "votes")


def is_records(path: str | os.PathLike) -> bool:
    """Whether `path` is a records folder (it holds `records.json`)."""
    return Path(os.path.expanduser(path)).joinpath(META).is_file()


def _header_ints(kind: str) -> int:
    return len(FERPLUS_VOTE_COLUMNS) if kind == "votes" else 1


def _image_shape(spec: DataSpec) -> tuple[int, ...]:
    """One image's array shape as the in-memory readers give it: [H, W] grayscale, [H, W, C] colour."""
    return spec.image_size if spec.channels == 1 else spec.image_shape


# ------------------------------------------------------------------------------------------ reading


def read_meta(path: str | os.PathLike) -> dict[str, Any]:
    """The checked `records.json` of the records folder `path`."""
    file = Path(os.path.expanduser(path)) / META
    try:
        meta = json.loads(file.read_text())
    except (OSError, ValueError) as e:
        raise FERDataError(file, f"cannot read the records description ({type(e).__name__}: {e})") from e
    header = {"format": FORMAT, "version": VERSION}
    if not isinstance(meta, dict) or any(meta.get(key) != value for key, value in header.items()):
        raise FERDataError(file, f"not a {FORMAT} version {VERSION} description")
    if (
        meta.get("kind") not in KINDS
        or meta.get("encoding") != "raw"
        or not isinstance(meta.get("splits"), dict)
    ):
        raise FERDataError(
            file,
            f"unknown record kind {meta.get('kind')!r} or encoding {meta.get('encoding')!r}, or no splits",
        )
    try:
        DataSpec.from_dict(meta["spec"])
    except (KeyError, TypeError, ValueError) as e:
        raise FERDataError(file, f"bad spec ({e})") from e
    return meta


def spec_of(path: str | os.PathLike) -> DataSpec:
    return DataSpec.from_dict(read_meta(path)["spec"])


def kind_of(path: str | os.PathLike) -> str:
    return read_meta(path)["kind"]


class RecordImages:
    """The images of one split in a records folder, read on indexing: `images[positions]` (an integer
    array, a slice or one int) reads and decodes just those records, uint8 [n, H, W(, C)]. Looks like
    the image array of an `ArraySplit` (`shape`, `ndim`, `dtype`, `len`) without holding it; turning it
    into one numpy array (`np.asarray`) is refused, since that would read the whole split."""

    dtype = np.dtype(np.uint8)

    def __init__(self, folder: Path, meta: dict[str, Any], split: str, index: np.ndarray | None = None):
        from grain.sources import ArrayRecordDataSource

        self.folder, self.split = folder, split
        entry = meta["splits"][split]
        self.files = [str(folder / s["file"]) for s in entry["shards"] if s["count"]]
        self.image_shape = _image_shape(DataSpec.from_dict(meta["spec"]))
        self.header = 4 * _header_ints(meta["kind"])
        self.record_size = self.header + int(np.prod(self.image_shape))
        self.count = int(entry["count"])
        self.index = index
        self._bounds = np.cumsum([0] + [s["count"] for s in entry["shards"] if s["count"]])
        self._source: Any = ArrayRecordDataSource(self.files) if self.files else []
        if len(self._source) != self.count:
            raise FERDataError(
                folder / META, f"{split}: shards hold {len(self._source)} records, not {self.count}"
            )
        digest = hashlib.sha256(json.dumps(entry, sort_keys=True).encode())
        for file in self.files:
            st = os.stat(file)
            digest.update(f"{os.path.basename(file)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        self._digest = digest.hexdigest()

    def __len__(self) -> int:
        return self.count if self.index is None else len(self.index)

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self), *self.image_shape)

    @property
    def ndim(self) -> int:
        return 1 + len(self.image_shape)

    def subset(self, positions: np.ndarray) -> RecordImages:
        """The images at `positions` (a lazy view: nothing is read)."""
        out = object.__new__(RecordImages)
        out.__dict__.update(self.__dict__)
        out.index = self._keys(np.asarray(positions, dtype=np.int64))
        return out

    def fingerprint(self) -> str:
        """A digest of what the images are: the split's description, its shards' sizes and times, and
        the positions of a subset."""
        if self.index is None:
            return self._digest
        return hashlib.sha256(self._digest.encode() + self.index.tobytes()).hexdigest()

    def __array__(self, *args, **kwargs):
        raise TypeError(
            f"the {self.split} images of {self.folder} are read lazily from ArrayRecord files; index "
            "them (images[positions]) rather than converting the whole split to one array"
        )

    def _keys(self, positions: np.ndarray) -> np.ndarray:
        n = len(self)
        if positions.size and (positions.min() < -n or positions.max() >= n):
            raise IndexError(f"positions out of range for {n} images")
        positions = np.where(positions < 0, positions + n, positions)
        return positions if self.index is None else self.index[positions]

    def __getitem__(self, key: Any) -> np.ndarray:
        if isinstance(key, (int, np.integer)):
            return self[np.asarray([key])][0]
        if isinstance(key, slice):
            positions = np.arange(len(self))[key]
        else:
            positions = np.asarray(key)
            if positions.dtype == bool or not np.issubdtype(positions.dtype, np.integer):
                raise IndexError("index RecordImages with integer positions (subset() takes a mask's)")
        keys = self._keys(positions.astype(np.int64).reshape(-1))
        records = self._source.__getitems__(keys.tolist()) if keys.size else []
        out = np.empty((len(keys), *self.image_shape), np.uint8)
        for i, record in enumerate(records):
            if len(record) != self.record_size:
                key = int(keys[i])
                where = self._file_of(key)
                raise FERDataError(
                    where, f"{len(record)} bytes, not {self.record_size}", item=f"record {key}"
                )
        if records:
            blob = np.frombuffer(b"".join(records), np.uint8).reshape(len(keys), self.record_size)
            out.reshape(len(keys), -1)[:] = blob[:, self.header :]
        return out.reshape(*positions.shape, *self.image_shape)

    def _file_of(self, key: int) -> str:
        return self.files[int(np.searchsorted(self._bounds, key, side="right")) - 1]


def load_splits(
    path: str | os.PathLike, splits: Sequence[str], label_mode: str = "majority"
) -> dict[str, ArraySplit]:
    """The requested splits of a records folder as `ArraySplit`s with lazily read images; vote data
    gets the FER+ drop rule and the targets of `label_mode` (`fer_flax.data.labels`)."""
    folder = Path(os.path.expanduser(path))
    meta = read_meta(folder)
    spec = DataSpec.from_dict(meta["spec"])
    out = {}
    for split in splits:
        if split not in meta["splits"]:
            raise FERDataError(
                folder / META, f"has no {split!r} split (it holds {', '.join(meta['splits']) or 'none'})"
            )
        images = RecordImages(folder, meta, split)
        file = folder / f"{split}.{meta['kind']}.npy"
        try:
            rows = np.load(file, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise FERDataError(file, f"cannot read it ({type(e).__name__}: {e})") from e
        if len(rows) != len(images) or rows.dtype != np.int32:
            raise FERDataError(file, f"{len(rows)} {rows.dtype} rows for {len(images)} records")
        if meta["kind"] == "labels":
            out[split] = ArraySplit(images=images, labels=rows, class_names=spec.class_names)
            continue
        keep = labels_lib.kept(rows)
        votes = rows[keep]
        out[split] = ArraySplit(
            images=images.subset(np.flatnonzero(keep)),
            labels=labels_lib.majority_labels(votes),
            class_names=spec.class_names,
            targets=labels_lib.targets(votes, label_mode),
        )
    return out


def is_lazy(split: ArraySplit) -> bool:
    """Whether the split's images are read from records on demand (not in memory)."""
    return isinstance(split.images, RecordImages)
