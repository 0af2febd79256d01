"""The Python API, `fer_flax.Recognizer`: the faces `predict` finds and the probabilities it gives, from
paths, PIL images and numpy arrays in either colour order, one batch per call, compiled once per
shape, and silent unless asked."""

import os
import subprocess
import sys

import numpy as np
import pytest

import fer_flax
from fer_flax.data import sources
from fer_flax.inference import engine, predict
from fer_flax.inference.faces import classify
from fer_flax.inference.recognizer import Face, Recognizer, to_image
from tests.helpers import REPO

# One worker trains the tiny run (conftest's `trained_run`) that several test files share.
pytestmark = pytest.mark.xdist_group("trained_run")

cv2 = pytest.importorskip("cv2")
face_pictures = pytest.importorskip("tests.helpers.face_pictures")


@pytest.fixture(scope="module")
def recognizer(trained_run):
    return Recognizer(trained_run, detector="haar")  # the tests check the cascade's exact boxes


def test_every_kind_of_image_gives_what_predict_gives(recognizer, tmp_path):
    photo = face_pictures.group_picture()
    photo.save(tmp_path / "group.png")
    classifier = predict.make_classifier(engine.load_members([recognizer.describe()[0]["workdir"]]))
    (record,) = predict.predict_inputs([str(tmp_path / "group.png")], classifier, detector="haar")[0]
    rgb = np.asarray(photo)
    inputs = {
        "path": (str(tmp_path / "group.png"), {}),
        "PIL image": (photo, {}),
        "RGB array": (rgb, {}),
        "BGR array": (rgb[..., ::-1], {"channels": "bgr"}),
        "float array": (rgb / 255.0, {}),
        "grayscale array": (np.asarray(photo.convert("L")), {}),
    }
    for what, (image, options) in inputs.items():
        faces = recognizer.predict(image, **options)
        assert [f.to_json()["box"] for f in faces] == [f["box"] for f in record["faces"]], what
        for face, expected in zip(faces, record["faces"], strict=True):
            assert face.label == expected["label"] and face.landmarks is None, what  # the Haar cascade
            assert face.crop.shape == (48, 48) and face.crop.dtype == np.uint8
            got = [face.probabilities[n] for n in recognizer.class_names]
            np.testing.assert_allclose(got, list(expected["probabilities"].values()), atol=1e-6, err_msg=what)


def test_a_list_is_one_batch_and_a_second_call_compiles_nothing(recognizer, monkeypatch):
    photo = face_pictures.astronaut()
    calls = []
    real = classify.inference.member_probabilities

    def spy(members, crops, **kwargs):
        calls.append(len(crops))
        return real(members, crops, **kwargs)

    monkeypatch.setattr(classify.inference, "member_probabilities", spy)
    crop48 = np.asarray(photo.convert("L").crop(face_pictures.ASTRONAUT_FACE).resize((48, 48)))
    first = recognizer.predict([photo, np.zeros((64, 64, 3), np.uint8), crop48])
    assert [len(faces) for faces in first] == [1, 0, 1] and calls == [2]
    assert first[2][0].box == (0, 0, 48, 48)  # a 48x48 image is a face crop already
    member = recognizer.classifier.members[0]
    compiled = engine.logits_fn(member.model, recognizer.classifier.tta_mode, recognizer.classifier.crop_size)
    size = compiled._cache_size()
    again = recognizer.predict((photo, crop48))
    assert compiled._cache_size() == size and calls == [2, 2]
    assert again[0][0].probabilities == first[0][0].probabilities
    assert recognizer.predict([]) == []


def test_faces_whole_takes_the_image_as_one_face(recognizer):
    photo = face_pictures.astronaut()
    (face,) = recognizer.predict(photo, faces="whole")
    assert face.box == (0, 0, photo.width, photo.height)
    assert face.to_json()["box"] == {"x": 0, "y": 0, "width": photo.width, "height": photo.height}
    assert isinstance(face, Face) and sum(face.probabilities.values()) == pytest.approx(1.0, abs=1e-6)


def test_bad_images_and_options_say_what_is_wrong(recognizer, tmp_path):
    with pytest.raises(ValueError, match=r"uint8 \(0-255\) or floating point in \[0, 1\], got int64"):
        to_image(np.zeros((8, 8), np.int64))
    with pytest.raises(ValueError, match=r"got float32 with values in \[0.0, 255.0\]"):
        to_image(np.linspace(0, 255, 64, dtype=np.float32).reshape(8, 8))
    with pytest.raises(ValueError, match=r"C = 1, 3 or 4, got shape \(8, 8, 2\)"):
        to_image(np.zeros((8, 8, 2), np.uint8))
    with pytest.raises(TypeError, match="file path, a PIL image or a numpy array, got int"):
        recognizer.predict(3)
    with pytest.raises(ValueError, match="cannot read image"):
        recognizer.predict(str(tmp_path / "absent.png"))
    with pytest.raises(ValueError, match="channels='rgba' is not one of: rgb, bgr"):
        recognizer.predict(np.zeros((8, 8, 3), np.uint8), channels="rgba")
    with pytest.raises(ValueError, match="faces='all' is not one of"):
        Recognizer(faces="all")
    rgba = to_image(np.dstack([np.zeros((4, 4, 3), np.uint8), np.full((4, 4), 9, np.uint8)]))
    assert rgba.mode == "RGBA" and to_image(np.zeros((4, 4, 1), np.uint8)).mode == "L"


def test_verbose_says_what_it_did_and_that_the_model_is_synthetic(trained_run, capsys):
    loud = Recognizer(trained_run, verbose=True)
    assert loud.trained_on_synthetic
    loud.predict(np.zeros((48, 48), np.uint8))
    err = capsys.readouterr().err
    assert sources.SYNTHETIC_MODEL_NOTICE in err and "recognizer: 1 image(s), 1 face(s)" in err


def test_import_is_light_and_the_api_prints_nothing(trained_run, tmp_path):
    """`import fer_flax` starts no JAX; a Recognizer loads a run and predicts without a line on stdout
    or stderr (no Orbax or JAX log lines, no progress)."""
    face_pictures.astronaut().save(tmp_path / "astronaut.png")
    script = (
        "import sys\n"
        "import fer_flax\n"
        "assert 'jax' not in sys.modules, 'import fer_flax imported JAX'\n"
        "from fer_flax import Recognizer\n"
        f"faces = Recognizer({trained_run!r}).predict({str(tmp_path / 'astronaut.png')!r})\n"
        "assert len(faces) == 1, faces\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert (done.stdout, done.stderr) == ("", "")
    assert fer_flax.Recognizer is Recognizer and "Recognizer" in fer_flax.__all__
    with pytest.raises(AttributeError, match="no attribute 'Recogniser'"):
        fer_flax.Recogniser  # noqa: B018
