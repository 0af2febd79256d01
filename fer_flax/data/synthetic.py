"""Procedurally drawn 48x48 grayscale faces: the default data when no dataset path is given.

A new user's first command then trains and evaluates something real without any download. Each face
is drawn with implicit (signed-distance) functions on a coordinate grid, vectorised over images:
a head oval with hair, two eyes, two brows, nostrils and a mouth. The seven expressions (CLASS_NAMES
order) differ in brow height and angle, eye opening, mouth curve, opening and width, plus disgust's
asymmetric lip and nose wrinkles. Every expression parameter has within-class jitter and every image
gets random nuisance (shift, scale, rotation, tones, lighting gradient, noise), so the task is
learnable by a small CNN but not trivial.

Class frequencies copy FER2013's training imbalance in every split and everything is a pure function
of the seed: the same arguments give byte-identical arrays.
"""

from __future__ import annotations

import os

import numpy as np

from fer_flax.data.splits import (
    CLASS_NAMES,
    FER2013_TRAIN_COUNTS,
    IMAGE_SIZE,
    NUM_CLASSES,
    SPLITS,
    ArraySplit,
)

# Per-class expression parameters, in face units (the head oval is ~1.56 wide and ~1.96 tall; y
# points down, the eye line is at y = -0.15). Columns:
#   brow_in, brow_out   height of the inner / outer brow end (more negative = higher)
#   brow_arch           upward bulge of the brow's middle
#   eye_open            eye height relative to a neutral eye
#   mouth_w             half-width of the mouth
#   mouth_h             half-height of the mouth opening (0 = closed)
#   mouth_curve         corner height relative to the centre (>0 smile, <0 frown)
#   asym                one-sided brow drop, eye narrowing and upper-lip raise (disgust only)
#   wrinkle             strength of the horizontal nose-bridge wrinkles (disgust only)
_PARAM_NAMES = (
    "brow_in",
    "brow_out",
    "brow_arch",
    "eye_open",
    "mouth_w",
    "mouth_h",
    "mouth_curve",
    "asym",
    "wrinkle",
)
_CLASS_PARAMS = np.array(
    [
        # in    out    arch  eye   m_w   m_h   curve  asym  wrinkle
        [-0.27, -0.43, 0.00, 0.50, 0.21, 0.00, -0.02, 0.00, 0.0],  # angry: V brows, tight line
        [-0.31, -0.40, 0.00, 0.55, 0.26, 0.04, -0.08, 1.00, 1.0],  # disgust
        [-0.53, -0.45, 0.02, 1.45, 0.37, 0.07, -0.05, 0.00, 0.0],  # fear: raised brows, wide mouth
        [-0.40, -0.40, 0.03, 0.70, 0.36, 0.03, 0.22, 0.00, 0.0],  # happy: strong smile
        [-0.50, -0.32, 0.00, 0.80, 0.27, 0.00, -0.16, 0.00, 0.0],  # sad: Λ brows, frown
        [-0.55, -0.55, 0.09, 1.55, 0.13, 0.14, 0.00, 0.00, 0.0],  # surprise: arched brows, O mouth
        [-0.38, -0.38, 0.01, 1.00, 0.26, 0.00, 0.00, 0.00, 0.0],  # neutral
    ],
    dtype=np.float64,
)
# Within-class jitter (standard deviation) of each parameter above.
_PARAM_JITTER = np.array([0.03, 0.03, 0.015, 0.10, 0.025, 0.012, 0.03, 0.15, 0.15])
assert _CLASS_PARAMS.shape == (NUM_CLASSES, len(_PARAM_NAMES))

# One pixel is 2/48 of the [-1, 1] image span: edges ramp over about one pixel (in face units).
_EDGE = 2.0 / IMAGE_SIZE
# Images per rendering chunk: keeps the ~20 live float32 arrays inside the CPU caches.
_CHUNK = 64


def _class_allocation(n: int) -> np.ndarray:
    """Per-class counts for n samples in FER2013's proportions, largest-remainder rounded."""
    counts = np.asarray(FER2013_TRAIN_COUNTS, dtype=np.int64)
    exact = n * counts / counts.sum()
    alloc = np.floor(exact).astype(np.int64)
    # Ties broken by class index (stable sort) so the allocation never depends on float noise order.
    order = np.argsort(-(exact - alloc), kind="stable")
    alloc[order[: n - alloc.sum()]] += 1
    return alloc


def _draw_labels(n: int, rng: np.random.Generator) -> np.ndarray:
    labels = np.repeat(np.arange(NUM_CLASSES, dtype=np.int32), _class_allocation(n))
    return rng.permutation(labels)


def _ramp(d: np.ndarray, width: float = _EDGE) -> np.ndarray:
    """Anti-aliased coverage of the region d < 0 (1 inside, 0 outside, linear over `width`)."""
    return np.clip(0.5 - d * (1.0 / width), 0.0, 1.0)


def _draw_params(labels: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Every per-image random quantity, drawn up front so chunking never changes the result."""
    n = labels.shape[0]
    f32 = np.float32

    def u(lo, hi):
        return rng.uniform(lo, hi, n)

    expr = _CLASS_PARAMS[labels] + rng.normal(size=(n, len(_PARAM_NAMES))) * _PARAM_JITTER
    p = {name: expr[:, i] for i, name in enumerate(_PARAM_NAMES)}
    p["eye_open"] = np.maximum(p["eye_open"], 0.3)
    p["mouth_w"] = np.maximum(p["mouth_w"], 0.09)
    p["mouth_h"] = np.maximum(p["mouth_h"], 0.0)
    p["asym"] = np.maximum(p["asym"], 0.0)
    p["wrinkle"] = np.clip(p["wrinkle"], 0.0, 1.0)
    # Which side the asymmetry falls on is random, so horizontal flips keep the class meaning.
    p["side"] = rng.choice(np.array([-1.0, 1.0]), n)

    # Identity: where features sit on this particular face.
    p["eye_dx"] = u(0.27, 0.34)
    p["eye_y"] = u(-0.19, -0.11)
    p["mouth_y"] = u(0.47, 0.55)
    p["nose_y"] = u(0.24, 0.31)
    p["head_rx"] = u(0.70, 0.82)
    p["hairline"] = u(-0.78, -0.58)
    p["gaze"] = u(-0.03, 0.03)

    # Pose: face → image transform (scale, rotation, shift in [-1, 1] image units; 1 unit = 24 px).
    p["scale"] = u(0.85, 1.15)
    angle = np.deg2rad(u(-15.0, 15.0))
    # cos/sin here in float64: float32 SIMD trig may round differently across CPUs; the rest of the
    # rendering is +, *, /, sqrt, min/max, which IEEE rounds identically everywhere.
    p["cos"], p["sin"] = np.cos(angle), np.sin(angle)
    p["tx"] = u(-3.0, 3.0) / (IMAGE_SIZE / 2)
    p["ty"] = u(-3.0, 3.0) / (IMAGE_SIZE / 2)

    # Appearance and lighting.
    p["skin"] = u(0.45, 0.80)
    p["bg"] = u(0.05, 0.95)
    p["hair"] = u(0.03, 0.45)
    p["ink"] = u(0.55, 0.85)  # how much darker than the skin the features are
    p["contrast"] = u(0.7, 1.2)
    p["brightness"] = u(-0.12, 0.12)
    p["grad_x"] = u(-0.15, 0.15)
    p["grad_y"] = u(-0.15, 0.15)
    p["noise"] = u(0.01, 0.05)
    return {k: v.astype(f32) for k, v in p.items()}


def _render_chunk(p: dict[str, np.ndarray], noise: np.ndarray) -> np.ndarray:
    """Render one chunk; every p[k] is float32 [n], noise is float32 [n, 48, 48]."""

    def col(name: str) -> np.ndarray:
        return p[name][:, None, None]

    # Pixel centres in [-1, 1], then the inverse pose transform into face coordinates (x, y).
    g = (np.arange(IMAGE_SIZE, dtype=np.float32) + 0.5) * (2.0 / IMAGE_SIZE) - 1.0
    px, py = g[None, None, :], g[None, :, None]
    cos, sin, inv_s = col("cos"), col("sin"), 1.0 / col("scale")
    dx, dy = px - col("tx"), py - col("ty")
    x = (cos * dx + sin * dy) * inv_s
    y = (cos * dy - sin * dx) * inv_s
    ax = np.abs(x)  # most features are mirror-symmetric; draw them once in |x|
    sgn = np.where(x * col("side") > 0, np.float32(1.0), np.float32(0.0))  # the asymmetric side

    # Head: an oval narrowing towards the chin; hair above a curved hairline.
    rx = col("head_rx") * (1.0 - 0.18 * np.clip(y, 0.0, 1.0))
    head_d = (np.sqrt((x / rx) ** 2 + (y * (1 / 0.97)) ** 2) - 1.0) * 0.8
    head = _ramp(head_d)
    hair = _ramp(y - (col("hairline") + 0.35 * x * x)) * _ramp(head_d - 0.07)
    img = col("bg") + (col("skin") - col("bg")) * head
    img = img + (col("hair") - img) * hair
    ink = col("ink") * head * (1.0 - hair)  # features are drawn on skin only

    # Brows: a thick quadratic curve from the inner to the outer end, above each eye.
    asym = col("asym") * sgn
    t = (ax - (col("eye_dx") - 0.20)) * (1 / 0.38)
    brow_c = (
        col("brow_in")
        + (col("brow_out") - col("brow_in")) * t
        - 4.0 * col("brow_arch") * t * (1.0 - t)
        + 0.07 * asym
    )
    brow_d = np.maximum(np.abs(y - brow_c) - 0.045, np.maximum(-t, t - 1.0) * 0.38)
    dark = _ramp(brow_d)

    # Eyes: an ellipse whose height is the expression's eye opening; light sclera, dark iris.
    ex = ax - col("eye_dx")
    ey = y - col("eye_y")
    ry = 0.085 * col("eye_open") * (1.0 - 0.35 * asym)
    # First-order distance to the ellipse, f / |grad f|: exact enough near the edge even for slits.
    ex_n, ey_n = ex * (1 / 0.14), ey / ry
    eye_d = (ex_n * ex_n + ey_n * ey_n - 1.0) / (
        2.0 * np.sqrt((ex_n * (1 / 0.14)) ** 2 + (ey_n / ry) ** 2) + 1e-3
    )
    eye = _ramp(eye_d, 0.6 * _EDGE)
    iris = _ramp(np.sqrt((ex - col("gaze")) ** 2 + ey * ey) - 0.065) * eye
    lid = _ramp(np.abs(eye_d) - 0.012)  # dark eye outline so even slits read as eyes
    dark = np.maximum(dark, np.maximum(lid, iris))

    # Nose: two nostrils and, for disgust, wrinkles across the bridge.
    nose = _ramp(np.sqrt((ax - 0.07) ** 2 + ((y - col("nose_y")) * 1.6) ** 2) - 0.035)
    dark = np.maximum(dark, 0.7 * nose)
    wr_y = y - (col("eye_y") + 0.08)
    wrinkle = col("wrinkle") * _ramp(np.abs(np.abs(wr_y) - 0.05) - 0.014) * _ramp(ax - 0.11)
    dark = np.maximum(dark, 0.8 * wrinkle)

    # Mouth: a curved centre line (smile/frown, one-sided raise for disgust) opened by mouth_h.
    mw = col("mouth_w")
    mx2 = (x / mw) ** 2
    inside = np.clip(1.0 - mx2, 0.0, 1.0)
    centre = col("mouth_y") + col("mouth_curve") * (0.5 - mx2) - 0.06 * asym * inside
    half_h = col("mouth_h") * np.sqrt(inside) + 0.022 * (1.0 + asym)
    mouth_d = np.maximum(np.abs(y - centre) - half_h, (np.sqrt(mx2) - 1.0) * mw)
    dark = np.maximum(dark, _ramp(mouth_d))

    img = img * (1.0 - ink * dark)
    # Sclera: lighter than the skin where the eye is open and the iris does not cover it.
    sclera = eye * (1.0 - iris) * (1.0 - lid) * head
    img = img + (np.minimum(col("skin") + 0.3, 0.95) - img) * sclera

    # Lighting: contrast and brightness, a linear gradient across the image, sensor noise.
    img = (img - 0.5) * col("contrast") + 0.5 + col("brightness")
    img = img + col("grad_x") * px + col("grad_y") * py + noise * col("noise")
    return np.clip(img * 255.0 + 0.5, 0.0, 255.0).astype(np.uint8)


def render_faces(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Draw one face per label (0..6, CLASS_NAMES order); returns uint8 [N, 48, 48].

    Deterministic given the labels and the generator's state. How many random numbers are drawn
    depends only on N, never on the label values: the same generator state with different labels
    renders the same faces (identity, pose, lighting, noise) with different expressions, which makes
    paired comparisons of expressions exact.
    """
    labels = np.asarray(labels)
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be a 1-D integer array, got {labels.dtype} {labels.shape}")
    if labels.size and (labels.min() < 0 or labels.max() >= NUM_CLASSES):
        raise ValueError(f"labels must be in 0..{NUM_CLASSES - 1}, got {labels.min()}..{labels.max()}")
    n = labels.shape[0]
    params = _draw_params(labels.astype(np.int64), rng)
    out = np.empty((n, IMAGE_SIZE, IMAGE_SIZE), dtype=np.uint8)
    for start in range(0, n, _CHUNK):
        sl = slice(start, min(start + _CHUNK, n))
        noise = rng.standard_normal((sl.stop - start, IMAGE_SIZE, IMAGE_SIZE), dtype=np.float32)
        out[sl] = _render_chunk({k: v[sl] for k, v in params.items()}, noise)
    return out


def generate_synthetic(num_train: int, num_val: int, num_test: int, seed: int = 0) -> dict[str, ArraySplit]:
    """Procedurally drawn 48x48 grayscale faces for splits 'train', 'val', 'test'.

    Each split has FER2013's training class proportions and its own random stream (spawned from
    `seed`), so the splits are disjoint draws and a split does not change when another's size does.
    """
    sizes = {"train": num_train, "val": num_val, "test": num_test}
    for name, size in sizes.items():
        if isinstance(size, bool) or not isinstance(size, int | np.integer) or size < 0:
            raise ValueError(f"num_{name} must be a non-negative integer, got {size!r}")
    children = np.random.SeedSequence(seed).spawn(len(SPLITS))
    out = {}
    for split, child in zip(SPLITS, children, strict=True):
        rng = np.random.default_rng(child)
        labels = _draw_labels(int(sizes[split]), rng)
        out[split] = ArraySplit(images=render_faces(labels, rng), labels=labels)
    return out


def save_preview_grid(path: str | os.PathLike, per_class: int = 8, seed: int = 0, scale: int = 3) -> None:
    """Write a PNG grid of synthetic faces: one row of `per_class` faces per class, named."""
    from PIL import Image, ImageDraw  # imported here: only the preview needs Pillow

    labels = np.repeat(np.arange(NUM_CLASSES, dtype=np.int32), per_class)
    faces = render_faces(labels, np.random.default_rng(seed))
    gap, label_w, cell = 2, 64, IMAGE_SIZE * scale
    width = label_w + per_class * (cell + gap)
    height = NUM_CLASSES * (cell + gap)
    canvas = Image.new("L", (width, height), color=255)
    draw = ImageDraw.Draw(canvas)
    for c, name in enumerate(CLASS_NAMES):
        top = c * (cell + gap)
        draw.text((4, top + cell // 2 - 5), name, fill=0)
        for j in range(per_class):
            face = Image.fromarray(faces[c * per_class + j]).resize((cell, cell), Image.NEAREST)
            canvas.paste(face, (label_w + j * (cell + gap), top))
    canvas.save(os.fspath(path))
