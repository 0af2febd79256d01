"""Faces in photos on the CPU: images/s and faces/s of detection + cropping + classification.

  python -m benchmarks.photo_throughput --workdir workdirs/cpu_recipe [--images 48] [--tta RUN]

The photos are scikit-image's sample pictures (installed with the `test` extra): the astronaut
portrait (512x512, one face) and a group picture composed from it and three faces of scikit-image's
LFW subset on its coffee photo, at 720x480 and enlarged to 1920x1280 (a phone-sized photo; the
detector searches it shrunk to 1280 pixels), all saved as JPEG and cycled to `--images` files.

Detection alone per kind of photo, then three figures, each after a warm-up pass (compilation
excluded):
  detect    decode + Haar detection + FER2013-framed crops, no model;
  classify  the crops alone through `FaceClassifier` (the run's TTA by default), batched as
            `fer_flax.inference.photos` batches them;
  end to end  `photos.analyze_photos` over the folder (what `python -m fer_flax.predict` does after
            loading the model), without and with the per-image outputs (`--out_dir`).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np
import skimage
import skimage.data
from PIL import Image

from fer_flax import runtime
from fer_flax.inference import engine as inference
from fer_flax.inference import image_io, photos, predict
from fer_flax.inference.faces import crop as crop_lib
from fer_flax.inference.faces.detect import HaarCascadeDetector


def sample_photos() -> list[tuple[str, Image.Image]]:
    astronaut = Image.fromarray(skimage.data.astronaut())
    lfw = np.load(os.path.join(os.path.dirname(skimage.__file__), "data", "lfw_subset.npy"))
    faces = [astronaut.crop((172, 61, 282, 171))]
    faces += [Image.fromarray((lfw[i] * 255).round().astype(np.uint8)).convert("RGB") for i in range(3)]
    group = Image.fromarray(skimage.data.coffee()).resize((720, 480))
    places = ((40, 60, 150), (260, 40, 70), (380, 250, 110), (560, 120, 90))
    for face, (x, y, side) in zip(faces, places, strict=True):
        group.paste(face.resize((side, side), Image.Resampling.BICUBIC), (x, y))
    big = group.resize((1920, 1280), Image.Resampling.BICUBIC)
    return [("astronaut", astronaut), ("group", group), ("group_1920", big)]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workdir", required=True, help="a finished run, e.g. the CPU recipe's")
    parser.add_argument("--images", type=int, default=48)
    parser.add_argument("--tta", default=None, help="none|flip|tencrop; default: the run's eval_tta")
    args = parser.parse_args()
    runtime.start()
    classifier = predict.make_classifier(inference.load_members([args.workdir]), args.tta)
    detector = HaarCascadeDetector()
    with tempfile.TemporaryDirectory() as tmp:
        kinds = sample_photos()
        paths = []
        for i in range(args.images):
            name, im = kinds[i % len(kinds)]
            paths.append(os.path.join(tmp, f"{i:03d}_{name}.jpg"))
            im.save(paths[-1], quality=92)

        def detect_all() -> np.ndarray:
            crops = []
            for p in paths:
                gray = image_io.to_gray(image_io.open_image(p))
                crops += [crop_lib.crop_face(gray, b) for b in detector.detect(gray)]
            return np.stack(crops)

        def classify_all(crops: np.ndarray) -> None:
            for start in range(0, len(crops), photos.CHUNK_FACES):
                classifier(crops[start : start + photos.CHUNK_FACES])

        def analyze(out_dir: str | None) -> None:
            photos.analyze_photos(
                [tmp], classifier, detector=lambda: detector, out_dir=out_dir, log=lambda m: None
            )

        crops = detect_all()
        classify_all(crops)
        analyze(None)
        rows = []
        for name, fn in (
            ("detect", detect_all),
            ("classify", lambda: classify_all(crops)),
            ("end to end", lambda: analyze(None)),
            ("end to end + outputs", lambda: analyze(os.path.join(tmp, "out", str(time.perf_counter())))),
        ):
            t0 = time.perf_counter()
            fn()
            dt = time.perf_counter() - t0
            rows.append((name, dt))
    n_faces = len(crops)
    for name, im in kinds:  # detection alone, per kind of photo (median of 5)
        gray = image_io.to_gray(im)
        times = []
        for _ in range(5):
            t0 = time.perf_counter()
            detector.detect(gray)
            times.append(time.perf_counter() - t0)
        print(f"detect {name} {im.width}x{im.height}: {np.median(times):.3f} s")
    print(f"{args.images} photos ({', '.join(k for k, _ in kinds)} cycled), {n_faces} faces, "
          f"TTA {classifier.tta_mode}, {os.cpu_count()} CPUs")  # fmt: skip
    print("| stage | seconds | images/s | faces/s |\n|---|---:|---:|---:|")
    for name, dt in rows:
        print(f"| {name} | {dt:.2f} | {args.images / dt:.1f} | {n_faces / dt:.1f} |")


if __name__ == "__main__":
    main()
