"""An on-disk cache of parsed FER2013 splits, so only the first run pays for parsing.

Layout: `<cache_dir>/<key>/<split>.npz` (uncompressed `images` uint8 [N,48,48] and `labels` int32
[N]) plus `source.json` describing what the entry was built from. The key is a digest of the
resolved source path, `fer2013.READER_VERSION` and the source's identity: size and mtime_ns for a
file (CSV or tar), and for a folder a digest of (relative path, size, mtime_ns) over every image the
reader would read. Touching or rewriting the source therefore selects a new entry; older entries for
the same source path are deleted once the new one is written.

Each file is written to a temporary name in the entry's folder and renamed into place, so a killed
run never leaves a partial file under a final name, and nothing at all is written unless parsing
succeeded. A split cached earlier is reused while only the missing splits are parsed.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Any

import numpy as np

from fer_flax.data import fer2013, image_folders
from fer_flax.data.splits import ArraySplit

_META = "source.json"


def source_identity(path: str | os.PathLike) -> dict[str, Any]:
    """What must stay unchanged for a cache entry of `path` to be valid."""
    src = Path(path).resolve()
    kind = fer2013.source_kind(src)  # raises FERDataError for a missing path
    if kind == "folder":
        digest = hashlib.sha256()
        files = image_folders.list_image_files(src)
        for rel in files:
            st = (src / rel).stat()
            digest.update(f"{rel}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        identity: dict[str, Any] = {"images": len(files), "digest": digest.hexdigest()}
    else:
        st = src.stat()
        identity = {"size": st.st_size, "mtime_ns": st.st_mtime_ns}
    return {
        "source": str(src),
        "kind": kind,
        "reader_version": fer2013.READER_VERSION,
        "identity": identity,
    }


def cache_key(identity: dict[str, Any]) -> str:
    blob = json.dumps(identity, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:24]


def load_fer2013_cached(
    path: str | os.PathLike, splits: Sequence[str], cache_dir: str | os.PathLike
) -> dict[str, ArraySplit]:
    """Like read_fer2013 but caches the parsed arrays (one file per split) under cache_dir, keyed so
    a changed source invalidates it. Only the requested splits are loaded or parsed."""
    splits = fer2013.check_splits(splits)
    identity = source_identity(path)
    entry = Path(cache_dir) / cache_key(identity)

    out: dict[str, ArraySplit] = {}
    for split in splits:
        cached = _load_split(entry / f"{split}.npz")
        if cached is not None:
            out[split] = cached
    missing = [s for s in splits if s not in out]
    if missing:
        # Looked up through the module so tests (and callers) can substitute the reader.
        parsed = fer2013.read_fer2013(path, missing)
        out.update(parsed)
        # A source modified while it was being parsed may have given a mix of old and new data:
        # return it, but do not store it under either identity.
        if source_identity(path) == identity:
            _store(entry, identity, parsed)
    return {s: out[s] for s in splits}


def _load_split(file: Path) -> ArraySplit | None:
    """The cached split, or None when it is absent or unreadable (then it is simply rebuilt)."""
    try:
        with np.load(file, allow_pickle=False) as z:
            images, labels = z["images"], z["labels"]
        if labels.dtype != np.int32:
            return None
        return ArraySplit(images=images, labels=labels)
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        return None


def _store(entry: Path, identity: dict[str, Any], parsed: dict[str, ArraySplit]) -> None:
    entry.mkdir(parents=True, exist_ok=True)
    # The description goes first so that even an entry whose writer was killed can be pruned.
    _atomic_write(entry / _META, lambda f: f.write(json.dumps(identity, indent=1).encode()))
    for split, data in parsed.items():
        _atomic_write(
            entry / f"{split}.npz",
            lambda f, d=data: np.savez(f, images=d.images, labels=d.labels),
        )
    _prune_stale(entry, identity["source"])


def _atomic_write(target: Path, write: Callable[[IO[bytes]], object]) -> None:
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


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
