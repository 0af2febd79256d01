"""The best checkpoints, `<workdir>/best/<step>`: their order, which weights each holds, and the check,
when training resumes, that best/ still holds what the run's own record says it should.

Orbax's manager of best/ knows only the folders it finds: a best checkpoint deleted or damaged is
silently replaced by the next best, while summary.json still names the lost one. metrics.jsonl is the
run's record of every evaluation, so it names the step best/ must hold as its best: the evaluated
step with the highest selection accuracy (the val accuracy, or with an EMA that of the weights best/
kept), the later step on a tie, as Orbax picks. `check_at_resume` compares the two once training
knows the step it resumes from:

- a damaged best checkpoint (its files no longer match their manifest) is moved to
  `<workdir>/corrupt_checkpoints/best-<step>-<time>`. A step after the resumed one is recomputed,
  bit-identical, and its best checkpoint written again (`Checkpointer.save`), so nothing is lost;
- one at or before the resumed step cannot be recomputed, and neither can a best step that is
  missing. The warning names it and the best intact step that now takes its place, which
  summary.json names when the run ends. A missing step leaves a marker file,
  `corrupt_checkpoints/best-<step>-<time>.missing`, so that it is reported once.
"""

from __future__ import annotations

import math
import os
import re
import time
import warnings
from collections.abc import Collection

import jax
import orbax.checkpoint as ocp

from fer_flax.base.atomic_files import write_text
from fer_flax.run import integrity, tracking
from fer_flax.run import workdir as workdir_lib
from fer_flax.run.checkpoint_errors import CorruptCheckpointWarning, Failure, failures_text

BEST_METRIC = "val_accuracy"
_SET_ASIDE = re.compile(r"best-(\d+)-")


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


def kept(manager: ocp.CheckpointManager, workdir: str, step: int) -> bool:
    """Whether best/<step> is on disk and intact, so that saving the step again is skipped. One that
    is damaged, or has no manifest (a kill or a power cut between Orbax's commit and the manifest), is
    set aside with a warning, to be written again from the recomputed state."""
    if step not in manager.all_steps():
        return False
    step_dir = os.path.join(str(manager.directory), str(step))
    damage = integrity.problem(step_dir) if integrity.has_manifest(step_dir) else "it has no manifest"
    if damage is None:
        return True
    integrity.set_aside(workdir, str(manager.directory), [step], "best-")
    manager.reload()
    warnings.warn(
        f"Best checkpoint {step_dir} cannot be verified ({damage}); it was moved to "
        f"{integrity.corrupt_dir(workdir)} and is written again from the recomputed step.",
        CorruptCheckpointWarning,
        stacklevel=3,
    )
    return False


def logged_best(workdir: str, up_to: int, skip: Collection[int] = ()) -> tuple[int, float] | None:
    """(step, selection accuracy) of the best evaluation at or before step `up_to` that metrics.jsonl
    records, leaving out `skip`; None without a readable record."""
    try:
        records = tracking.read_metrics(workdir_lib.path(workdir, workdir_lib.METRICS_FILE))
    except (OSError, ValueError):  # no record, or a damaged one: nothing to compare with
        return None
    scored = [
        (float(r.get("selected/accuracy", r["val/accuracy"])), int(r["step"]))
        for r in records
        if "val/accuracy" in r and int(r["step"]) <= up_to and int(r["step"]) not in skip
    ]
    scored = [(accuracy, step) for accuracy, step in scored if math.isfinite(accuracy)]
    if not scored:
        return None
    accuracy, step = max(scored)
    return step, accuracy


def lost_earlier(workdir: str) -> set[int]:
    """The best steps that earlier runs set aside or found missing (corrupt_checkpoints/best-<step>-*)."""
    folder = integrity.corrupt_dir(workdir)
    names = os.listdir(folder) if os.path.isdir(folder) else []
    return {int(m.group(1)) for m in map(_SET_ASIDE.match, names) if m}


def _set_aside_damaged(manager: ocp.CheckpointManager, workdir: str) -> list[Failure]:
    """Sets aside the checkpoints of best/ whose files no longer match their manifest; returns them."""
    best_dir = str(manager.directory)
    damaged = []
    for step in manager.all_steps():
        damage = integrity.problem(os.path.join(best_dir, str(step)))
        if damage:
            damaged.append(Failure(step, damage, damaged=True))
    if damaged:
        integrity.set_aside(workdir, best_dir, [f.step for f in damaged], "best-")
        manager.reload()
    return damaged


def _missing(
    best_dir: str, workdir: str, logged: tuple[int, float], resumed: int, moved_now: Collection[int]
) -> Failure:
    """The logged best step, absent from best/: set aside on opening (`moved_now`), or missing, which
    leaves a marker in corrupt_checkpoints/ so that it is reported once."""
    step, accuracy = logged
    if step in moved_now:
        return Failure(step, "its metrics record was unreadable; set aside", damaged=True)
    if jax.process_index() == 0:
        os.makedirs(integrity.corrupt_dir(workdir), exist_ok=True)
        marker = f"best-{step}-{time.strftime('%Y%m%d-%H%M%S')}.missing"
        write_text(
            os.path.join(integrity.corrupt_dir(workdir), marker),
            f"{best_dir}/{step}, the best checkpoint that metrics.jsonl names (val accuracy {accuracy:.4f}), "
            f"was missing when training resumed from step {resumed}.\n",
        )
    return Failure(step, f"{best_dir}/{step} is missing", damaged=None)


def _lost_message(
    manager: ocp.CheckpointManager, workdir: str, lost: list[Failure], resumed: int, was: int | None
) -> str:
    """The warning for best steps that cannot be recomputed, naming the step that now takes the place
    of `was`, the best before."""
    now = manager.best_step()
    if now is None:
        outcome = "No best checkpoint is left; evaluate with --checkpoint latest."
    else:
        accuracy = f"step {now} (val accuracy {metric(manager, now):.4f})"
        if was is not None and was != now:
            outcome = (
                f"The best checkpoint is now {accuracy} instead of step {was}; summary.json names it "
                "when this run ends."
            )
        else:
            outcome = f"The best checkpoint is still {accuracy}."
    moved = f" (the damaged ones were moved to {integrity.corrupt_dir(workdir)})"
    return (
        f"Best checkpoint(s) in {manager.directory} are lost: {failures_text(lost)}. This run resumes "
        f"from step {resumed} and cannot recompute them{moved if any(f.damaged for f in lost) else ''}. "
        f"{outcome}"
    )


def check_at_resume(
    manager: ocp.CheckpointManager,
    workdir: str,
    resumed: int,
    known_lost: Collection[int],
    moved_now: Collection[int],
) -> list[str]:
    """Checks best/ (`manager`) when training resumes from step `resumed`: sets aside its damaged
    checkpoints and finds a missing best step (module docstring). `known_lost`: the best steps earlier
    runs already reported (`lost_earlier`, read before this run set any aside); `moved_now`: those this
    run set aside on opening the workdir (unreadable metrics). Returns the warnings to give, one line
    each: the damaged steps it will rewrite, and the lost ones with the step that replaces them."""
    before = manager.best_step()
    damaged = _set_aside_damaged(manager, workdir)
    present = set(manager.all_steps())
    logged = logged_best(workdir, resumed, skip={s for s in known_lost if s not in present})
    lost = [f for f in damaged if f.step <= resumed]
    redo = [f for f in damaged if f.step > resumed]
    if logged and logged[0] not in present | {f.step for f in damaged}:
        lost.append(_missing(str(manager.directory), workdir, logged, resumed, moved_now))
    messages = []
    if redo:
        messages.append(
            f"Best checkpoint(s) in {manager.directory} are damaged: "
            f"{failures_text(redo, say_damaged=False)}. They were moved to {integrity.corrupt_dir(workdir)}; "
            f"this run resumes from step {resumed} and writes them again when it recomputes those steps."
        )
    if lost:
        was = logged[0] if logged else before if before is not None and before <= resumed else None
        messages.append(_lost_message(manager, workdir, lost, resumed, was))
    return messages
