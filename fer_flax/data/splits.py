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
    """One split held in memory: `images` uint8 [N, H, W] (grayscale) or [N, H, W, C], `labels` int32
    [N] in 0..num_classes-1 (the hard label: for FER+ the majority vote, which accuracy is measured
    against), the data set's `class_names` in label order and, for data with soft labels, `targets`
    float32 [N, num_classes] (the training targets of the label mode, see fer_flax.data.labels).
    `teacher_probs` float32 [N, num_classes]: cached knowledge-distillation targets, the teachers'
    softened probabilities of each image (fer_flax.training.distill); batches carry both kinds of row."""

    images: np.ndarray
    labels: np.ndarray
    class_names: tuple[str, ...] = CLASS_NAMES
    targets: np.ndarray | None = None
    teacher_probs: np.ndarray | None = None

    def __post_init__(self):
        if self.images.dtype != np.uint8 or self.images.ndim not in (3, 4) or 0 in self.images.shape[1:]:
            raise ValueError(
                f"images must be uint8 [N, H, W] or [N, H, W, C], got {self.images.dtype} {self.images.shape}"
            )
        if self.labels.shape != (self.images.shape[0],):
            raise ValueError(f"labels shape {self.labels.shape} does not match {self.images.shape[0]} images")
        for name in ("targets", "teacher_probs"):
            rows = getattr(self, name)
            if rows is not None and rows.shape != (len(self), self.num_classes):
                raise ValueError(
                    f"{name} shape {rows.shape} is not ({len(self)}, {self.num_classes}) "
                    "(one row of class weights per image)"
                )

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(height, width, channels) of one image."""
        h, w = self.images.shape[1:3]
        return (h, w, 1 if self.images.ndim == 3 else int(self.images.shape[3]))

    def class_counts(self) -> np.ndarray:
        return np.bincount(self.labels, minlength=self.num_classes)
