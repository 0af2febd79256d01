"""Face crops through the one inference path, in batches sized to the number of faces.

`engine.member_probabilities` pads every batch to a fixed size, so classifying the three faces of
a photo in batches of the run's `eval_batch_size` (512 for most configs) would compute 509 padding
images. `FaceClassifier` picks the smallest power of two that holds the faces instead (a multiple of
the device count, at most `max_batch`), so a few shapes are compiled once each and reused.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax
import numpy as np

from fer_flax.core import tta
from fer_flax.data.spec import FER2013, DataSpec
from fer_flax.inference import engine as inference
from fer_flax.inference.faces import crop as crop_lib
from fer_flax.inference.faces.boxes import Box
from fer_flax.run.trained import Restored


@dataclasses.dataclass(frozen=True)
class FacePrediction:
    """One face: where it is and the class probabilities [K] of its crop, in the run's classes."""

    box: Box
    probabilities: np.ndarray
    class_names: tuple[str, ...] = FER2013.class_names

    @property
    def label(self) -> str:
        return self.class_names[int(np.argmax(self.probabilities))]

    @property
    def confidence(self) -> float:
        return float(np.max(self.probabilities))

    def to_json(self) -> dict:
        """The face's record; "landmarks" ({point: [x, y]}) only from a detector that finds them."""
        record = {
            "box": {"x": self.box.x, "y": self.box.y, "width": self.box.width, "height": self.box.height},
            "label": self.label,
            "confidence": self.confidence,
            "probabilities": {n: float(p) for n, p in zip(self.class_names, self.probabilities, strict=True)},
        }
        landmarks = getattr(self.box, "landmarks", None)
        if landmarks is not None:
            record["landmarks"] = {k: [round(float(v), 1) for v in p] for k, p in landmarks._asdict().items()}
        return record


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
    """members (one run, or an ensemble) + test-time augmentation: crops of the run's image shape
    ([N, 48, 48] for FER2013) -> probabilities [N, K] in the run's classes."""

    members: Sequence[Restored]
    tta_mode: str = "none"
    crop_size: int = tta.DEFAULT_CROP_SIZE
    max_batch: int | None = None

    @property
    def spec(self) -> DataSpec:
        """The classes, image size and channels the run was trained with."""
        return self.members[0].spec

    def empty_crops(self) -> np.ndarray:
        """No crops, in the run's image shape."""
        shape = self.spec.image_size if self.spec.channels == 1 else self.spec.image_shape
        return np.zeros((0, *shape), np.uint8)

    def crop(self, pixels: np.ndarray, boxes: Sequence[Box], margin: float) -> np.ndarray:
        """The run's crops [F, H, W(, 3)] of `boxes` in `pixels` (grayscale [H, W] or RGB [H, W, 3])."""
        if not boxes:
            return self.empty_crops()
        return np.stack(
            [crop_lib.crop_face(pixels, b, margin=margin, size=self.spec.image_size) for b in boxes]
        )

    def predictions(self, boxes: Sequence[Box], probabilities: np.ndarray) -> list[FacePrediction]:
        names = self.spec.class_names
        return [FacePrediction(b, p, names) for b, p in zip(boxes, probabilities, strict=True)]

    def __call__(self, crops: np.ndarray) -> np.ndarray:
        crops = np.asarray(crops, dtype=np.uint8)
        if len(crops) == 0:
            return np.zeros((0, self.spec.num_classes), np.float64)
        cap = self.max_batch or self.members[0].config.eval_batch_size
        batch = padded_batch_size(len(crops), cap, jax.device_count())
        return inference.member_probabilities(
            self.members, crops, batch_size=batch, tta_mode=self.tta_mode, crop_size=self.crop_size
        )
