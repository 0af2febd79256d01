"""benchmarks/large_set.py at a tiny size: faces generated into records, the loaders' figures, and a
short training run from the records."""

from __future__ import annotations

import json

import numpy as np
import pytest

from benchmarks import large_set
from fer_flax.data import records
from fer_flax.data.splits import SPLIT_TO_USAGE
from fer_flax.data.synthetic import generate_synthetic


def test_faces_are_112_rgb_from_the_synthetic_ones():
    images = large_set.faces(np.arange(7, dtype=np.int32), np.random.default_rng(0))
    assert images.shape == (7, 112, 112, 3) and images.dtype == np.uint8
    assert (images[..., 0] >= images[..., 2]).all() and images.std() > 10


@pytest.mark.slow
def test_a_tiny_run(tmp_path):
    data = generate_synthetic(40, 0, 0, seed=1)["train"]
    rows = [
        f"{y},{' '.join(map(str, x.reshape(-1)))},{SPLIT_TO_USAGE['train']}"
        for x, y in zip(data.images, data.labels, strict=True)
    ]
    csv = tmp_path / "fer.csv"
    csv.write_text("emotion,pixels,Usage\n" + "\n".join(rows) + "\n")
    out = tmp_path / "figures.json"
    args = ["--faces", "64", "--val", "16", "--dir", str(tmp_path / "set"), "--batch", "16", "--steps", "1"]
    args += ["--loader_seconds", "0.2", "--shards", "3", "--fer2013", str(csv), "--json", str(out)]
    report = large_set.main(args)
    assert json.loads(out.read_text()) == json.loads(json.dumps(report))
    folder = tmp_path / "set" / "faces64_records"
    meta = records.read_meta(folder)
    assert meta["spec"]["image_size"] == [112, 112] and meta["spec"]["channels"] == 3
    assert {s: e["count"] for s, e in meta["splits"].items()} == {"train": 64, "val": 16}
    assert len(meta["splits"]["train"]["shards"]) == 3
    for key in ("records_loader", "fer2013_loader"):
        assert report[key]["images_per_s"] > 0
    assert report["fer2013_loader"]["num_train"] == 40
    assert report["train"]["steps"] == 1 and "Final validation accuracy" in report["train"]["result"]
    assert report["train"]["peak_rss_mb"] > 0 and report["rss_after_records_loader_mb"] > 0
    # A second run reuses the records it finds.
    again = large_set.main([*args[:-2], "--steps", "0"])
    assert "generate_s" not in again and "train" not in again
