"""Orbax checkpoints in the workdir.

Two managers, because they answer different questions:
  <workdir>/checkpoints/<step>  the most recent `keep` full states (params, batch_stats, optimizer state,
                                step) plus the Grain iterator state of every process: what resume needs.
  <workdir>/best/<step>         the `keep_best` best weights (params, batch_stats) by validation accuracy:
                                what evaluation needs, without optimizer state. With an EMA, these
                                are the raw or the EMA weights (config.ema.select), in the same
                                layout; `best/<step>/selection` (JSON) says which.
One manager with `best_fn` would delete the newest checkpoint whenever it is not among the best, and
a resume would then silently go back in time.

Saves are atomic (Orbax writes to a temporary directory and renames it), so a kill mid-save leaves the
previous checkpoint restorable; the temporary directories such a kill leaves behind are deleted when
the next run opens the workdir. A newest checkpoint that cannot be restored (half-written, corrupted)
is moved to `<workdir>/corrupt_checkpoints/` with a `CorruptCheckpointWarning` naming it and the older
checkpoint the run falls back to.

The best checkpoint of a step is written (and finished) before the full state of the same step, so a
kill between the two never leaves a resumable step whose best-model candidate is missing.
"""

from __future__ import annotations

import os
import time
import warnings
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp

from fer_flax import config_schema

BEST_METRIC = "val_accuracy"


def _barrier_prefix(name: str) -> ocp.options.MultiprocessingOptions:
    # Both managers save the same step after an evaluation. Multi-process, Orbax names its barriers
    # by step alone, so without distinct prefixes the two saves collide ("Barrier
    # _async_write_complete.8 is already ongoing") and the job hangs.
    return ocp.options.MultiprocessingOptions(barrier_sync_key_prefix=name)


def _abstract(tree: Any) -> Any:
    return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)


class CorruptCheckpointWarning(UserWarning):
    """The newest checkpoint could not be restored; the run fell back to an older one."""


class NoRestorableCheckpointError(RuntimeError):
    """No checkpoint in the workdir can be restored into this run's state."""


class Checkpointer:
    def __init__(self, workdir: str, *, keep: int = 2, keep_best: int = 1, read_only: bool = False):
        workdir = os.path.abspath(workdir)
        self.workdir = workdir
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
            ),
        )

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

        A step already on disk is not written again: a run resumed from an earlier checkpoint
        recomputes exactly the same state, and Orbax refuses to overwrite a step."""
        if val_metrics is not None and step not in self.best.all_steps():
            config_schema.check_choice("best_weights", best_weights, config_schema.WEIGHT_SETS)
            if best_weights == "ema":
                model = {"params": state.ema_params, "batch_stats": state.ema_batch_stats}
            else:
                model = {"params": state.params, "batch_stats": state.batch_stats}
            selection = {"weights": best_weights, BEST_METRIC: float(val_metrics["accuracy"])}
            self.best.save(
                step,
                args=ocp.args.Composite(
                    model=ocp.args.StandardSave(model), selection=ocp.args.JsonSave(selection)
                ),
                metrics={BEST_METRIC: float(val_metrics["accuracy"])},
            )
            # Committed before the resumable state of the same step (see the module docstring).
            self.best.wait_until_finished()
        if step in self.latest.all_steps():
            return
        self.latest.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state),
                data=grain.checkpoint.CheckpointSave(data_iterator),
            ),
        )

    def latest_step(self) -> int | None:
        return self.latest.latest_step()

    def restore_latest(self, state_template: Any, data_iterator: Any) -> Any:
        """Restores the newest restorable full state (sharded like `state_template`) and sets the
        iterator's position in place.

        A checkpoint that fails to restore (truncated, zeroed or missing files) is skipped for the
        next older one, with a `CorruptCheckpointWarning` naming both, and moved to
        `<workdir>/corrupt_checkpoints/` so later saves of that step can proceed. When none can be
        restored (e.g. the model changed shape), raises `NoRestorableCheckpointError` and moves
        nothing."""
        failures: list[tuple[int, str]] = []
        for step in sorted(self.latest.all_steps(), reverse=True):
            try:
                restored = self.latest.restore(
                    step,
                    args=ocp.args.Composite(
                        state=ocp.args.StandardRestore(_abstract(state_template)),
                        data=grain.checkpoint.CheckpointRestore(data_iterator),
                    ),
                )
            except Exception as e:  # Orbax/TensorStore raise many types for damaged files
                failures.append((step, _describe(e)))
                continue
            if failures:
                self._set_aside([s for s, _ in failures])
                bad = "; ".join(f"step {s} ({why})" for s, why in failures)
                warnings.warn(
                    f"Checkpoint(s) in {self.latest.directory} could not be restored: {bad}. "
                    f"Falling back to the previous good checkpoint, step {step}; the bad one(s) were "
                    f"moved to {self._corrupt_dir()}.",
                    CorruptCheckpointWarning,
                    stacklevel=2,
                )
            return restored["state"]
        detail = "; ".join(f"step {s}: {why}" for s, why in failures) or "none found"
        raise NoRestorableCheckpointError(
            f"No checkpoint in {self.latest.directory} can be restored into this run's state ({detail}). "
            "If the model, optimizer or parameter shapes changed since they were written, train in a "
            "new --workdir."
        )

    def _corrupt_dir(self) -> str:
        return os.path.join(self.workdir, "corrupt_checkpoints")

    def _set_aside(self, steps: list[int]) -> None:
        if jax.process_index() == 0:
            os.makedirs(self._corrupt_dir(), exist_ok=True)
            stamp = time.strftime("%Y%m%d-%H%M%S")
            for step in steps:
                src = os.path.join(str(self.latest.directory), str(step))
                os.replace(src, os.path.join(self._corrupt_dir(), f"{step}-{stamp}"))
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices("fer_flax_corrupt_checkpoints_moved")
        self.latest.reload()

    def best_step(self) -> int | None:
        return self.best.best_step()

    def best_selection(self, step: int | None = None) -> dict | None:
        """`{"weights": "raw" | "ema", "val_accuracy": ...}` of best checkpoint `step` (default: the
        best); None for a best checkpoint written before this record existed (raw weights)."""
        step = self.best.best_step() if step is None else step
        if step is None:
            return None
        try:
            restored = self.best.restore(step, args=ocp.args.Composite(selection=ocp.args.JsonRestore()))
        except Exception:  # no such item: an older best checkpoint
            return None
        return dict(restored["selection"])

    def restore_model(
        self, model_template: dict, which: str | int = "best", *, weights: str = "raw"
    ) -> tuple[dict, int]:
        """Params and batch_stats only (no optimizer state): `which` is 'best', 'latest' or a step.

        `weights="ema"` takes the EMA weights and statistics of a full checkpoint (latest or a step
        still in checkpoints/) instead, returned under the same names. A best checkpoint holds one set,
        the one chosen in training (see `best_selection`), so it only takes the default.

        Arrays are placed as `model_template` (arrays or ShapeDtypeStructs) says: explicit restore
        arguments, because Orbax would otherwise re-create the shardings saved with the checkpoint,
        which fails when it was written on a different set of devices (trained on GPUs, evaluated on
        a CPU)."""
        template = _abstract(model_template)
        latest_steps, best_steps = set(self.latest.all_steps()), set(self.best.all_steps())
        config_schema.check_choice("weights", weights, config_schema.WEIGHT_SETS)
        if weights == "ema" and which == "best":
            raise ValueError(
                "the best checkpoint holds only the weights selected in training (config.ema.select; "
                "best/<step>/selection says which); for the EMA weights use checkpoint 'latest' or a step"
            )
        if which == "best":
            step = self.best.best_step()
            if step is None:
                raise FileNotFoundError(f"No best checkpoint under {self.best.directory}")
        else:
            step = self.latest.latest_step() if which == "latest" else int(which)
        if which != "best" and step in latest_steps:
            # The EMA leaves are stored as ema_params / ema_batch_stats of the train state.
            names = {"params": "ema_params", "batch_stats": "ema_batch_stats"} if weights == "ema" else {}
            stored = {names.get(k, k): v for k, v in template.items()}
            restored = self.latest.restore(
                step,
                args=ocp.args.Composite(
                    state=ocp.args.PyTreeRestore(
                        item=stored,
                        restore_args=ocp.checkpoint_utils.construct_restore_args(stored),
                        partial_restore=True,
                    )
                ),
            )
            result = {k: restored["state"][names.get(k, k)] for k in template}
            # A partial restore hands back the template's placeholders for names the checkpoint
            # lacks (the EMA of a run trained without one) instead of failing: refuse them here.
            missing = [
                jax.tree_util.keystr(path)
                for path, leaf in jax.tree_util.tree_leaves_with_path(result)
                if isinstance(leaf, jax.ShapeDtypeStruct)
            ]
            if missing:
                what = "EMA weights (the run kept no EMA)" if weights == "ema" else "weights"
                raise ValueError(
                    f"checkpoint {step} in {self.latest.directory} holds no {what}: missing {missing[:3]}"
                )
            return result, step
        if weights == "ema":
            raise FileNotFoundError(
                f"step {step} is not among the full checkpoints under {self.latest.directory} "
                f"({sorted(latest_steps)}), and only those hold the EMA weights"
            )
        if step in best_steps:  # also a best step that has left the rolling "latest" checkpoints
            restored = self.best.restore(
                step, args=ocp.args.Composite(model=ocp.args.StandardRestore(template))
            )
            return restored["model"], step
        raise FileNotFoundError(
            f"No checkpoint {which!r} under {os.path.dirname(str(self.latest.directory))}; steps "
            f"available: {sorted(latest_steps | best_steps)} (best: {self.best.best_step()})"
        )

    def wait_until_finished(self) -> None:
        self.latest.wait_until_finished()
        self.best.wait_until_finished()

    def close(self) -> None:
        self.latest.close()
        self.best.close()


def _describe(e: Exception, limit: int = 300) -> str:
    text = f"{type(e).__name__}: {e}".replace("\n", " ")
    return text if len(text) <= limit else text[:limit] + "..."
