"""Readers for the two layouts FER2013 ships in: the challenge CSV and per-class image folders.

`read_fer2013(path, splits)` takes any of:

* **CSV** (`.csv`, or gzip-compressed, detected by its magic bytes whatever the name): the header
  `emotion,pixels,Usage` (surrounding whitespace, a CRLF and a UTF-8 BOM are tolerated), then one
  row per face: label 0..6, 2304 space-separated ints 0..255 (48x48 row-major), and a Usage of
  Training, PublicTest or PrivateTest. The Usage column is required: without it there is no
  protocol-safe way to tell the held-out rows apart. Blank lines are skipped. Every row's column
  count and Usage are checked, but the label and pixels are parsed only for the requested splits,
  so PrivateTest rows are never parsed unless `test` is asked for.
* **Image folder** tree or a `.tar`/`.tar.gz` archive of one: read by `fer_flax.data.image_folders`.

Every problem in the data raises `FERDataError` naming the file, the CSV line or the image, and
what is wrong, including unreadable or truncated gzip/tar streams.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import os
import re
import warnings
import zlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import BinaryIO

import numpy as np

from fer_flax.base.errors import check_choice
from fer_flax.data import image_folders
from fer_flax.data.splits import (
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

TAR_SUFFIXES: tuple[str, ...] = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")
CSV_HEADER: tuple[str, ...] = ("emotion", "pixels", "Usage")

_GZIP_MAGIC = b"\x1f\x8b"
_ZIP_MAGIC = b"PK\x03\x04"
_BOM = b"\xef\xbb\xbf"
_INT_TOKEN = re.compile(rb"[+-]?[0-9]+")
_USAGE_BYTES: dict[bytes, str] = {usage.encode(): usage for usage in USAGE_TO_SPLIT}
_VALID_USAGES = ", ".join(USAGE_TO_SPLIT)


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


def read_fer2013(
    path: str | os.PathLike, splits: Sequence[str], *, layout: image_folders.FolderLayout | None = None
) -> dict[str, ArraySplit]:
    """Reads the requested splits ('train'|'val'|'test') from a FER2013 CSV (.csv or .csv.gz),
    an image-folder tree, or a .tar/.tar.gz/.tgz archive of such a tree. Validates strictly.
    `layout` describes an image-folder set with other classes, size or channels (default FER2013's).

    Returns {split: ArraySplit} in the order of `splits`. Raises FERDataError for any problem with
    the data, including a requested split that the source does not contain.
    """
    splits = check_splits(splits)
    path = Path(path)
    kind = source_kind(path)
    if kind == "folder":
        return image_folders.read_image_folder(path, splits, layout)
    if kind == "tar":
        return image_folders.read_image_tar(path, splits, layout)
    if layout is not None and layout != image_folders.FolderLayout():
        raise FERDataError(
            path,
            "a CSV source is FER2013 (48x48 grayscale, 7 classes): data.classes, data.class_folders, "
            "data.image_size, data.channels and data.convert_images apply to image folders",
        )
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
