"""How FER2013 frames its faces, seen by the face detector `fer_flax.inference.predict` uses: the basis of
`fer_flax.inference.faces.crop.FER2013_MARGIN`.

  python benchmarks/fer2013_framing.py [--data ../shared/data/fer2013/fer2013.csv.gz] [--n 1500]

Runs the Haar detector on the first `--n` Training faces, each enlarged 4x (the detector's smallest
face is 24 pixels, about half a 48x48 image), and reports, over the faces with exactly one
detection, the box side as a fraction of the image side and the box centre: the crop that frames a
detected face like FER2013 is the box divided by that fraction, around that centre.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import itertools
import os
import sys

import numpy as np
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from fer_flax.inference.faces.detect import HaarCascadeDetector

DEFAULT_DATA = os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "data", "fer2013", "fer2013.csv.gz"
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", default=DEFAULT_DATA)
    parser.add_argument("--n", type=int, default=1500)
    args = parser.parse_args()
    detector = HaarCascadeDetector()
    scale = 4
    sides, cx, cy, seen = [], [], [], 0
    opener = gzip.open if args.data.endswith(".gz") else open
    with opener(args.data, "rt") as f:
        rows = (r for r in csv.DictReader(f) if r["Usage"] == "Training")
        for row in itertools.islice(rows, args.n):
            seen += 1
            face = np.array(row["pixels"].split(), np.uint8).reshape(48, 48)
            big = np.asarray(Image.fromarray(face).resize((48 * scale,) * 2, Image.Resampling.BILINEAR))
            boxes = detector.detect(big)
            if len(boxes) == 1:
                b = boxes[0]
                sides.append(b.width / scale / 48)
                cx.append((b.x + b.width / 2) / scale / 48)
                cy.append((b.y + b.height / 2) / scale / 48)
    sides = np.array(sides)
    q25, q50, q75 = np.percentile(sides, [25, 50, 75])
    print(f"{seen} Training faces, {len(sides)} with exactly one detected face")
    print(f"box side / image side: median {q50:.3f} (quartiles {q25:.3f}, {q75:.3f})")
    print(f"box centre / image side: x {np.median(cx):.3f}, y {np.median(cy):.3f}")
    print(f"margin per side that frames a box like FER2013: {(1 / q50 - 1) / 2:.3f}")


if __name__ == "__main__":
    main()
