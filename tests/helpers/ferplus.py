"""Small FER+ sources written by tests: FERPlus's layout (FER2013Train/label.csv + PNGs ...)."""

from __future__ import annotations

import tarfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

SPLIT_FOLDERS = {"train": "FER2013Train", "val": "FER2013Valid", "test": "FER2013Test"}


def face(seed: int, size: tuple[int, int] = (48, 48)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size, dtype=np.uint8)


def write_split(root: Path, split: str, rows: Sequence[tuple[str, Sequence[int], np.ndarray | None]]) -> Path:
    """One split folder: each row is (image name, 10 votes, image or None for no file)."""
    folder = root / SPLIT_FOLDERS[split]
    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    for name, votes, image in rows:
        lines.append(f'{name},"(0, 0, 48, 48)",' + ",".join(map(str, votes)))
        if image is not None:
            Image.fromarray(image).save(folder / name)
    (folder / "label.csv").write_text("\n".join(lines) + "\n")
    return folder


def make_tar(root: Path, out: Path) -> Path:
    with tarfile.open(out, "w:gz") as tf:
        for path in sorted(root.rglob("*")):
            tf.add(path, arcname=path.relative_to(root).as_posix(), recursive=False)
    return out
