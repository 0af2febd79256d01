"""The best checkpoints, `<workdir>/best/<step>`: their order (best first) and which weights each holds.
Orbax's manager of best/ keeps them by `BEST_METRIC`; `Checkpointer` saves and restores them."""

from __future__ import annotations

import math

import orbax.checkpoint as ocp

BEST_METRIC = "val_accuracy"


def metric(manager: ocp.CheckpointManager, step: int) -> float:
    """The selection accuracy Orbax recorded for best checkpoint `step` (-inf when unreadable)."""
    try:
        return float(manager.metrics(step)[BEST_METRIC])
    except Exception:  # unreadable metrics: a damaged checkpoint, tried last
        return -math.inf


def best_first(manager: ocp.CheckpointManager) -> list[int]:
    """The steps in best/, best first: Orbax's best step, then by validation accuracy (the earlier
    step on a tie)."""
    best = manager.best_step()
    rest = sorted((s for s in manager.all_steps() if s != best), key=lambda s: (-metric(manager, s), s))
    return ([best] if best is not None else []) + rest


def selection(manager: ocp.CheckpointManager, step: int | None) -> dict | None:
    """`{"weights": "raw" | "ema", "val_accuracy": ...}` of best checkpoint `step` (default: the best);
    None for a best checkpoint written before this record existed (raw weights)."""
    step = manager.best_step() if step is None else step
    if step is None:
        return None
    try:
        restored = manager.restore(step, args=ocp.args.Composite(selection=ocp.args.JsonRestore()))
    except Exception:  # no such item: an older best checkpoint
        return None
    return dict(restored["selection"])
