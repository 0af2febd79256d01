"""FER+ votes -> the images kept, their majority labels and the training targets of a label mode.

The four label modes of Barsoum et al. 2016 ("Training Deep Networks for Facial Expression Recognition
with Crowd-Sourced Label Distribution"), as FERPlus's reference code implements them:

  majority      one-hot of the majority label (the target is the integer label itself).
  probability   probabilistic label drawing: each time an image is trained on, a one-hot label is drawn
                from its vote distribution (drawn on the device inside the train step).
  crossentropy  the vote distribution itself is the (soft) target of the cross-entropy.
  multi_target  every emotion with at least MULTI_TARGET_THRESHOLD of the votes is an acceptable
                answer; the loss (`losses.multi_target_loss`) rewards the most probable of them.

Shared rules:
  * The majority label is the arg-max of the 10 vote columns, ties going to the earlier column.
    Accuracy is always measured against it.
  * Drop rule: images whose majority is "unknown" or "NF" (not a face) are dropped, in every split and
    every mode, so every mode is evaluated on the same images.
  * Outlier rule: for the distributions (probability, crossentropy, multi_target), a class voted for by
    a single annotator is an outlier and its vote is ignored. Should that leave no emotion votes at
    all (every emotion got a single vote), the target falls back to the majority label.
"""

from __future__ import annotations

import numpy as np

from fer_flax.base.errors import check_choice
from fer_flax.data.ferplus import VoteSplit
from fer_flax.data.spec import FERPLUS
from fer_flax.data.splits import ArraySplit

# FER+'s label modes (config key data.label_mode); data without votes trains with "majority" only.
LABEL_MODES: tuple[str, ...] = ("majority", "probability", "crossentropy", "multi_target")
# Modes whose targets are a [N, K] array (the others train on the integer label).
SOFT_MODES: tuple[str, ...] = ("probability", "crossentropy", "multi_target")
NUM_EMOTIONS = FERPLUS.num_classes  # the columns before "unknown" and "NF"
MULTI_TARGET_THRESHOLD = 0.3  # the reference code's share of the votes that makes an emotion a target


def majority_labels(votes: np.ndarray) -> np.ndarray:
    """int32 [N]: the arg-max vote column of each row (0..9; 8 unknown, 9 NF), earlier columns on ties."""
    return np.argmax(np.asarray(votes), axis=1).astype(np.int32)


def kept(votes: np.ndarray) -> np.ndarray:
    """bool [N]: the images the drop rule keeps (majority is one of the 8 emotions)."""
    return majority_labels(votes) < NUM_EMOTIONS


def without_outliers(votes: np.ndarray) -> np.ndarray:
    """The votes with every count of exactly 1 (a class only one annotator chose) set to 0."""
    votes = np.asarray(votes)
    return np.where(votes == 1, 0, votes)


def _majority_one_hot(votes: np.ndarray) -> np.ndarray:
    return np.eye(NUM_EMOTIONS, dtype=np.float32)[np.minimum(majority_labels(votes), NUM_EMOTIONS - 1)]


def distribution(votes: np.ndarray) -> np.ndarray:
    """float32 [N, 8]: the emotion votes without outliers, normalised to sum 1 (the majority label's
    one-hot where no emotion vote is left)."""
    emotions = without_outliers(votes)[:, :NUM_EMOTIONS].astype(np.float64)
    totals = emotions.sum(axis=1, keepdims=True)
    probs = np.divide(emotions, totals, out=np.zeros_like(emotions), where=totals > 0)
    return np.where(totals > 0, probs, _majority_one_hot(votes)).astype(np.float32)


def multi_targets(votes: np.ndarray) -> np.ndarray:
    """float32 [N, 8] of 0/1: the emotions holding at least MULTI_TARGET_THRESHOLD of the votes left
    after the outlier rule (unknown and NF votes count in the total); the majority label where none
    does."""
    clean = without_outliers(votes).astype(np.float64)
    total = clean.sum(axis=1, keepdims=True)
    chosen = (clean[:, :NUM_EMOTIONS] >= MULTI_TARGET_THRESHOLD * total) & (clean[:, :NUM_EMOTIONS] > 0)
    none = ~chosen.any(axis=1, keepdims=True)
    return np.where(none, _majority_one_hot(votes), chosen.astype(np.float32)).astype(np.float32)


def targets(votes: np.ndarray, mode: str) -> np.ndarray | None:
    """The training targets [N, 8] of `mode` (None for majority: the integer label is the target)."""
    check_choice("label mode", mode, LABEL_MODES)
    if mode == "majority":
        return None
    return multi_targets(votes) if mode == "multi_target" else distribution(votes)


def label_split(split: VoteSplit, mode: str) -> ArraySplit:
    """The images the drop rule keeps, their majority labels (0..7) and `mode`'s targets."""
    keep = kept(split.votes)
    votes = split.votes[keep]
    return ArraySplit(
        images=split.images[keep],
        labels=majority_labels(votes),
        class_names=FERPLUS.class_names,
        targets=targets(votes, mode),
    )
