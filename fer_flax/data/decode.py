"""One image file's bytes -> a uint8 array of a data set's size and channel count, strictly checked.

Shared by the image-folder reader and the FER+ reader. Without `convert`, an image must already have
the expected size, and for a grayscale set (1 channel) its colour channels must be equal (RGB, RGBA,
LA, P and 1-bit images with equal channels are accepted; alpha is ignored). With `convert`, images of
another size are resized (bilinear) and colour images are turned grayscale (ITU-R 601 luma), for sets
such as AffectNet whose images vary. A 3-channel set takes any image as RGB (grayscale replicated).
"""

from __future__ import annotations

import io
from collections.abc import Callable

import numpy as np
from PIL import Image

_COLOUR_MODES = ("RGB", "RGBA", "LA", "P", "1")


def decode_image(
    data: bytes,
    *,
    size: tuple[int, int],
    channels: int,
    convert: bool,
    fail: Callable[[str], Exception],
) -> np.ndarray:
    """uint8 [H, W] for `channels` 1, [H, W, 3] for 3, where `size` is (H, W). `fail(problem)` builds the
    exception raised for a bad image (naming the file or archive member)."""
    height, width = size
    try:
        im = Image.open(io.BytesIO(data))
    except Exception as e:  # PIL raises many types (OSError, SyntaxError, ValueError, ...)
        raise fail(f"cannot decode image ({type(e).__name__}: {e})") from e
    with im:
        # The size is known from the header: checking it before decoding means a corrupt header
        # claiming a huge image is rejected without decoding (or allocating) it.
        if im.size != (width, height) and not convert:
            raise fail(
                f"image is {im.size[0]}x{im.size[1]}, expected {width}x{height} "
                "(width x height; config.data.convert_images=True resizes)"
            )
        try:
            im.load()
        except Exception as e:
            raise fail(f"cannot decode image ({type(e).__name__}: {e})") from e
        mode = im.mode
        if mode != "L" and mode not in _COLOUR_MODES:
            raise fail(f"unsupported image mode {mode!r} (need grayscale or RGB)")
        if channels == 3:
            im = im.convert("RGB")
        elif mode != "L" and convert:
            im = im.convert("L")
        if im.size != (width, height):
            im = im.resize((width, height), Image.Resampling.BILINEAR)
        if channels == 3 or im.mode == "L":
            return np.asarray(im, dtype=np.uint8)
        rgb = np.asarray(im.convert("RGB"), dtype=np.uint8)
    if not ((rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all()):
        raise fail(
            f"{mode} image is not grayscale (its colour channels differ); set config.data.channels=3 "
            "to train on colour, or config.data.convert_images=True to convert it"
        )
    return np.ascontiguousarray(rgb[..., 0])
