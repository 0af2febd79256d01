"""The FER+ reader: FER2013's faces with 10 crowd votes each (Barsoum et al., ICMI 2016).

The layout is the one FERPlus's own `generate_training_data.py` writes, as a folder or a `.tar`/`.tar.gz`
of one (the split folders may sit under a common parent):

  FER2013Train/label.csv  FER2013Train/fer0000000.png ...   -> split "train"
  FER2013Valid/label.csv  FER2013Valid/fer0028638.png ...   -> split "val"
  FER2013Test/label.csv   FER2013Test/fer0032220.png ...    -> split "test"

`label.csv` has no header; each row is: image file name, face box `"(x, y, w, h)"`, then 10 vote counts
in the order of `spec.FERPLUS_VOTE_COLUMNS` (neutral, happiness, surprise, sadness, anger, disgust, fear,
contempt, unknown, NF). Images are 48x48 grayscale PNGs.

Validated strictly: a row that is not a name, a box and 10 non-negative integer votes with at least one
vote, a duplicate image name, a listed image that is missing, an image without a row, and an image that
does not decode or is not 48x48 grayscale all raise `FERDataError` naming the file and line (or the
image). A source holding only some splits is fine until a missing one is asked for, and the images and
rows of splits not asked for are never decoded or parsed (the protocol guard: FER2013Test is read only
by an explicit evaluation).

The reader returns the raw votes; which images are kept and what the training targets are is the
label mode's business (`fer_flax.data.labels`).
"""

from __future__ import annotations

import csv
import dataclasses
import os
import re
import tarfile
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from fer_flax.data.decode import decode_image
from fer_flax.data.spec import FERPLUS, FERPLUS_VOTE_COLUMNS
from fer_flax.data.splits import FERDataError

# Part of the cache key (fer_flax.data.cache): bump it whenever parsing could give different arrays.
READER_VERSION = 1
SPLIT_FOLDERS: dict[str, str] = {"train": "FER2013Train", "val": "FER2013Valid", "test": "FER2013Test"}
LABEL_FILE = "label.csv"
_FOLDER_TO_SPLIT = {folder.lower(): split for split, folder in SPLIT_FOLDERS.items()}
_NUM_FIELDS = 2 + len(FERPLUS_VOTE_COLUMNS)
_VOTE = re.compile(r"[0-9]{1,3}")


@dataclasses.dataclass(frozen=True)
class VoteSplit:
    """One FER+ split as read: `images` uint8 [N, 48, 48] and `votes` int32 [N, 10] (label.csv order)."""

    images: np.ndarray
    votes: np.ndarray

    def __len__(self) -> int:
        return int(self.votes.shape[0])


def split_of(rel: str) -> tuple[str, str] | None:
    """(split, file name) of a path inside a FER+ source, or None when no FER2013Train/Valid/Test
    folder holds it directly."""
    parts = [p for p in rel.split("/") if p not in ("", ".")]
    if len(parts) < 2 or any(p.startswith(".") for p in parts):
        return None
    split = _FOLDER_TO_SPLIT.get(parts[-2].lower())
    return None if split is None else (split, parts[-1])


def is_ferplus_path(rel: str) -> bool:
    """Whether a path names a FER+ split folder (used to recognise the layout)."""
    return any(p.lower() in _FOLDER_TO_SPLIT for p in rel.split("/"))


def list_files(root: Path) -> list[str]:
    """Sorted '/'-separated paths, relative to `root`, of every label.csv and PNG the reader reads."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in filenames:
            rel = os.path.relpath(os.path.join(dirpath, name), root).replace(os.sep, "/")
            if _wanted_name(name) and split_of(rel) is not None:
                found.append(rel)
    return sorted(found)


def _wanted_name(name: str) -> bool:
    return name == LABEL_FILE or (name.lower().endswith(".png") and not name.startswith("."))


class _Collector:
    """Gathers the label files and decoded images of the requested splits, then matches them."""

    def __init__(self, source: Path, splits: tuple[str, ...]):
        self.source = source
        self.splits = splits
        self.present: set[str] = set()
        self.label_text: dict[str, tuple[str, str]] = {}  # split -> (where, text)
        self.images: dict[str, dict[str, tuple[str, np.ndarray]]] = {s: {} for s in splits}

    def wants(self, rel: str) -> tuple[str, str] | None:
        found = split_of(rel)
        if found is None or not _wanted_name(found[1]):
            return None
        self.present.add(found[0])
        return found if found[0] in self.splits else None

    def add(self, rel: str, split: str, name: str, data: bytes) -> None:
        where = f"{self.source}/{rel}" if self.source.is_dir() else f"{self.source}:{rel}"
        if name == LABEL_FILE:
            self.label_text[split] = (where, data.decode("utf-8-sig", errors="replace"))
            return
        image = decode_image(
            data,
            size=FERPLUS.image_size,
            channels=1,
            convert=False,
            fail=lambda problem: FERDataError(self.source, problem, item=f"image {rel}"),
        )
        self.images[split][name] = (rel, image)

    def result(self) -> dict[str, VoteSplit]:
        missing = [s for s in self.splits if s not in self.present]
        if missing:
            held = ", ".join(SPLIT_FOLDERS[s] for s in SPLIT_FOLDERS if s in self.present) or "none"
            wants = ", ".join(f"{SPLIT_FOLDERS[s]}/ (split {s!r})" for s in missing)
            raise FERDataError(self.source, f"no {wants} in this FER+ source; it holds: {held}")
        return {s: self._match(s) for s in self.splits}

    def _match(self, split: str) -> VoteSplit:
        folder = SPLIT_FOLDERS[split]
        if split not in self.label_text:
            raise FERDataError(self.source, f"{folder}/ has no {LABEL_FILE}")
        where, text = self.label_text[split]
        rows = parse_label_csv(where, text)
        images = self.images[split]
        unlisted = sorted(set(images) - {name for name, _, _ in rows})
        if unlisted:
            raise FERDataError(
                self.source,
                f"has no row in {folder}/{LABEL_FILE} ({len(unlisted)} such image(s))",
                item=f"image {images[unlisted[0]][0]}",
            )
        out_images = np.empty((len(rows), *FERPLUS.image_size), np.uint8)
        for i, (name, line, _) in enumerate(rows):
            if name not in images:
                raise FERDataError(where, f"image {name!r} is missing from {folder}/", line=line)
            out_images[i] = images[name][1]
        votes = np.asarray([v for _, _, v in rows], np.int32).reshape(len(rows), len(FERPLUS_VOTE_COLUMNS))
        return VoteSplit(images=out_images, votes=votes)


def parse_label_csv(where: str, text: str) -> list[tuple[str, int, list[int]]]:
    """(image name, line number, 10 votes) per row of a FER+ label.csv; FERDataError for a bad row."""
    rows: list[tuple[str, int, list[int]]] = []
    first_line: dict[str, int] = {}
    for line_no, fields in enumerate(csv.reader(text.splitlines()), start=1):
        if not fields or not "".join(fields).strip():
            continue
        if len(fields) != _NUM_FIELDS:
            raise FERDataError(
                where,
                f"expected {_NUM_FIELDS} columns (image name, face box, 10 vote counts: "
                f"{', '.join(FERPLUS_VOTE_COLUMNS)}), found {len(fields)}",
                line=line_no,
            )
        name = fields[0].strip()
        if not name.lower().endswith(".png") or "/" in name:
            raise FERDataError(where, f"image name {name!r} is not a PNG file name", line=line_no)
        votes = []
        for column, token in zip(FERPLUS_VOTE_COLUMNS, fields[2:], strict=True):
            if not _VOTE.fullmatch(token.strip()):
                raise FERDataError(
                    where, f"vote count for {column} is {token.strip()!r}, not an integer >= 0", line=line_no
                )
            votes.append(int(token))
        if sum(votes) == 0:
            raise FERDataError(where, f"image {name!r} has no votes", line=line_no)
        if name in first_line:
            raise FERDataError(
                where, f"duplicate image name {name!r} (first on line {first_line[name]})", line=line_no
            )
        first_line[name] = line_no
        rows.append((name, line_no, votes))
    if not rows:
        raise FERDataError(where, "empty label file (expected one row per image)")
    return rows


def read_ferplus(path: str | os.PathLike, splits: tuple[str, ...]) -> dict[str, VoteSplit]:
    """The requested splits of a FER+ folder or tar archive, in the order of `splits`."""
    path = Path(path)
    collector = _Collector(path, splits)
    if path.is_dir():
        for rel in list_files(path):
            target = collector.wants(rel)
            if target is not None:
                collector.add(rel, *target, _read_bytes(path, rel))
    else:
        for rel, data in _tar_members(path, collector):
            collector.add(rel, *split_of(rel), data)
    if not collector.present:
        raise FERDataError(
            path, f"not a FER+ source: no {', '.join(SPLIT_FOLDERS.values())} folder with PNGs or a label.csv"
        )
    return collector.result()


def _read_bytes(root: Path, rel: str) -> bytes:
    try:
        return (root / rel).read_bytes()
    except OSError as e:
        raise FERDataError(root, f"cannot read the file ({e})", item=rel) from e


def _tar_members(path: Path, collector: _Collector) -> Iterator[tuple[str, bytes]]:
    """(relative path, bytes) of every member the collector wants, read front to back."""
    last = "(start of archive)"
    try:
        with tarfile.open(path, mode="r|*") as tf:
            for member in tf:
                last = member.name
                if member.isfile() and collector.wants(member.name) is not None:
                    stream = tf.extractfile(member)
                    yield member.name.removeprefix("./"), stream.read() if stream is not None else b""
    except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
        raise FERDataError(
            path,
            f"cannot read the archive ({type(e).__name__}: {e}); is it truncated or corrupt?",
            item=f"after member {last}",
        ) from e
