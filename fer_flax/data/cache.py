"""An on-disk cache of parsed splits (FER2013, image-folder sets, FER+), so only the first run pays for
parsing.

Layout: `<cache_dir>/<key>/<split>.npz` (the reader's uncompressed arrays: `images` uint8 and `labels`
int32 for FER2013 and image folders, `images` and `votes` for FER+) plus `source.json` describing what
the entry was built from. The key is a digest of the resolved source path, the reader (its name,
version and options, such as an image-folder set's classes and image size) and the source's identity:
size and mtime_ns for a file (CSV or tar), and for a folder a digest of (relative path, size, mtime_ns)
over every file the reader would read. Touching or rewriting the source therefore selects a new entry;
older entries for the same source path are deleted once the new one is written.

Each file is written to a temporary name in the entry's folder and renamed into place, so a killed
run never leaves a partial file under a final name, and nothing at all is written unless parsing
succeeded. A split cached earlier is reused while only the missing splits are parsed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fer_flax.base import atomic_files
from fer_flax.data import fer2013, ferplus, image_folders
from fer_flax.data.splits import CLASS_NAMES, ArraySplit

_META = "source.json"


@dataclasses.dataclass(frozen=True)
class Reader:
    """One way of parsing a source, as the cache needs to know it. `name` None is FER2013's reader
    (CSV or FER2013 image folders), whose entries predate reader names and keep their keys."""

    name: str | None
    version: int
    options: dict[str, Any]  # what the arrays depend on besides the files
    read: Callable[[Path, tuple[str, ...]], dict[str, Any]]
    to_arrays: Callable[[Any], dict[str, np.ndarray]]
    from_arrays: Callable[[dict[str, np.ndarray]], Any]
    list_files: Callable[[Path], list[str]] = image_folders.list_image_files


def _split_arrays(split: ArraySplit) -> dict[str, np.ndarray]:
    return {"images": split.images, "labels": split.labels}


def _split_from(arrays: dict[str, np.ndarray], class_names: tuple[str, ...] = CLASS_NAMES) -> ArraySplit:
    if arrays["labels"].dtype != np.int32:
        raise ValueError("labels must be int32")
    return ArraySplit(images=arrays["images"], labels=arrays["labels"], class_names=class_names)


def fer2013_reader() -> Reader:
    # The reader is looked up through its module at call time, so tests (and callers) can substitute it.
    return Reader(
        None, fer2013.READER_VERSION, {}, lambda p, s: fer2013.read_fer2013(p, s), _split_arrays, _split_from
    )


def folder_reader(layout: image_folders.FolderLayout) -> Reader:
    """An image-folder set with its own classes, size or channels (`FolderLayout`)."""
    return Reader(
        "folder",
        fer2013.READER_VERSION,
        layout.identity(),
        lambda p, s: fer2013.read_fer2013(p, s, layout=layout),
        _split_arrays,
        lambda arrays: _split_from(arrays, layout.spec.class_names),
    )


def ferplus_reader() -> Reader:
    """FER+ folders or archives: images and the raw votes (`ferplus.VoteSplit`)."""
    return Reader(
        "ferplus",
        ferplus.READER_VERSION,
        {},
        lambda p, s: ferplus.read_ferplus(p, s),
        lambda split: {"images": split.images, "votes": split.votes},
        lambda arrays: ferplus.VoteSplit(images=arrays["images"], votes=arrays["votes"]),
        ferplus.list_files,
    )


def source_identity(path: str | os.PathLike, reader: Reader | None = None) -> dict[str, Any]:
    """What must stay unchanged for a cache entry of `path` (parsed by `reader`) to be valid."""
    reader = reader or fer2013_reader()
    src = Path(path).resolve()
    kind = fer2013.source_kind(src)  # raises FERDataError for a missing path
    if kind == "folder":
        digest = hashlib.sha256()
        files = reader.list_files(src)
        for rel in files:
            st = (src / rel).stat()
            digest.update(f"{rel}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        identity: dict[str, Any] = {"images": len(files), "digest": digest.hexdigest()}
    else:
        st = src.stat()
        identity = {"size": st.st_size, "mtime_ns": st.st_mtime_ns}
    out = {"source": str(src), "kind": kind, "reader_version": reader.version, "identity": identity}
    if reader.name is not None:
        out.update(reader=reader.name, options=reader.options)
    return out


def cache_key(identity: dict[str, Any]) -> str:
    blob = json.dumps(identity, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:24]


def load_fer2013_cached(
    path: str | os.PathLike, splits: Sequence[str], cache_dir: str | os.PathLike
) -> dict[str, ArraySplit]:
    """Like read_fer2013 but caches the parsed arrays (one file per split) under cache_dir, keyed so
    a changed source invalidates it. Only the requested splits are loaded or parsed."""
    return load_cached(path, splits, cache_dir, fer2013_reader())


def load_cached(
    path: str | os.PathLike, splits: Sequence[str], cache_dir: str | os.PathLike, reader: Reader
) -> dict[str, Any]:
    """`reader.read(path, splits)` through the cache: each split is loaded from its cached arrays when
    an entry for this source and reader exists, and only the missing splits are parsed (then stored)."""
    splits = fer2013.check_splits(splits)
    identity = source_identity(path, reader)
    entry = Path(cache_dir) / cache_key(identity)

    out: dict[str, Any] = {}
    for split in splits:
        cached = _load_split(entry / f"{split}.npz", reader)
        if cached is not None:
            out[split] = cached
    missing = [s for s in splits if s not in out]
    if missing:
        parsed = reader.read(Path(path), tuple(missing))
        out.update(parsed)
        # A source modified while it was being parsed may have given a mix of old and new data:
        # return it, but do not store it under either identity.
        if source_identity(path, reader) == identity:
            _store(entry, identity, {s: reader.to_arrays(d) for s, d in parsed.items()})
    return {s: out[s] for s in splits}


def _load_split(file: Path, reader: Reader) -> Any:
    """The cached split, or None when it is absent or unreadable (then it is simply rebuilt)."""
    try:
        with np.load(file, allow_pickle=False) as z:
            arrays = {name: z[name] for name in z.files}
        return reader.from_arrays(arrays)
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        return None


def _store(entry: Path, identity: dict[str, Any], parsed: dict[str, dict[str, np.ndarray]]) -> None:
    entry.mkdir(parents=True, exist_ok=True)
    # The description goes first so that even an entry whose writer was killed can be pruned.
    atomic_files.write_with(entry / _META, lambda f: f.write(json.dumps(identity, indent=1).encode()))
    for split, arrays in parsed.items():
        atomic_files.write_with(entry / f"{split}.npz", lambda f, a=arrays: np.savez(f, **a))
    _prune_stale(entry, identity["source"])


def _prune_stale(entry: Path, source: str) -> None:
    """Deletes entries built from an earlier version of the same source path (~80 MB each)."""
    for other in entry.parent.iterdir():
        if other == entry or not other.is_dir():
            continue
        try:
            meta = json.loads((other / _META).read_text())
        except (OSError, ValueError):
            continue  # not ours, or still being written by another process
        if meta.get("source") == source:
            shutil.rmtree(other, ignore_errors=True)
