"""A detected face turned into a model input framed like a FER2013 face: a square crop of the box,
or, when the detector found landmarks, a crop rotated so that the eyes are level.

FER2013's 48x48 faces are square, grayscale and show the whole face with a little room around it:
the Haar detector's box on FER2013's own faces is centred and covers about four fifths of the image
side (benchmarks/RESULTS.md, "Faces in photos"). So the crop is the square centred on the detected box
with `margin` of the box side added on each side:
1 / (1 + 2 * 0.125) = 0.8 of the crop is the box.
Parts of the square outside the picture (a face at the edge) repeat the edge pixels rather than
adding black bars the models never saw. The square is resized like `fer_flax.inference.predict` resizes
whole images (Pillow's bilinear filter, which averages over the area when shrinking).

FER2013's faces are roughly level (the eyes' median tilt is 1 degree). A face found with landmarks
(a `FaceBox` from the `dnn` detector) is cropped the same way in the face's own frame (`aligned_crop`):
the square is turned by the eyes' angle, so a tilted face comes out level, and placed by the
landmarks alone, so its framing does not depend on the detector's box. On FER2013's faces the
distance from the eyes' midpoint to the mouth's is a median 0.409 of the image side, and the eyes'
midpoint lies at 0.503 of the width and 0.383 of the height (benchmarks/RESULTS.md, "Faces in
photos"): the crop's side is that distance / 0.409 and the eyes sit at (0.5, 0.383) of it. `margin`
scales it as it scales the box's square: the default gives FER2013's framing.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from fer_flax.data.splits import IMAGE_SIZE
from fer_flax.inference.faces.boxes import Box, Landmarks

FER2013_MARGIN = 0.125
RESAMPLE = Image.Resampling.BILINEAR
EYES_TO_MOUTH = 0.409  # of the side of a FER2013 face: from the eyes' midpoint to the mouth's
EYES_AT = (0.5, 0.383)  # where the eyes' midpoint sits in a FER2013 face, fractions of width, height


def square_around(box: Box, margin: float = FER2013_MARGIN) -> Box:
    """The square (integer pixels, possibly reaching outside the image) centred on `box`, of side
    max(width, height) * (1 + 2 * margin)."""
    if margin < 0:
        raise ValueError(f"margin must be >= 0, got {margin}")
    side = max(1, round(max(box.width, box.height) * (1 + 2 * margin)))
    cx, cy = box.x + box.width / 2, box.y + box.height / 2
    return Box(round(cx - side / 2), round(cy - side / 2), side, side)


def _edge_padded(pixels: np.ndarray, sq: Box) -> np.ndarray:
    """The pixels of square `sq`, edge pixels repeated where it leaves the image."""
    h, w = pixels.shape[:2]
    pad = (max(0, -sq.y), max(0, sq.y + sq.height - h), max(0, -sq.x), max(0, sq.x + sq.width - w))
    top, bottom = max(0, sq.y), min(h, sq.y + sq.height)
    left, right = max(0, sq.x), min(w, sq.x + sq.width)
    if top >= bottom or left >= right:
        raise ValueError(f"box {tuple(sq)} lies outside the {w}x{h} image")
    widths = ((pad[0], pad[1]), (pad[2], pad[3])) + ((0, 0),) * (pixels.ndim - 2)
    return np.pad(pixels[top:bottom, left:right], widths, mode="edge")


def _resize(patch: np.ndarray, height: int, width: int) -> np.ndarray:
    if patch.shape[:2] != (height, width):
        mode = "L" if patch.ndim == 2 else "RGB"
        patch = np.asarray(Image.fromarray(patch, mode).resize((width, height), RESAMPLE))
    return np.ascontiguousarray(patch, dtype=np.uint8)


def eye_angle(landmarks: Landmarks) -> float:
    """The eyes' tilt in radians, from the picture's left eye to its right one (clockwise positive,
    as image y points down); 0 for level eyes."""
    (lx, ly), (rx, ry) = landmarks.left_eye, landmarks.right_eye
    return float(np.arctan2(ry - ly, rx - lx))


def aligned_square(landmarks: Landmarks, margin: float = FER2013_MARGIN) -> tuple[float, float, float, float]:
    """(centre x, centre y, side, angle in radians) of the square framing the face like FER2013 in the
    face's own frame: turned by the eyes' angle, sized and placed from the eyes and the mouth."""
    if margin < 0:
        raise ValueError(f"margin must be >= 0, got {margin}")
    eyes = (np.asarray(landmarks.left_eye) + np.asarray(landmarks.right_eye)) / 2
    mouth = (np.asarray(landmarks.mouth_left) + np.asarray(landmarks.mouth_right)) / 2
    side = float(np.linalg.norm(mouth - eyes)) / EYES_TO_MOUTH * (1 + 2 * margin) / (1 + 2 * FER2013_MARGIN)
    side = max(side, 1.0)
    angle = eye_angle(landmarks)
    across, down = np.array([np.cos(angle), np.sin(angle)]), np.array([-np.sin(angle), np.cos(angle)])
    centre = eyes + side * ((0.5 - EYES_AT[0]) * across + (0.5 - EYES_AT[1]) * down)
    return float(centre[0]), float(centre[1]), side, angle


def _bilinear(image: np.ndarray, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """`image` sampled at pixel-centre coordinates (xs, ys), edge pixels beyond the border."""
    h, w = image.shape[:2]
    xs, ys = np.clip(xs, 0, w - 1), np.clip(ys, 0, h - 1)
    x0, y0 = np.floor(xs).astype(int), np.floor(ys).astype(int)
    x1, y1 = np.minimum(x0 + 1, w - 1), np.minimum(y0 + 1, h - 1)
    fx, fy = xs - x0, ys - y0
    if image.ndim == 3:
        fx, fy = fx[..., None], fy[..., None]
    img = image.astype(np.float32)
    top = img[y0, x0] * (1 - fx) + img[y0, x1] * fx
    bottom = img[y1, x0] * (1 - fx) + img[y1, x1] * fx
    return np.clip(np.round(top * (1 - fy) + bottom * fy), 0, 255).astype(np.uint8)


def aligned_crop(
    pixels: np.ndarray,
    landmarks: Landmarks,
    *,
    margin: float = FER2013_MARGIN,
    size: int | tuple[int, int] = IMAGE_SIZE,
) -> np.ndarray:
    """uint8 [height, width] (or [height, width, 3] from RGB): the face's `aligned_square`, eyes level,
    edges repeated outside the image. The region around it is first shrunk with Pillow's filter to
    twice the output size (so large faces are averaged, not aliased), then sampled bilinearly."""
    height, width = (size, size) if isinstance(size, int) else size
    cx, cy, side, angle = aligned_square(landmarks, margin)
    reach = side * (abs(np.cos(angle)) + abs(np.sin(angle))) / 2 + 2  # the turned square's half extent
    left, top = int(np.floor(cx - reach)), int(np.floor(cy - reach))
    region = Box(left, top, int(np.ceil(cx + reach)) - left, int(np.ceil(cy + reach)) - top)
    patch = _edge_padded(pixels, region)
    scale = min(1.0, 2 * max(height, width) / side)
    if scale < 1.0:
        patch = _resize(patch, max(2, round(patch.shape[0] * scale)), max(2, round(patch.shape[1] * scale)))
        scale_y, scale_x = patch.shape[0] / region.height, patch.shape[1] / region.width
    else:
        scale_y = scale_x = 1.0
    u = ((np.arange(width) + 0.5) / width - 0.5) * side
    v = ((np.arange(height) + 0.5) / height - 0.5) * side
    u, v = np.meshgrid(u, v)
    xs = cx + u * np.cos(angle) - v * np.sin(angle) - region.x
    ys = cy + u * np.sin(angle) + v * np.cos(angle) - region.y
    return _bilinear(patch, xs * scale_x - 0.5, ys * scale_y - 0.5)


def crop_face(
    pixels: np.ndarray,
    box: Box,
    *,
    margin: float = FER2013_MARGIN,
    size: int | tuple[int, int] = IMAGE_SIZE,
    align: bool = True,
) -> np.ndarray:
    """uint8 [height, width] (or [height, width, 3] from an RGB image [H, W, 3]): the square around
    `box` in `pixels`, edges repeated where it leaves the image, resized bilinearly to `size` (an int
    for a square, or (height, width)). A box with landmarks (`FaceBox`) is cropped by `aligned_crop`
    unless `align` is False."""
    landmarks = getattr(box, "landmarks", None)
    if align and landmarks is not None:
        return aligned_crop(pixels, landmarks, margin=margin, size=size)
    height, width = (size, size) if isinstance(size, int) else size
    return _resize(_edge_padded(pixels, square_around(box, margin)), height, width)
