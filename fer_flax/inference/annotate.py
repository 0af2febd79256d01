"""Pictures of predictions, drawn with Pillow: boxes, labels and probability bars on a photo or a
video frame, and a contact sheet of the face crops that were classified."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

# One colour per class in label order (FER2013's angry, disgust, fear, happy, sad, surprise, neutral),
# distinct on photos; a data set with more classes takes them from the extra colours below, cycling.
CLASS_COLORS: tuple[tuple[int, int, int], ...] = (
    (230, 57, 70),
    (106, 153, 78),
    (155, 93, 229),
    (255, 190, 11),
    (58, 134, 255),
    (255, 0, 110),
    (200, 200, 200),
)
EXTRA_COLORS: tuple[tuple[int, int, int], ...] = ((0, 187, 249), (241, 91, 181), (254, 228, 64))


def class_colors(num_classes: int) -> list[tuple[int, int, int]]:
    """A colour per class in label order (the palette repeats past its 10 colours)."""
    palette = CLASS_COLORS + EXTRA_COLORS
    return [palette[k % len(palette)] for k in range(num_classes)]


def class_color(face, k: int | None = None) -> tuple[int, int, int]:
    """The colour of class `k` (default: the face's top class) among the face's classes."""
    k = face.class_names.index(face.label) if k is None else k
    return class_colors(k + 1)[k]


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=max(8, size))


def _label(draw: ImageDraw.ImageDraw, xy: tuple[int, int], text: str, color, font) -> None:
    left, top, right, bottom = draw.textbbox(xy, text, font=font)
    draw.rectangle((left - 2, top - 1, right + 2, bottom + 1), fill=color)
    draw.text(xy, text, fill=(0, 0, 0), font=font)


def _bar_row(font) -> int:
    return round(getattr(font, "size", 10)) + 2


def _bars(draw: ImageDraw.ImageDraw, x: int, y: int, width: int, face, font) -> None:
    """One horizontal bar per class (its length the probability) in a dark panel."""
    row = _bar_row(font)
    text_w = round(draw.textlength("neu", font=font)) + 6
    draw.rectangle((x, y, x + width, y + row * len(face.probabilities) + 2), fill=(20, 20, 20))
    for k, p in enumerate(face.probabilities):
        top = y + 1 + k * row
        if text_w:
            draw.text((x + 2, top), face.class_names[k][:3], fill=(235, 235, 235), font=font)
        span = max(0, width - text_w - 4)
        draw.rectangle((x + 2 + text_w, top + 1, x + 2 + text_w + round(span * float(p)), top + row - 2),
                       fill=class_color(face, k))  # fmt: skip


def _panel_place(box, panel: tuple[int, int], image: tuple[int, int], *, gap: int, above: int):
    """Where the bars go: under the box, else right of it, left of it, above its label; the first
    place that fits in the picture (else under the box, clipped)."""
    pw, ph = panel
    places = (
        (box.x, box.y + box.height + gap),
        (box.x + box.width + gap, box.y),
        (box.x - pw - gap, box.y),
        (box.x, box.y - above - ph - gap),
    )
    for x, y in places:
        if x >= 0 and y >= 0 and x + pw <= image[0] and y + ph <= image[1]:
            return x, y
    return max(0, box.x), max(0, min(places[0][1], image[1] - ph))


def draw_faces(rgb: np.ndarray, faces: Sequence, *, titles: Sequence[str] | None = None) -> np.ndarray:
    """A copy of `rgb` [H, W, 3] with each face's box (and landmarks, where the detector found them),
    "label confidence" (prefixed by its title, e.g. a track id) and a probability bar per class beside
    the box (under it where it fits)."""
    im = Image.fromarray(np.asarray(rgb, dtype=np.uint8), "RGB")
    draw = ImageDraw.Draw(im)
    h, w = rgb.shape[:2]
    line = max(2, round(min(h, w) / 250))
    for i, face in enumerate(faces):
        b, color = face.box, class_color(face)
        font = _font(round(min(max(b.height * 0.16, 11), 28)))
        draw.rectangle((b.x, b.y, b.x + b.width, b.y + b.height), outline=color, width=line)
        for px, py in getattr(b, "landmarks", None) or ():  # eyes, nose, mouth corners: a dot each
            draw.ellipse((px - line, py - line, px + line, py + line), fill=color)
        title = f"{titles[i]} " if titles else ""
        text = f"{title}{face.label} {face.confidence:.2f}"
        text_h = draw.textbbox((0, 0), text, font=font)[3] + 2
        _label(draw, (b.x + 1, max(0, b.y - text_h - line)), text, color, font)
        bar_font = _font(round(min(max(b.height * 0.11, 9), 16)))
        panel = (max(b.width, 60), _bar_row(bar_font) * len(face.probabilities) + 2)
        x, y = _panel_place(b, panel, (w, h), gap=line, above=text_h + line)
        _bars(draw, x, y, panel[0], face, bar_font)
    return np.asarray(im)


def contact_sheet(crops: np.ndarray, faces: Sequence, *, scale: int = 2, columns: int = 8) -> np.ndarray:
    """The classified crops [N, H, W(, 3)] in a grid, each enlarged `scale` times with "#i label conf"
    under it: what the model saw. RGB uint8."""
    n = len(crops)
    if n == 0:
        raise ValueError("no face crops to lay out")
    height, width = crops.shape[1] * scale, crops.shape[2] * scale
    font = _font(11)
    caption = 16
    cols = min(columns, n)
    rows = -(-n // cols)
    sheet = Image.new("RGB", (cols * (width + 4) + 4, rows * (height + caption + 4) + 4), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for i, (crop, face) in enumerate(zip(crops, faces, strict=True)):
        x, y = 4 + (i % cols) * (width + 4), 4 + (i // cols) * (height + caption + 4)
        big = Image.fromarray(crop, "L" if crop.ndim == 2 else "RGB")
        sheet.paste(big.resize((width, height), Image.Resampling.NEAREST).convert("RGB"), (x, y))
        draw.rectangle((x, y + height, x + width - 1, y + height + caption - 2), fill=class_color(face))
        text = f"#{i + 1} {face.label} {face.confidence:.2f}"
        draw.text((x + 2, y + height + 1), text, fill=(0, 0, 0), font=font)
    return np.asarray(sheet)
