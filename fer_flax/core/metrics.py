"""Exact classification metrics.

Inside jit, per-batch results are accumulated as sums (a confusion matrix, a loss sum, an example
count), so padded evaluation batches are counted exactly and the figures do not depend on batch size or
device count. `summarize` turns the sums into the numbers people read.

`classification_report` is the full account an evaluation gives from per-example class probabilities
(one model, a test-time-augmented model or an ensemble): accuracy, balanced accuracy, macro-F1,
per-class precision/recall/F1, the confusion matrix, negative log-likelihood and expected calibration
error with its reliability bins.

Conventions, the same everywhere:
  * balanced accuracy and macro-F1 average over the classes present in the labels, so a split that
    lacks a class is not charged a zero for it;
  * a class that is never predicted has precision 0 (no correct predictions to its name);
  * ECE uses `ECE_BINS` = 15 equal-width bins of the top-class confidence, right-closed as in Guo et
    al. 2017, "On Calibration of Modern Neural Networks": bin m holds confidences in ((m-1)/15, m/15].
    ECE = sum over bins of (examples in bin / N) * |accuracy in bin - mean confidence in bin|.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax.numpy as jnp
import numpy as np

from fer_flax.data.splits import CLASS_NAMES


def confusion_matrix(labels: jnp.ndarray, predictions: jnp.ndarray, mask: jnp.ndarray, num_classes: int):
    """[num_classes, num_classes] int32 counts; rows are true classes, columns predictions."""
    idx = labels * num_classes + predictions
    counts = jnp.zeros((num_classes * num_classes,), jnp.int32).at[idx].add(mask.astype(jnp.int32))
    return counts.reshape(num_classes, num_classes)


def per_class_scores(confusion: np.ndarray) -> dict[str, np.ndarray]:
    """Per-class precision, recall, F1 and support (float64 [K] each) from a [K, K] confusion matrix
    whose rows are true classes and columns predictions."""
    cm = np.asarray(confusion, dtype=np.float64)
    tp = np.diag(cm)
    support = cm.sum(axis=1)
    predicted = cm.sum(axis=0)
    recall = np.divide(tp, support, out=np.zeros_like(tp), where=support > 0)
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(tp), where=denom > 0)
    return {"precision": precision, "recall": recall, "f1": f1, "support": support}


def _headline(confusion: np.ndarray) -> dict[str, float]:
    """Accuracy, balanced accuracy and macro-F1 (the last two over classes present in the labels)."""
    cm = np.asarray(confusion, dtype=np.float64)
    scores = per_class_scores(cm)
    present = scores["support"] > 0
    return {
        "accuracy": float(np.trace(cm) / max(cm.sum(), 1)),
        "balanced_accuracy": float(scores["recall"][present].mean()) if present.any() else 0.0,
        "macro_f1": float(scores["f1"][present].mean()) if present.any() else 0.0,
    }


def summarize(
    confusion: np.ndarray, loss_sum: float, count: int, class_names: Sequence[str] = CLASS_NAMES
) -> dict[str, float]:
    """Accuracy, balanced accuracy (mean recall), macro-F1, mean loss and per-class recall (named by
    `class_names`, one per row of the confusion matrix)."""
    cm = np.asarray(confusion, dtype=np.float64)
    total = cm.sum()
    if total != count:
        raise AssertionError(f"confusion matrix holds {total} examples but {count} were counted")
    recall = per_class_scores(cm)["recall"]
    out = {
        **_headline(cm),
        "loss": float(loss_sum / max(count, 1)),
        "num_examples": int(count),
    }
    for name, r in zip(class_names, recall, strict=True):
        out[f"recall/{name}"] = float(r)
    return out


# ------------------------------------------------------------------------------ from probabilities

ECE_BINS = 15


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float64 on the host (probabilities that far below 1e-7 stay non-zero, so
    the log-likelihood of a confidently wrong prediction is finite)."""
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def _check_probs_labels(probs: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    probs = np.asarray(probs, dtype=np.float64)
    labels = np.asarray(labels)
    if probs.ndim != 2 or labels.shape != (probs.shape[0],):
        raise ValueError(f"expected probs [N, K] and labels [N], got {probs.shape} and {labels.shape}")
    if labels.size and (labels.min() < 0 or labels.max() >= probs.shape[1]):
        raise ValueError(f"labels must lie in 0..{probs.shape[1] - 1}")
    return probs, labels.astype(np.int64)


def negative_log_likelihood(probs: np.ndarray, labels: np.ndarray) -> float:
    """Mean -log p(true class). A probability of exactly 0 is read as the smallest positive float64,
    so the result stays finite (about 708 for such an example)."""
    probs, labels = _check_probs_labels(probs, labels)
    p_true = probs[np.arange(labels.size), labels]
    return float(-np.mean(np.log(np.maximum(p_true, np.finfo(np.float64).tiny))))


def calibration_bins(
    probs: np.ndarray, labels: np.ndarray, num_bins: int = ECE_BINS
) -> dict[str, list[float]]:
    """Reliability-diagram data: per equal-width, right-closed confidence bin the example count, the
    mean top-class confidence and the accuracy (both 0 for an empty bin)."""
    probs, labels = _check_probs_labels(probs, labels)
    edges = np.linspace(0.0, 1.0, num_bins + 1)
    confidence = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == labels).astype(np.float64)
    # digitize(right=True) against the inner edges puts c in bin m when edges[m] < c <= edges[m+1].
    which = np.digitize(confidence, edges[1:-1], right=True)
    count = np.bincount(which, minlength=num_bins).astype(np.float64)
    conf_sum = np.bincount(which, weights=confidence, minlength=num_bins)
    acc_sum = np.bincount(which, weights=correct, minlength=num_bins)
    safe = np.maximum(count, 1)
    return {
        "bin_edges": edges.tolist(),
        "count": count.astype(int).tolist(),
        "confidence": (conf_sum / safe).tolist(),
        "accuracy": (acc_sum / safe).tolist(),
    }


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, num_bins: int = ECE_BINS) -> float:
    """ECE over `num_bins` equal-width, right-closed bins of the top-class confidence."""
    bins = calibration_bins(probs, labels, num_bins)
    count = np.asarray(bins["count"], dtype=np.float64)
    gap = np.abs(np.asarray(bins["accuracy"]) - np.asarray(bins["confidence"]))
    return float((count * gap).sum() / max(count.sum(), 1))


def classification_report(
    probs: np.ndarray,
    labels: np.ndarray,
    *,
    num_bins: int = ECE_BINS,
    class_names: Sequence[str] = CLASS_NAMES,
) -> dict:
    """Everything an evaluation reports, from probabilities [N, K] and labels [N] (K = len(class_names)).

    Predictions are the arg-max class. Keys: num_examples, accuracy, balanced_accuracy, macro_f1,
    nll, ece, per_class {name: {precision, recall, f1, support}}, confusion_matrix (rows true,
    columns predicted), class_names, calibration (the reliability bins)."""
    probs, labels = _check_probs_labels(probs, labels)
    k = probs.shape[1]
    if k != len(class_names):
        raise ValueError(f"expected {len(class_names)} classes, got probabilities for {k}")
    preds = probs.argmax(axis=1)
    cm = np.zeros((k, k), np.int64)
    np.add.at(cm, (labels, preds), 1)
    scores = per_class_scores(cm)
    return {
        "num_examples": int(labels.size),
        **_headline(cm),
        "nll": negative_log_likelihood(probs, labels),
        "ece": expected_calibration_error(probs, labels, num_bins),
        "per_class": {
            name: {
                "precision": float(scores["precision"][i]),
                "recall": float(scores["recall"][i]),
                "f1": float(scores["f1"][i]),
                "support": int(scores["support"][i]),
            }
            for i, name in enumerate(class_names)
        },
        "confusion_matrix": cm.tolist(),
        "class_names": list(class_names),
        "calibration": {"num_bins": num_bins, **calibration_bins(probs, labels, num_bins)},
    }
