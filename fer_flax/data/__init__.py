"""Data sources: FER2013 (CSV or image folders), image-folder sets of any classes and size, FER+ (crowd
votes), the built-in synthetic faces, and the parsed-array cache. `fer_flax.data.sources` decides which
reader a config selects and what its data looks like (`DataSpec`). Imports only `base`: `config` sits
above this package and imports its constants."""

from __future__ import annotations

import os
from collections.abc import Sequence

from ml_collections import ConfigDict

from fer_flax.data import sources
from fer_flax.data.spec import FER2013, FERPLUS, DataSpec
from fer_flax.data.splits import (
    CLASS_NAMES,
    NUM_CLASSES,
    ArraySplit,
    FERDataError,
)

__all__ = [
    "CLASS_NAMES",
    "FER2013",
    "FERPLUS",
    "NUM_CLASSES",
    "ArraySplit",
    "DataSpec",
    "FERDataError",
    "default_cache_dir",
    "load_splits",
    "resolve_spec",
    "user_cache_dir",
]


def default_cache_dir(workdir: str) -> str:
    """Parsed arrays are cached beside the workdir, so every run in a parent folder shares them."""
    return os.path.join(os.path.dirname(os.path.abspath(workdir)), ".fer_flax_cache")


def user_cache_dir() -> str:
    """The user's cache folder for parsed arrays when there is no workdir to put them beside (the
    bundled model's evaluations): `$XDG_CACHE_HOME/fer_flax`, by default `~/.cache/fer_flax`."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "fer_flax")


def load_splits(
    data_config: ConfigDict,
    splits: Sequence[str],
    *,
    cache_dir: str | None = None,
    announce=print,
    label_mode: str | None = None,
) -> dict[str, ArraySplit]:
    """`fer_flax.data.sources.load_splits`: the requested splits of the configured source (or the
    synthetic faces). An unknown split name raises ConfigError."""
    _check_path(data_config)
    return sources.load_splits(
        data_config, splits, cache_dir=cache_dir, announce=announce, label_mode=label_mode
    )


def resolve_spec(data_config: ConfigDict, *, strict: bool = True) -> DataSpec:
    """The classes, image size and channels of the configured data (`sources.resolve_spec`)."""
    _check_path(data_config)
    return sources.resolve_spec(data_config, strict=strict)


def _check_path(data_config: ConfigDict) -> None:
    if data_config.path is not None and not os.path.exists(os.path.expanduser(data_config.path)):
        raise FileNotFoundError(
            f"config.data.path={data_config.path!r} does not exist. Point it at a FER2013 CSV "
            "(emotion,pixels,Usage; .csv or .csv.gz), an image-folder tree, a FER+ folder or a .tar.gz "
            "of one, a records folder (python -m fer_flax.convert), or leave it unset for the built-in "
            "synthetic faces."
        )
