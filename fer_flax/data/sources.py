"""Which reader a `config.data` selects, the spec (classes, image size, channels) of its data, and
loading the requested splits through the cache.

`data.format` picks the reader: "fer2013" (the challenge CSV, or FER2013 image folders), "folder" (an
image-folder set, with `data.classes`, `data.class_folders`, `data.image_size`, `data.channels` and
`data.convert_images` when it is not FER2013-shaped), "ferplus" (FER+ votes, trained in
`data.label_mode`), or "auto": a CSV is FER2013, a folder or archive is FER+ when it holds the
FER2013Train/Valid/Test folders and an image-folder set otherwise; "records": a records folder
(`fer_flax.data.records`, made by `python -m fer_flax.convert`; "auto" knows one by its records.json),
whose images are read lazily during training. No `data.path` means the synthetic faces. The spec is
known before any data is parsed (an archive is only peeked at), so a model can be built and checked
first.
"""

from __future__ import annotations

import itertools
import os
import tarfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from fer_flax.base.errors import ConfigError
from fer_flax.data import cache, fer2013, ferplus, image_folders, labels, records
from fer_flax.data.spec import FER2013, FERPLUS, DataSpec
from fer_flax.data.splits import CLASS_NAMES, IMAGE_SIZE, ArraySplit, FERDataError

SYNTHETIC_NOTICE = (
    "NOTE: no data path given, so this run uses fer_flax's built-in SYNTHETIC faces "
    "(procedurally drawn, FER2013-like class imbalance). To train on real FER2013 add "
    "--config.data.path=/path/to/fer2013.csv[.gz] (or an image-folder tree / .tar.gz of one)."
)
# What predict says of a model trained on them: confident labels that mean nothing for real faces.
SYNTHETIC_MODEL_NOTICE = (
    "NOTE: this model was trained on fer_flax's built-in SYNTHETIC faces (procedurally drawn), not on "
    "real faces: its labels for real photos mean nothing. Use a run trained on real FER2013 "
    "(--config.data.path=/path/to/fer2013.csv[.gz]), or the bundled model (no --workdir)."
)
# The keys that describe an image-folder set; other formats define their own classes and images.
FOLDER_KEYS: tuple[str, ...] = ("classes", "class_folders", "image_size", "channels", "convert_images")
# Archive members looked at to recognise FER+ (its split folders come first in any archive of it).
_PEEK_MEMBERS = 64


def _or(value: Any, default: Any) -> Any:
    """`value`, or `default` when the key is unset (None)."""
    return default if value is None else value


def resolve_format(data_config: Any) -> str:
    """ "synthetic", "fer2013", "folder", "ferplus" or "records": what `data_config` reads."""
    if data_config.path is None:
        return "synthetic"
    fmt = data_config.format
    path = Path(os.path.expanduser(data_config.path))
    if fmt == "records" and not records.is_records(path):
        raise ConfigError(
            f"config.data.format='records' but config.data.path={data_config.path!r} holds no "
            f"{records.META}: convert the source first (python -m fer_flax.convert)"
        )
    if fmt != "auto":
        return fmt
    if records.is_records(path):
        return "records"
    kind = fer2013.source_kind(path)
    if kind == "csv":
        return "fer2013"
    return "ferplus" if _looks_like_ferplus(path, kind) else "folder"


def _looks_like_ferplus(path: Path, kind: str) -> bool:
    if kind == "folder":
        return any(
            (parent / folder).is_dir()
            for parent in (path, *[p for p in path.iterdir() if p.is_dir()])
            for folder in ferplus.SPLIT_FOLDERS.values()
        )
    try:
        with tarfile.open(path, mode="r|*") as tf:
            return any(ferplus.is_ferplus_path(m.name) for m in itertools.islice(tf, _PEEK_MEMBERS))
    except (tarfile.TarError, OSError, EOFError) as e:
        raise FERDataError(path, f"cannot read the archive ({type(e).__name__}: {e})") from e


def folder_layout(data_config: Any) -> image_folders.FolderLayout:
    """The image-folder set `data.classes` / `class_folders` / `image_size` / `channels` describe."""
    spec = DataSpec(
        tuple(_or(data_config.classes, CLASS_NAMES)),
        tuple(_or(data_config.image_size, (IMAGE_SIZE, IMAGE_SIZE))),
        int(_or(data_config.channels, 1)),
    )
    folders = data_config.class_folders
    return image_folders.FolderLayout(
        spec, tuple(folders) if folders else None, bool(data_config.convert_images)
    )


def resolve_spec(data_config: Any, fmt: str | None = None, *, strict: bool = True) -> DataSpec:
    """The spec of the data `data_config` reads. `strict`: image-folder keys set for a source that is
    not an image-folder set are a ConfigError (a training run); otherwise they are ignored."""
    fmt = fmt or resolve_format(data_config)
    if fmt == "folder":
        return folder_layout(data_config).spec
    set_keys = [k for k in FOLDER_KEYS if data_config[k] not in (None, False)]
    if strict and set_keys:
        raise ConfigError(
            f"config.data.{set_keys[0]} is set but config.data.path is {fmt} data, which defines its own "
            f"classes and images; the keys {', '.join(FOLDER_KEYS)} apply to image-folder sets "
            "(config.data.format='folder')"
        )
    if fmt == "records":
        return records.spec_of(data_config.path)
    return FERPLUS if fmt == "ferplus" else FER2013


def check_label_mode(fmt: str, label_mode: str) -> None:
    """Only vote data (FER+) has label modes other than "majority"."""
    if label_mode != "majority" and fmt != "ferplus":
        raise ConfigError(
            f"config.data.label_mode={label_mode!r} needs crowd votes (FER+ data); {fmt} data has one "
            "label per image: use label_mode='majority'"
        )


def load_splits(
    data_config: Any,
    splits: Sequence[str],
    *,
    cache_dir: str | None = None,
    announce: Callable[[str], Any] = print,
    label_mode: str | None = None,
) -> dict[str, ArraySplit]:
    """Loads `splits` ('train' | 'val' | 'test') of `data_config`'s source, or synthesizes them when the
    path is unset. Only the requested splits are read: training asks for train and val, never test.
    `label_mode` (default `data.label_mode`) gives FER+'s training targets; evaluation asks for
    "majority" only, which any source has."""
    splits = fer2013.check_splits(splits)
    fmt = resolve_format(data_config)
    label_mode = label_mode or data_config.label_mode
    votes = fmt == "records" and records.kind_of(data_config.path) == "votes"
    check_label_mode("ferplus" if votes else fmt, label_mode)
    if fmt == "records":
        announce(f"Reading {data_config.path} lazily (ArrayRecord files)")
        return records.load_splits(data_config.path, splits, label_mode)
    if fmt == "synthetic":
        from fer_flax.data.synthetic import generate_synthetic

        announce(SYNTHETIC_NOTICE)
        sizes = {
            "train": data_config.synthetic_train,
            "val": data_config.synthetic_val,
            "test": data_config.synthetic_test,
        }
        # Each split has its own sub-seed inside the generator, so asking for fewer splits does not
        # change the ones returned; test-sized work is skipped when test is not requested.
        wanted = (sizes[s] if s in splits else 0 for s in ("train", "val", "test"))
        generated = generate_synthetic(*wanted, seed=data_config.synthetic_seed)
        return {s: generated[s] for s in splits}

    path = os.path.expanduser(data_config.path)
    cache_dir = cache_dir or data_config.cache_dir
    if cache_dir is None:
        raise ValueError("load_splits needs a cache_dir (or config.data.cache_dir) for real data")
    if fmt == "ferplus":
        voted = cache.load_cached(path, splits, cache_dir, cache.ferplus_reader())
        return {s: labels.label_split(voted[s], label_mode) for s in splits}
    layout = folder_layout(data_config) if fmt == "folder" else image_folders.FolderLayout()
    if layout == image_folders.FolderLayout():  # FER2013-shaped: the classic reader and its cache entries
        return cache.load_fer2013_cached(path, splits, cache_dir)
    return cache.load_cached(path, splits, cache_dir, cache.folder_reader(layout))
