"""fer_flax as a Python library: `Recognizer` finds the faces in images and classifies their
expressions, keeping the model loaded and compiled between calls.

    from fer_flax import Recognizer

    recognizer = Recognizer()                 # the bundled model; Recognizer(workdir=W) for any run
    faces = recognizer.predict("group.jpg")   # [Face(box, label, confidence, probabilities, landmarks)]
    per_image = recognizer.predict([frame_a, frame_b], channels="bgr")   # OpenCV frames: a list each

It goes the way `python -m fer_flax.predict` does (`photos.find_faces`: the detector, FER2013-framed
crops; `faces.classify.FaceClassifier`: the one inference path with the run's test-time
augmentation), from images in memory instead of files. All faces of one call go to the device together,
in batches padded to a power of two, so each batch shape is compiled once and reused by later calls.

Images: file paths, PIL images, or numpy arrays (uint8, or floats in [0, 1]): [H, W] grayscale,
[H, W, 1], [H, W, 3] RGB (`channels="bgr"` for OpenCV's frames) or [H, W, 4] with alpha. One image
gives a list of faces; a list (or tuple, or a 4-D array) of images gives one list per image.

It prints nothing: absl and JAX log lines below ERROR are held back while it loads and predicts.
`verbose=True` lets them through and adds a line per call (images, faces, time) on stderr, and a note
when the model was trained on the built-in synthetic faces (`trained_on_synthetic` says so either way).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging as std_logging
import os
import sys
import time
import warnings
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
from absl import logging as absl_logging
from PIL import Image

from fer_flax import cpu
from fer_flax.base.errors import check_choice
from fer_flax.data import sources
from fer_flax.data.spec import DataSpec
from fer_flax.inference import engine, image_io, photos
from fer_flax.inference.faces import crop as crop_lib
from fer_flax.inference.faces.classify import FaceClassifier, FacePrediction
from fer_flax.inference.faces.detect import Box, make_detector

CHANNEL_ORDERS: tuple[str, ...] = ("rgb", "bgr")
ImageInput = str | os.PathLike | Image.Image | np.ndarray


@dataclasses.dataclass(frozen=True)
class Face:
    """One face: its box in the image's pixels, the predicted label, its probability (`confidence`),
    every class's probability, the detector's landmarks ([(x, y), ...]; None when the detector gives
    none, as the Haar cascade), and the crop the model saw (uint8, the run's image shape)."""

    box: Box
    label: str
    confidence: float
    probabilities: dict[str, float]
    landmarks: tuple[tuple[float, float], ...] | None = None
    crop: np.ndarray | None = dataclasses.field(default=None, repr=False, compare=False)

    @classmethod
    def of(cls, prediction: FacePrediction, crop: np.ndarray) -> Face:
        points = getattr(prediction.box, "landmarks", None)
        landmarks = None if points is None else tuple((float(x), float(y)) for x, y in points)
        return cls(
            box=Box(*(int(v) for v in prediction.box[:4])),
            label=prediction.label,
            confidence=prediction.confidence,
            probabilities={
                n: float(p) for n, p in zip(prediction.class_names, prediction.probabilities, strict=True)
            },
            landmarks=landmarks,
            crop=crop,
        )

    def to_json(self) -> dict:
        """The face as `predict`'s JSON records give it (box, label, confidence, probabilities), with
        its landmarks."""
        box = dict(zip(("x", "y", "width", "height"), map(int, self.box), strict=True))
        landmarks = None if self.landmarks is None else [list(p) for p in self.landmarks]
        return {
            "box": box,
            "label": self.label,
            "confidence": self.confidence,
            "probabilities": dict(self.probabilities),
            "landmarks": landmarks,
        }


def _array_image(array: np.ndarray, channels: str) -> Image.Image:
    """A PIL image of a numpy image; ValueError saying what shapes and dtypes are taken."""
    if array.dtype != np.uint8:
        if not np.issubdtype(array.dtype, np.floating) or (
            array.size and not (np.nanmin(array) >= 0.0 and np.nanmax(array) <= 1.0)
        ):
            raise ValueError(
                f"a numpy image must be uint8 (0-255) or floating point in [0, 1], got {array.dtype}"
                + (f" with values in [{array.min()}, {array.max()}]" if array.size else "")
            )
        array = np.round(np.nan_to_num(array) * 255.0).astype(np.uint8)
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim == 2:
        return Image.fromarray(np.ascontiguousarray(array), mode="L")
    if array.ndim == 3 and array.shape[-1] in (3, 4):
        if channels == "bgr":  # OpenCV's order: BGR(A) -> RGB(A)
            array = np.concatenate([array[..., 2::-1], array[..., 3:]], axis=-1)
        return Image.fromarray(np.ascontiguousarray(array), mode="RGB" if array.shape[-1] == 3 else "RGBA")
    raise ValueError(
        f"a numpy image must be [H, W] grayscale or [H, W, C] with C = 1, 3 or 4, got shape {array.shape}"
    )


def to_image(item: Any, channels: str = "rgb") -> Image.Image:
    """An upright 8-bit PIL image of a path, PIL image or numpy array (`channels`: the order of a
    3- or 4-channel array's colours, "rgb" or "bgr")."""
    check_choice("channels", channels, CHANNEL_ORDERS)
    if isinstance(item, str | os.PathLike):
        return image_io.open_image(item)
    if isinstance(item, Image.Image):
        return image_io.upright_8bit(item)
    if isinstance(item, np.ndarray) or hasattr(item, "__array__"):
        return _array_image(np.asarray(item), channels)
    raise TypeError(f"an image is a file path, a PIL image or a numpy array, got {type(item).__name__}")


@contextlib.contextmanager
def _quiet(enabled: bool) -> Iterator[None]:
    """absl's and JAX's log lines below ERROR (Orbax's notes on the checkpoints it opens, JAX's on its
    backends) held back, and their levels restored afterwards."""
    if not enabled:
        yield
        return
    verbosity = absl_logging.get_verbosity()
    loggers = [std_logging.getLogger(name) for name in ("jax", "absl", "orbax")]
    levels = [lg.level for lg in loggers]
    absl_logging.set_verbosity(absl_logging.ERROR)
    for lg in loggers:
        lg.setLevel(std_logging.ERROR)
    try:
        yield
    finally:
        absl_logging.set_verbosity(verbosity)
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


class Recognizer:
    """Faces and their expressions in images, from a trained model kept warm between calls.

    workdir: a training workdir (or a list of them, an ensemble); None: the model bundled with
      fer_flax (`fer_flax.run.bundled`). checkpoint, weights: which of the run's checkpoints.
    tta: test-time augmentation, "none", "flip" or "tencrop" (default: the run's `eval_tta`).
    faces: "auto" finds the faces in every image except one of the model's input size (48x48), which
      is taken as a face crop; "detect" searches every image; "whole" takes each image as one face.
    detector: the face detector's name (`faces.detect.DETECTORS`). margin: the crop's margin around a
      detected face, of its side (FER2013's framing). fit: how a whole image becomes the model's size,
      "stretch" or "center_crop".
    channels: the colour order of 3- and 4-channel numpy arrays, "rgb" or "bgr" (OpenCV).
    batch_size: the most faces per device batch (default: the run's `eval_batch_size`).
    verbose: let log lines through and print a line per call and the synthetic-data note on stderr.
    """

    def __init__(
        self,
        workdir: str | os.PathLike | Sequence[str | os.PathLike] | None = None,
        *,
        checkpoint: str | int = "best",
        weights: str = "raw",
        tta: str | None = None,
        faces: str = "auto",
        detector: str = "auto",
        margin: float = crop_lib.FER2013_MARGIN,
        fit: str = "stretch",
        channels: str = "rgb",
        batch_size: int | None = None,
        verbose: bool = False,
    ):
        check_choice("faces", faces, photos.FACE_MODES)
        check_choice("channels", channels, CHANNEL_ORDERS)
        check_choice("fit", fit, image_io.FIT_MODES)
        self.faces, self.margin, self.fit, self.channels = faces, margin, fit, channels
        self.verbose = verbose
        workdirs = [] if workdir is None else [workdir] if isinstance(workdir, str | os.PathLike) else workdir
        with _quiet(not verbose):
            with warnings.catch_warnings():
                # The process-wide CPU settings take effect only before JAX starts; in a program that
                # already runs JAX they are skipped, which costs speed only.
                warnings.simplefilter("ignore", RuntimeWarning)
                cpu.configure_process()
            members = engine.load_members([os.fspath(w) for w in workdirs], checkpoint, weights=weights)
        config = members[0].config
        self.classifier = FaceClassifier(
            members,
            tta_mode=tta or config.eval_tta,
            crop_size=config.augment.crop_size,
            max_batch=batch_size,
        )
        self._detector = functools.cache(lambda: make_detector(detector))
        if verbose and self.trained_on_synthetic:
            print(sources.SYNTHETIC_MODEL_NOTICE, file=sys.stderr)

    @property
    def spec(self) -> DataSpec:
        """The classes, image size and channels of the model's training data."""
        return self.classifier.spec

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.spec.class_names

    @property
    def trained_on_synthetic(self) -> bool:
        """Whether a model was trained on the built-in synthetic faces (its labels for real faces mean
        nothing)."""
        return any(sources.resolve_format(m.config.data) == "synthetic" for m in self.classifier.members)

    def describe(self) -> list[dict]:
        """Each model's source: workdir (the bundled model's folder), architecture, checkpoint step."""
        return [m.describe() for m in self.classifier.members]

    def __repr__(self) -> str:
        models = ", ".join(
            f"{d['model_name']}/{d['variant']}" + (" (bundled)" if d["bundled"] else "")
            for d in self.describe()
        )
        return f"Recognizer({models}, tta={self.classifier.tta_mode!r}, faces={self.faces!r})"

    def predict(
        self,
        images: ImageInput | Sequence[ImageInput],
        *,
        faces: str | None = None,
        channels: str | None = None,
    ) -> list[Face] | list[list[Face]]:
        """The faces of one image (a list of `Face`), or of each image of a list, tuple or 4-D array (a
        list of such lists, in order). `faces` and `channels` override the recognizer's for this call.
        An image with no face found gives an empty list."""
        mode = faces or self.faces
        check_choice("faces", mode, photos.FACE_MODES)
        single = not isinstance(images, list | tuple) and not (
            isinstance(images, np.ndarray) and images.ndim == 4
        )
        items = [images] if single else list(images)
        start = time.perf_counter()
        with _quiet(not self.verbose):
            found = []
            for item in items:
                image = to_image(item, channels or self.channels)
                found.append(
                    photos.find_faces(
                        image,
                        faces=mode,
                        detector=self._detector,
                        classifier=self.classifier,
                        fit=self.fit,
                        margin=self.margin,
                    )[1:]
                )
            crops = np.concatenate([c for _, c in found]) if found else self.classifier.empty_crops()
            probabilities = self.classifier(crops)
        results, i = [], 0
        for boxes, image_crops in found:
            predictions = self.classifier.predictions(boxes, probabilities[i : i + len(boxes)])
            results.append([Face.of(p, c) for p, c in zip(predictions, image_crops, strict=True)])
            i += len(boxes)
        if self.verbose:
            seconds = time.perf_counter() - start
            line = f"recognizer: {len(items)} image(s), {len(crops)} face(s) in {seconds:.2f} s"
            print(line, file=sys.stderr)
        return results[0] if single else results
