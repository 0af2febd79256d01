"""MTCNN, a face detector with five landmarks, run in JAX/Flax from the weights inside the `mtcnn` wheel.

MTCNN (Zhang et al., 2016) is three small convolutional networks in a cascade: P-Net slides a
12-pixel window over an image pyramid and proposes boxes, R-Net (24x24 crops) rejects most of them
and refines the rest, O-Net (48x48 crops) decides, refines the box and places five points: both eyes,
the nose tip and the mouth corners. It was trained on WIDER FACE and CelebA, so it finds tilted faces,
half-profiles and faces down to about 20 pixels that the Haar cascade misses
(benchmarks/RESULTS.md, "Faces in photos").

The weights are the `mtcnn` 1.0 wheel's (MIT licence, 1.9 MB; `pip install -e ".[faces-dnn]"`):
joblib dumps, read by `joblib_arrays` without unpickling code. Neither TensorFlow (which that package
uses to run them) nor the package's own code is imported: the networks below are its Keras layers
written in Flax, and the cascade is re-implemented in NumPy with greedy non-maximum suppression.

P-Net runs on fixed 128x128 tiles of every pyramid level, and all three networks on batches of at
most 128 padded to a power of two, so XLA compiles a few shapes once (the first pictures are slower)
rather than one per image size.
"""

from __future__ import annotations

import functools
import importlib.metadata
import math
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from fer_flax.base.extras import install_extra
from fer_flax.inference.faces.boxes import FaceBox, Landmarks, MissingDependencyError
from fer_flax.inference.faces.joblib_arrays import read_arrays

DNN_EXTRA = "faces-dnn"
WEIGHTS_PACKAGE = "mtcnn"
TILE = 128  # P-Net's input tiles; its output is 59x59 windows, 2 pixels apart
CELL, STRIDE = 12, 2  # P-Net's window and step, in pyramid-level pixels
TILE_STEP = TILE - (CELL - STRIDE)  # windows of neighbouring tiles continue without overlap
FILL = 128  # grey for pixels outside the image (0 after normalisation, as in the original)


class _PReLU(nn.Module):
    """PReLU with one slope per channel (Keras' PReLU with shared spatial axes)."""

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        alpha = self.param("alpha", nn.initializers.constant(0.25), (x.shape[-1],))
        return jnp.where(x >= 0, x, alpha * x)


def _conv_prelu(x: jax.Array, features: int, kernel: int, name: str) -> jax.Array:
    x = nn.Conv(features, (kernel, kernel), padding="VALID", name=f"conv{name}")(x)
    return _PReLU(name=f"prelu{name}")(x)


def _flatten_wh(x: jax.Array) -> jax.Array:
    """Keras' Permute((2, 1, 3)) + Flatten: the order the dense weights expect (Caffe's)."""
    return jnp.transpose(x, (0, 2, 1, 3)).reshape(x.shape[0], -1)


class PNet(nn.Module):
    """Proposal network: [N, H, W, 3] -> box offsets [N, h, w, 4], face probability [N, h, w]."""

    @nn.compact
    def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        x = _conv_prelu(x, 10, 3, "1")
        x = nn.max_pool(x, (2, 2), (2, 2), padding="SAME")
        x = _conv_prelu(_conv_prelu(x, 16, 3, "2"), 32, 3, "3")
        offsets = nn.Conv(4, (1, 1), name="conv4_1")(x)
        return offsets, nn.softmax(nn.Conv(2, (1, 1), name="conv4_2")(x))[..., 1]


class RNet(nn.Module):
    """Refinement network: 24x24 crops [N, 24, 24, 3] -> box offsets [N, 4], face probability [N]."""

    @nn.compact
    def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        x = nn.max_pool(_conv_prelu(x, 28, 3, "1"), (3, 3), (2, 2), padding="SAME")
        x = nn.max_pool(_conv_prelu(x, 48, 3, "2"), (3, 3), (2, 2), padding="VALID")
        x = _flatten_wh(_conv_prelu(x, 64, 2, "3"))
        x = _PReLU(name="prelu4")(nn.Dense(128, name="fc4")(x))
        return nn.Dense(4, name="fc5_1")(x), nn.softmax(nn.Dense(2, name="fc5_2")(x))[:, 1]


class ONet(nn.Module):
    """Output network: 48x48 crops -> box offsets [N, 4], landmarks [N, 10] (five x, then five y, as
    fractions of the crop), face probability [N]."""

    @nn.compact
    def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        x = nn.max_pool(_conv_prelu(x, 32, 3, "1"), (3, 3), (2, 2), padding="SAME")
        x = nn.max_pool(_conv_prelu(x, 64, 3, "2"), (3, 3), (2, 2), padding="VALID")
        x = nn.max_pool(_conv_prelu(x, 64, 3, "3"), (2, 2), (2, 2), padding="SAME")
        x = _flatten_wh(_conv_prelu(x, 128, 2, "4"))
        x = _PReLU(name="prelu5")(nn.Dense(256, name="fc5")(x))
        heads = (nn.Dense(4, name="fc6_1")(x), nn.Dense(10, name="fc6_2")(x))
        return *heads, nn.softmax(nn.Dense(2, name="fc6_3")(x))[:, 1]


# Each network's layers in the order of the arrays in its weight file (Keras' get_weights order).
_LAYERS = {
    "pnet": ("conv1", "prelu1", "conv2", "prelu2", "conv3", "prelu3", "conv4_1", "conv4_2"),
    "rnet": ("conv1", "prelu1", "conv2", "prelu2", "conv3", "prelu3", "fc4", "prelu4", "fc5_1", "fc5_2"),
    "onet": ("conv1", "prelu1", "conv2", "prelu2", "conv3", "prelu3", "conv4", "prelu4", "fc5", "prelu5",
             "fc6_1", "fc6_2", "fc6_3"),
}  # fmt: skip
_NETS = {"pnet": PNet, "rnet": RNet, "onet": ONet}
_INPUT = {"pnet": TILE, "rnet": 24, "onet": 48}


def weight_file(net: str) -> str:
    """The path of `net`'s weights (`pnet`, `rnet`, `onet`) inside the installed `mtcnn` wheel, found
    through the package's metadata (importing `mtcnn` would import TensorFlow)."""
    try:
        dist = importlib.metadata.distribution(WEIGHTS_PACKAGE)
    except importlib.metadata.PackageNotFoundError as e:
        raise MissingDependencyError(
            f"the dnn face detector needs MTCNN's weights: {install_extra(DNN_EXTRA)}"
        ) from e
    path = dist.locate_file(f"mtcnn/assets/weights/{net}.lz4")
    if not path.is_file():
        raise MissingDependencyError(
            f"mtcnn {dist.version} ships no {net}.lz4; the dnn face detector reads the weights of "
            f"mtcnn 1.0: {install_extra(DNN_EXTRA)}"
        )
    return str(path)


def load_params(net: str) -> dict:
    """Flax variables of `net` from its weight file, checked against the network's own shapes."""
    try:
        import lz4.frame  # noqa: F401  (the weight files are LZ4-compressed)
    except ImportError as e:
        raise MissingDependencyError(f"the dnn face detector needs lz4: {install_extra(DNN_EXTRA)}") from e
    with open(weight_file(net), "rb") as f:
        arrays = read_arrays(f.read())
    size = _INPUT[net]
    init = functools.partial(_NETS[net]().init, jax.random.key(0))
    expected = jax.eval_shape(init, jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32))["params"]
    names = [(layer, leaf) for layer in _LAYERS[net] for leaf in sorted(expected[layer])[::-1]]
    if not isinstance(arrays, list) or len(arrays) != len(names):
        raise ValueError(f"{net}: expected {len(names)} arrays in its weight file")
    params: dict = {}
    for (layer, leaf), array in zip(names, arrays, strict=True):  # kernel before bias, as in Keras
        want = expected[layer][leaf].shape
        if [d for d in array.shape if d != 1] != [d for d in want if d != 1]:  # PReLU's (1, 1, C) is (C,)
            raise ValueError(f"{net}.{layer}.{leaf}: shape {array.shape}, expected {want}")
        params.setdefault(layer, {})[leaf] = jnp.asarray(array.reshape(want), jnp.float32)
    return {"params": params}


@functools.cache
def _network(net: str) -> Callable:
    """uint8 grey images [N, S, S] -> `net`'s outputs, jitted; the MTCNN normalisation applied."""
    model, variables = _NETS[net](), load_params(net)

    @jax.jit
    def run(images: jax.Array):
        x = (images.astype(jnp.float32) - 127.5) / 128.0
        return model.apply(variables, jnp.repeat(x[..., None], 3, axis=-1))

    return run


def _batched(net: str, images: np.ndarray, chunk: int = 128) -> list[np.ndarray]:
    """`net` on images [N, S, S] in calls of at most `chunk` images, each padded to a power of two (at
    least 8): XLA compiles five batch shapes per network at most, and pads a call by less than half."""
    outputs = []
    for start in range(0, len(images), chunk):
        part = images[start : start + chunk]
        size = max(8, 1 << (len(part) - 1).bit_length())
        padded = np.full((size, *images.shape[1:]), FILL, np.uint8)
        padded[: len(part)] = part
        outputs.append([np.asarray(out)[: len(part)] for out in _network(net)(padded)])
    return [np.concatenate(parts) for parts in zip(*outputs, strict=True)]


def pyramid_scales(height: int, width: int, min_face: float, factor: float = 0.709) -> list[float]:
    """Scales at which P-Net's 12-pixel window covers faces from `min_face` pixels up to the image."""
    scale, scales = CELL / min_face, []
    while min(height, width) * scale >= CELL:
        scales.append(scale)
        scale *= factor
    return scales


_Tile = tuple[float, int, int, int, int]  # scale, top, left, level height, level width


def _tiles(gray: np.ndarray, scales: list[float]) -> tuple[np.ndarray, list[_Tile]]:
    """TILExTILE tiles of every pyramid level (grey-padded) and, per tile, (scale, top, left, level
    height, level width)."""
    tiles, where = [], []
    image = Image.fromarray(gray)
    for scale in scales:
        w, h = max(1, round(gray.shape[1] * scale)), max(1, round(gray.shape[0] * scale))
        level = np.asarray(image.resize((w, h), Image.Resampling.BILINEAR))
        for top in range(0, max(1, h - CELL + 1), TILE_STEP):
            for left in range(0, max(1, w - CELL + 1), TILE_STEP):
                tile = np.full((TILE, TILE), FILL, np.uint8)
                part = level[top : top + TILE, left : left + TILE]
                tile[: part.shape[0], : part.shape[1]] = part
                tiles.append(tile)
                where.append((scale, top, left, h, w))
    return np.stack(tiles) if tiles else np.zeros((0, TILE, TILE), np.uint8), where


def nms(boxes: np.ndarray, scores: np.ndarray, threshold: float, mode: str = "union") -> np.ndarray:
    """Indices kept by greedy non-maximum suppression, best score first: a box is dropped when it
    overlaps a kept one by more than `threshold` (intersection over union, or over the smaller box's
    area with mode="min")."""
    order, keep = np.argsort(-scores, kind="stable"), []
    area = np.maximum(boxes[:, 2] - boxes[:, 0], 0) * np.maximum(boxes[:, 3] - boxes[:, 1], 0)
    while order.size:
        i, rest = order[0], order[1:]
        keep.append(i)
        w = np.minimum(boxes[i, 2], boxes[rest, 2]) - np.maximum(boxes[i, 0], boxes[rest, 0])
        h = np.minimum(boxes[i, 3], boxes[rest, 3]) - np.maximum(boxes[i, 1], boxes[rest, 1])
        inter = np.maximum(w, 0) * np.maximum(h, 0)
        base = np.minimum(area[i], area[rest]) if mode == "min" else area[i] + area[rest] - inter
        order = rest[inter <= threshold * np.maximum(base, 1e-9)]
    return np.asarray(keep, np.int64)


def _square(boxes: np.ndarray) -> np.ndarray:
    """Boxes [N, 4] (x1, y1, x2, y2) made square about their centres, side the longer one."""
    centre = (boxes[:, :2] + boxes[:, 2:]) / 2
    half = np.max(boxes[:, 2:] - boxes[:, :2], axis=1, keepdims=True) / 2
    return np.concatenate([centre - half, centre + half], axis=1)


def _refine(boxes: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Boxes moved by the network's offsets, fractions of the box's width and height."""
    size = np.tile(boxes[:, 2:] - boxes[:, :2], 2)
    return boxes + offsets * size


def _proposals(gray: np.ndarray, min_face: float, threshold: float) -> np.ndarray:
    """P-Net's candidate boxes [N, 5] (x1, y1, x2, y2, score) in image pixels, squared."""
    scales = pyramid_scales(*gray.shape, min_face)
    tiles, where = _tiles(gray, scales)
    if not len(tiles):
        return np.zeros((0, 5))
    offsets, probs = _batched("pnet", tiles)
    found = []
    for t, (scale, top, left, h, w) in enumerate(where):
        ys, xs = np.nonzero(probs[t] > threshold)
        y0, x0 = top + STRIDE * ys, left + STRIDE * xs
        inside = (y0 + CELL <= h) & (x0 + CELL <= w)  # windows wholly inside the level
        ys, xs, y0, x0 = ys[inside], xs[inside], y0[inside], x0[inside]
        cells = np.stack([x0, y0, x0 + CELL, y0 + CELL], axis=1).astype(np.float64)
        boxes = _refine(cells, offsets[t, ys, xs]) / scale
        found.append((scale, np.concatenate([boxes, probs[t, ys, xs, None]], axis=1)))
    per_scale = []
    for scale in scales:
        rows = np.concatenate([b for s, b in found if s == scale] or [np.zeros((0, 5))])
        per_scale.append(rows[nms(rows[:, :4], rows[:, 4], 0.5)])
    rows = np.concatenate(per_scale)
    rows = rows[nms(rows[:, :4], rows[:, 4], 0.7)]
    return np.concatenate([_square(rows[:, :4]), rows[:, 4:]], axis=1)


def crops(gray: np.ndarray, boxes: np.ndarray, size: int) -> np.ndarray:
    """uint8 [N, size, size]: each box (x1, y1, x2, y2, any float) of `gray` resized with Pillow's
    bilinear filter (averaging when shrinking); outside the image is grey."""
    if not len(boxes):
        return np.zeros((0, size, size), np.uint8)
    h, w = gray.shape
    pad = math.ceil(max(0.0, -boxes[:, :2].min(), boxes[:, 2].max() - w, boxes[:, 3].max() - h)) + 1
    image = Image.fromarray(np.pad(gray, pad, constant_values=FILL))
    return np.stack([
        np.asarray(image.resize((size, size), Image.Resampling.BILINEAR, box=tuple(b[:4] + pad)))
        for b in boxes
    ])  # fmt: skip


def _to_faces(boxes: np.ndarray, points: np.ndarray, scores: np.ndarray, scale: float) -> list[FaceBox]:
    faces = []
    for box, p, score in zip(boxes / scale, points / scale, scores, strict=True):
        x1, y1 = round(box[0]), round(box[1])
        marks = Landmarks(*((float(p[i]), float(p[i + 5])) for i in range(5)))
        faces.append(FaceBox(x1, y1, round(box[2]) - x1, round(box[3]) - y1, marks, float(score)))
    return sorted(faces, key=lambda b: (b.x, b.y))


class MtcnnDetector:
    """The `dnn` face detector: MTCNN with its usual thresholds (0.6, 0.7, 0.8 for the three stages).

    `detect` returns `FaceBox`es (boxes with five landmarks and a score), left to right. Like the Haar
    detector, an image with a side over `max_side` is searched shrunk."""

    name = "dnn:mtcnn"

    def __init__(
        self,
        *,
        min_face: int = 20,
        thresholds: tuple[float, float, float] = (0.6, 0.7, 0.8),
        max_side: int = 1280,
    ):
        for net in _NETS:  # fail now (missing extra, unreadable weights) rather than on the first image
            weight_file(net)
            _network(net)
        self.min_face, self.thresholds, self.max_side = min_face, thresholds, max_side

    def detect(self, gray: np.ndarray) -> list[FaceBox]:
        gray = np.ascontiguousarray(gray, dtype=np.uint8)
        if gray.ndim != 2:
            raise ValueError(f"detect() takes a grayscale image [H, W], got shape {gray.shape}")
        scale = min(1.0, self.max_side / max(gray.shape))
        if scale < 1.0:
            size = (max(1, round(gray.shape[1] * scale)), max(1, round(gray.shape[0] * scale)))
            gray = np.asarray(Image.fromarray(gray).resize(size, Image.Resampling.BILINEAR))
        boxes = _proposals(gray, self.min_face * scale, self.thresholds[0])
        if len(boxes):
            offsets, probs = _batched("rnet", crops(gray, boxes, 24))
            keep = probs > self.thresholds[1]
            boxes = np.concatenate([_refine(boxes[keep, :4], offsets[keep]), probs[keep, None]], axis=1)
            boxes = boxes[nms(boxes[:, :4], boxes[:, 4], 0.7)]
            boxes = np.concatenate([_square(boxes[:, :4]), boxes[:, 4:]], axis=1)
        if not len(boxes):
            return []
        offsets, marks, probs = _batched("onet", crops(gray, boxes, 48))
        keep = probs > self.thresholds[2]
        boxes, marks, probs, offsets = boxes[keep], marks[keep], probs[keep], offsets[keep]
        size = np.repeat(boxes[:, 2:4] - boxes[:, :2], 5, axis=1)
        points = np.repeat(boxes[:, :2], 5, axis=1) + marks * size
        boxes = _refine(boxes[:, :4], offsets)
        kept = nms(boxes, probs, 0.7, mode="min")
        return _to_faces(boxes[kept], points[kept], probs[kept], scale)
