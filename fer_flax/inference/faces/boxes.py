"""What every face detector shares: the `FaceDetector` interface and what it returns.

A detector takes a uint8 grayscale image [H, W] and returns `Box`es (left, top, width, height in
that image's pixels). A detector that also finds facial landmarks returns `FaceBox`es: the same
4-tuples, carrying the five points and the detector's score as attributes, so everything written for
plain boxes (tracking, CSV columns, drawing) takes them unchanged and crops can level the eyes
(`fer_flax.inference.faces.crop`).
"""

from __future__ import annotations

from typing import NamedTuple, Protocol

import numpy as np


class MissingDependencyError(ImportError):
    """An optional dependency is not installed; the message names the extra that installs it."""


class Box(NamedTuple):
    """A face's box in image pixels: left, top, width, height."""

    x: int
    y: int
    width: int
    height: int


class Landmarks(NamedTuple):
    """Five points of a face, (x, y) in image pixels; left and right as seen in the picture (the
    left eye is the person's right eye)."""

    left_eye: tuple[float, float]
    right_eye: tuple[float, float]
    nose: tuple[float, float]
    mouth_left: tuple[float, float]
    mouth_right: tuple[float, float]


class FaceBox(Box):
    """A `Box` from a detector that also finds landmarks: still the 4-tuple (x, y, width, height)
    wherever a Box goes (unpacking, equality, IoU, CSV columns), with the face's `landmarks` and the
    detector's `score` as attributes beside it. Crops use the landmarks to level the eyes."""

    landmarks: Landmarks | None = None
    score: float | None = None

    def __new__(
        cls,
        x: int,
        y: int,
        width: int,
        height: int,
        landmarks: Landmarks | None = None,
        score: float | None = None,
    ) -> FaceBox:
        self = super().__new__(cls, x, y, width, height)
        self.landmarks, self.score = landmarks, score
        return self

    def __repr__(self) -> str:
        box = f"x={self.x}, y={self.y}, width={self.width}, height={self.height}"
        return f"FaceBox({box}, score={self.score})"


class FaceDetector(Protocol):
    """Finds faces in a uint8 grayscale image [H, W]; boxes in that image's pixels (`FaceBox`es with
    landmarks from a detector that finds them)."""

    name: str

    def detect(self, gray: np.ndarray) -> list[Box]: ...
