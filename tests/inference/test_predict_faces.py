"""`fer_flax.inference.predict` on real photographs, a composed group picture and a video: faces found,
cropped and classified through the one inference path; bad inputs fail whole, leaving no output."""

import csv
import io
import json
import os
import sys

import jax
import numpy as np
import pytest
from PIL import Image

from fer_flax.core import metrics
from fer_flax.core.augment import preprocess
from fer_flax.data.splits import CLASS_NAMES
from fer_flax.inference import engine as inference
from fer_flax.inference import photos, predict, video
from fer_flax.inference.faces import crop as crop_lib
from fer_flax.inference.faces.classify import FaceClassifier
from fer_flax.inference.faces.detect import Box
from fer_flax.inference.faces.track import iou
from tests.helpers.face_pictures import (
    CLIP_FRAMES,
    CLIP_SIZE,
    GROUP_PLACES,
    astronaut,
    group_picture,
    tilted_astronaut,
    write_face_clip,
)

# One worker trains the tiny run (conftest's `trained_run`) that several test files share.
pytestmark = pytest.mark.xdist_group("trained_run")

cv2 = pytest.importorskip("cv2")


@pytest.fixture(scope="module")
def classifier(trained_run):
    return FaceClassifier(inference.load_members([trained_run]), tta_mode="none")


def _softmax_of(classifier, crops):
    member = classifier.members[0]
    logits, _ = member.model.apply(jax.device_get(member.variables), preprocess(crops), train=False)
    return metrics.softmax(np.asarray(logits))


def test_photos_faces_records_and_pictures(classifier, tmp_path, monkeypatch):
    folder = tmp_path / "photos"
    folder.mkdir()
    astronaut().save(folder / "a_astronaut.png")
    group_picture().save(folder / "b_group.jpg", quality=95)
    Image.fromarray(np.asarray(astronaut())[300:, 300:]).save(folder / "c_no_face.png")
    crop = astronaut().convert("L").crop((172, 61, 282, 171)).resize((48, 48))
    crop.save(tmp_path / "crop48.png")
    monkeypatch.setattr(photos, "CHUNK_IMAGES", 2)  # several chunks: faces from many images batched
    out_dir = tmp_path / "out"
    records, videos = predict.predict_inputs([str(folder), str(tmp_path / "crop48.png")], classifier,
                                             out_dir=str(out_dir), detector="haar")  # fmt: skip
    assert videos == []
    assert [os.path.basename(r["path"]) for r in records] == [
        "a_astronaut.png", "b_group.jpg", "c_no_face.png", "crop48.png",
    ]  # fmt: skip
    assert [len(r["faces"]) for r in records] == [1, 4, 0, 1]
    assert records[2]["note"] == "no face found"
    assert records[3]["detector"] is None  # a 48x48 crop is classified whole
    assert records[3]["faces"][0]["box"] == {"x": 0, "y": 0, "width": 48, "height": 48}
    group_boxes = [Box(**f["box"]) for f in records[1]["faces"]]
    assert all(max(iou(Box(x, y, s, s), b) for b in group_boxes) > 0.5 for x, y, s in GROUP_PLACES)

    # Each face's probabilities are the model's softmax on its FER2013-framed crop.
    gray = np.asarray(Image.open(folder / "b_group.jpg").convert("L"))
    expected = _softmax_of(classifier, np.stack([crop_lib.crop_face(gray, b) for b in group_boxes]))
    for face, p in zip(records[1]["faces"], expected, strict=True):
        np.testing.assert_allclose([face["probabilities"][n] for n in CLASS_NAMES], p, atol=1e-5)
        assert face["label"] == CLASS_NAMES[int(p.argmax())]
        assert face["confidence"] == pytest.approx(float(p.max()), abs=1e-6)

    # Per image: its JSON record, an annotated copy of the same size, a contact sheet of its crops.
    assert sorted(os.listdir(out_dir)) == [
        "a_astronaut.annotated.png", "a_astronaut.faces.png", "a_astronaut.json",
        "b_group.annotated.jpg", "b_group.faces.png", "b_group.json", "c_no_face.json",
        "crop48.annotated.png", "crop48.faces.png", "crop48.json",
    ]  # fmt: skip
    assert json.loads((out_dir / "b_group.json").read_text()) == records[1]
    annotated = Image.open(out_dir / "b_group.annotated.jpg")
    assert annotated.size == (720, 480)
    assert not np.array_equal(np.asarray(annotated.convert("RGB")), np.asarray(group_picture()))
    assert Image.open(out_dir / "b_group.faces.png").width > 4 * 96  # four 2x crops side by side

    rows = list(csv.reader(predict.to_csv(records).splitlines()))
    assert rows[0] == ["path", "face", "x", "y", "width", "height", "label", "confidence",
                       *CLASS_NAMES, "note"]  # fmt: skip
    assert [r[1] for r in rows[1:]] == ["1", "1", "2", "3", "4", "", "1"]
    assert rows[6][-1] == "no face found"

    # Folders of 48x48 crops never need OpenCV.
    monkeypatch.setitem(sys.modules, "cv2", None)
    again, _ = predict.predict_inputs([str(tmp_path / "crop48.png")], classifier, detector="haar")
    assert again[0]["faces"] == records[3]["faces"]


def test_bad_inputs_fail_whole_and_leave_no_outputs(classifier, tmp_path):
    folder = tmp_path / "mixed"
    folder.mkdir()
    astronaut().save(folder / "a_good.png")
    (folder / "b_corrupt.png").write_bytes(b"this is not an image")
    jpeg = io.BytesIO()
    astronaut().save(jpeg, "JPEG")
    (folder / "c_truncated.jpg").write_bytes(jpeg.getvalue()[: len(jpeg.getvalue()) // 2])
    out_dir = tmp_path / "out"

    def fails(paths, match, **kwargs):
        with pytest.raises(ValueError, match=match):
            predict.predict_inputs([str(p) for p in paths], classifier, out_dir=str(out_dir), **kwargs)
        assert not out_dir.exists()
        assert [p.name for p in tmp_path.iterdir() if "partial" in p.name] == []

    fails([folder], r"2 of 3 input\(s\) cannot be read, so nothing was written")
    fails([folder], "b_corrupt.png: cannot read image")
    fails([folder], "c_truncated.jpg: cannot read image")
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "readme.txt").write_text("no pictures here")
    (notes / "data.csv").write_text("a,b\n")
    fails([notes], "no PNG/JPEG images found in .*notes")
    (tmp_path / "empty.mp4").write_bytes(b"")
    fails([tmp_path / "empty.mp4"], "empty.mp4: cannot open the video")
    (tmp_path / "broken.avi").write_bytes(np.random.default_rng(0).bytes(5000))
    fails([folder / "a_good.png", tmp_path / "broken.avi"], "broken.avi: cannot open the video")
    with pytest.raises(ValueError, match="--out_dir"):
        predict.predict_inputs([str(tmp_path / "broken.avi")], classifier)


def test_video_tracks_faces_across_frames(classifier, tmp_path):
    clip = str(tmp_path / "clip.avi")
    moving = write_face_clip(clip, fps=10.0)
    out_dir = tmp_path / "out"
    _, [summary] = predict.predict_inputs([clip], classifier, out_dir=str(out_dir), every=2,
                                          annotate_video=True, detector="haar")  # fmt: skip
    assert summary["processed_frames"] == CLIP_FRAMES // 2 and summary["fps"] == pytest.approx(10.0)
    # Two faces, each followed through all five processed frames: the mover (leftmost) is track 1.
    assert [(t["track"], t["first_frame"], t["last_frame"], t["frames"]) for t in summary["tracks"]] == [
        (1, 0, 8, 5), (2, 0, 8, 5),
    ]  # fmt: skip
    rows = list(csv.DictReader((out_dir / "clip.timeline.csv").read_text().splitlines()))
    assert len(rows) == 10 and list(rows[0])[-7:] == list(CLASS_NAMES)
    for r in rows:
        frame, box = int(r["frame"]), Box(*(int(r[k]) for k in ("x", "y", "width", "height")))
        assert float(r["time_s"]) == pytest.approx(frame / 10.0)
        if r["track"] == "1":
            assert iou(box, Box(*moving[frame][:2], moving[frame][2], moving[frame][2])) > 0.5
        assert sum(float(r[n]) for n in CLASS_NAMES) == pytest.approx(1.0, abs=1e-5)
    assert sorted(os.listdir(out_dir)) == [
        "clip.annotated.mp4", "clip.timeline.csv", "clip.track1.png", "clip.track2.png", "clip.tracks.json",
    ]  # fmt: skip
    frames = list(video.sampled_frames(str(out_dir / "clip.annotated.mp4"), 1))
    assert len(frames) == CLIP_FRAMES // 2 and frames[0][1].shape == (CLIP_SIZE[1], CLIP_SIZE[0], 3)


def test_the_dnn_detector_classifies_a_tilted_face_levelled(classifier, tmp_path, capsys):
    pytest.importorskip("lz4")
    from fer_flax.inference.faces import mtcnn

    try:
        detector = mtcnn.MtcnnDetector()
    except ImportError:
        pytest.skip('the dnn face detector is not installed: pip install ".[faces-dnn]"')
    tilted_astronaut(30).save(tmp_path / "tilted.png")
    [record], _ = predict.predict_inputs([str(tmp_path / "tilted.png")], classifier)  # auto: dnn
    assert "face detector: dnn:mtcnn" in capsys.readouterr().err
    assert record["detector"] == "dnn:mtcnn"
    [face] = record["faces"]
    # The face is classified from the crop turned by its eyes' angle, built from its landmarks.
    gray = np.asarray(Image.open(tmp_path / "tilted.png").convert("L"))
    [found] = detector.detect(gray)
    assert face["landmarks"]["left_eye"] == pytest.approx(list(found.landmarks.left_eye), abs=0.05)
    expected = _softmax_of(classifier, crop_lib.crop_face(gray, found)[None])[0]
    np.testing.assert_allclose([face["probabilities"][n] for n in CLASS_NAMES], expected, atol=1e-5)
    assert not np.array_equal(crop_lib.crop_face(gray, found), crop_lib.crop_face(gray, Box(*found)))
