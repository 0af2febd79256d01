"""Faces in photos: read every image, find its faces, crop them like FER2013, classify all crops in
batches through the one inference path, and write per-image outputs.

For each image, `analyze_photos` returns a JSON-able record

    {"path", "width", "height", "detector": name or null, "faces": [FacePrediction.to_json()],
     "note": "no face found" (only when there is none), "outputs": {kind: path} (with out_dir)}

and, given `out_dir`, writes `<stem>.json` (that record), `<stem>.annotated.png` (boxes, labels,
probability bars; `.jpg` for a JPEG input) and `<stem>.faces.png` (a contact sheet of the crops the
model saw).

Which images are searched for faces (`faces`):
  auto    every image except 48x48 ones, which are already FER2013-style face crops (as before
          detection existed, they are classified whole);
  detect  every image;
  whole   none: each image is one face crop, resized whole (`fit`).

Images are processed in chunks (up to `CHUNK_FACES` faces) so memory stays bounded on a folder of
large photos and each chunk's faces go through the model in one batch. Every input is read before
anything is kept: an unreadable file stops the command with an error naming it (all such files are
named) and, through `StagedOutputs`, no output is left behind.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from fer_flax.base.errors import check_choice
from fer_flax.inference import annotate, image_io
from fer_flax.inference.faces import crop as crop_lib
from fer_flax.inference.faces.detect import Box, FaceDetector
from fer_flax.run.staged_outputs import StagedOutputs

if TYPE_CHECKING:  # the classifier's module imports JAX: `predict --help` needs none
    from fer_flax.inference.faces.classify import FaceClassifier, FacePrediction

FACE_MODES: tuple[str, ...] = ("auto", "detect", "whole")
CHUNK_FACES = 64
CHUNK_IMAGES = 16


class PhotoInputError(ValueError):
    """One or more inputs could not be read; the message names each of them."""


@dataclasses.dataclass
class _Photo:
    path: str
    image: Image.Image
    detector: str | None
    boxes: list[Box]
    crops: np.ndarray  # uint8 [F, H, W(, 3)], the run's image shape


def find_faces(
    image: Image.Image,
    *,
    faces: str,
    detector: Callable[[], FaceDetector],
    classifier: FaceClassifier,
    fit: str = "stretch",
    margin: float = crop_lib.FER2013_MARGIN,
) -> tuple[str | None, list[Box], np.ndarray]:
    """(detector name or None, boxes, crops in the run's image shape) of one decoded image.
    `detector` makes the detector on first use, so folders of face crops at the run's size never need
    OpenCV. Faces are found in the grayscale image and cropped from it (or from the RGB image for a
    run trained on colour)."""
    check_choice("--faces", faces, FACE_MODES)
    spec = classifier.spec
    gray = image.convert("L")
    if faces == "whole" or (faces == "auto" and gray.size == spec.image_size[::-1]):
        whole = Box(0, 0, gray.width, gray.height)
        return None, [whole], image_io.fit_whole(image, fit, spec)[None]
    det = detector()
    pixels = np.asarray(gray, dtype=np.uint8)
    boxes = det.detect(pixels)
    source = pixels if spec.channels == 1 else image_io.to_rgb(image)
    return det.name, boxes, classifier.crop(source, boxes, margin)


def _record(photo: _Photo, predictions: list[FacePrediction]) -> dict:
    record = {
        "path": photo.path,
        "width": photo.image.width,
        "height": photo.image.height,
        "detector": photo.detector,
        "faces": [p.to_json() for p in predictions],
    }
    if not predictions:
        record["note"] = "no face found"
    return record


def _write_outputs(
    out: StagedOutputs, photo: _Photo, predictions: list[FacePrediction], record: dict
) -> None:
    stem = os.path.splitext(os.path.basename(photo.path))[0]
    json_name = out.unique_name(stem, ".json")
    base = json_name[: -len(".json")]
    outputs = {}
    if predictions:
        annotated = Image.fromarray(annotate.draw_faces(image_io.to_rgb(photo.image), predictions))
        if photo.path.lower().endswith((".jpg", ".jpeg")):  # a photo stays a JPEG: 10x smaller, faster
            outputs["annotated"] = f"{base}.annotated.jpg"
            annotated.save(out.path(outputs["annotated"]), quality=92)
        else:
            outputs["annotated"] = f"{base}.annotated.png"
            annotated.save(out.path(outputs["annotated"]), compress_level=1)
        outputs["faces"] = f"{base}.faces.png"
        Image.fromarray(annotate.contact_sheet(photo.crops, predictions)).save(out.path(outputs["faces"]))
    outputs["record"] = json_name
    record["outputs"] = {kind: out.final_path(name) for kind, name in outputs.items()}
    with open(out.path(json_name), "w") as f:
        json.dump(record, f, indent=2)


class _Progress:
    def __init__(self, total: int, log: Callable[[str], None]):
        self.total, self.log, self.start = total, log, time.perf_counter()
        self.images = self.faces = 0

    def add(self, images: int, faces: int) -> None:
        self.images += images
        self.faces += faces
        rate = self.images / max(time.perf_counter() - self.start, 1e-9)
        self.log(f"predict: {self.images}/{self.total} images, {self.faces} faces ({rate:.1f} images/s)")


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def analyze_photos(
    paths: Sequence[str],
    classifier: FaceClassifier,
    *,
    detector: Callable[[], FaceDetector],
    faces: str = "auto",
    fit: str = "stretch",
    margin: float = crop_lib.FER2013_MARGIN,
    out_dir: str | None = None,
    log: Callable[[str], None] = _stderr,
) -> list[dict]:
    """One record per image file in `paths` (folders searched recursively), in order; see the module
    docstring. Raises PhotoInputError naming every unreadable file, leaving no outputs."""
    check_choice("--faces", faces, FACE_MODES)
    files = image_io.collect_inputs(paths)
    if not files:
        raise PhotoInputError(f"no PNG/JPEG images found in {', '.join(map(str, paths))}")
    records: list[dict] = []
    errors: list[str] = []
    pending: list[_Photo] = []
    progress = _Progress(len(files), log)
    out = StagedOutputs(out_dir) if out_dir is not None else None
    with out or contextlib.nullcontext():

        def flush() -> None:
            crops = np.concatenate([p.crops for p in pending])
            probs = iter(classifier(crops))
            for photo in pending:
                predictions = classifier.predictions(photo.boxes, [next(probs) for _ in photo.boxes])
                record = _record(photo, predictions)
                if out is not None:
                    _write_outputs(out, photo, predictions, record)
                records.append(record)
            progress.add(len(pending), len(crops))
            pending.clear()

        for path in files:
            try:
                image = image_io.open_image(path)
            except image_io.ImageReadError as e:
                errors.append(str(e))
                continue
            if errors:  # the command will fail: only check that the remaining files can be read
                continue
            name, boxes, crops = find_faces(
                image, faces=faces, detector=detector, classifier=classifier, fit=fit, margin=margin
            )
            pending.append(_Photo(path, image, name, boxes, crops))
            if sum(len(p.boxes) for p in pending) >= CHUNK_FACES or len(pending) >= CHUNK_IMAGES:
                flush()
        if errors:
            raise PhotoInputError(
                f"{len(errors)} of {len(files)} input(s) cannot be read, so nothing was written:\n  "
                + "\n  ".join(errors)
            )
        if pending:
            flush()
        if out is not None:
            out.commit()
    return records
