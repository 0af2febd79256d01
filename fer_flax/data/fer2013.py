"""Readers for the two layouts FER2013 ships in: the challenge CSV and per-class image folders.

`read_fer2013(path, splits)` takes any of:

* **CSV** (`.csv`, or gzip-compressed, detected by its magic bytes whatever the name): the header
  `emotion,pixels,Usage` (surrounding whitespace, a CRLF and a UTF-8 BOM are tolerated), then one
  row per face: label 0..6, 2304 space-separated ints 0..255 (48x48 row-major), and a Usage of
  Training, PublicTest or PrivateTest. The Usage column is required: without it there is no
  protocol-safe way to tell the held-out rows apart. Blank lines are skipped. Every row's column
  count and Usage are checked, but the label and pixels are parsed only for the requested splits,
  so PrivateTest rows are never parsed unless `test` is asked for.
* **Image folder** tree, `.../<split folder>/<class>/<image>`, where `<class>` is one of
  CLASS_NAMES (any case) and images are `*.jpg`, `*.jpeg` or `*.png`. Hidden files and folders
  (a leading `.`, e.g. macOS `._x.jpg` or `.ipynb_checkpoints`) and other file types are ignored.
  Each image's split is:
    1. its file-name prefix when it has one: `Training_*` -> train, `PublicTest_*` -> val,
       `PrivateTest_*` -> test (the widespread Kaggle tree puts PublicTest images under `test/`,
       so the prefix must win over the folder);
    2. otherwise the split folder above the class folder: train/training -> train;
       val/valid/validation/dev/publictest -> val; test/testing/privatetest -> test (any case).
       When the class folders sit directly under `path`, the split folder is `path` itself.
  Images must decode with PIL and be 48x48; L is used as is, and RGB/RGBA/LA/P/1 images are
  accepted when their colour channels are equal (alpha is ignored). Within a split, images are
  ordered by relative path.
* A `.tar`, `.tar.gz`/`.tgz` (or `.tar.bz2`/`.tar.xz`) archive of such a tree, read member by
  member without extracting to disk.

Every problem in the data raises `FERDataError` naming the file, the CSV line or the image, and
what is wrong, including unreadable or truncated gzip/tar streams.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import os
import re
import tarfile
import warnings
import zlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image

from fer_flax.config_schema import check_choice
from fer_flax.data.splits import (
    CLASS_NAMES,
    IMAGE_SIZE,
    NUM_CLASSES,
    NUM_PIXELS,
    SPLIT_TO_USAGE,
    SPLITS,
    USAGE_TO_SPLIT,
    ArraySplit,
    FERDataError,
)

# Part of the cache key (fer_flax.data.cache): bump it whenever parsing could give different arrays
# for the same source, so stale caches are never reused.
READER_VERSION = 1

IMAGE_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png")
TAR_SUFFIXES: tuple[str, ...] = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")
CSV_HEADER: tuple[str, ...] = ("emotion", "pixels", "Usage")

_GZIP_MAGIC = b"\x1f\x8b"
_ZIP_MAGIC = b"PK\x03\x04"
_BOM = b"\xef\xbb\xbf"
_INT_TOKEN = re.compile(rb"[+-]?[0-9]+")
_USAGE_BYTES: dict[bytes, str] = {usage.encode(): usage for usage in USAGE_TO_SPLIT}
_VALID_USAGES = ", ".join(USAGE_TO_SPLIT)

_CLASS_INDEX: dict[str, int] = {name: i for i, name in enumerate(CLASS_NAMES)}
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


def check_splits(splits: Sequence[str]) -> tuple[str, ...]:
    """Validates requested split names (ConfigError for an unknown one, ValueError for none at all);
    returns them de-duplicated in the order given. The one split-name check of every data entry point."""
    if isinstance(splits, str):  # read_fer2013(p, "train") would otherwise mean ('t', 'r', ...)
        splits = (splits,)
    for split in splits:
        check_choice("split", split, SPLITS)
    if not splits:
        raise ValueError(f"no splits requested; valid: {', '.join(SPLITS)}")
    return tuple(dict.fromkeys(splits))


def read_fer2013(path: str | os.PathLike, splits: Sequence[str]) -> dict[str, ArraySplit]:
    """Reads the requested splits ('train'|'val'|'test') from a FER2013 CSV (.csv or .csv.gz),
    an image-folder tree, or a .tar/.tar.gz/.tgz archive of such a tree. Validates strictly.

    Returns {split: ArraySplit} in the order of `splits`. Raises FERDataError for any problem with
    the data, including a requested split that the source does not contain.
    """
    splits = check_splits(splits)
    path = Path(path)
    kind = source_kind(path)
    if kind == "folder":
        return _read_image_folder(path, splits)
    if kind == "tar":
        return _read_image_tar(path, splits)
    return _read_csv(path, splits)


def source_kind(path: Path) -> str:
    """'csv', 'tar' or 'folder', from the file's content (magic bytes) and, for tars, its name."""
    if path.is_dir():
        return "folder"
    if not path.exists():
        raise FERDataError(path, "no such file or directory")
    if not path.is_file():
        raise FERDataError(path, "not a regular file or a directory")
    head = _peek(path, 512)
    if head.startswith(_ZIP_MAGIC):
        raise FERDataError(path, "zip archives are not supported; unzip it or repack it as .tar.gz")
    if head[257:262] == b"ustar" or path.name.lower().endswith(TAR_SUFFIXES):
        return "tar"
    return "csv"


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


# --------------------------------------------------------------------------------------------- CSV


def _peek(path: Path, n: int) -> bytes:
    """The first `n` bytes of the file, decompressed when it is gzip."""
    try:
        with open(path, "rb") as f:
            head = f.read(n)
        if head.startswith(_GZIP_MAGIC):
            with gzip.open(path, "rb") as g:
                head = g.read(n)
    except (OSError, EOFError, zlib.error) as e:
        raise FERDataError(path, f"cannot read the file ({type(e).__name__}: {e})") from e
    return head


@contextlib.contextmanager
def _open_bytes(path: Path) -> Iterator[BinaryIO]:
    with open(path, "rb") as raw:
        compressed = raw.read(2) == _GZIP_MAGIC
        raw.seek(0)
        if not compressed:
            yield raw
            return
        with gzip.GzipFile(fileobj=raw, mode="rb") as g:
            # Line iteration over a big buffered reader is ~20% faster than over GzipFile itself.
            yield io.BufferedReader(g, buffer_size=1 << 20)


def _quote(token: bytes, limit: int = 20) -> str:
    text = token.decode("utf-8", errors="replace")
    return repr(text if len(text) <= limit else text[:limit] + "...")


def _read_csv(path: Path, splits: tuple[str, ...]) -> dict[str, ArraySplit]:
    wanted = {SPLIT_TO_USAGE[s]: s for s in splits}
    counts = dict.fromkeys(USAGE_TO_SPLIT, 0)
    images: dict[str, list[np.ndarray]] = {s: [] for s in splits}
    labels: dict[str, list[int]] = {s: [] for s in splits}
    line_no = 0
    try:
        # Older numpy only warns (and returns a prefix) where newer numpy raises on a bad token.
        with _open_bytes(path) as f, warnings.catch_warnings():
            warnings.simplefilter("error", DeprecationWarning)
            first = f.readline()
            line_no = 1
            if not first.strip() and not f.read(1):
                raise FERDataError(path, "empty file (expected the header 'emotion,pixels,Usage')", line=1)
            _check_header(path, first)
            for line_no, raw in enumerate(f, start=2):
                line = raw.rstrip(b"\r\n")
                if not line.strip():
                    continue
                fields = line.split(b",")
                if len(fields) != 3:
                    raise FERDataError(
                        path,
                        f"expected 3 columns (emotion,pixels,Usage), found {len(fields)}",
                        line=line_no,
                    )
                usage = _USAGE_BYTES.get(fields[2].strip())
                if usage is None:
                    raise FERDataError(
                        path,
                        f"unknown Usage {_quote(fields[2].strip())}; valid: {_VALID_USAGES}",
                        line=line_no,
                    )
                counts[usage] += 1
                split = wanted.get(usage)
                if split is None:
                    continue  # protocol guard: rows of unrequested splits are never parsed
                labels[split].append(_parse_label(path, fields[0], line_no))
                images[split].append(_parse_pixels(path, fields[1], line_no))
    except FERDataError:
        raise
    except (OSError, EOFError, zlib.error) as e:
        # Decompression reads ahead in big blocks, so a corrupt or truncated gzip is only known to
        # break somewhere at or after the line following the last one handed out.
        raise FERDataError(
            path,
            f"cannot read the file at or after line {line_no + 1} ({type(e).__name__}: {e}); "
            "is it truncated or corrupt?",
            line=line_no + 1,
        ) from e

    missing = [s for s in splits if counts[SPLIT_TO_USAGE[s]] == 0]
    if missing:
        held = ", ".join(f"{u} ({n})" for u, n in counts.items() if n) or "no data rows"
        wants = "; ".join(f"no rows with Usage={SPLIT_TO_USAGE[s]} (split {s!r})" for s in missing)
        raise FERDataError(path, f"{wants}; the file holds {held}")
    return {
        s: ArraySplit(
            images=np.stack(images[s]).reshape(-1, IMAGE_SIZE, IMAGE_SIZE),
            labels=np.asarray(labels[s], dtype=np.int32),
        )
        for s in splits
    }


def _check_header(path: Path, first: bytes) -> None:
    raw = first.removeprefix(_BOM)
    try:
        text = raw.decode("utf-8").strip()
    except UnicodeDecodeError as e:
        raise FERDataError(
            path, "the header is not UTF-8 text: not a FER2013 CSV (or a corrupt file)", line=1
        ) from e
    names = tuple(name.strip() for name in text.split(","))
    if names == CSV_HEADER:
        return
    got = text if len(text) <= 60 else text[:60] + "..."
    problem = f"expected the header {','.join(CSV_HEADER)!r}, got {got!r}"
    if names == CSV_HEADER[:2]:
        problem += (
            "; the Usage column is required: it says which rows are Training (train), "
            "PublicTest (val) and PrivateTest (test)"
        )
    raise FERDataError(path, problem, line=1)


def _small_int(token: bytes) -> int | None:
    """The value of an integer token, or None when it has more than 9 significant digits (far out
    of any range here; `int()` would even refuse one of over 4300 digits)."""
    sign = -1 if token.startswith(b"-") else 1
    digits = token.lstrip(b"+-").lstrip(b"0") or b"0"
    return None if len(digits) > 9 else sign * int(digits)


def _parse_label(path: Path, field: bytes, line_no: int) -> int:
    token = field.strip()
    if not _INT_TOKEN.fullmatch(token):
        raise FERDataError(path, f"label {_quote(token)} is not an integer", line=line_no)
    label = _small_int(token)
    if label is None or not 0 <= label < NUM_CLASSES:
        shown = _quote(token) if label is None else label
        raise FERDataError(path, f"label {shown} is outside 0..{NUM_CLASSES - 1}", line=line_no)
    return label


def _parse_pixels(path: Path, field: bytes, line_no: int) -> np.ndarray:
    """Fast bulk conversion; anything unusual is re-parsed token by token to report it exactly."""
    try:
        values = np.fromstring(field, dtype=np.int64, sep=" ")
    except (ValueError, DeprecationWarning):
        return _parse_pixels_slow(path, field, line_no)
    # int64 saturates on huge tokens instead of wrapping, so `>> 8` flags any value outside 0..255.
    if values.size != NUM_PIXELS or (values >> 8).any():
        return _parse_pixels_slow(path, field, line_no)
    return values.astype(np.uint8)


def _parse_pixels_slow(path: Path, field: bytes, line_no: int) -> np.ndarray:
    tokens = field.split()
    if len(tokens) != NUM_PIXELS:
        raise FERDataError(
            path,
            f"expected {NUM_PIXELS} pixel values (48x48), found {len(tokens)}",
            line=line_no,
        )
    out = np.empty(NUM_PIXELS, np.uint8)
    for i, token in enumerate(tokens):
        if not _INT_TOKEN.fullmatch(token):
            raise FERDataError(path, f"pixel {i + 1} is not an integer: {_quote(token)}", line=line_no)
        value = _small_int(token)
        if value is None or not 0 <= value <= 255:
            shown = _quote(token) if value is None else value
            raise FERDataError(path, f"pixel {i + 1} = {shown} is outside 0..255", line=line_no)
        out[i] = value
    return out


# ------------------------------------------------------------------------------------------ images


def _is_image_name(name: str) -> bool:
    return not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS)


class _ImageCollector:
    """Classifies every image by path; decodes only those of requested splits."""

    def __init__(self, source: Path, splits: tuple[str, ...], root_name: str | None, what: str):
        self.source = source
        self.splits = splits
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
            raise self._error(rel, f"images must sit in a class folder ({', '.join(CLASS_NAMES)})")
        label = _CLASS_INDEX.get(parts[-2].lower())
        if label is None:
            raise self._error(rel, f"unknown class folder {parts[-2]!r}; valid: {', '.join(CLASS_NAMES)}")
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
        try:
            with Image.open(io.BytesIO(data)) as im:
                # The size is known from the header: checking it before decoding means a corrupt
                # header claiming a huge image is rejected without decoding (or allocating) it.
                size = im.size
                if size != (IMAGE_SIZE, IMAGE_SIZE):
                    raise self._error(
                        rel, f"image is {size[0]}x{size[1]}, expected {IMAGE_SIZE}x{IMAGE_SIZE}"
                    )
                im.load()
                mode = im.mode
                if mode == "L":
                    return np.asarray(im, dtype=np.uint8)
                if mode not in ("RGB", "RGBA", "LA", "P", "1"):
                    raise self._error(rel, f"unsupported image mode {mode!r} (need grayscale)")
                rgb = np.asarray(im.convert("RGB"), dtype=np.uint8)
        except FERDataError:
            raise
        except Exception as e:  # PIL raises many types (OSError, SyntaxError, ValueError, ...)
            raise self._error(rel, f"cannot decode image ({type(e).__name__}: {e})") from e
        if not ((rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all()):
            raise self._error(rel, f"{mode} image is not grayscale (its colour channels differ)")
        return np.ascontiguousarray(rgb[..., 0])

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
            )
        return out


def _read_image_folder(root: Path, splits: tuple[str, ...]) -> dict[str, ArraySplit]:
    collector = _ImageCollector(root, splits, root.resolve().name, "image")
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


def _read_image_tar(path: Path, splits: tuple[str, ...]) -> dict[str, ArraySplit]:
    collector = _ImageCollector(path, splits, None, "member")
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
