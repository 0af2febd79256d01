"""Face detectors behind one small interface, `FaceDetector` (`boxes`): grayscale image in, boxes out.

Two detectors, chosen by name with `make_detector` (`--detector`):
- `haar`: OpenCV's Haar cascade (`haarcascade_frontalface_alt2.xml`), whose weights are files inside
  the `opencv-python-headless` 4.x wheel: nothing is downloaded at run time. Of the frontal-face
  cascades in that wheel, alt2 with 5 neighbours is the one that finds the face in scikit-image's
  astronaut photo and no face in its other sample pictures (coins, cells and gravel fool
  `haarcascade_frontalface_default.xml`). It finds frontal and near-frontal faces from 24 pixels
  up; profiles and faces tilted by 20 degrees or more are mostly missed.
- `dnn`: MTCNN (`fer_flax.inference.faces.mtcnn`), which also finds five landmarks, from about 20
  pixels up, tilted by up to 30 degrees and turned half away (benchmarks/RESULTS.md, "Faces in
  photos"). Its weights come with the `faces-dnn` extra.
- `auto` (the default): `dnn` where its extra is installed, else `haar`.

OpenCV is an optional extra (`pip install -e ".[photos]"` in the repository); `import_cv2` imports it
lazily and says which extra to install when it is missing.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import numpy as np

from fer_flax.base.extras import install_extra

# The shared types are imported from here too (`Box` has always lived in this module).
from fer_flax.inference.faces.boxes import Box as Box
from fer_flax.inference.faces.boxes import FaceBox as FaceBox
from fer_flax.inference.faces.boxes import FaceDetector as FaceDetector
from fer_flax.inference.faces.boxes import Landmarks as Landmarks
from fer_flax.inference.faces.boxes import MissingDependencyError as MissingDependencyError

PHOTOS_EXTRA = "photos"
DEFAULT_CASCADE = "haarcascade_frontalface_alt2.xml"


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


DETECTORS = ("auto", "haar", "dnn")


def make_detector(name: str = "auto", log: Callable[[str], None] | None = None) -> FaceDetector:
    """A detector by name (`--detector`): `haar`, `dnn`, or `auto`, which takes `dnn` when its extra is
    installed and says through `log` which one it took (once per call: callers make one detector)."""
    if name == "haar":
        return HaarCascadeDetector()
    if name == "dnn":
        from fer_flax.inference.faces.mtcnn import MtcnnDetector

        return MtcnnDetector()
    if name != "auto":
        raise ValueError(f"unknown face detector {name!r}; choose one of {', '.join(DETECTORS)}")
    try:
        detector = make_detector("dnn")
    except MissingDependencyError as e:
        detector = HaarCascadeDetector()
        reason = f"the dnn detector is not installed: {e}"
    else:
        reason = "its weights are installed"
    if log is not None:
        log(f"face detector: {detector.name} ({reason})")
    return detector
