"""Data sources: FER2013 (CSV or image folders, cached) and the built-in synthetic faces."""

from __future__ import annotations

import os
from collections.abc import Sequence

from ml_collections import ConfigDict

from fer_flax.data.splits import (
    CLASS_NAMES,
    NUM_CLASSES,
    ArraySplit,
    FERDataError,
)

__all__ = [
    "CLASS_NAMES",
    "NUM_CLASSES",
    "ArraySplit",
    "FERDataError",
    "default_cache_dir",
    "load_splits",
]

SYNTHETIC_NOTICE = (
    "NOTE: no data path given, so this run uses fer_flax's built-in SYNTHETIC faces "
    "(procedurally drawn, FER2013-like class imbalance). To train on real FER2013 add "
    "--config.data.path=/path/to/fer2013.csv[.gz] (or an image-folder tree / .tar.gz of one)."
)


def default_cache_dir(workdir: str) -> str:
    """Parsed arrays are cached beside the workdir, so every run in a parent folder shares them."""
    return os.path.join(os.path.dirname(os.path.abspath(workdir)), ".fer_flax_cache")


def load_splits(
    data_config: ConfigDict, splits: Sequence[str], *, cache_dir: str | None = None, announce=print
) -> dict[str, ArraySplit]:
    """Loads `splits` ('train' | 'val' | 'test') from `data_config.path`, or synthesizes them when the
    path is unset. Only the requested splits are read: training asks for train and val, never test.
    An unknown split name raises ConfigError."""
    # The readers are imported when used: they import fer_flax.config_schema, which imports this
    # package's constants, so importing them here at the top would be an import circle.
    from fer_flax.data.fer2013 import check_splits

    splits = check_splits(splits)
    if data_config.path is None:
        from fer_flax.data.synthetic import generate_synthetic

        announce(SYNTHETIC_NOTICE)
        sizes = {
            "train": data_config.synthetic_train,
            "val": data_config.synthetic_val,
            "test": data_config.synthetic_test,
        }
        # Each split has its own sub-seed inside the generator, so asking for fewer splits does not
        # change the ones returned; test-sized work is skipped when test is not requested.
        generated = generate_synthetic(
            sizes["train"] if "train" in splits else 0,
            sizes["val"] if "val" in splits else 0,
            sizes["test"] if "test" in splits else 0,
            seed=data_config.synthetic_seed,
        )
        return {s: generated[s] for s in splits}

    from fer_flax.data.cache import load_fer2013_cached

    path = os.path.expanduser(data_config.path)
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"config.data.path={data_config.path!r} does not exist. Point it at a FER2013 CSV "
            "(emotion,pixels,Usage; .csv or .csv.gz), an image-folder tree or a .tar.gz of one, or "
            "leave it unset for the built-in synthetic faces."
        )
    if cache_dir is None:
        cache_dir = data_config.cache_dir
    if cache_dir is None:
        raise ValueError("load_splits needs a cache_dir (or config.data.cache_dir) for real data")
    return load_fer2013_cached(path, splits, cache_dir)
