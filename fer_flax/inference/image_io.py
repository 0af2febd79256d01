"""Reading user images (photos, face crops) with Pillow, the same way for every command.

`open_image` decodes a PNG/JPEG/any Pillow format fully, applies its EXIF orientation (phone photos
are often stored rotated) and turns 16-bit grayscale into 8 bits by scaling (Pillow's `convert("L")`
would clip at 255). Grayscale is Pillow's `convert("L")` (ITU-R 601-2 luma,
L = 0.299 R + 0.587 G + 0.114 B) with alpha dropped, as the FER2013 folder reader does.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageOps

from fer_flax.base.errors import check_choice
from fer_flax.data.image_folders import IMAGE_EXTENSIONS
from fer_flax.data.spec import FER2013, DataSpec

RESAMPLE = Image.Resampling.BILINEAR
FIT_MODES: tuple[str, ...] = ("stretch", "center_crop")


class ImageReadError(ValueError):
    """An input image that cannot be read; the message names the file and the reason."""


def open_image(path: str | os.PathLike) -> Image.Image:
    """The decoded image, upright, 8 bits per channel; ImageReadError naming `path` otherwise."""
    try:
        with Image.open(path) as im:
            im.load()
            return upright_8bit(im)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        # Pillow reports unreadable and truncated files as OSError (UnidentifiedImageError) and some
        # malformed headers as ValueError or SyntaxError.
        raise ImageReadError(f"{path}: cannot read image ({type(e).__name__}: {e})") from e


def upright_8bit(im: Image.Image) -> Image.Image:
    """`im` turned upright by its EXIF orientation, 16-bit grayscale scaled to 8 bits (an image
    decoded elsewhere, e.g. a PIL image handed to the Python API, gets what `open_image` does)."""
    im = ImageOps.exif_transpose(im)
    if im.mode == "I" or im.mode.startswith("I;16"):
        # 16-bit grayscale PNG (Pillow opens it as I;16, or I in older versions).
        wide = np.asarray(im, dtype=np.float64)
        im = Image.fromarray(np.round(wide / 257.0).astype(np.uint8), mode="L")
    im.load()
    return im


def to_gray(im: Image.Image) -> np.ndarray:
    """uint8 [H, W] luma of `im`."""
    return np.asarray(im.convert("L"), dtype=np.uint8)


def to_rgb(im: Image.Image) -> np.ndarray:
    """uint8 [H, W, 3] of `im` (grayscale repeated, alpha dropped)."""
    return np.asarray(im.convert("RGB"), dtype=np.uint8)


def fit_whole(image: Image.Image, fit: str = "stretch", spec: DataSpec = FER2013) -> np.ndarray:
    """uint8 face of `spec`'s size and colour ([H, W] grayscale for 1 channel, [H, W, 3] RGB for 3)
    from a whole image that is already a face crop: `stretch` resizes it as it is (as FER2013's crops
    were made), `center_crop` takes the largest centred box of the spec's aspect ratio first.
    Pillow's bilinear filter widens with the reduction factor, so a large image is area-averaged."""
    if fit not in FIT_MODES:
        check_choice("--fit", fit, FIT_MODES)
    image = image.convert("L" if spec.channels == 1 else "RGB")
    height, width = spec.image_size
    if fit == "center_crop" and image.width * height != image.height * width:
        scale = min(image.width / width, image.height / height)
        box_w, box_h = round(width * scale), round(height * scale)
        left, top = (image.width - box_w) // 2, (image.height - box_h) // 2
        image = image.crop((left, top, left + box_w, top + box_h))
    if image.size != (width, height):
        image = image.resize((width, height), RESAMPLE)
    return np.asarray(image, dtype=np.uint8)


def collect_inputs(paths: Sequence[str], extensions: tuple[str, ...] = IMAGE_EXTENSIONS) -> list[str]:
    """Files in the order given; folders expanded recursively (sorted) to their files with one of
    `extensions` (hidden files and folders skipped). A path that does not exist is kept, so it gets
    its own error."""
    out: list[str] = []
    for p in paths:
        if not os.path.isdir(p):
            out.append(p)
            continue
        found = []
        for dirpath, dirnames, filenames in os.walk(p):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for name in filenames:
                if not name.startswith(".") and name.lower().endswith(extensions):
                    found.append(os.path.join(dirpath, name))
        out.extend(sorted(found))
    return out
