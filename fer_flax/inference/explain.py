"""What a trained model looks at: saliency maps over faces, as PNG grids grouped by class.

Command:
  python -m fer_flax.explain [--workdir W] --out DIR [--checkpoint best|latest|STEP] [--weights raw|ema]
      [--data PATH] [--split val] [--n 32]                  # N faces of a split, every class, or
      [--faces auto|detect|whole] [--margin 0.125] [IMAGE_OR_FOLDER ...]   # the faces in images
      [--methods gradcam,smoothgrad] [--samples 16] [--noise 0.15] [--seed 0]

Without --workdir the model bundled with fer_flax is explained (`fer_flax.run.bundled`; faces of a
split then need --data). Images are searched for faces as `predict` searches them
(`photos.find_faces`): every face of a photo is found, cropped like FER2013's faces and explained on
its own (`<file>#<k>`); a 48x48 image is taken as a face crop already (`--faces auto`); `--faces
whole` takes every image as one face, stretched to 48x48.

Maps (`inference.saliency`): Grad-CAM on the last convolutional stage for the conv families, attention
rollout for the ViTs (the default for each), gradient × input and SmoothGrad for every family. Each map
explains the class the model predicts for the image itself (one view, no test-time augmentation), from
the run's variables (`trained.restore`) and the inference preprocessing (`augment.preprocess`).

DIR receives, all at once (an earlier DIR of this command is replaced, anything else is refused):
  true-<class>_pred-<class>.png  one grid per (true, predicted) pair: a row per face, the face then
                                 each map over it (pred-<class>.png for images without a label);
                                 groups of more than 16 faces continue in ..._2.png, ...
  explanations.json              per face: source, true and predicted class, probabilities, grid file
  maps.npz                       the faces, labels, predictions and every map as arrays
"""

from __future__ import annotations

import functools
import json
import os
import sys
from collections.abc import Callable, Sequence

import jax
import matplotlib
import numpy as np
from absl import flags
from PIL import Image, ImageDraw, ImageFont

from fer_flax import cli
from fer_flax.core import parallel
from fer_flax.data import sources
from fer_flax.data.splits import CLASS_NAMES
from fer_flax.inference import evaluate, image_io, photos, saliency
from fer_flax.inference.faces import crop as crop_lib
from fer_flax.inference.faces.classify import FaceClassifier
from fer_flax.inference.faces.detect import DETECTORS, MissingDependencyError, make_detector
from fer_flax.run import bundled
from fer_flax.run.staged_outputs import StagedOutputs, check_replaceable
from fer_flax.run.trained import Restored

MARKER = "explanations.json"
ROWS_PER_GRID = 16
SCALE = 3  # grid pixels per face pixel
OVERLAY_ALPHA = 0.45
TITLES = {
    "gradcam": "Grad-CAM",
    "rollout": "rollout",
    "gradxinput": "grad x input",
    "smoothgrad": "SmoothGrad",
}


def faces_in_images(
    restored: Restored,
    paths: Sequence[str],
    *,
    faces: str = "auto",
    detector: str = "auto",
    margin: float = crop_lib.FER2013_MARGIN,
    log: Callable[[str], object] = print,
) -> tuple[np.ndarray, list[str]]:
    """(uint8 faces [N, 48, 48], a name per face) of image files and folders, found and cropped as
    `predict` finds them (`photos.find_faces`, `faces` auto|detect|whole): `<file>` for an image taken
    whole, `<file>#<k>` for the k-th face found in it. An image without a face is skipped with a line
    saying so; an unreadable one raises an error naming it."""
    files = image_io.collect_inputs(paths)
    if not files:
        raise ValueError(f"no PNG/JPEG images found in {', '.join(paths)}")
    classifier = FaceClassifier([restored])
    get_detector = functools.cache(lambda: make_detector(detector))
    crops, names = [], []
    for file in files:
        image = image_io.open_image(file)
        found_by, boxes, face_crops = photos.find_faces(
            image, faces=faces, detector=get_detector, classifier=classifier, margin=margin
        )
        if not boxes:
            log(f"{file}: no face found")
        names += [file] if found_by is None else [f"{file}#{k}" for k in range(1, len(boxes) + 1)]
        crops.append(face_crops)
    if not names:
        raise ValueError(f"no face found in {len(files)} image(s); --faces whole explains each image whole")
    return np.concatenate(crops), names


def load_faces(
    restored: Restored,
    paths: Sequence[str],
    *,
    split: str,
    data_path: str | None,
    n: int,
    seed: int = 0,
    faces: str = "auto",
    detector: str = "auto",
    margin: float = crop_lib.FER2013_MARGIN,
) -> tuple[np.ndarray, np.ndarray | None, list[str]]:
    """(uint8 faces [N, 48, 48], true labels or None, a name per face): the faces in the image files
    given (`faces_in_images`), or else `n` examples of `split` spread over its classes
    (`balanced_sample`)."""
    if paths:
        if sources.resolve_format(restored.config.data) == "synthetic":
            print(sources.SYNTHETIC_MODEL_NOTICE, file=sys.stderr)
        crops, names = faces_in_images(restored, paths, faces=faces, detector=detector, margin=margin)
        return crops, None, names
    if n <= 0:
        raise ValueError(f"--n must be positive, got {n}")
    data, _ = evaluate.load_eval_split([restored], split, data_path)
    index = balanced_sample(data.labels, n, seed)
    return data.images[index], data.labels[index], [f"{split}[{i}]" for i in index]


def balanced_sample(labels: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """Indices of up to `n` examples taken in turn from each class present (each class in a seeded
    random order), so every class appears; sorted by class, then by turn."""
    rng = np.random.default_rng(seed)
    queues = [rng.permutation(np.flatnonzero(labels == c)).tolist() for c in np.unique(labels)]
    picked: list[list[int]] = [[] for _ in queues]
    while sum(map(len, picked)) < n and any(queues):
        for queue, taken in zip(queues, picked, strict=True):
            if queue and sum(map(len, picked)) < n:
                taken.append(queue.pop())
    return np.asarray([i for taken in picked for i in taken], np.int64)


def explain_faces(
    restored: Restored,
    faces: np.ndarray,
    *,
    methods: Sequence[str],
    batch_size: int = 32,
    samples: int = saliency.SMOOTHGRAD_SAMPLES,
    noise: float = saliency.SMOOTHGRAD_NOISE,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """`saliency.explain_batch` over all faces in fixed-size batches (one compilation): numpy
    {"probabilities", "predicted", method: maps}."""
    methods = saliency.check_methods(restored.model, methods)
    key = jax.random.key(seed)
    size = min(batch_size, len(faces))
    parts = []
    for start in range(0, len(faces), size):
        batch = faces[start : start + size]
        padded = np.concatenate([batch, np.zeros((size - len(batch), *batch.shape[1:]), batch.dtype)])
        out = saliency.explain_batch(
            restored.model,
            restored.variables,
            padded,
            jax.random.fold_in(key, start),
            methods=methods,
            samples=samples,
            noise=noise,
        )
        parts.append({k: np.asarray(v)[: len(batch)] for k, v in out.items()})
        print(f"explained {min(start + size, len(faces))}/{len(faces)} faces", flush=True)
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


# ------------------------------------------------------------------------------------------ grids


def overlay(face: np.ndarray, heat: np.ndarray, alpha: float = OVERLAY_ALPHA) -> np.ndarray:
    """uint8 RGB [H, W, 3]: the grey face [H, W] blended with `heat` [H, W] (in [0, 1]) in "jet"."""
    colours = matplotlib.colormaps["jet"](np.clip(heat, 0, 1))[..., :3]
    return np.round(255 * ((1 - alpha) * face[..., None] / 255.0 + alpha * colours)).astype(np.uint8)


def grid_image(
    faces: np.ndarray, maps: dict[str, np.ndarray], row_titles: Sequence[str], title: str
) -> Image.Image:
    """One row per face [N, H, W]: a caption, then the face and each map laid over it, one column per
    method in the order of `maps`. Drawn directly as pixels (no figure layout), `SCALE`x enlarged."""
    font = ImageFont.load_default(size=11)
    n, (h, w) = len(faces), faces.shape[1:]
    cell_w, cell_h, gap, caption, header = w * SCALE, h * SCALE, 4, 15, 38
    columns = ["face", *(TITLES.get(m, m) for m in maps)]
    width = len(columns) * (cell_w + gap) + gap
    grid = Image.new("RGB", (width, header + n * (caption + cell_h + gap)), "white")
    draw = ImageDraw.Draw(grid)
    draw.text((gap, 2), title, fill="black", font=font)
    for j, name in enumerate(columns):
        draw.text((gap + j * (cell_w + gap), header - 14), name, fill="black", font=font)
    for i in range(n):
        top = header + i * (caption + cell_h + gap)
        draw.text((gap, top + 1), row_titles[i], fill="black", font=font)
        cells = [np.repeat(faces[i][..., None], 3, axis=-1)] + [
            overlay(faces[i], v[i]) for v in maps.values()
        ]
        for j, cell in enumerate(cells):
            big = np.repeat(np.repeat(cell, SCALE, axis=0), SCALE, axis=1)
            grid.paste(Image.fromarray(big), (gap + j * (cell_w + gap), top + caption))
    return grid


def _group_name(true: int | None, predicted: int) -> str:
    pred = f"pred-{CLASS_NAMES[predicted]}"
    return pred if true is None else f"true-{CLASS_NAMES[true]}_{pred}"


def write_outputs(
    out: StagedOutputs,
    faces: np.ndarray,
    labels: np.ndarray | None,
    names: Sequence[str],
    result: dict,
    methods,
) -> list[str]:
    """The grids, explanations.json and maps.npz into `out` (staged until its commit); returns the
    grid file names."""
    predicted = result["predicted"].astype(int)
    groups: dict[str, list[int]] = {}
    for i, p in enumerate(predicted):
        groups.setdefault(_group_name(None if labels is None else int(labels[i]), int(p)), []).append(i)
    records: list[dict] = [{} for _ in names]
    files = []
    for group, members in sorted(groups.items()):
        for page, start in enumerate(range(0, len(members), ROWS_PER_GRID)):
            rows = members[start : start + ROWS_PER_GRID]
            file = f"{group}.png" if page == 0 else f"{group}_{page + 1}.png"
            titles = [
                f"{os.path.basename(names[i])}: {CLASS_NAMES[predicted[i]]} "
                f"{result['probabilities'][i].max():.2f}"
                for i in rows
            ]
            maps = {m: result[m][rows] for m in methods}
            grid_image(faces[rows], maps, titles, group.replace("_", ", ")).save(out.path(file))
            files.append(file)
            for i in rows:
                records[i] = {
                    "source": names[i],
                    "true": None if labels is None else CLASS_NAMES[int(labels[i])],
                    "predicted": CLASS_NAMES[predicted[i]],
                    "probabilities": dict(
                        zip(CLASS_NAMES, map(float, result["probabilities"][i]), strict=True)
                    ),
                    "grid": file,
                }
    arrays = {"faces": faces, "predicted": predicted, "probabilities": result["probabilities"]}
    arrays.update({m: result[m] for m in methods})
    if labels is not None:
        arrays["labels"] = labels
    np.savez_compressed(out.path("maps.npz"), **arrays)
    with open(out.path(MARKER), "w") as f:
        json.dump({"methods": list(methods), "faces": records}, f, indent=2)
    return files


def run(
    workdir: str | None,
    out: str,
    paths: Sequence[str] = (),
    *,
    checkpoint: str = "best",
    weights: str = "raw",
    split: str = "val",
    data_path: str | None = None,
    n: int = 32,
    methods: Sequence[str] | None = None,
    samples: int = saliency.SMOOTHGRAD_SAMPLES,
    noise: float = saliency.SMOOTHGRAD_NOISE,
    seed: int = 0,
    faces: str = "auto",
    detector: str = "auto",
    margin: float = crop_lib.FER2013_MARGIN,
) -> str:
    """Explains the faces and writes DIR (see the module docstring); returns its absolute path.
    `workdir` None: the bundled model."""
    check_replaceable(out, MARKER, "fer_flax.explain")  # before any work
    # One device: the maps are small work, and replicated variables would repeat it on every device.
    mesh = parallel.make_mesh(jax.local_devices()[:1])
    restored = bundled.load_model(workdir, checkpoint, mesh=mesh, weights=weights)
    methods = saliency.check_methods(restored.model, methods or saliency.default_methods(restored.model))
    faces, labels, names = load_faces(
        restored,
        paths,
        split=split,
        data_path=data_path,
        n=n,
        seed=seed,
        faces=faces,
        detector=detector,
        margin=margin,
    )
    result = explain_faces(restored, faces, methods=methods, samples=samples, noise=noise, seed=seed)
    with StagedOutputs(out, replaces=MARKER) as staged:
        files = write_outputs(staged, faces, labels, names, result, methods)
        staged.commit()
    out = os.path.abspath(out)
    print(f"wrote {len(files)} grid(s) of {len(faces)} faces ({', '.join(methods)}) to {out}")
    return out


# Images as positional arguments. Absl logging at ERROR: Orbax warns about every read-only checkpoint
# folder it opens. No face detector (OpenCV) is the user's to fix, like a missing file: one line.
COMMAND = cli.Command(arguments=True, log_level="error", expected_errors=(MissingDependencyError,))


def define_flags() -> None:
    flags.DEFINE_string(
        "workdir", None, "Training workdir of the model to explain (default: the bundled model)."
    )
    flags.DEFINE_string("out", None, "Folder for the grids, explanations.json and maps.npz.")
    flags.DEFINE_string("checkpoint", "best", "'best', 'latest' or a step number.")
    flags.DEFINE_enum("weights", "raw", ["raw", "ema"], "The run's raw or EMA weights.")
    flags.DEFINE_string("data", None, "FER2013 source to read --split from (default: the run's data).")
    flags.DEFINE_string("split", "val", "Split to take faces from when no images are given.")
    flags.DEFINE_integer("n", 32, "How many faces of --split to explain (spread over the classes).")
    flags.DEFINE_list("methods", None, f"Of {', '.join(saliency.METHODS)}; default per family.")
    flags.DEFINE_integer("samples", saliency.SMOOTHGRAD_SAMPLES, "SmoothGrad's noisy copies per face.")
    flags.DEFINE_float("noise", saliency.SMOOTHGRAD_NOISE, "SmoothGrad's noise, as a fraction of the range.")
    flags.DEFINE_integer("seed", 0, "Seed of the faces picked from --split and of SmoothGrad's noise.")
    flags.DEFINE_enum(
        "faces", "auto", list(photos.FACE_MODES), "Images: find faces (auto: not in 48x48 crops), or whole."
    )
    flags.DEFINE_enum(
        "detector",
        "auto",
        list(DETECTORS),
        "Face detector: auto (the DNN when its extra is installed, else haar), haar or dnn.",
    )
    flags.DEFINE_float("margin", crop_lib.FER2013_MARGIN, "Margin around a detected face, of its side.")
    flags.mark_flag_as_required("out")


def main(argv: list[str]) -> None:
    f = flags.FLAGS
    # Expected errors (a missing workdir or image, an unknown method, a refused --out): one line, via cli.
    run(
        f.workdir,
        f.out,
        argv[1:],
        checkpoint=f.checkpoint,
        weights=f.weights,
        split=f.split,
        data_path=f.data,
        n=f.n,
        methods=f.methods,
        samples=f.samples,
        noise=f.noise,
        seed=f.seed,
        faces=f.faces,
        detector=f.detector,
        margin=f.margin,
    )
