"""Face detectors behind one small interface, `FaceDetector`: grayscale image in, boxes out.

The implementation shipped is OpenCV's Haar cascade (`haarcascade_frontalface_alt2.xml`), whose
weights are files inside the `opencv-python-headless` 4.x wheel: nothing is downloaded at run time.
Of the frontal-face cascades in that wheel, alt2 with 5 neighbours is the one that finds the face in
scikit-image's astronaut photo and no face in its other sample pictures (coins, cells and gravel
fool `haarcascade_frontalface_default.xml`). It finds frontal and near-frontal faces from 24 pixels
up; profiles and strongly tilted faces are missed. A better detector (a DNN, for instance) is one more
class with a `detect` method.

OpenCV is an optional extra (`pip install -e ".[photos]"` in the repository); `import_cv2` imports it
lazily and says which extra to install when it is missing.
"""

from __future__ import annotations

import os
from typing import Any, NamedTuple, Protocol

import numpy as np

from fer_flax.base.extras import install_extra

PHOTOS_EXTRA = "photos"
DEFAULT_CASCADE = "haarcascade_frontalface_alt2.xml"


class MissingDependencyError(ImportError):
    """An optional dependency is not installed; the message names the extra that installs it."""


class Box(NamedTuple):
    """A face's box in image pixels: left, top, width, height."""

    x: int
    y: int
    width: int
    height: int


class FaceDetector(Protocol):
    """Finds faces in a uint8 grayscale image [H, W]; boxes in that image's pixels."""

    name: str

    def detect(self, gray: np.ndarray) -> list[Box]: ...


def import_cv2(extra: str = PHOTOS_EXTRA, purpose: str = "face detection") -> Any:
    """The `cv2` module, or MissingDependencyError naming the fer_flax extra that installs it."""
    try:
        import cv2
    except ImportError as e:
        raise MissingDependencyError(
            f"{purpose} needs OpenCV, which is not installed: {install_extra(extra)} "
            f'(or pip install "opencv-python-headless>=4.8,<5")'
        ) from e
    return cv2


def cascade_path(cv2: Any, name: str) -> str:
    """The path of a Haar cascade shipped inside the OpenCV wheel."""
    folder = getattr(getattr(cv2, "data", None), "haarcascades", "")
    path = os.path.join(folder, name)
    if not folder or not os.path.isfile(path):
        raise MissingDependencyError(
            f"OpenCV {cv2.__version__} ships no Haar cascade {name!r} (OpenCV 5.x wheels ship none): "
            f'pip install "opencv-python-headless>=4.8,<5"'
        )
    return path


class HaarCascadeDetector:
    """OpenCV's Haar cascade face detector.

    Images with a side over `max_side` are shrunk for detection (boxes are scaled back): a phone
    photo's faces are far larger than the 24-pixel minimum, and detection time grows with the pixel
    count. Boxes are returned left to right, then top to bottom, so face order is stable."""

    def __init__(
        self,
        cascade: str = DEFAULT_CASCADE,
        *,
        scale_factor: float = 1.1,
        min_neighbors: int = 5,
        min_size: int = 24,
        max_side: int = 1280,
    ):
        cv2 = import_cv2()
        self._cv2 = cv2
        self._classifier = cv2.CascadeClassifier(cascade_path(cv2, cascade))
        if self._classifier.empty():
            raise MissingDependencyError(f"OpenCV could not load the Haar cascade {cascade!r}")
        self.name = f"haar:{cascade}"
        self.scale_factor = scale_factor
        self.min_neighbors = min_neighbors
        self.min_size = min_size
        self.max_side = max_side

    def detect(self, gray: np.ndarray) -> list[Box]:
        gray = np.ascontiguousarray(gray, dtype=np.uint8)
        if gray.ndim != 2:
            raise ValueError(f"detect() takes a grayscale image [H, W], got shape {gray.shape}")
        scale = min(1.0, self.max_side / max(gray.shape))
        small = gray
        if scale < 1.0:
            size = (max(1, round(gray.shape[1] * scale)), max(1, round(gray.shape[0] * scale)))
            small = self._cv2.resize(gray, size, interpolation=self._cv2.INTER_AREA)
        found = self._classifier.detectMultiScale(
            small,
            scaleFactor=self.scale_factor,
            minNeighbors=self.min_neighbors,
            minSize=(self.min_size, self.min_size),
        )
        boxes = [Box(*(round(float(v) / scale) for v in b)) for b in np.reshape(found, (-1, 4))]
        return sorted(boxes, key=lambda b: (b.x, b.y))


DETECTORS = ("haar",)


def make_detector(name: str = "haar") -> FaceDetector:
    """A detector by name (`--detector`)."""
    if name == "haar":
        return HaarCascadeDetector()
    raise ValueError(f"unknown face detector {name!r}; choose one of {', '.join(DETECTORS)}")
