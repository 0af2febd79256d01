"""A live window: camera frames with each face's box, label and probability bars.

Needs the GUI build of OpenCV (`pip install -e ".[webcam]"`, which installs `opencv-python`; it
replaces the headless build of the `photos` extra, which has no windows), a display and a camera.
`check_available` says which of the three is missing before any model is loaded. Press q or Esc (or
close the window) to stop.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from fer_flax.base.extras import install_extra
from fer_flax.inference import annotate
from fer_flax.inference.faces import crop as crop_lib
from fer_flax.inference.faces.detect import FaceDetector, import_cv2

if TYPE_CHECKING:  # the classifier's module imports JAX: `predict --help` needs none
    from fer_flax.inference.faces.classify import FaceClassifier

WEBCAM_EXTRA = "webcam"
WINDOW = "fer_flax (q to quit)"


class WebcamUnavailable(RuntimeError):
    """No GUI OpenCV, no display or no camera; the message says which and what to do."""


def gui_backend(cv2) -> str:
    """The GUI backend OpenCV was built with ("NONE" for the headless wheels)."""
    found = re.search(r"^\s*GUI:\s*(\S+)", cv2.getBuildInformation(), re.MULTILINE)
    return found.group(1) if found else "UNKNOWN"


def check_available(index: int):
    """The opened camera `index` (a cv2.VideoCapture), or WebcamUnavailable saying what is missing."""
    cv2 = import_cv2(extra=WEBCAM_EXTRA, purpose="the webcam window")
    if gui_backend(cv2) == "NONE":
        raise WebcamUnavailable(
            f"--webcam needs a build of OpenCV with windows; this one ({cv2.__version__}) is headless. "
            f"pip uninstall opencv-python-headless && {install_extra(WEBCAM_EXTRA)}"
        )
    has_display = os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")
    if sys.platform.startswith("linux") and not has_display:
        raise WebcamUnavailable("--webcam needs a display (neither DISPLAY nor WAYLAND_DISPLAY is set)")
    camera = cv2.VideoCapture(index)
    if not camera.isOpened():
        raise WebcamUnavailable(f"--webcam {index}: cannot open camera {index} (none there, or in use)")
    return camera


def run(
    camera,
    classifier: FaceClassifier,
    detector: FaceDetector,
    *,
    margin: float = crop_lib.FER2013_MARGIN,
    max_frames: int | None = None,
    log: Callable[[str], None] = lambda m: print(m, file=sys.stderr, flush=True),
) -> int:
    """Shows annotated camera frames until q/Esc, the window closing or `max_frames`; returns the
    number of frames shown."""
    cv2 = import_cv2(extra=WEBCAM_EXTRA, purpose="the webcam window")
    shown = 0
    log("webcam: press q or Esc in the window to stop")
    try:
        while max_frames is None or shown < max_frames:
            ok, bgr = camera.read()
            if not ok:
                log("webcam: the camera stopped sending frames")
                break
            rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
            gray = np.asarray(Image.fromarray(rgb).convert("L"))
            boxes = detector.detect(gray)
            source = gray if classifier.spec.channels == 1 else rgb
            faces = classifier.predictions(boxes, classifier(classifier.crop(source, boxes, margin)))
            cv2.imshow(WINDOW, cv2.cvtColor(annotate.draw_faces(rgb, faces), cv2.COLOR_RGB2BGR))
            shown += 1
            key = cv2.waitKey(1) & 0xFF
            if key in (ord("q"), 27) or cv2.getWindowProperty(WINDOW, cv2.WND_PROP_VISIBLE) < 1:
                break
    finally:
        camera.release()
        cv2.destroyAllWindows()
    return shown
