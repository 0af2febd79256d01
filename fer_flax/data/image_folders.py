"""The image-folder layouts of FER2013 and of any face set stored the same way (RAF-DB, CK+,
AffectNet and in-house sets):

* an **image folder** tree, `.../<split folder>/<class>/<image>`, where `<class>` is one of the data
  set's class names (FER2013's CLASS_NAMES unless `config.data.classes` says otherwise; any case) or,
  with `config.data.class_folders`, the folder name given for each class (RAF-DB's `1`..`7`). Images
  are `*.jpg`, `*.jpeg` or `*.png`. Hidden files and folders (a leading `.`, e.g. macOS `._x.jpg` or
  `.ipynb_checkpoints`) and other file types are ignored.
  Each image's split is:
    1. its file-name prefix when it has one: `Training_*` -> train, `PublicTest_*` -> val,
       `PrivateTest_*` -> test (the widespread Kaggle tree puts PublicTest images under `test/`,
       so the prefix must win over the folder);
    2. otherwise the split folder above the class folder: train/training -> train;
       val/valid/validation/dev/publictest -> val; test/testing/privatetest -> test (any case).
       When the class folders sit directly under `path`, the split folder is `path` itself.
  Images must decode with PIL and have the data set's size and channels (`fer_flax.data.decode`:
  48x48 grayscale for FER2013; `convert` resizes and converts instead). Within a split, images are
  ordered by relative path.
* a `.tar`, `.tar.gz`/`.tgz` (or `.tar.bz2`/`.tar.xz`) archive of such a tree, read member by
  member without extracting to disk.

Every problem raises `FERDataError` naming the source, the image or archive member, and what is wrong.
"""

from __future__ import annotations

import dataclasses
import os
import re
import tarfile
import zlib
from pathlib import Path

import numpy as np

from fer_flax.data.decode import decode_image
from fer_flax.data.spec import FER2013, DataSpec
from fer_flax.data.splits import (
    SPLIT_TO_USAGE,
    SPLITS,
    USAGE_TO_SPLIT,
    ArraySplit,
    FERDataError,
)

IMAGE_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png")
_PREFIX_SPLIT = re.compile(r"(training|publictest|privatetest)_", re.IGNORECASE)
_PREFIX_TO_SPLIT: dict[str, str] = {u.lower(): s for u, s in USAGE_TO_SPLIT.items()}
_FOLDER_TO_SPLIT: dict[str, str] = {
    "train": "train",
    "training": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "dev": "val",
    "publictest": "val",
    "test": "test",
    "testing": "test",
    "privatetest": "test",
}


@dataclasses.dataclass(frozen=True)
class FolderLayout:
    """What an image-folder set holds: its spec (class names in label order, image size, channels),
    the folder name of each class when it is not the class name (RAF-DB's `1`..`7`), and whether images
    of another size or colour are converted instead of rejected."""

    spec: DataSpec = FER2013
    class_folders: tuple[str, ...] | None = None
    convert: bool = False

    def __post_init__(self):
        folders = self.folder_names()
        if len(folders) != self.spec.num_classes or len({f.lower() for f in folders}) != len(folders):
            raise ValueError(
                f"class_folders {folders} must name {self.spec.num_classes} distinct folders (any case), "
                f"one per class of {self.spec.class_names}"
            )

    def folder_names(self) -> tuple[str, ...]:
        return tuple(self.class_folders) if self.class_folders else self.spec.class_names

    def identity(self) -> dict:
        """What the parsed arrays depend on besides the files (part of the cache key)."""
        return {**self.spec.to_dict(), "class_folders": self.folder_names(), "convert": self.convert}


def list_image_files(root: Path) -> list[str]:
    """Sorted '/'-separated paths, relative to `root`, of every image the folder reader reads."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        rel_dir = os.path.relpath(dirpath, root)
        for name in filenames:
            if _is_image_name(name):
                found.append(name if rel_dir == "." else f"{rel_dir}/{name}".replace(os.sep, "/"))
    return sorted(found)


# ------------------------------------------------------------------------------------------ images


def _is_image_name(name: str) -> bool:
    return not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS)


class _ImageCollector:
    """Classifies every image by path; decodes only those of requested splits."""

    def __init__(
        self,
        source: Path,
        splits: tuple[str, ...],
        root_name: str | None,
        what: str,
        layout: FolderLayout,
    ):
        self.source = source
        self.splits = splits
        self.layout = layout
        folders = layout.folder_names()
        self.class_index = {name.lower(): i for i, name in enumerate(folders)}
        self.valid_folders = ", ".join(folders)
        # The folder's own name: the split folder when the class folders sit directly in it.
        self.root_name = root_name
        self.what = what  # "image" or "member", for messages
        self.counts = dict.fromkeys(SPLITS, 0)
        self.items: dict[str, list[tuple[str, np.ndarray, int]]] = {s: [] for s in splits}

    def _error(self, rel: str, problem: str) -> FERDataError:
        return FERDataError(self.source, problem, item=f"{self.what} {rel}")

    def classify(self, rel: str) -> tuple[str, int]:
        parts = rel.split("/")
        if len(parts) < 2:
            raise self._error(rel, f"images must sit in a class folder ({self.valid_folders})")
        label = self.class_index.get(parts[-2].lower())
        if label is None:
            raise self._error(rel, f"unknown class folder {parts[-2]!r}; valid: {self.valid_folders}")
        prefix = _PREFIX_SPLIT.match(parts[-1])
        if prefix:
            return _PREFIX_TO_SPLIT[prefix.group(1).lower()], label
        folder = parts[-3] if len(parts) >= 3 else self.root_name
        split = _FOLDER_TO_SPLIT.get((folder or "").lower())
        if split is None:
            raise self._error(
                rel,
                f"cannot tell the split: the file name has no Training_/PublicTest_/PrivateTest_ "
                f"prefix and {folder!r} is not a split folder "
                f"({', '.join(sorted(_FOLDER_TO_SPLIT))})",
            )
        return split, label

    def wants(self, rel: str) -> tuple[str, int] | None:
        """Counts the image; returns (split, label) when it must be decoded."""
        split, label = self.classify(rel)
        self.counts[split] += 1
        return (split, label) if split in self.items else None

    def add(self, rel: str, split: str, label: int, data: bytes) -> None:
        self.items[split].append((rel, self._decode(rel, data), label))

    def _decode(self, rel: str, data: bytes) -> np.ndarray:
        spec = self.layout.spec
        return decode_image(
            data,
            size=spec.image_size,
            channels=spec.channels,
            convert=self.layout.convert,
            fail=lambda problem: self._error(rel, problem),
        )

    def result(self, empty_hint: str = "") -> dict[str, ArraySplit]:
        total = sum(self.counts.values())
        if total == 0:
            raise FERDataError(
                self.source,
                f"empty: no images ({', '.join('*' + e for e in IMAGE_EXTENSIONS)}) found" + empty_hint,
            )
        missing = [s for s in self.splits if self.counts[s] == 0]
        if missing:
            held = ", ".join(f"{s} ({n})" for s, n in self.counts.items() if n)
            raise FERDataError(
                self.source,
                f"no images for split(s) {', '.join(map(repr, missing))} "
                f"({', '.join(SPLIT_TO_USAGE[s] + '_ prefix' for s in missing)} or split folder); "
                f"the tree holds {held}",
            )
        out = {}
        for s in self.splits:
            items = sorted(self.items[s], key=lambda item: item[0])
            out[s] = ArraySplit(
                images=np.stack([img for _, img, _ in items]),
                labels=np.asarray([label for _, _, label in items], dtype=np.int32),
                class_names=self.layout.spec.class_names,
            )
        return out


def read_image_folder(
    root: Path, splits: tuple[str, ...], layout: FolderLayout | None = None
) -> dict[str, ArraySplit]:
    collector = _ImageCollector(root, splits, root.resolve().name, "image", layout or FolderLayout())
    for rel in list_image_files(root):
        target = collector.wants(rel)
        if target is None:
            continue
        try:
            data = (root / rel).read_bytes()
        except OSError as e:
            raise collector._error(rel, f"cannot read the file ({e})") from e
        collector.add(rel, *target, data)
    hint = ""
    if not any(collector.counts.values()):
        # A common slip: passing the folder that holds fer2013.csv.gz or the image tarball.
        others = sorted(
            p.name for p in root.iterdir() if p.is_file() and (".csv" in p.name or ".tar" in p.name)
        )
        if others:
            hint = f"; did you mean to pass one of the files in it: {', '.join(others[:3])}?"
    return collector.result(hint)


def _member_name(name: str) -> str | None:
    """The member's '/'-separated path without './' or '/' prefixes; None if not a visible image."""
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if not parts or any(p.startswith(".") for p in parts) or not _is_image_name(parts[-1]):
        return None
    return "/".join(parts)


def read_image_tar(
    path: Path, splits: tuple[str, ...], layout: FolderLayout | None = None
) -> dict[str, ArraySplit]:
    collector = _ImageCollector(path, splits, None, "member", layout or FolderLayout())
    last = "(start of archive)"
    try:
        # Stream mode ('r|*') reads the archive once, front to back, never seeking the gzip stream.
        with tarfile.open(path, mode="r|*") as tf:
            for member in tf:
                last = member.name
                rel = _member_name(member.name) if member.isfile() else None
                if rel is None:
                    continue
                target = collector.wants(rel)
                if target is None:
                    continue
                stream = tf.extractfile(member)
                collector.add(rel, *target, stream.read() if stream is not None else b"")
    except FERDataError:
        raise
    except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
        raise FERDataError(
            path,
            f"cannot read the archive ({type(e).__name__}: {e}); is it truncated or corrupt?",
            item=f"after member {last}",
        ) from e
    return collector.result()
