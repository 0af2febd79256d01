"""Real photographs with known faces, for the face tests: scikit-image's sample data (shipped inside
its wheel, nothing downloaded) and pictures composed from it.

- `astronaut()`: NASA's portrait of Eileen Collins (public domain), one face.
- `no_face_photos()`: sample photos with no human face (coffee, a cat, a rocket).
- `lfw_face(i)`: the first 100 images of scikit-image's `lfw_subset.npy` are 25x25 face crops from
  Labeled Faces in the Wild.
- `group_picture()`: four of those faces at different sizes and positions on the coffee photo.
- `write_face_clip()`: a short video of two faces, one moving, one still.
- `tilted_astronaut(degrees)`: the astronaut photo turned about her face; `turned_point` follows a
  point (her eyes, `ASTRONAUT_EYES`) through the turn.
- `cameraman()`: scikit-image's cameraman, a face turned half away (`CAMERAMAN_FACE`).
- `paste_faces()`: faces pasted at given centres, sizes and tilts on a background.
- `lfw_non_face(i)`: the last 100 images of `lfw_subset.npy` are 25x25 patches without a face.
"""

from __future__ import annotations

import functools
import os

import numpy as np
import pytest
from PIL import Image

skimage_data = pytest.importorskip("skimage.data")

ASTRONAUT_FACE = (172, 61, 282, 171)  # a square around the face in astronaut(), (left, top, right, bottom)
ASTRONAUT_CENTRE = (227.0, 116.0)  # the centre of that square
ASTRONAUT_EYES = ((204.0, 101.0), (246.0, 103.0))  # her pupils, read off the photo enlarged 8x
# The cameraman's face, turned about 60 degrees to the picture's right (one eye hidden behind the
# camera), read off the photo: (left, top, side).
CAMERAMAN_FACE = (192, 122, 68)
# Faces of the LFW subset turned half away (about 30 to 45 degrees), chosen by looking at all 100.
HALF_PROFILES = (30, 40, 55, 74, 75, 99)


def astronaut() -> Image.Image:
    return Image.fromarray(skimage_data.astronaut())


def no_face_photos() -> dict[str, Image.Image]:
    return {
        "coffee": Image.fromarray(skimage_data.coffee()),
        "chelsea": Image.fromarray(skimage_data.chelsea()),
        "rocket": Image.fromarray(skimage_data.rocket()),
    }


@functools.cache
def _lfw() -> np.ndarray:
    import skimage

    path = os.path.join(os.path.dirname(skimage.__file__), "data", "lfw_subset.npy")
    return (np.load(path)[:100] * 255).round().astype(np.uint8)


def lfw_face(i: int) -> Image.Image:
    return Image.fromarray(_lfw()[i]).convert("RGB")


def lfw_non_face(i: int) -> Image.Image:
    """Patch `i` (0..99) of the LFW subset's non-face half."""
    import skimage

    path = os.path.join(os.path.dirname(skimage.__file__), "data", "lfw_subset.npy")
    return Image.fromarray((np.load(path)[100 + i] * 255).round().astype(np.uint8)).convert("RGB")


def cameraman() -> Image.Image:
    return Image.fromarray(skimage_data.camera()).convert("RGB")


def tilted_astronaut(degrees: float) -> Image.Image:
    """astronaut() turned counter-clockwise by `degrees` about her face's centre (corners black)."""
    return astronaut().rotate(degrees, Image.Resampling.BICUBIC, center=ASTRONAUT_CENTRE)


def turned_point(point, degrees: float, centre=ASTRONAUT_CENTRE) -> tuple[float, float]:
    """Where `point` (x, y) goes when the picture turns counter-clockwise by `degrees` about `centre`."""
    a = np.radians(degrees)
    dx, dy = point[0] - centre[0], point[1] - centre[1]
    return centre[0] + dx * np.cos(a) + dy * np.sin(a), centre[1] - dx * np.sin(a) + dy * np.cos(a)


def paste_faces(background: Image.Image, faces, places) -> Image.Image:
    """`background` with each face resized to `side` and turned counter-clockwise by `degrees`,
    centred at (x, y): places are (x, y, side, degrees). The turned square's corners stay background."""
    canvas = background.convert("RGB").copy()
    for face, (x, y, side, degrees) in zip(faces, places, strict=True):
        square = face.convert("RGB").resize((side, side), Image.Resampling.BICUBIC)
        mask = Image.new("L", square.size, 255)
        if degrees:
            square = square.rotate(degrees, Image.Resampling.BICUBIC, expand=True)
            mask = mask.rotate(degrees, Image.Resampling.BICUBIC, expand=True)
        canvas.paste(square, (round(x - square.width / 2), round(y - square.height / 2)), mask)
    return canvas


# (left, top, side) of each pasted face in group_picture(); faces: astronaut, then LFW 0, 1, 2.
GROUP_PLACES = ((40, 60, 150), (260, 40, 70), (380, 250, 110), (560, 120, 90))


def group_picture() -> Image.Image:
    """720x480: the coffee photo with four real faces pasted at 70 to 150 pixels."""
    canvas = Image.fromarray(skimage_data.coffee()).resize((720, 480))
    faces = [astronaut().crop(ASTRONAUT_FACE), lfw_face(0), lfw_face(1), lfw_face(2)]
    for face, (x, y, side) in zip(faces, GROUP_PLACES, strict=True):
        canvas.paste(face.resize((side, side), Image.Resampling.BICUBIC), (x, y))
    return canvas


CLIP_FRAMES = 10
CLIP_SIZE = (320, 240)


def write_face_clip(path: str, fps: float = 10.0) -> list[tuple[int, int, int]]:
    """A CLIP_FRAMES-frame MJPG .avi: the astronaut's face (96 px) moving right 6 px a frame and an
    LFW face (80 px) standing still. Returns the moving face's (left, top, side) per frame."""
    import cv2

    writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"MJPG"), fps, CLIP_SIZE)
    assert writer.isOpened()
    mover = astronaut().crop(ASTRONAUT_FACE).resize((96, 96), Image.Resampling.BICUBIC)
    still = lfw_face(2).resize((80, 80), Image.Resampling.BICUBIC)
    places = []
    for t in range(CLIP_FRAMES):
        frame = Image.new("RGB", CLIP_SIZE, (120, 130, 140))
        frame.paste(still, (220, 140))
        frame.paste(mover, (10 + 6 * t, 20))
        places.append((10 + 6 * t, 20, 96))
        writer.write(cv2.cvtColor(np.asarray(frame), cv2.COLOR_RGB2BGR))
    writer.release()
    return places
