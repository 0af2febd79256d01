"""The synthetic face set: shapes, determinism, class proportions, drawn expressions."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from PIL import Image

from fer_flax.data.splits import (
    CLASS_NAMES,
    FER2013_TRAIN_COUNTS,
    IMAGE_SIZE,
    NUM_CLASSES,
    ArraySplit,
)
from fer_flax.data.synthetic import generate_synthetic, render_faces, save_preview_grid

FER_PROPORTIONS = np.asarray(FER2013_TRAIN_COUNTS) / sum(FER2013_TRAIN_COUNTS)


@pytest.fixture(scope="module")
def data() -> dict[str, ArraySplit]:
    return generate_synthetic(2000, 300, 200, seed=0)


@pytest.fixture(scope="module")
def paired_faces() -> np.ndarray:
    """[7, n, 48, 48] float: the same n faces (same generator state) drawn with each expression."""
    n = 100
    return np.stack(
        [render_faces(np.full(n, c), np.random.default_rng(5)).astype(np.float32) for c in range(7)]
    )


def test_shapes_dtypes_and_range(data):
    assert set(data) == {"train", "val", "test"}
    for split, n in (("train", 2000), ("val", 300), ("test", 200)):
        images, labels = data[split].images, data[split].labels
        assert images.shape == (n, IMAGE_SIZE, IMAGE_SIZE) and images.dtype == np.uint8
        assert labels.shape == (n,) and labels.dtype == np.int32
        assert labels.min() >= 0 and labels.max() < NUM_CLASSES
    images = data["train"].images
    # The full grey range is used, and no image is blank.
    assert images.min() < 30 and images.max() > 225
    assert images.reshape(len(images), -1).std(axis=1).min() > 5


def test_empty_splits():
    out = generate_synthetic(0, 0, 1, seed=3)
    assert out["train"].images.shape == (0, IMAGE_SIZE, IMAGE_SIZE) and len(out["val"]) == 0
    assert len(out["test"]) == 1


def test_same_seed_is_byte_identical_and_other_seed_differs():
    first = generate_synthetic(200, 60, 50, seed=7)
    again = generate_synthetic(200, 60, 50, seed=7)
    other = generate_synthetic(200, 60, 50, seed=8)
    for split in first:
        assert np.array_equal(again[split].images, first[split].images)
        assert np.array_equal(again[split].labels, first[split].labels)
        assert not np.array_equal(other[split].images, first[split].images)
        assert not np.array_equal(other[split].labels, first[split].labels)


def test_splits_are_independent_draws(data):
    def rows(split):
        return {img.tobytes() for img in data[split].images}

    train, val, test = rows("train"), rows("val"), rows("test")
    assert not (train & val) and not (train & test) and not (val & test)
    # Each split has its own stream: resizing one split leaves the others unchanged.
    resized = generate_synthetic(10, 300, 200, seed=0)
    assert np.array_equal(resized["val"].images, data["val"].images)
    assert np.array_equal(resized["test"].labels, data["test"].labels)


def test_class_proportions_match_fer2013(data):
    for split in data:
        counts = data[split].class_counts()
        proportions = counts / counts.sum()
        np.testing.assert_array_less(np.abs(proportions - FER_PROPORTIONS), 0.01)
    # Exact largest-remainder allocation, for sizes where rounding matters.
    for n in (1, 7, 10, 33, 101):
        counts = generate_synthetic(n, 0, 0, seed=n)["train"].class_counts()
        assert counts.sum() == n
        np.testing.assert_array_less(np.abs(counts - n * FER_PROPORTIONS), 1.0)
    # Labels are shuffled, not in class blocks.
    labels = data["train"].labels
    assert np.count_nonzero(np.diff(labels)) > len(labels) // 2


def test_every_pair_of_expressions_differs_in_feature_regions(paired_faces):
    # Same faces, poses and lighting per class (see render_faces), so class mean images differ only
    # by the expression. A renderer that ignored the labels would give exactly zero here.
    means = paired_faces.mean(axis=1)
    upper, mouth = slice(6, 28), slice(26, 46)  # rows of brows + eyes, and of the mouth
    for i, j in itertools.combinations(range(NUM_CLASSES), 2):
        diff = means[i] - means[j]
        rms_upper = np.sqrt(np.mean(diff[upper] ** 2))
        rms_mouth = np.sqrt(np.mean(diff[mouth] ** 2))
        assert max(rms_upper, rms_mouth) > 2.0, (i, j, rms_upper, rms_mouth)
    # ... and not only on average: nearly every single face shows its expression.
    per_image = np.abs(paired_faces[:, None] - paired_faces[None]).mean(axis=(-1, -2))
    off_diagonal = per_image[~np.eye(NUM_CLASSES, dtype=bool)]
    assert np.mean(off_diagonal > 0.5) > 0.95


def test_expression_specific_features(paired_faces):
    mean = {name: paired_faces[c].mean(axis=0) for c, name in enumerate(CLASS_NAMES)}
    mouth = (slice(34, 44), slice(16, 32))
    # Surprise's open O mouth and fear's stretched open mouth are darker than a closed neutral one.
    assert mean["surprise"][mouth].mean() < mean["neutral"][mouth].mean() - 3
    assert mean["fear"][mouth].mean() < mean["neutral"][mouth].mean() - 3
    # Wide eyes show light sclera: the eye band of surprise is brighter than angry's narrowed slits.
    eyes = (slice(16, 24), slice(8, 40))
    assert mean["surprise"][eyes].mean() > mean["angry"][eyes].mean() + 3


def test_nuisance_varies():
    faces = render_faces(np.full(300, 6), np.random.default_rng(0)).astype(np.float32)
    brightness = faces.mean(axis=(1, 2))
    assert brightness.std() > 15  # lighting, skin and background tones
    # Pose: where the expression changes (surprise vs neutral, same faces) moves with the pose.
    surprised = render_faces(np.full(300, 5), np.random.default_rng(0)).astype(np.float32)
    change = np.abs(surprised - faces)
    grid = np.arange(IMAGE_SIZE, dtype=np.float32)
    total = change.sum(axis=(1, 2))
    cy = (change.sum(axis=2) * grid).sum(axis=1) / total
    cx = (change.sum(axis=1) * grid).sum(axis=1) / total
    assert cx.std() > 1.0 and cy.std() > 1.0
    # Two faces with the same expression are never near-copies.
    assert np.abs(faces[1:] - faces[:-1]).mean(axis=(1, 2)).min() > 5


def test_invalid_arguments():
    with pytest.raises(ValueError, match="num_val"):
        generate_synthetic(10, -1, 0)
    with pytest.raises(ValueError, match="num_train"):
        generate_synthetic(1.5, 1, 1)
    with pytest.raises(ValueError, match=r"0\.\.6"):
        render_faces(np.array([0, 7]), np.random.default_rng(0))
    with pytest.raises(ValueError, match="integer"):
        render_faces(np.array([0.0, 1.0]), np.random.default_rng(0))


def test_save_preview_grid(tmp_path):
    path = tmp_path / "grid.png"
    save_preview_grid(path, per_class=2, seed=0, scale=2)
    with Image.open(path) as image:
        assert image.mode == "L"
        assert image.height == NUM_CLASSES * (IMAGE_SIZE * 2 + 2)
        assert image.width > 2 * IMAGE_SIZE * 2
