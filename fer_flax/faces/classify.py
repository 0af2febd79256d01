"""Face crops through the one inference path, in batches sized to the number of faces.

`inference.member_probabilities` pads every batch to a fixed size, so classifying the three faces of
a photo in batches of the run's `eval_batch_size` (512 for most configs) would compute 509 padding
images. `FaceClassifier` picks the smallest power of two that holds the faces instead (a multiple of
the device count, at most `max_batch`), so a few shapes are compiled once each and reused.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax
import numpy as np

from fer_flax import inference, tta
from fer_flax.data.splits import CLASS_NAMES
from fer_flax.faces.detect import Box
from fer_flax.model_state import Restored


@dataclasses.dataclass(frozen=True)
class FacePrediction:
    """One face: where it is and the class probabilities [K] of its crop."""

    box: Box
    probabilities: np.ndarray

    @property
    def label(self) -> str:
        return CLASS_NAMES[int(np.argmax(self.probabilities))]

    @property
    def confidence(self) -> float:
        return float(np.max(self.probabilities))

    def to_json(self) -> dict:
        return {
            "box": {"x": self.box.x, "y": self.box.y, "width": self.box.width, "height": self.box.height},
            "label": self.label,
            "confidence": self.confidence,
            "probabilities": {n: float(p) for n, p in zip(CLASS_NAMES, self.probabilities, strict=True)},
        }


def padded_batch_size(n: int, max_batch: int, multiple: int) -> int:
    """The smallest power of two >= n (and >= multiple), at most max_batch, rounded up to a multiple
    of `multiple` (the device count)."""
    size = max(1, multiple)
    while size < n and size < max_batch:
        size *= 2
    size = min(size, max_batch)
    return -(-size // multiple) * multiple


@dataclasses.dataclass(frozen=True)
class FaceClassifier:
    """members (one run, or an ensemble) + test-time augmentation: crops [N, 48, 48] -> probs [N, K]."""

    members: Sequence[Restored]
    tta_mode: str = "none"
    crop_size: int = tta.DEFAULT_CROP_SIZE
    max_batch: int | None = None

    def __call__(self, crops: np.ndarray) -> np.ndarray:
        crops = np.asarray(crops, dtype=np.uint8)
        if len(crops) == 0:
            return np.zeros((0, len(CLASS_NAMES)), np.float64)
        cap = self.max_batch or self.members[0].config.eval_batch_size
        batch = padded_batch_size(len(crops), cap, jax.device_count())
        return inference.member_probabilities(
            self.members, crops, batch_size=batch, tta_mode=self.tta_mode, crop_size=self.crop_size
        )
