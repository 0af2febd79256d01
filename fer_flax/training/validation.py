"""Training's validation pass: the raw weights (and with an EMA, the averaged ones) scored on the val
split through `inference.engine`, the path `inference.evaluate` uses, and which weights the best
checkpoint keeps (`config.ema.select`)."""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from ml_collections import ConfigDict

from fer_flax.core import state as model_state
from fer_flax.data import ArraySplit
from fer_flax.inference import engine as inference
from fer_flax.run import tracking


@dataclasses.dataclass(frozen=True)
class Evaluation:
    """One validation pass: the raw weights' metrics, the EMA's (with EMA), and which weights the
    best checkpoint of this step would keep."""

    val: dict[str, Any]
    val_ema: dict[str, Any] | None = None
    best_weights: str = "raw"

    @property
    def selected(self) -> dict[str, Any]:
        return self.val_ema if self.best_weights == "ema" else self.val

    def record(self) -> dict[str, Any]:
        """The metrics.jsonl entries: val/..., and with EMA val_ema/... and selected/weights, accuracy."""
        record = {f"val/{k}": v for k, v in self.val.items()}
        if self.val_ema is not None:
            record.update({f"val_ema/{k}": v for k, v in self.val_ema.items()})
            record["selected/weights"] = self.best_weights
            record["selected/accuracy"] = self.selected["accuracy"]
        return record

    def describe(self) -> str:
        """The evaluation's line on the console."""
        val = self.val
        return (
            f"val accuracy {val['accuracy']:.4f}, balanced {val['balanced_accuracy']:.4f}, "
            f"macro-F1 {val['macro_f1']:.4f}, loss {val['loss']:.4f}"
            + (f"; EMA accuracy {self.val_ema['accuracy']:.4f}" if self.val_ema else "")
        )


def select_weights(select: str, val: dict[str, Any], val_ema: dict[str, Any]) -> str:
    """Which weights `config.ema.select` picks at an evaluation, "raw" or "ema" ("best": the higher
    validation accuracy, raw on a tie)."""
    if select == "best":
        return "ema" if val_ema["accuracy"] > val["accuracy"] else "raw"
    return select


def metrics_of(
    model: nn.Module, variables: dict, split: ArraySplit, config: ConfigDict, mesh: jax.sharding.Mesh
) -> dict[str, Any]:
    """The metrics of `variables` on `split` with the config's evaluation batch size and TTA."""
    logits = inference.predict_logits(
        model,
        variables,
        split,
        batch_size=config.eval_batch_size,
        mesh=mesh,
        tta_mode=config.eval_tta,
        crop_size=config.augment.crop_size,
    )
    return inference.split_metrics(logits, split.labels, split.class_names)


def evaluate(
    model: nn.Module,
    state: model_state.TrainState,
    split: ArraySplit,
    config: ConfigDict,
    mesh: jax.sharding.Mesh,
) -> Evaluation:
    val = metrics_of(model, model_state.variables(state), split, config, mesh)
    if not model_state.has_ema(state):
        return Evaluation(val)
    val_ema = metrics_of(model, model_state.variables(state.ema_weights()), split, config, mesh)
    return Evaluation(val, val_ema, select_weights(config.ema.select, val, val_ema))


def log_media(
    writer: tracking.MetricWriter,
    step: int,
    evaluation: Evaluation,
    model: nn.Module,
    state: model_state.TrainState,
    split: ArraySplit,
    config: ConfigDict,
    mesh: jax.sharding.Mesh,
) -> None:
    """wandb's evaluation media: the confusion matrix and the raw weights' predictions of the first 16
    images of `split`. Collective: every process runs the prediction, process 0 logs."""
    images = split.images[:16]
    logits = inference.predict_logits(
        model, model_state.variables(state), images, batch_size=config.eval_batch_size, mesh=mesh
    )
    writer.log_evaluation_media(
        step,
        confusion=evaluation.val["confusion"],
        images=images,
        labels=split.labels[:16],
        predictions=np.argmax(logits, -1),
        class_names=split.class_names,
    )
