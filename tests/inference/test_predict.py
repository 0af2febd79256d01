"""Prediction on image files: preprocessing like training data, odd sizes, colour, corrupt files."""

import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from PIL import Image

from fer_flax.core import metrics
from fer_flax.core.augment import preprocess
from fer_flax.data import sources
from fer_flax.data.splits import CLASS_NAMES
from fer_flax.inference import engine as inference
from fer_flax.inference import predict
from tests.helpers import REPO as REPO_PATH

# One worker trains the tiny run (conftest's `trained_run`) that several test files share.
pytestmark = pytest.mark.xdist_group("trained_run")

REPO = str(REPO_PATH)


@pytest.fixture
def images(tmp_path):
    """A folder of inputs: odd sizes, colour and grayscale, PNG and JPEG, nested, and broken files."""
    rng = np.random.default_rng(0)
    root = tmp_path / "faces"
    (root / "nested").mkdir(parents=True)
    Image.fromarray(rng.integers(0, 256, (37, 53, 3), dtype=np.uint8), "RGB").save(root / "a_rgb.png")
    Image.fromarray(rng.integers(0, 256, (61, 100), dtype=np.uint8), "L").save(root / "b_gray.jpg")
    rgba = rng.integers(0, 256, (77, 31, 4), dtype=np.uint8)
    Image.fromarray(rgba, "RGBA").save(root / "nested" / "c_rgba.png")
    Image.fromarray(rng.integers(0, 256, (48, 48), dtype=np.uint8), "L").save(root / "d_48.png")
    (root / "e_corrupt.png").write_bytes(b"this is not an image")
    good = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8), "RGB").save(good, "JPEG")
    (root / "f_truncated.jpg").write_bytes(good.getvalue()[: len(good.getvalue()) // 2])
    (root / "notes.txt").write_text("not an image, and not a .png/.jpg name: skipped")
    (root / ".hidden.png").write_bytes(b"skipped too")
    return root


def test_preprocessing_matches_training_data_by_hand(tmp_path):
    # A 48x48 grayscale image (FER2013's own format) passes through untouched.
    face = np.random.default_rng(1).integers(0, 256, (48, 48), dtype=np.uint8)
    Image.fromarray(face, "L").save(tmp_path / "face.png")
    np.testing.assert_array_equal(predict.load_image(tmp_path / "face.png"), face)
    # Colour -> ITU-R 601-2 luma: (200*299 + 100*587 + 50*114) / 1000 = 124.2 -> 124; a flat image
    # stays flat through the bilinear resize.
    Image.new("RGB", (90, 31), (200, 100, 50)).save(tmp_path / "flat.png")
    np.testing.assert_array_equal(predict.load_image(tmp_path / "flat.png"), np.full((48, 48), 124))
    # 16-bit grayscale is scaled, not clipped: 257 * 100 -> 100.
    Image.fromarray(np.full((20, 20), 257 * 100, np.uint16)).save(tmp_path / "wide.png")
    assert np.unique(predict.load_image(tmp_path / "wide.png")).tolist() == [100]
    # center_crop keeps the middle square of a wide image: 96x48 with black | grey | white thirds.
    wide = np.zeros((48, 96), np.uint8)
    wide[:, 24:72], wide[:, 72:] = 128, 255
    Image.fromarray(wide, "L").save(tmp_path / "thirds.png")
    np.testing.assert_array_equal(predict.load_image(tmp_path / "thirds.png", fit="center_crop"), 128)
    # Any other size: Pillow's bilinear resize of the grayscale image.
    odd = np.random.default_rng(2).integers(0, 256, (37, 53, 3), dtype=np.uint8)
    Image.fromarray(odd, "RGB").save(tmp_path / "odd.png")
    expected = Image.fromarray(odd, "RGB").convert("L").resize((48, 48), Image.Resampling.BILINEAR)
    np.testing.assert_array_equal(predict.load_image(tmp_path / "odd.png"), np.asarray(expected))


def test_classify_folder_with_corrupt_files(trained_run, images):
    members = inference.load_members([trained_run])
    results = predict.classify(members, [str(images)])
    names = [os.path.relpath(r["path"], images) for r in results]
    assert names == [
        "a_rgb.png", "b_gray.jpg", "d_48.png", "e_corrupt.png", "f_truncated.jpg", "nested/c_rgba.png",
    ]  # fmt: skip
    by_name = dict(zip(names, results, strict=True))
    assert "cannot read image" in by_name["e_corrupt.png"]["error"]
    assert "e_corrupt.png" in by_name["e_corrupt.png"]["error"]
    assert "truncated" in by_name["f_truncated.jpg"]["error"]
    good = [n for n in names if "error" not in by_name[n]]
    assert len(good) == 4
    # Each file's probabilities are the model's softmax on the preprocessed image.
    model, variables = members[0].model, jax.device_get(members[0].variables)
    batch = np.stack([predict.load_image(images / n) for n in good])
    logits, _ = model.apply(variables, preprocess(batch), train=False)
    expected = metrics.softmax(np.asarray(logits))
    for i, n in enumerate(good):
        probs = by_name[n]["probabilities"]
        assert list(probs) == list(CLASS_NAMES)
        np.testing.assert_allclose(list(probs.values()), expected[i], atol=1e-5)
        assert by_name[n]["label"] == CLASS_NAMES[int(expected[i].argmax())]
    # A path that does not exist is one more per-file error, not a crash.
    missing = predict.classify(members, [str(images / "nope.png"), str(images / "d_48.png")])
    assert "error" in missing[0] and "label" in missing[1]


def test_command_line_json_and_csv(trained_run, images, tmp_path):
    """Faces found in a photo, a 48x48 crop classified whole, a picture without a face said so."""
    pytest.importorskip("cv2")
    skimage_data = pytest.importorskip("skimage.data")
    Image.fromarray(skimage_data.astronaut()).save(tmp_path / "astronaut.png")
    out_csv, out_dir = tmp_path / "preds.csv", tmp_path / "out"
    cmd = [
        sys.executable, "-m", "fer_flax.predict", f"--workdir={trained_run}", "--format=json",
        "--detector=haar", f"--out={out_csv}", f"--out_dir={out_dir}", str(tmp_path / "astronaut.png"),
        str(images / "d_48.png"), str(images / "a_rgb.png"),
    ]  # fmt: skip
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "a_rgb.png: no face found" in done.stderr and "3/3 images, 2 faces" in done.stderr
    best = json.loads((Path(trained_run) / "summary.json").read_text())["best_step"]
    used = f"Predicting with {trained_run} (cnn/tiny, checkpoint 'best': step {best}, raw weights)"
    assert used in done.stderr
    assert sources.SYNTHETIC_MODEL_NOTICE in done.stderr  # the tiny run learnt the synthetic faces
    printed = json.loads(done.stdout)
    assert [os.path.basename(r["path"]) for r in printed] == ["astronaut.png", "d_48.png", "a_rgb.png"]
    assert [len(r["faces"]) for r in printed] == [1, 1, 0]
    face = printed[0]["faces"][0]
    assert face["label"] in CLASS_NAMES and printed[0]["detector"].startswith("haar")
    assert sum(face["probabilities"].values()) == pytest.approx(1.0, abs=1e-6)
    assert printed[1]["detector"] is None and printed[2]["note"] == "no face found"
    assert os.path.isfile(printed[0]["outputs"]["annotated"])

    rows = list(csv.DictReader(out_csv.open()))
    assert list(rows[0]) == ["path", "face", "x", "y", "width", "height", "label", "confidence",
                             *CLASS_NAMES, "note"]  # fmt: skip
    assert rows[0]["label"] == face["label"] and rows[0]["face"] == "1"
    assert float(rows[1]["happy"]) == pytest.approx(
        printed[1]["faces"][0]["probabilities"]["happy"], abs=1e-6
    )
    assert rows[2]["label"] == "" and rows[2]["note"] == "no face found"


def test_output_format_choice():
    assert predict.output_format("p.json", None) == "json"
    assert predict.output_format("p.CSV", None) == "csv"
    assert predict.output_format(None, None) == "table"
    assert predict.output_format("p.csv", "json") == "json"
    with pytest.raises(ValueError, match=r"\.json or \.csv"):
        predict.output_format("p.txt", None)
