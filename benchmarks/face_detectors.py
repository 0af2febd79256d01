"""The two face detectors on the same pictures: recall, false detections and time per photo.

  python -m benchmarks.face_detectors [--repeats 3]

Needs the `test` extra (scikit-image's sample photos, OpenCV) and the `faces-dnn` extra. The pictures
are built from scikit-image's photos and its LFW subset with every face's centre and size known
(`tests.helpers.face_pictures`), one group of pictures per difficulty:

  tilted       the astronaut portrait turned about her face by -30..30 degrees (6 photos), and two
               canvases of six LFW faces (80 px) turned by -30..30 degrees;
  small        three canvases of eight faces (LFW and the astronaut's) at 24, 32 and 40 pixels;
  half-turned  the cameraman (his face turned about 60 degrees, one eye hidden) and two canvases of
               three LFW faces turned half away (30 to 45 degrees), at 70 to 110 pixels;
  several      the group picture of the face tests (four faces, 70 to 150 px) and a canvas of ten
               faces from 30 to 120 pixels, some tilted by up to 20 degrees;
  no face      nine photos without a face (coffee, cat, rocket, bricks, grass, gravel, coins, the
               Hubble deep field, a motorcycle) and the LFW subset's 100 non-face patches on a canvas.

A detection finds a face when its centre is within 0.35 of the face's side from the face's centre and
its size (the square root of width x height) is half to twice the face's side; each face is found at
most once, and every other detection is false. Time per photo is the median over the group's photos
of the fastest of `--repeats` runs, after one warm-up run of each detector (the DNN's compilation is
timed separately). Both detectors search the grayscale picture, as `fer_flax.predict` does.

  python -m benchmarks.face_detectors --fer2013 ../shared/data/fer2013/fer2013.csv.gz [--faces 1500]

measures instead where each detector puts FER2013's own faces (enlarged 4x): the Haar box's size and
centre, and the dnn detector's landmarks, on which `fer_flax.inference.faces.crop` bases its
FER2013-like framing.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import itertools
import statistics
import time

import numpy as np
import skimage.data
from PIL import Image

from fer_flax.inference.faces.boxes import Box
from fer_flax.inference.faces.detect import HaarCascadeDetector
from fer_flax.inference.faces.mtcnn import MtcnnDetector
from tests.helpers import face_pictures as fp

Face = tuple[float, float, float]  # centre x, centre y, side
Picture = tuple[str, Image.Image, list[Face]]
FRONTAL = (1, 2, 3, 6, 7, 9, 11, 15, 19, 23, 24, 36)  # LFW subset faces looking at the camera


def _canvas(background: Image.Image, faces, places) -> Picture:
    picture = fp.paste_faces(background, faces, places)
    return "", picture, [(x, y, side) for x, y, side, _ in places]


def _coffee() -> Image.Image:
    return Image.fromarray(skimage.data.coffee()).resize((720, 480))


def tilted() -> list[Picture]:
    pictures = [(f"astronaut {d:+d}", fp.tilted_astronaut(d), [(*fp.ASTRONAUT_CENTRE, 110.0)])
                for d in (-30, -20, -10, 10, 20, 30)]  # fmt: skip
    angles = (-30, -20, -10, 10, 20, 30)
    for row, faces in enumerate((FRONTAL[:6], FRONTAL[6:])):
        places = [(80 + 110 * i, 140 + 200 * (i % 2), 80, angles[(i + 3 * row) % 6]) for i in range(6)]
        _, picture, truth = _canvas(_coffee(), [fp.lfw_face(f) for f in faces], places)
        pictures.append((f"6 LFW faces turned, canvas {row + 1}", picture, truth))
    return pictures


def small() -> list[Picture]:
    astronaut_face = fp.astronaut().crop(fp.ASTRONAUT_FACE)
    faces = [astronaut_face, *(fp.lfw_face(f) for f in FRONTAL[:7])]
    backgrounds = (_coffee(), Image.fromarray(skimage.data.brick()).resize((720, 480)), _coffee())
    pictures = []
    for side, background in zip((24, 32, 40), backgrounds, strict=True):
        places = [(70 + 85 * i, 120 + 240 * (i % 2), side, 0) for i in range(8)]
        _, picture, truth = _canvas(background, faces, places)
        pictures.append((f"8 faces of {side} px", picture, truth))
    return pictures


def half_turned() -> list[Picture]:
    x, y, side = fp.CAMERAMAN_FACE
    pictures = [("cameraman", fp.cameraman(), [(x + side / 2, y + side / 2, float(side))])]
    for k, faces in enumerate((fp.HALF_PROFILES[:3], fp.HALF_PROFILES[3:])):
        places = [(150 + 220 * i, 160 + 160 * (i % 2), (70, 90, 110)[(i + k) % 3], 0) for i in range(3)]
        _, picture, truth = _canvas(_coffee(), [fp.lfw_face(f) for f in faces], places)
        pictures.append((f"3 half-turned LFW faces, canvas {k + 1}", picture, truth))
    return pictures


def several() -> list[Picture]:
    group = [(x + s / 2, y + s / 2, float(s)) for x, y, s in fp.GROUP_PLACES]
    sides = (30, 40, 50, 60, 70, 80, 90, 100, 110, 120)
    places = [(70 + 130 * (i % 5), 90 + 190 * (i // 5) + 40 * (i % 2), sides[i], (0, 10, -10, 20, -20)[i % 5])
              for i in range(10)]  # fmt: skip
    faces = [fp.astronaut().crop(fp.ASTRONAUT_FACE), *(fp.lfw_face(f) for f in FRONTAL[2:11])]
    background = Image.fromarray(skimage.data.grass()).convert("RGB").resize((720, 480))
    _, crowd, truth = _canvas(background, faces, places)
    return [("group picture", fp.group_picture(), group), ("10 faces, 30-120 px", crowd, truth)]


def no_face() -> list[Picture]:
    names = ("coffee", "chelsea", "rocket", "brick", "grass", "gravel", "coins", "hubble_deep_field")
    pictures = [(n, Image.fromarray(getattr(skimage.data, n)()).convert("RGB"), []) for n in names]
    pictures.append(("motorcycle", Image.fromarray(skimage.data.stereo_motorcycle()[0]), []))
    places = [(40 + 64 * (i % 10), 40 + 64 * (i // 10), 48, 0) for i in range(100)]
    grey = Image.new("RGB", (680, 680), (128, 128, 128))
    _, patches, _ = _canvas(grey, [fp.lfw_non_face(i) for i in range(100)], places)
    return [*pictures, ("100 LFW non-face patches", patches, [])]


GROUPS = {"tilted ±30°": tilted, "small 24–40 px": small, "half-turned": half_turned,
          "several per picture": several, "no face": no_face}  # fmt: skip


def _matches(box: Box, face: Face) -> float | None:
    """The distance between the centres when `box` finds `face`, else None."""
    cx, cy, side = face
    distance = float(np.hypot(box.x + box.width / 2 - cx, box.y + box.height / 2 - cy))
    size = np.sqrt(box.width * box.height) / side
    return distance if distance <= 0.35 * side and 0.5 <= size <= 2 else None


def score(boxes: list[Box], faces: list[Face]) -> tuple[int, int]:
    """(faces found, false detections): each face takes the nearest unused box that matches it."""
    free, found = list(boxes), 0
    for face in faces:
        matches = [(d, i) for i, b in enumerate(free) if (d := _matches(b, face)) is not None]
        if matches:
            free.pop(min(matches)[1])
            found += 1
    return found, len(free)


def timed(detector, gray: np.ndarray, repeats: int) -> tuple[list[Box], float]:
    best, boxes = float("inf"), []
    for _ in range(repeats):
        start = time.perf_counter()
        boxes = detector.detect(gray)
        best = min(best, time.perf_counter() - start)
    return boxes, best


def compare(detectors: dict, repeats: int, verbose: bool) -> None:
    """Prints the table: recall, false detections and time per photo of each detector per group."""
    groups = {name: make() for name, make in GROUPS.items()}
    first = {}
    for name, detector in detectors.items():
        t = time.perf_counter()
        detector.detect(np.asarray(groups["several per picture"][0][1].convert("L")))
        first[name] = time.perf_counter() - t
    columns = ("pictures (faces)", "recall: Haar", "recall: DNN", "false: Haar", "false: DNN",
               "s/photo: Haar", "s/photo: DNN")  # fmt: skip
    print("| " + " | ".join(columns) + " |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for group, pictures in groups.items():
        faces = sum(len(truth) for _, _, truth in pictures)
        row = {name: [0, 0, []] for name in detectors}
        for title, picture, truth in pictures:
            gray = np.asarray(picture.convert("L"))
            for name, detector in detectors.items():
                boxes, seconds = timed(detector, gray, repeats)
                found, false = score(boxes, truth)
                row[name][0] += found
                row[name][1] += false
                row[name][2].append(seconds)
                if verbose:
                    result = f"{found}/{len(truth)} found, {false} false, {seconds:.3f} s"
                    print(f"  {group} / {title} / {name}: {result}")
        recall = [f"{row[n][0]}/{faces} ({row[n][0] / faces:.0%})" if faces else "–" for n in detectors]
        false = [str(row[n][1]) for n in detectors]
        seconds = [f"{statistics.median(row[n][2]):.3f}" for n in detectors]
        print(f"| {group}: {len(pictures)} ({faces}) | " + " | ".join([*recall, *false, *seconds]) + " |")
    print("\nFirst call (the DNN compiles): " + ", ".join(f"{n} {s:.1f} s" for n, s in first.items()))


def _quartiles(values) -> str:
    q1, median, q3 = np.percentile(values, [25, 50, 75])
    return f"{median:.3f} (quartiles {q1:.3f}, {q3:.3f})"


def framing(detectors: dict, path: str, count: int) -> None:
    """Where each detector puts FER2013's own faces (the first `count` Training rows, enlarged 4x to
    192 px), as fractions of the image side: the basis of the crops' FER2013_MARGIN (Haar's box) and
    EYES_TO_MOUTH, EYES_AT (the landmarks)."""
    found = {name: [] for name in detectors}
    with gzip.open(path, "rt") as f:
        for line in itertools.islice(csv.reader(f), 1, count + 1):
            face = np.array(line[1].split(), np.uint8).reshape(48, 48)
            big = np.asarray(Image.fromarray(face).resize((192, 192), Image.Resampling.BICUBIC))
            for name, detector in detectors.items():
                boxes = detector.detect(big)
                if len(boxes) == 1:
                    found[name].append(boxes[0])
    for name, boxes in found.items():
        b = np.array([tuple(box) for box in boxes], float) / 192
        print(f"{name}: one face in {len(boxes)} of {count}; box side (sqrt of width x height) "
              f"{_quartiles(np.sqrt(b[:, 2] * b[:, 3]))}, centre x {_quartiles(b[:, 0] + b[:, 2] / 2)}, "
              f"y {_quartiles(b[:, 1] + b[:, 3] / 2)}")  # fmt: skip
        marks = [box.landmarks for box in boxes if getattr(box, "landmarks", None) is not None]
        if marks:
            m = np.array(marks, float) / 192  # [N, 5 points, (x, y)]
            eyes, mouth = (m[:, 0] + m[:, 1]) / 2, (m[:, 3] + m[:, 4]) / 2
            tilt = np.degrees(np.arctan2(m[:, 1, 1] - m[:, 0, 1], m[:, 1, 0] - m[:, 0, 0]))
            print(f"  eyes to mouth {_quartiles(np.linalg.norm(mouth - eyes, axis=1))}; eyes' midpoint x "
                  f"{_quartiles(eyes[:, 0])}, y {_quartiles(eyes[:, 1])}; eyes' tilt (degrees) "
                  f"{_quartiles(tilt)}")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per picture (the fastest counts)")
    parser.add_argument("--verbose", action="store_true", help="print every picture's result")
    parser.add_argument("--fer2013", help="instead: how each detector frames FER2013's faces (a .csv.gz)")
    parser.add_argument("--faces", type=int, default=1500, help="with --fer2013: how many Training faces")
    args = parser.parse_args()
    detectors = {"haar": HaarCascadeDetector(), "dnn": MtcnnDetector()}
    if args.fer2013:
        framing(detectors, args.fer2013, args.faces)
    else:
        compare(detectors, args.repeats, args.verbose)


if __name__ == "__main__":
    main()
