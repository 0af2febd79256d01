"""The one inference path: model variables + images or a split -> logits, probabilities, metrics.

Training's evaluations, `inference.evaluate`, `inference.predict` and `research.multiseed` all go
through `predict_logits`: every example exactly once, in order, in fixed-shape batches
(`input_pipeline.eval_batches`, the last one padded and its padding dropped), sharded over all
devices and processes, each batch through `forward.logits_step` (test-time augmentation included).
Ensembles average the members' class probabilities.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from jax.experimental import multihost_utils

from fer_flax.core import forward, input_pipeline, metrics, parallel, tta
from fer_flax.data import CLASS_NAMES, ArraySplit
from fer_flax.run import bundled, trained
from fer_flax.run.trained import Restored


@functools.lru_cache(maxsize=32)
def logits_fn(model: nn.Module, tta_mode: str = "none", crop_size: int = tta.DEFAULT_CROP_SIZE):
    """jit(variables, uint8 images [B, H, W, C]) -> float32 logits [B, K] (`forward.logits_step`).

    Cached: Linen modules compare by their fields, so evaluating the same architecture again (another
    seed, split, checkpoint or evaluation of the same run) reuses the compiled function; the
    variables are an argument."""
    return jax.jit(
        functools.partial(forward.logits_step, model.apply, tta_mode=tta_mode, crop_size=crop_size)
    )


def _to_host(x: jax.Array) -> np.ndarray:
    if x.is_fully_addressable:
        return np.asarray(x)
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def predict_logits(
    model: nn.Module,
    variables: dict,
    data: ArraySplit | np.ndarray,
    *,
    batch_size: int,
    mesh: jax.sharding.Mesh | None = None,
    tta_mode: str = "none",
    crop_size: int = tta.DEFAULT_CROP_SIZE,
) -> np.ndarray:
    """float32 logits [N, K] for every example of `data` (an ArraySplit or uint8 images [N, H, W(, C)]),
    in order, each exactly once. `batch_size` is global (all devices and processes) and must divide
    evenly over the devices."""
    if isinstance(data, np.ndarray):
        data = ArraySplit(images=data, labels=np.zeros(len(data), np.int32))
    n = len(data)
    if n == 0:
        raise ValueError("nothing to evaluate: the split has no examples")
    mesh = parallel.make_mesh() if mesh is None else mesh
    parallel.check_batch_divisible(batch_size, mesh, name="eval_batch_size")
    variables = parallel.replicate(variables, mesh)  # a no-op for a replicated train state's
    fn = logits_fn(model, tta_mode, crop_size)
    outputs = []
    for local in input_pipeline.eval_batches(
        data,
        global_batch_size=batch_size,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
    ):
        images = parallel.to_global_batch({"image": local["image"]}, mesh)["image"]
        outputs.append(fn(variables, images))  # dispatched asynchronously; fetched below
    logits = np.concatenate([_to_host(o) for o in outputs])
    # eval_batches pads only after the last example, so the first n rows are the examples in order.
    assert logits.shape[0] == input_pipeline.num_eval_batches(n, batch_size) * batch_size
    return logits[:n].astype(np.float32)


def split_metrics(
    logits: np.ndarray, labels: np.ndarray, class_names: Sequence[str] = CLASS_NAMES
) -> dict[str, Any]:
    """Training's validation metrics of `logits` [N, K] against integer `labels` [N]: those of
    `metrics.summarize` (accuracy, balanced accuracy, macro-F1, the mean cross-entropy of the logits,
    per-class recall) plus "confusion" as nested lists (rows true class)."""
    labels = np.asarray(labels, np.int64)
    predictions = np.argmax(logits, axis=-1)
    k = len(class_names)
    confusion = np.zeros((k, k), np.int64)
    np.add.at(confusion, (labels, predictions), 1)
    log_probs = np.log(np.maximum(metrics.softmax(logits), np.finfo(np.float64).tiny))
    loss_sum = float(-log_probs[np.arange(len(labels)), labels].sum())
    out = metrics.summarize(confusion, loss_sum, len(labels), class_names)
    out["confusion"] = confusion.tolist()
    return out


def ensemble_probabilities(logits_per_model: Sequence[np.ndarray]) -> np.ndarray:
    """Mean over models of each model's softmax (float64 [N, K]): probability averaging, so a model
    with large logits does not outvote the others as it would if logits were averaged."""
    if not logits_per_model:
        raise ValueError("no models to ensemble")
    return np.mean([metrics.softmax(logits) for logits in logits_per_model], axis=0)


def member_probabilities(
    members: Sequence[Restored],
    data: ArraySplit | np.ndarray,
    *,
    batch_size: int,
    tta_mode: str = "none",
    crop_size: int = tta.DEFAULT_CROP_SIZE,
    mesh: jax.sharding.Mesh | None = None,
) -> np.ndarray:
    """The (ensemble's) class probabilities float64 [N, K] for `data`."""
    logits = [
        predict_logits(
            m.model,
            m.variables,
            data,
            batch_size=batch_size,
            mesh=mesh,
            tta_mode=tta_mode,
            crop_size=crop_size,
        )
        for m in members
    ]
    return ensemble_probabilities(logits)


def load_members(
    workdirs: Sequence[str] | None,
    checkpoint: str | int = "best",
    *,
    mesh: jax.sharding.Mesh | None = None,
    weights: str = "raw",
) -> list[Restored]:
    """Each workdir's model and variables (`trained.restore`): one member of an evaluation. No
    workdirs: the model bundled with the package (`run.bundled`), the one member."""
    if not workdirs:
        return [bundled.load_model(None, checkpoint, mesh=mesh, weights=weights)]
    return [trained.restore(w, checkpoint, mesh=mesh, weights=weights) for w in workdirs]
