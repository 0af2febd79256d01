"""Orbax checkpoints in the workdir: two managers, because they answer different questions:
  <workdir>/checkpoints/<step>  the most recent `keep` full states (params, batch_stats, optimizer state,
                                step) plus the Grain iterator state of every process: what resume needs.
  <workdir>/best/<step>         the `keep_best` best weights (params, batch_stats) by validation accuracy:
                                what evaluation needs, without optimizer state. With an EMA, these
                                are the raw or the EMA weights (config.ema.select), in the same
                                layout; `best/<step>/selection` (JSON) says which.
One manager with `best_fn` would delete the newest checkpoint whenever it is not among the best, and
a resume would then silently go back in time.

Saves are atomic (Orbax writes to a temporary directory and renames it), so a kill mid-save leaves the
previous checkpoint restorable; the temporary directories such a kill leaves behind are deleted when the next
run opens the workdir. Each save is finished before training goes on, then synced to disk, files, folders
and the rename alike (so it survives a power cut), and then gets a checksum manifest
(`fer_flax.run.integrity`); a save that fails raises `CheckpointSaveError`, one line naming the cause, the
last good checkpoint and how to resume.

Every restore, training's and inference's, goes through one fallback (`integrity.first_usable`): checkpoints
are tried in order of preference, each verified against its manifest first. A damaged one (a file missing,
resized or changed) is named and skipped for the next: training's resume falls back to the newest intact
checkpoint, moving the bad ones to `<workdir>/corrupt_checkpoints/` (`CorruptCheckpointWarning`); evaluation
takes the newest intact (`latest`) or the best intact (`best`) one and moves nothing. When none is usable,
`NoRestorableCheckpointError` says whether they are damaged or do not fit the model. A resume checks best/
as well (`fer_flax.run.best_checkpoints`): a damaged best checkpoint is set aside and written again when
its step is recomputed, and one that cannot be recomputed, or is missing, is named with the step that
now takes its place.

The best checkpoint of a step is written (and finished) before the full state of the same step, so a kill
between the two never leaves a resumable step whose best-model candidate is missing."""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp

from fer_flax.base.atomic_files import fsync_dir, fsync_tree
from fer_flax.base.errors import check_choice
from fer_flax.config.choices import WEIGHT_SETS
from fer_flax.run import best_checkpoints, integrity
from fer_flax.run.best_checkpoints import BEST_METRIC
from fer_flax.run.checkpoint_errors import (
    CheckpointSaveError,
    CorruptCheckpointWarning,
    Failure,
    NoRestorableCheckpointError,
    failures_text,
    orbax_errors_held,
    save_failure,
)

__all__ = [
    "BEST_METRIC",
    "CheckpointSaveError",
    "Checkpointer",
    "CorruptCheckpointWarning",
    "NoRestorableCheckpointError",
]


def _write_arrays_whole() -> None:
    """Each jax.Array is written whole by replica 0: Orbax's default cuts a replicated array into one
    slice per replica with a program compiled per shape (~150 on a deep net's first save)."""
    absl_logger = logging.getLogger("absl")
    level = absl_logger.level
    absl_logger.setLevel(logging.ERROR)  # Orbax warns on every override of a handler, intended or not
    try:
        handler = ocp.type_handlers.ArrayHandler(use_replica_parallel=False)
        ocp.type_handlers.register_type_handler(jax.Array, handler, override=True)
    finally:
        absl_logger.setLevel(level)


_write_arrays_whole()


def _barrier_prefix(name: str) -> ocp.options.MultiprocessingOptions:
    # Both managers save the same step after an evaluation. Multi-process, Orbax names its barriers
    # by step alone, so without distinct prefixes the two saves collide ("Barrier
    # _async_write_complete.8 is already ongoing") and the job hangs.
    return ocp.options.MultiprocessingOptions(barrier_sync_key_prefix=name)


def _abstract(tree: Any) -> Any:
    return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)


class Checkpointer:
    def __init__(self, workdir: str, *, keep: int = 2, keep_best: int = 2, read_only: bool = False):
        workdir = os.path.abspath(workdir)
        self.workdir = workdir
        self._save_failed = False
        # Best checkpoints whose metrics record is unreadable would stop Orbax from opening best/:
        # set aside in training, left out of sight (and reported as damaged) in a read-only reader.
        best_dir = os.path.join(workdir, "best")
        self._hidden_best = [
            Failure(step, why, damaged=True) for step, why in integrity.unreadable_metrics(best_dir).items()
        ]
        # What earlier runs reported lost of best/, and what this one sets aside (for the resume's check).
        self._best_lost_earlier = best_checkpoints.lost_earlier(workdir)
        self._best_moved = [f.step for f in self._hidden_best] if not read_only else []
        if self._hidden_best and not read_only:
            integrity.set_aside(workdir, best_dir, self._best_moved, "best-")
            warnings.warn(
                f"Best checkpoint(s) in {best_dir} are damaged: {failures_text(self._hidden_best)}; they "
                f"were moved to {integrity.corrupt_dir(workdir)}.",
                CorruptCheckpointWarning,
                stacklevel=2,
            )
            self._hidden_best = []
        best_names = integrity.WithoutSteps(
            ocp.step.standard_name_format(), frozenset(f.step for f in self._hidden_best)
        )
        self.latest = ocp.CheckpointManager(
            os.path.join(workdir, "checkpoints"),
            item_names=("state", "data"),
            options=ocp.CheckpointManagerOptions(
                max_to_keep=keep,
                create=not read_only,
                read_only=read_only,
                # Delete the `<step>.orbax-checkpoint-tmp-*` folders of saves that a kill interrupted.
                cleanup_tmp_directories=not read_only,
                multiprocessing_options=_barrier_prefix("latest"),
            ),
        )
        self.best = ocp.CheckpointManager(
            os.path.join(workdir, "best"),
            item_names=("model", "selection"),
            options=ocp.CheckpointManagerOptions(
                max_to_keep=keep_best,
                best_fn=lambda metrics: metrics[BEST_METRIC],
                best_mode="max",
                keep_checkpoints_without_metrics=False,
                create=not read_only,
                cleanup_tmp_directories=not read_only,
                read_only=read_only,
                multiprocessing_options=_barrier_prefix("best"),
                step_name_format=best_names,
            ),
        )
        if not read_only and jax.process_index() == 0:
            fsync_dir(workdir)  # the entries of checkpoints/ and best/, which hold every commit

    @staticmethod
    def _step_dir(manager: ocp.CheckpointManager, step: int) -> str:
        return os.path.join(str(manager.directory), str(step))

    # ------------------------------------------------------------------------------------ saving

    def save(
        self,
        step: int,
        state: Any,
        data_iterator: Any,
        *,
        val_metrics: dict[str, float] | None,
        best_weights: str = "raw",
    ):
        """Saves the full state for resume and, with validation metrics, a best-model candidate:
        the raw weights, or with `best_weights="ema"` the EMA ones (`val_metrics` are then the EMA
        weights' metrics), stored under the same names so inference needs no EMA knowledge.

        Each save is finished, synced to disk, then given its checksum manifest, before this returns;
        a failure raises `CheckpointSaveError`. A step already on disk is not written again: a run
        resumed from an earlier checkpoint recomputes exactly the same state, and Orbax refuses to
        overwrite a step. A best checkpoint on disk that is damaged or unverified (no manifest) is
        set aside and written again instead (`best_checkpoints.kept`)."""
        check_choice("best_weights", best_weights, WEIGHT_SETS)
        manager = self.best
        try:
            with orbax_errors_held():
                if val_metrics is not None and not best_checkpoints.kept(self.best, self.workdir, step):
                    if best_weights == "ema":
                        model = {"params": state.ema_params, "batch_stats": state.ema_batch_stats}
                    else:
                        model = {"params": state.params, "batch_stats": state.batch_stats}
                    selection = {"weights": best_weights, BEST_METRIC: float(val_metrics["accuracy"])}
                    args = ocp.args.Composite(
                        model=ocp.args.StandardSave(model), selection=ocp.args.JsonSave(selection)
                    )
                    # Committed before the resumable state of the same step (see the module docstring).
                    self._save_finished(self.best, step, args, metrics={BEST_METRIC: selection[BEST_METRIC]})
                manager = self.latest
                if step not in self.latest.all_steps():
                    args = ocp.args.Composite(
                        state=ocp.args.StandardSave(state),
                        data=grain.checkpoint.CheckpointSave(data_iterator),
                    )
                    self._save_finished(self.latest, step, args)
        except Exception as e:
            self._save_failed = True
            last = self.latest.latest_step()
            last_good = None if last is None else self._step_dir(self.latest, last)
            kind = "best checkpoint" if manager is self.best else "checkpoint"
            raise CheckpointSaveError(save_failure(f"{kind} {step}", manager.directory, last_good, e)) from e

    def _save_finished(self, manager: ocp.CheckpointManager, step: int, args: Any, **kwargs) -> None:
        manager.save(step, args=args, **kwargs)
        manager.wait_until_finished()
        # A best candidate worse than the kept ones is deleted as soon as it is finished.
        step_dir = self._step_dir(manager, step)
        if jax.process_index() == 0 and os.path.isdir(step_dir):
            # Orbax's commit renames the folder without syncing it: sync every file and folder and the
            # rename, so the manifest, written last, only ever describes a checkpoint on disk.
            fsync_tree(step_dir)
            integrity.write_manifest(step_dir)

    # ---------------------------------------------------------------------------------- restoring

    def latest_step(self) -> int | None:
        return self.latest.latest_step()

    def restore_latest(self, state_template: Any, data_iterator: Any) -> Any:
        """Restores the newest usable full state (sharded like `state_template`) and sets the
        iterator's position in place.

        A damaged or unrestorable checkpoint is skipped for the next older one, with a
        `CorruptCheckpointWarning` naming both, and moved to `<workdir>/corrupt_checkpoints/` so later
        saves of that step can proceed. When none can be restored, raises
        `NoRestorableCheckpointError` (damaged, or e.g. a model that changed shape) and moves nothing.
        Then best/ is checked against the resumed step (`best_checkpoints.check_at_resume`), each
        finding a `CorruptCheckpointWarning`."""

        def restore(step: int) -> Any:
            return self.latest.restore(
                step,
                args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(_abstract(state_template)),
                    data=grain.checkpoint.CheckpointRestore(data_iterator),
                ),
            )

        steps = sorted(self.latest.all_steps(), reverse=True)
        restored, step, failures = integrity.first_usable(
            str(self.latest.directory), steps, restore, "this run's state"
        )
        if failures:
            integrity.set_aside(self.workdir, str(self.latest.directory), [f.step for f in failures])
            self.latest.reload()
            warnings.warn(
                f"Checkpoint(s) in {self.latest.directory} could not be restored: {failures_text(failures)}. "
                f"Falling back to the previous good checkpoint, step {step}; the bad one(s) were "
                f"moved to {integrity.corrupt_dir(self.workdir)}.",
                CorruptCheckpointWarning,
                stacklevel=2,
            )
        for message in best_checkpoints.check_at_resume(
            self.best, self.workdir, step, self._best_lost_earlier, self._best_moved
        ):
            warnings.warn(message, CorruptCheckpointWarning, stacklevel=2)
        return restored["state"]

    def best_step(self) -> int | None:
        return self.best.best_step()

    def best_first(self) -> list[int]:
        """The steps in best/, best first (`best_checkpoints.best_first`)."""
        return best_checkpoints.best_first(self.best)

    def best_selection(self, step: int | None = None) -> dict | None:
        """`{"weights": "raw" | "ema", "val_accuracy": ...}` of best checkpoint `step` (default: the
        best); None for a best checkpoint written before this record existed (raw weights)."""
        return best_checkpoints.selection(self.best, step)

    def restore_model(
        self,
        model_template: dict,
        which: str | int = "best",
        *,
        weights: str = "raw",
        target: str = "the model",
    ) -> tuple[dict, int]:
        """Params and batch_stats only (no optimizer state): `which` is 'best', 'latest' or a step.

        'best' is the best intact checkpoint of best/ and 'latest' the newest intact one of
        checkpoints/: one that is damaged (or does not restore) is skipped for the next, with a
        `CorruptCheckpointWarning` naming it and the one used instead. A step is that checkpoint or
        `NoRestorableCheckpointError`. Nothing is moved: evaluation may read a workdir in training.

        `weights="ema"` takes the EMA weights and statistics of a full checkpoint (latest or a step
        still in checkpoints/) instead, returned under the same names. A best checkpoint holds one set,
        the one chosen in training (see `best_selection`), so it only takes the default.

        Arrays are placed as `model_template` (arrays or ShapeDtypeStructs) says: explicit restore
        arguments, because Orbax would otherwise re-create the shardings saved with the checkpoint,
        which fails when it was written on a different set of devices (trained on GPUs, evaluated on
        a CPU)."""
        template = _abstract(model_template)
        latest_steps, best_steps = set(self.latest.all_steps()), set(self.best.all_steps())
        check_choice("weights", weights, WEIGHT_SETS)
        if weights == "ema" and which == "best":
            raise ValueError(
                "the best checkpoint holds only the weights selected in training (config.ema.select; "
                "best/<step>/selection says which); for the EMA weights use checkpoint 'latest' or a step"
            )
        step = None if which in ("best", "latest") else int(which)
        if which == "best" and best_steps:
            manager, steps = self.best, self.best_first()
        elif which == "latest" and latest_steps:
            manager, steps = self.latest, sorted(latest_steps, reverse=True)
        elif step in latest_steps:
            manager, steps = self.latest, [step]
        elif step is not None and weights == "ema":
            raise FileNotFoundError(
                f"step {step} is not among the full checkpoints under {self.latest.directory} "
                f"({sorted(latest_steps)}), and only those hold the EMA weights"
            )
        elif step in best_steps:  # a best step that has left the rolling "latest" checkpoints
            manager, steps = self.best, [step]
        else:
            raise FileNotFoundError(
                f"No checkpoint {which!r} under {self.workdir}; steps available: "
                f"{sorted(latest_steps | best_steps)} (best: {self.best.best_step()})"
            )
        # The EMA leaves are stored as ema_params / ema_batch_stats of the train state.
        names = {"params": "ema_params", "batch_stats": "ema_batch_stats"} if weights == "ema" else {}
        stored = {names.get(k, k): v for k, v in template.items()}

        def restore(step: int) -> dict:
            if manager is self.best:
                args = ocp.args.Composite(model=ocp.args.StandardRestore(template))
                return self.best.restore(step, args=args)["model"]
            restore_args = ocp.checkpoint_utils.construct_restore_args(stored)
            args = ocp.args.Composite(
                state=ocp.args.PyTreeRestore(item=stored, restore_args=restore_args, partial_restore=True)
            )
            restored = self.latest.restore(step, args=args)["state"]
            return {k: restored[names.get(k, k)] for k in template}

        hidden = self._hidden_best if manager is self.best and which == "best" else []
        try:
            result, step, failures = integrity.first_usable(
                str(manager.directory), steps, restore, target, hidden
            )
        except NoRestorableCheckpointError as e:
            if which == "best" and latest_steps:
                raise NoRestorableCheckpointError(
                    f"{e} The full checkpoints (checkpoint 'latest', steps {sorted(latest_steps)}) may "
                    "still be usable."
                ) from None
            raise
        if failures:
            instead = (
                f"the best intact one, step {step} "
                f"(val accuracy {best_checkpoints.metric(self.best, step):.4f})"
                if which == "best"
                else f"the newest intact one, step {step}"
            )
            warnings.warn(
                f"Checkpoint(s) in {manager.directory} could not be used: {failures_text(failures)}. "
                f"Using {instead} instead.",
                CorruptCheckpointWarning,
                stacklevel=2,
            )
        # A partial restore hands back the template's placeholders for names the checkpoint lacks
        # (the EMA of a run trained without one) instead of failing: refuse them here.
        missing = [
            jax.tree_util.keystr(path)
            for path, leaf in jax.tree_util.tree_leaves_with_path(result)
            if isinstance(leaf, jax.ShapeDtypeStruct)
        ]
        if missing:
            what = "EMA weights (the run kept no EMA)" if weights == "ema" else "weights"
            raise ValueError(
                f"checkpoint {step} in {manager.directory} holds no {what}: missing {missing[:3]}"
            )
        return result, step

    def wait_until_finished(self) -> None:
        """Waits for saves under way; after a failed save (already reported) there is nothing to
        wait for, and Orbax's repeated error is not raised again."""
        if self._save_failed:
            return
        self.latest.wait_until_finished()
        self.best.wait_until_finished()

    def close(self) -> None:
        for manager in (self.latest, self.best):
            if not self._save_failed:
                manager.close()
                continue
            with contextlib.suppress(Exception):  # the failed save, already reported
                manager.close()
