"""Constants and the in-memory form every reader returns.

FER2013's canonical CSV names its three parts by `Usage`; fer_flax names them by role. The mapping is the
protocol: models are selected on `val` (PublicTest) and `test` (PrivateTest) is read only by evaluation.
"""

from __future__ import annotations

import dataclasses

import numpy as np

CLASS_NAMES: tuple[str, ...] = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
NUM_CLASSES = len(CLASS_NAMES)
IMAGE_SIZE = 48
NUM_PIXELS = IMAGE_SIZE * IMAGE_SIZE

SPLIT_TO_USAGE: dict[str, str] = {"train": "Training", "val": "PublicTest", "test": "PrivateTest"}
USAGE_TO_SPLIT: dict[str, str] = {usage: split for split, usage in SPLIT_TO_USAGE.items()}
SPLITS: tuple[str, ...] = tuple(SPLIT_TO_USAGE)

# FER2013 Training per-class counts (angry … neutral); the synthetic set copies this imbalance.
FER2013_TRAIN_COUNTS: tuple[int, ...] = (3995, 436, 4097, 7215, 4830, 3171, 4965)


class FERDataError(ValueError):
    """A data source is malformed. The message names the file, the line or image, and the problem."""

    def __init__(self, source: str, problem: str, *, line: int | None = None, item: str | None = None):
        self.source = str(source)
        self.line = line
        self.item = item
        self.problem = problem
        where = self.source
        if line is not None:
            where += f", line {line}"
        if item is not None:
            where += f", {item}"
        super().__init__(f"{where}: {problem}")


@dataclasses.dataclass(frozen=True)
class ArraySplit:
    """One split held in memory: `images` uint8 [N, 48, 48], `labels` int32 [N] in 0..6."""

    images: np.ndarray
    labels: np.ndarray

    def __post_init__(self):
        if self.images.dtype != np.uint8 or self.images.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE):
            raise ValueError(f"images must be uint8 [N, 48, 48], got {self.images.dtype} {self.images.shape}")
        if self.labels.shape != (self.images.shape[0],):
            raise ValueError(f"labels shape {self.labels.shape} does not match {self.images.shape[0]} images")

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def class_counts(self) -> np.ndarray:
        return np.bincount(self.labels, minlength=NUM_CLASSES)
