"""Converting a data source into a records folder (`fer_flax.data.records`): the source is read by the
reader `config.data` selects (`fer_flax.data.sources`: a FER2013 CSV, image folders or a tar of them,
FER+ with its votes, or the synthetic faces), then each split is written in chunks. A bad row or image
fails the conversion with the reader's message (the file and line or image) before anything is
written; a failure while writing leaves no output folder either (`record_writer.RecordsFolder`).

The source's splits are parsed into memory once, as the parsed-array cache does; the records are what
lets training then run without holding them. A set too large to parse whole is written straight
through `record_writer.RecordsFolder` in chunks, as `benchmarks/large_set.py` does.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from fer_flax.base.errors import ConfigError
from fer_flax.data import cache, fer2013, image_folders, record_writer, sources

CHUNK = 4096  # images handed to the writer at a time


def read_source(
    data_config: Any, splits: Sequence[str], say: Callable[[str], Any] = print
) -> tuple[str, dict[str, Any]]:
    """("labels" or "votes", {split: parsed split}) of the source `data_config` selects, read without
    the cache: `ArraySplit`s, or FER+'s `VoteSplit`s with the raw votes."""
    splits = fer2013.check_splits(splits)
    fmt = sources.resolve_format(data_config)
    if fmt == "records":
        raise ConfigError(f"{data_config.path} is already a records folder")
    if fmt == "synthetic":
        return "labels", sources.load_splits(data_config, splits, announce=say, label_mode="majority")
    path = Path(os.path.expanduser(data_config.path))
    if fmt == "ferplus":
        return "votes", cache.ferplus_reader().read(path, splits)
    layout = sources.folder_layout(data_config) if fmt == "folder" else image_folders.FolderLayout()
    reader = cache.fer2013_reader() if layout == image_folders.FolderLayout() else cache.folder_reader(layout)
    return "labels", reader.read(path, splits)


def convert(
    data_config: Any,
    out: str | os.PathLike,
    splits: Sequence[str] = ("train", "val", "test"),
    *,
    shards: int | None = None,
    records_per_shard: int | None = None,
    say: Callable[[str], Any] = print,
    every: int = record_writer.PROGRESS_EVERY,
) -> dict[str, Any]:
    """Writes the `splits` of `data_config`'s source into the records folder `out` (which must not
    exist); returns its `records.json` description."""
    spec = sources.resolve_spec(data_config, strict=True)
    kind, parsed = read_source(data_config, splits, say)
    source = (
        "synthetic" if data_config.path is None else str(Path(os.path.expanduser(data_config.path)).resolve())
    )
    folder = record_writer.RecordsFolder(
        out,
        spec,
        kind=kind,
        source=source,
        shards=shards,
        records_per_shard=records_per_shard,
        say=say,
        every=every,
    )
    with folder:
        for split, data in parsed.items():
            rows = data.votes if kind == "votes" else data.labels
            writer = folder.split(split, len(data))
            for lo in range(0, len(data), CHUNK):
                writer.write(data.images[lo : lo + CHUNK], rows[lo : lo + CHUNK])
    return folder.meta()
