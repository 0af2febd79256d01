"""A detected face turned into a model input framed like a FER2013 face.

FER2013's 48x48 faces are square, grayscale and show the whole face with a little room around it:
the Haar detector's box on FER2013's own faces is centred and covers about four fifths of the image
side (benchmarks/RESULTS.md, "Faces in photos"). So the crop is the square centred on the detected box
with `margin` of the box side added on each side:
1 / (1 + 2 * 0.125) = 0.8 of the crop is the box.
Parts of the square outside the picture (a face at the edge) repeat the edge pixels rather than
adding black bars the models never saw. The square is resized like `fer_flax.inference.predict` resizes
whole images (Pillow's bilinear filter, which averages over the area when shrinking).
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from fer_flax.data.splits import IMAGE_SIZE
from fer_flax.inference.faces.detect import Box

FER2013_MARGIN = 0.125
RESAMPLE = Image.Resampling.BILINEAR


def square_around(box: Box, margin: float = FER2013_MARGIN) -> Box:
    """The square (integer pixels, possibly reaching outside the image) centred on `box`, of side
    max(width, height) * (1 + 2 * margin)."""
    if margin < 0:
        raise ValueError(f"margin must be >= 0, got {margin}")
    side = max(1, round(max(box.width, box.height) * (1 + 2 * margin)))
    cx, cy = box.x + box.width / 2, box.y + box.height / 2
    return Box(round(cx - side / 2), round(cy - side / 2), side, side)


def crop_face(
    pixels: np.ndarray,
    box: Box,
    *,
    margin: float = FER2013_MARGIN,
    size: int | tuple[int, int] = IMAGE_SIZE,
) -> np.ndarray:
    """uint8 [height, width] (or [height, width, 3] from an RGB image [H, W, 3]): the square around
    `box` in `pixels`, edges repeated where it leaves the image, resized bilinearly to `size` (an int
    for a square, or (height, width))."""
    height, width = (size, size) if isinstance(size, int) else size
    sq = square_around(box, margin)
    h, w = pixels.shape[:2]
    pad = (max(0, -sq.y), max(0, sq.y + sq.height - h), max(0, -sq.x), max(0, sq.x + sq.width - w))
    top, bottom = max(0, sq.y), min(h, sq.y + sq.height)
    left, right = max(0, sq.x), min(w, sq.x + sq.width)
    if top >= bottom or left >= right:
        raise ValueError(f"box {tuple(box)} lies outside the {w}x{h} image")
    widths = ((pad[0], pad[1]), (pad[2], pad[3])) + ((0, 0),) * (pixels.ndim - 2)
    patch = np.pad(pixels[top:bottom, left:right], widths, mode="edge")
    if patch.shape[:2] != (height, width):
        mode = "L" if patch.ndim == 2 else "RGB"
        patch = np.asarray(Image.fromarray(patch, mode).resize((width, height), RESAMPLE))
    return np.ascontiguousarray(patch, dtype=np.uint8)
