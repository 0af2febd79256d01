"""What a data set is, as far as a model is concerned: its class names (in label order), its image size
and its channel count.

FER2013 (and the synthetic faces) are 48x48 grayscale with 7 classes, FER+ is 48x48 grayscale with 8,
and an image-folder set declares its own (`config.data.classes`, `data.image_size`, `data.channels`).
A run records the spec of its data in `config.json`, so its model can be rebuilt for inference without
the data.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from fer_flax.data.splits import CLASS_NAMES, IMAGE_SIZE

FERPLUS_CLASS_NAMES: tuple[str, ...] = (
    "neutral",
    "happiness",
    "surprise",
    "sadness",
    "anger",
    "disgust",
    "fear",
    "contempt",
)
# The label.csv vote columns of FER+: the 8 emotions, then "unknown" and "not a face".
FERPLUS_VOTE_COLUMNS: tuple[str, ...] = (*FERPLUS_CLASS_NAMES, "unknown", "NF")
CHANNEL_COUNTS: tuple[int, ...] = (1, 3)


@dataclasses.dataclass(frozen=True)
class DataSpec:
    """Class names in label order, image (height, width) and channels (1 grayscale, 3 RGB)."""

    class_names: tuple[str, ...]
    image_size: tuple[int, int] = (IMAGE_SIZE, IMAGE_SIZE)
    channels: int = 1

    def __post_init__(self):
        object.__setattr__(self, "class_names", tuple(str(n) for n in self.class_names))
        object.__setattr__(self, "image_size", tuple(int(s) for s in self.image_size))
        if len(self.class_names) < 2 or len(set(self.class_names)) != len(self.class_names):
            raise ValueError(f"a data set needs at least 2 distinct class names, got {self.class_names}")
        if len(self.image_size) != 2 or min(self.image_size) < 1:
            raise ValueError(f"image_size must be (height, width) >= 1, got {self.image_size}")
        if self.channels not in CHANNEL_COUNTS:
            raise ValueError(f"channels must be one of {CHANNEL_COUNTS}, got {self.channels}")

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(height, width, channels): one model input without the batch axis."""
        return (*self.image_size, self.channels)

    def describe(self) -> str:
        h, w = self.image_size
        colour = "grayscale" if self.channels == 1 else "RGB"
        return f"{h}x{w} {colour}, {self.num_classes} classes ({', '.join(self.class_names)})"

    def to_dict(self) -> dict[str, Any]:
        return {
            "class_names": list(self.class_names),
            "image_size": list(self.image_size),
            "channels": self.channels,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> DataSpec:
        return cls(tuple(d["class_names"]), tuple(d["image_size"]), int(d["channels"]))


FER2013 = DataSpec(CLASS_NAMES)
FERPLUS = DataSpec(FERPLUS_CLASS_NAMES)
