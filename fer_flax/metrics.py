"""Exact classification metrics.

Inside jit, per-batch results are accumulated as sums (a confusion matrix, a loss sum, an example
count), so padded evaluation batches are counted exactly and the figures do not depend on batch size or
device count. `summarize` turns the sums into the numbers people read.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from fer_flax.data.splits import CLASS_NAMES


def confusion_matrix(labels: jnp.ndarray, predictions: jnp.ndarray, mask: jnp.ndarray, num_classes: int):
    """[num_classes, num_classes] int32 counts; rows are true classes, columns predictions."""
    idx = labels * num_classes + predictions
    counts = jnp.zeros((num_classes * num_classes,), jnp.int32).at[idx].add(mask.astype(jnp.int32))
    return counts.reshape(num_classes, num_classes)


def summarize(confusion: np.ndarray, loss_sum: float, count: int) -> dict[str, float]:
    """Accuracy, balanced accuracy (mean recall), macro-F1, mean loss and per-class recall."""
    cm = np.asarray(confusion, dtype=np.float64)
    total = cm.sum()
    if total != count:
        raise AssertionError(f"confusion matrix holds {total} examples but {count} were counted")
    tp = np.diag(cm)
    support = cm.sum(axis=1)
    predicted = cm.sum(axis=0)
    recall = np.divide(tp, support, out=np.zeros_like(tp), where=support > 0)
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(tp), where=denom > 0)
    present = support > 0
    out = {
        "accuracy": float(tp.sum() / max(total, 1)),
        "balanced_accuracy": float(recall[present].mean()) if present.any() else 0.0,
        "macro_f1": float(f1[present].mean()) if present.any() else 0.0,
        "loss": float(loss_sum / max(count, 1)),
        "num_examples": int(count),
    }
    for name, r in zip(CLASS_NAMES, recall, strict=True):
        out[f"recall/{name}"] = float(r)
    return out
