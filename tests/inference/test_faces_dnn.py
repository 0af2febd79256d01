"""The `dnn` face detector (MTCNN in Flax, weights from the `faces-dnn` extra) on real photographs:
faces the Haar cascade misses, landmarks on the eyes, level crops, no faces where there are none.
Skipped where the extra is not installed."""

import importlib.metadata
import io
import pickle

import numpy as np
import pytest
from PIL import Image

from fer_flax.inference.faces import crop as crop_lib
from fer_flax.inference.faces import mtcnn
from fer_flax.inference.faces.boxes import Box, FaceBox, Landmarks
from fer_flax.inference.faces.joblib_arrays import UnsafeFileError, read_arrays
from tests.helpers.face_pictures import (
    ASTRONAUT_CENTRE,
    ASTRONAUT_EYES,
    CAMERAMAN_FACE,
    GROUP_PLACES,
    HALF_PROFILES,
    astronaut,
    cameraman,
    group_picture,
    lfw_face,
    lfw_non_face,
    no_face_photos,
    paste_faces,
    tilted_astronaut,
    turned_point,
)

# One worker compiles the three networks once for all these tests (under `-n 2`).
pytestmark = pytest.mark.xdist_group("mtcnn")

try:
    import lz4.frame  # noqa: F401

    importlib.metadata.distribution(mtcnn.WEIGHTS_PACKAGE)
except ImportError:  # PackageNotFoundError is one
    pytest.skip('the dnn face detector is not installed: pip install ".[faces-dnn]"', allow_module_level=True)


@pytest.fixture(scope="module")
def detector():
    return mtcnn.MtcnnDetector()


def _gray(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("L"))


def _near(box: Box, centre, side: float, tolerance: float = 0.35) -> bool:
    """The box is centred within `tolerance` of the face's side from its centre, and about its size."""
    cx, cy = box.x + box.width / 2, box.y + box.height / 2
    close = np.hypot(cx - centre[0], cy - centre[1]) <= tolerance * side
    return bool(close and 0.5 * side <= np.sqrt(box.width * box.height) <= 2 * side)


def test_finds_tilted_and_half_turned_faces_the_haar_cascade_misses(detector):
    cv2 = pytest.importorskip("cv2")
    del cv2
    from fer_flax.inference.faces.detect import HaarCascadeDetector

    haar = HaarCascadeDetector()
    tilted = _gray(tilted_astronaut(30))
    assert haar.detect(tilted) == []
    [face] = detector.detect(tilted)
    assert _near(face, ASTRONAUT_CENTRE, 110) and isinstance(face, FaceBox) and face.score > 0.9
    x, y, side = CAMERAMAN_FACE
    turned = _gray(cameraman())
    assert haar.detect(turned) == []
    [face] = detector.detect(turned)
    assert _near(face, (x + side / 2, y + side / 2), side)
    # A half-profile pasted on the coffee photo, and faces of 24 pixels that the cascade cannot see.
    coffee = no_face_photos()["coffee"].resize((720, 480))
    places = [(150, 150, 100, 0), (400, 120, 24, 0), (500, 300, 24, 0), (600, 100, 24, 0)]
    picture = _gray(paste_faces(coffee, [lfw_face(HALF_PROFILES[0]), *map(lfw_face, (1, 2, 6))], places))
    assert haar.detect(picture) == []
    found = detector.detect(picture)
    assert len(found) == 4 and all(any(_near(b, (x, y), s) for b in found) for x, y, s, _ in places)


def test_every_face_of_the_group_picture_left_to_right(detector):
    boxes = detector.detect(_gray(group_picture()))
    assert len(boxes) == len(GROUP_PLACES)
    assert all(_near(b, (x + s / 2, y + s / 2), s) for b, (x, y, s) in zip(boxes, GROUP_PLACES, strict=True))
    assert boxes == sorted(boxes, key=lambda b: (b.x, b.y))


@pytest.mark.parametrize("degrees", [-30, 0, 20])
def test_landmarks_land_on_the_eyes(detector, degrees):
    [face] = detector.detect(_gray(tilted_astronaut(degrees)))
    marks = face.landmarks
    interocular = np.hypot(*np.subtract(*ASTRONAUT_EYES))
    for found, eye in zip((marks.left_eye, marks.right_eye), ASTRONAUT_EYES, strict=True):
        assert np.hypot(*np.subtract(found, turned_point(eye, degrees))) < 0.15 * interocular
    # Nose below the eyes and mouth below the nose, in the face's own frame.
    angle = np.radians(-degrees)
    down = np.array([-np.sin(angle), np.cos(angle)])
    eyes_y = down @ np.mean([marks.left_eye, marks.right_eye], axis=0)
    mouth_y = down @ np.mean([marks.mouth_left, marks.mouth_right], axis=0)
    assert eyes_y < down @ np.asarray(marks.nose) < mouth_y


def test_aligned_crops_are_level_and_alike_at_every_tilt(detector):
    crops, squares = [], []
    for degrees in (-30, -15, 0, 15, 30):
        gray = _gray(tilted_astronaut(degrees))
        [face] = detector.detect(gray)
        crops.append(crop_lib.crop_face(gray, face).astype(np.float32))
        squares.append(crop_lib.crop_face(gray, Box(*face)).astype(np.float32))
        # The detector, run again on the crop enlarged, finds the eyes level in it.
        big = Image.fromarray(crops[-1].astype(np.uint8)).resize((192, 192), Image.Resampling.BICUBIC)
        big = np.asarray(big)
        [again] = detector.detect(big)
        assert abs(np.degrees(crop_lib.eye_angle(again.landmarks))) < 4, degrees
    upright = crops[2]
    assert max(np.abs(c - upright).mean() for c in crops) < 12  # the same level face each time
    assert max(np.abs(s - squares[2]).mean() for s in squares) > 20  # not so without turning
    assert crops[0].shape == (48, 48)


def test_aligned_crop_geometry():
    # Eyes 40 px apart on a line tilted by 30 degrees, the mouth 40 px below their midpoint.
    a = np.radians(30)
    across, down = np.array([np.cos(a), np.sin(a)]), np.array([-np.sin(a), np.cos(a)])
    eyes = np.array([100.0, 100.0])
    mouth = eyes + 40 * down
    left, right = eyes - 20 * across, eyes + 20 * across
    marks = Landmarks(*map(tuple, (left, right, eyes + 20 * down, mouth - 15 * across, mouth + 15 * across)))
    cx, cy, side, angle = crop_lib.aligned_square(marks)
    assert angle == pytest.approx(a) and side == pytest.approx(40 / crop_lib.EYES_TO_MOUTH)
    # The eyes' midpoint sits at EYES_AT of the turned square.
    local = np.array([[np.cos(a), np.sin(a)], [-np.sin(a), np.cos(a)]]) @ (eyes - [cx, cy]) / side + 0.5
    np.testing.assert_allclose(local, crop_lib.EYES_AT, atol=1e-9)
    wider = crop_lib.aligned_square(marks, margin=0.25)[2]
    assert wider == pytest.approx(side * 1.5 / 1.25)
    # A picture of horizontal stripes, turned with the eyes, comes out with level stripes; RGB too.
    yy, xx = np.mgrid[:200, :200]
    stripes = (((xx - 100) * -np.sin(a) + (yy - 100) * np.cos(a)) // 8 % 2 * 255).astype(np.uint8)
    face = FaceBox(60, 60, 80, 80, marks)
    crop = crop_lib.crop_face(stripes, face, size=48).astype(float)
    assert np.abs(np.diff(crop[4:-4, 4:-4], axis=1)).mean() < 0.2 * np.abs(np.diff(crop, axis=0)).mean()
    rgb = crop_lib.crop_face(np.repeat(stripes[..., None], 3, axis=-1), face, size=(64, 56))
    assert rgb.shape == (64, 56, 3) and rgb.dtype == np.uint8
    unturned = crop_lib.crop_face(stripes, face, align=False)
    np.testing.assert_array_equal(unturned, crop_lib.crop_face(stripes, Box(60, 60, 80, 80)))


def test_no_faces_in_pictures_without_faces(detector):
    for name, photo in no_face_photos().items():
        assert detector.detect(_gray(photo)) == [], name
    # The LFW subset's 100 non-face patches, at 48 pixels on a grey canvas.
    places = [(40 + 64 * (i % 10), 40 + 64 * (i // 10), 48, 0) for i in range(100)]
    grey = Image.new("RGB", (680, 680), (128, 128, 128))
    patches = paste_faces(grey, [lfw_non_face(i) for i in range(100)], places)
    assert len(detector.detect(_gray(patches))) <= 1  # one false detection in 100 at most
    # Blank, tiny and large blank images.
    assert detector.detect(np.zeros((5, 7), np.uint8)) == []
    assert detector.detect(np.full((300, 2000), 200, np.uint8)) == []


def test_a_face_box_is_a_box_everywhere(detector):
    [face] = detector.detect(_gray(astronaut()))
    x, y, w, h = face  # unpacks as the 4-tuple it always was
    assert face == Box(x, y, w, h) and [*face] == [x, y, w, h]
    assert pickle.loads(pickle.dumps(face)).landmarks == face.landmarks
    from fer_flax.inference.faces.classify import FacePrediction

    record = FacePrediction(face, np.full(7, 1 / 7)).to_json()
    assert record["box"] == {"x": x, "y": y, "width": w, "height": h}
    assert record["landmarks"]["left_eye"] == pytest.approx(list(ASTRONAUT_EYES[0]), abs=4)
    assert "landmarks" not in FacePrediction(Box(x, y, w, h), np.full(7, 1 / 7)).to_json()


def test_weights_are_read_without_unpickling_code():
    with open(mtcnn.weight_file("pnet"), "rb") as f:
        arrays = read_arrays(f.read())
    assert [a.shape for a in arrays[:3]] == [(3, 3, 3, 10), (10,), (1, 1, 10)]

    class Payload:
        def __reduce__(self):
            return (print, ("this must not run",))

    with pytest.raises(UnsafeFileError, match=r"builtins\.print"):
        read_arrays(pickle.dumps([Payload()]))
    # A joblib-like header that asks for an object array is refused before any data is read.
    header = io.BytesIO()
    pickle.Pickler(header, protocol=4).dump([np.dtype("O")])
    with pytest.raises(UnsafeFileError):
        read_arrays(header.getvalue())
