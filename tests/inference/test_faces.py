"""Face detection, FER2013-like cropping and tracking on real photographs, without a model."""

import gzip
import itertools
import sys

import numpy as np
import pytest
from PIL import Image

from fer_flax.inference.faces import crop as crop_lib
from fer_flax.inference.faces.detect import (
    Box,
    HaarCascadeDetector,
    MissingDependencyError,
    import_cv2,
    make_detector,
)
from fer_flax.inference.faces.track import IoUTracker, iou
from tests.helpers.face_pictures import GROUP_PLACES, astronaut, group_picture, no_face_photos

pytest.importorskip("cv2")


@pytest.fixture(scope="module")
def detector():
    return HaarCascadeDetector()


def _gray(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("L"))


def _matches(boxes, places, min_iou=0.5) -> bool:
    """Each expected (left, top, side) has exactly one detected box overlapping it by min_iou."""
    expected = [Box(x, y, s, s) for x, y, s in places]
    return len(boxes) == len(expected) and all(
        sum(iou(e, b) >= min_iou for b in boxes) == 1 for e in expected
    )


def test_package_photos_have_their_known_number_of_faces(detector):
    boxes = detector.detect(_gray(astronaut()))
    assert len(boxes) == 1
    assert iou(boxes[0], Box(172, 61, 110, 110)) > 0.6  # the face, not the helmet or the badge
    for name, photo in no_face_photos().items():
        assert detector.detect(_gray(photo)) == [], name
    # A photo larger than max_side is searched shrunk and its boxes are scaled back to its pixels.
    [box] = HaarCascadeDetector(max_side=256).detect(_gray(astronaut()))
    assert iou(box, boxes[0]) > 0.8 and box != boxes[0]


def test_group_picture_finds_every_face_at_every_size(detector):
    boxes = detector.detect(_gray(group_picture()))
    assert _matches(boxes, GROUP_PLACES), boxes
    assert boxes == sorted(boxes, key=lambda b: (b.x, b.y))  # a stable order: left to right


def test_group_of_fer2013_faces(detector, real_data_dir):
    """FER2013 faces that the detector finds on their own are all found together, at three sizes."""
    found = []
    with gzip.open(real_data_dir / "fer2013.csv.gz", "rt") as f:
        for line in itertools.islice(f, 1, 200):
            face = np.array(line.split(",")[1].split(), np.uint8).reshape(48, 48)
            big = np.asarray(Image.fromarray(face).resize((144, 144), Image.Resampling.BICUBIC))
            if len(detector.detect(big)) == 1:
                found.append(face)
            if len(found) == 3:
                break
    places = ((30, 200, 96), (250, 40, 144), (480, 180, 120))
    canvas = Image.new("L", (660, 400), 110)
    for face, (x, y, side) in zip(found, places, strict=True):
        canvas.paste(Image.fromarray(face).resize((side, side), Image.Resampling.BICUBIC), (x, y))
    assert _matches(detector.detect(np.asarray(canvas)), places)


def test_crop_frames_the_face_like_fer2013():
    gray = np.arange(200 * 300, dtype=np.int64).reshape(200, 300).astype(np.uint8)
    box = Box(100, 50, 80, 80)
    # The square around the box: 80 * (1 + 2 * 0.125) = 100 pixels, centred on the box.
    assert crop_lib.square_around(box) == Box(90, 40, 100, 100)
    assert crop_lib.square_around(Box(0, 0, 40, 20), margin=0) == Box(0, -10, 40, 40)
    expected = Image.fromarray(gray[40:140, 90:190]).resize((48, 48), Image.Resampling.BILINEAR)
    np.testing.assert_array_equal(crop_lib.crop_face(gray, box), np.asarray(expected))
    # A 48-pixel square is taken as it is; outside the picture, edge pixels are repeated.
    corner = crop_lib.crop_face(gray, Box(-10, -10, 48, 48), margin=0)
    np.testing.assert_array_equal(corner[10:, 10:], gray[:38, :38])
    np.testing.assert_array_equal(corner[:10, 10:], np.broadcast_to(gray[0, :38], (10, 38)))
    np.testing.assert_array_equal(corner[:10, :10], gray[0, 0])
    with pytest.raises(ValueError, match="outside"):
        crop_lib.crop_face(gray, Box(400, 10, 20, 20))


def test_tracker_follows_faces_by_overlap():
    assert iou(Box(0, 0, 10, 10), Box(5, 0, 10, 10)) == pytest.approx(50 / 150)
    assert iou(Box(0, 0, 10, 10), Box(10, 0, 10, 10)) == 0.0
    tracker = IoUTracker(min_iou=0.3, max_missed=1)
    assert tracker.update([Box(0, 0, 40, 40), Box(100, 0, 40, 40)]) == [1, 2]
    # Boxes come in any order; each keeps its track while it overlaps its last box enough.
    assert tracker.update([Box(104, 2, 40, 40), Box(6, 0, 40, 40)]) == [2, 1]
    # A face that jumps away is a new face; track 1 survives one missed frame, not two.
    assert tracker.update([Box(108, 4, 40, 40), Box(300, 300, 40, 40)]) == [2, 3]
    assert tracker.update([Box(8, 0, 40, 40)]) == [1]
    assert tracker.update([]) == []
    assert tracker.update([]) == []
    assert tracker.update([Box(8, 0, 40, 40)]) == [4]


def test_missing_opencv_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "cv2", None)  # what an environment without OpenCV shows
    # fer_flax is installed from its repository, not an index: the command that works there.
    hint = r'pip install -e "\.\[photos\]" in the fer_flax repository'
    with pytest.raises(MissingDependencyError, match=hint):
        import_cv2()
    with pytest.raises(MissingDependencyError, match=hint):
        HaarCascadeDetector()


def test_without_the_dnn_extra_auto_takes_the_haar_cascade_and_says_so(monkeypatch):
    import importlib.metadata

    from fer_flax.inference.faces import mtcnn

    def not_installed(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(mtcnn.importlib.metadata, "distribution", not_installed)
    with pytest.raises(MissingDependencyError, match=r"\.\[faces-dnn\]"):
        make_detector("dnn")
    said = []
    detector = make_detector("auto", log=said.append)
    assert isinstance(detector, HaarCascadeDetector)
    assert len(said) == 1 and "haar" in said[0] and "faces-dnn" in said[0]
    with pytest.raises(ValueError, match="auto, haar, dnn"):
        make_detector("hog")


def test_webcam_says_what_is_missing():
    from fer_flax.inference import webcam

    cv2 = import_cv2()
    if webcam.gui_backend(cv2) != "NONE":
        pytest.skip("this OpenCV has a GUI; the headless message cannot be checked here")
    with pytest.raises(webcam.WebcamUnavailable, match=r'headless.*pip install -e "\.\[webcam\]"'):
        webcam.check_available(0)


def test_faces_of_a_colour_run_with_its_own_classes_are_cropped_drawn_and_listed():
    # A run trained on 8 classes at 64x56 RGB (FER+'s classes, say): crops in its shape and colour,
    # annotations and the CSV in its classes.
    from fer_flax.inference import annotate, predict
    from fer_flax.inference.faces.classify import FacePrediction

    photo = np.asarray(astronaut().convert("RGB"))
    crop = crop_lib.crop_face(photo, Box(172, 61, 110, 110), size=(64, 56))
    assert crop.shape == (64, 56, 3) and crop.dtype == np.uint8
    names = ("neutral", "happiness", "surprise", "sadness", "anger", "disgust", "fear", "contempt")
    probs = np.eye(8)[1] * 0.9 + 0.1 / 8
    face = FacePrediction(Box(172, 61, 110, 110), probs, names)
    assert face.label == "happiness" and face.to_json()["probabilities"]["contempt"] == pytest.approx(0.0125)
    drawn = annotate.draw_faces(photo, [face])
    assert drawn.shape == photo.shape and not np.array_equal(drawn, photo)
    sheet = annotate.contact_sheet(crop[None], [face])
    assert sheet.shape[2] == 3 and sheet.shape[1] >= 2 * 56
    record = {"path": "a.png", "faces": [face.to_json()]}
    header = predict.to_csv([record]).splitlines()[0].split(",")
    assert header[-9:] == [*names, "note"]
