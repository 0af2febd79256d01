"""FER+: the label modes and their drop and outlier rules on hand-made vote rows, the multi-target loss,
the reader's strict validation (errors naming file and line or image), and the real data's counts."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fer_flax.config.defaults import get_base_config
from fer_flax.core import losses
from fer_flax.data import FERDataError, labels, load_splits, resolve_spec, sources
from fer_flax.data.ferplus import VoteSplit, read_ferplus
from fer_flax.data.spec import FERPLUS
from fer_flax.training import steps
from tests.helpers import REAL_DATA_DIR
from tests.helpers.ferplus import face, make_tar, write_split

# neutral, happiness, surprise, sadness, anger, disgust, fear, contempt, unknown, NF
VOTES = np.array(
    [
        [4, 0, 0, 0, 1, 0, 0, 4, 1, 0],  # tie neutral/contempt -> neutral; anger and unknown are outliers
        [1, 0, 0, 1, 0, 2, 0, 6, 0, 0],  # contempt; disgust keeps its 2 votes
        [0, 10, 0, 0, 0, 0, 0, 0, 0, 0],  # unanimous happiness
        [5, 0, 3, 0, 0, 0, 0, 0, 2, 0],  # unknown votes count in the multi-target threshold only
        [1, 1, 1, 1, 1, 1, 1, 1, 1, 1],  # every vote an outlier: falls back to the majority (neutral)
        [1, 1, 1, 1, 1, 1, 1, 1, 2, 0],  # majority unknown: dropped
        [0, 0, 0, 0, 0, 0, 0, 0, 3, 7],  # majority not-a-face: dropped
    ]
)


def _one_hot(i: int) -> list[float]:
    return np.eye(8)[i].tolist()


def test_each_label_mode_on_hand_made_votes():
    split = VoteSplit(images=np.zeros((len(VOTES), 48, 48), np.uint8), votes=VOTES)
    out = {mode: labels.label_split(split, mode) for mode in labels.LABEL_MODES}
    for mode, labelled in out.items():
        assert len(labelled) == 5, mode  # the drop rule, the same in every mode
        assert labelled.labels.tolist() == [0, 7, 1, 0, 0], mode
        assert labelled.class_names == FERPLUS.class_names
    assert out["majority"].targets is None  # the integer label is the target
    expected_distribution = [
        [0.5, 0, 0, 0, 0, 0, 0, 0.5],
        [0, 0, 0, 0, 0, 0.25, 0, 0.75],
        _one_hot(1),
        [5 / 8, 0, 3 / 8, 0, 0, 0, 0, 0],
        _one_hot(0),
    ]
    for mode in ("probability", "crossentropy"):
        np.testing.assert_allclose(out[mode].targets, expected_distribution, err_msg=mode)
    expected_sets = [
        [1, 0, 0, 0, 0, 0, 0, 1],  # 4 and 4 of the 8 votes left
        _one_hot(7),  # disgust: 2 of 8 votes is under 0.3
        _one_hot(1),
        [1, 0, 1, 0, 0, 0, 0, 0],  # 5 and 3 of 10 votes (unknown's 2 count in the total)
        _one_hot(0),
    ]
    np.testing.assert_array_equal(out["multi_target"].targets, expected_sets)


def test_outlier_and_drop_rules():
    np.testing.assert_array_equal(
        labels.without_outliers([[1, 2, 0, 1, 6, 0, 0, 0, 0, 0]]), [[0, 2, 0, 0, 6, 0, 0, 0, 0, 0]]
    )
    assert labels.kept(VOTES).tolist() == [True] * 5 + [False, False]
    assert labels.majority_labels(VOTES).tolist() == [0, 7, 1, 0, 0, 8, 9]


def test_targets_in_the_train_step_and_the_multi_target_loss():
    target = jnp.asarray([[0.25, 0, 0, 0, 0, 0, 0, 0.75]] * 4000)
    batch = {"label": jnp.zeros(4000, jnp.int32), "target": target}
    targets_of = jax.jit(steps.training_targets, static_argnums=(1, 2))
    drawn = np.asarray(targets_of(batch, "probability", 8, jax.random.key(0)))
    assert set(np.unique(drawn)) == {0.0, 1.0} and np.all(drawn.sum(1) == 1)
    assert abs(drawn[:, 7].mean() - 0.75) < 0.03 and drawn[:, 1:7].sum() == 0  # from the vote distribution
    np.testing.assert_array_equal(targets_of(batch, "crossentropy", 8, jax.random.key(0)), target)
    np.testing.assert_array_equal(targets_of(batch, "majority", 8, jax.random.key(0))[:, 0], 1.0)

    probs = np.asarray([[0.1, 0.2, 0.0, 0.0, 0.0, 0.0, 0.0, 0.7]])
    both = np.asarray([[1.0, 0, 0, 0, 0, 0, 0, 1.0]])
    weights = losses.LossTerms(np.arange(1, 9, dtype=np.float32), None)
    loss_of = jax.jit(lambda logits, t: losses.training_loss(logits, t, multi_target=True, terms=weights))
    # The most probable acceptable class (0.7) decides: -log max_c y_c p_c with y = (1 - eps) t + eps,
    # times the mean class weight of the set ((1 + 8) / 2).
    np.testing.assert_allclose(loss_of(np.log(probs + 1e-30), both), [-np.log(0.7) * 4.5], rtol=1e-5)


# --------------------------------------------------------------------------------------- the reader

GOOD = [
    ("fer0000000.png", [0, 10, 0, 0, 0, 0, 0, 0, 0, 0], face(0)),
    ("fer0000001.png", [6, 0, 0, 0, 0, 0, 0, 4, 0, 0], face(1)),
    ("fer0000002.png", [0, 0, 0, 0, 0, 0, 0, 0, 2, 8], face(2)),  # dropped: not a face
]


def _source(tmp_path, train_rows=GOOD):
    write_split(tmp_path / "fp", "train", train_rows)
    write_split(tmp_path / "fp", "val", [("fer0000009.png", [0, 0, 9, 1, 0, 0, 0, 0, 0, 0], face(9))])
    return tmp_path / "fp"


def _error(path, splits=("train",)) -> str:
    with pytest.raises(FERDataError) as info:
        read_ferplus(path, splits)
    return str(info.value)


def test_reader_folder_and_tar_and_the_spec(tmp_path):
    root = _source(tmp_path)
    tar = make_tar(root, tmp_path / "fp.tar.gz")
    for source in (root, tar):
        data = get_base_config().data
        data.update(path=str(source), format="auto", cache_dir=str(tmp_path / "cache"))
        assert sources.resolve_format(data) == "ferplus" and resolve_spec(data) == FERPLUS
        out = load_splits(data, ("train", "val"), label_mode="crossentropy")
        np.testing.assert_array_equal(out["train"].images, [face(0), face(1)])
        assert out["train"].labels.tolist() == [1, 0] and out["val"].labels.tolist() == [2]
        np.testing.assert_allclose(out["train"].targets[1], [0.6, 0, 0, 0, 0, 0, 0, 0.4, 0][:8])
    assert "no FER2013Test/ (split 'test')" in _error(root, ("test",))
    assert "it holds: FER2013Train, FER2013Valid" in _error(tar, ("test",))


@pytest.mark.parametrize(
    ("rows", "where", "problem"),
    [
        (
            [("a.png", [1, 2, 3, 4, 0, 0, 0, 0, 0, "x"], face(0))],
            "label.csv, line 1",
            "vote count for NF is 'x'",
        ),
        ([("a.png", [1, 2, 3, 4, 0, 0, 0, 0, 0], face(0))], "label.csv, line 1", "expected 12 columns"),
        ([("a.png", [0] * 10, face(0))], "label.csv, line 1", "has no votes"),
        (
            [*GOOD[:1], ("b.png", GOOD[1][1], None)],
            "label.csv, line 2",
            "'b.png' is missing from FER2013Train/",
        ),
        ([*GOOD[:2], ("fer0000000.png", GOOD[1][1], face(3))], "label.csv, line 3", "duplicate image name"),
        (
            [("a.png", GOOD[0][1], face(0, (40, 48)))],
            "image FER2013Train/a.png",
            "image is 48x40, expected 48x48",
        ),
    ],
)
def test_reader_errors_name_file_and_line(tmp_path, rows, where, problem):
    message = _error(_source(tmp_path, rows))
    assert where in message and problem in message, message


def test_an_image_without_a_row_is_an_error(tmp_path):
    root = _source(tmp_path)
    (root / "FER2013Train" / "label.csv").write_text(
        (root / "FER2013Train" / "label.csv").read_text().splitlines()[0] + "\n"
    )
    message = _error(root)
    assert (
        "image FER2013Train/fer0000001.png" in message and "has no row in FER2013Train/label.csv" in message
    )


def test_real_ferplus_valid_counts():
    path = REAL_DATA_DIR.parent / "ferplus" / "ferplus_trainval.tar.gz"
    if not path.exists():
        pytest.skip(f"real FER+ not found at {path}")
    val = read_ferplus(path, ("val",))["val"]
    majority = labels.majority_labels(val.votes)
    # The README's majority counts: the 8 emotions, then unknown and NF (dropped).
    assert np.bincount(majority, minlength=10).tolist() == [1329, 899, 458, 415, 325, 32, 71, 26, 23, 1]
    assert len(labels.label_split(val, "majority")) == 3555
