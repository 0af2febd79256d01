"""Orbax checkpoints in the workdir.

Two managers, because they answer different questions:
  <workdir>/checkpoints/<step>  the most recent `keep` full states (params, batch_stats, optimizer state,
                                step) plus the Grain iterator state of every process: what resume needs.
  <workdir>/best/<step>         the `keep_best` best weights (params, batch_stats) by validation accuracy:
                                what evaluation needs, without optimizer state.
One manager with `best_fn` would delete the newest checkpoint whenever it is not among the best, and
a resume would then silently go back in time.

Saves are atomic (Orbax writes to a temporary directory and renames it), so a kill mid-save leaves the
previous checkpoint restorable.
"""

from __future__ import annotations

import os
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp

BEST_METRIC = "val_accuracy"


def _barrier_prefix(name: str) -> ocp.options.MultiprocessingOptions:
    # Both managers save the same step after an evaluation. Multi-process, Orbax names its barriers
    # by step alone, so without distinct prefixes the two saves collide ("Barrier
    # _async_write_complete.8 is already ongoing") and the job hangs.
    return ocp.options.MultiprocessingOptions(barrier_sync_key_prefix=name)


def _abstract(tree: Any) -> Any:
    return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)


class Checkpointer:
    def __init__(self, workdir: str, *, keep: int = 2, keep_best: int = 1, read_only: bool = False):
        workdir = os.path.abspath(workdir)
        self.latest = ocp.CheckpointManager(
            os.path.join(workdir, "checkpoints"),
            item_names=("state", "data"),
            options=ocp.CheckpointManagerOptions(
                max_to_keep=keep,
                create=not read_only,
                read_only=read_only,
                multiprocessing_options=_barrier_prefix("latest"),
            ),
        )
        self.best = ocp.CheckpointManager(
            os.path.join(workdir, "best"),
            item_names=("model",),
            options=ocp.CheckpointManagerOptions(
                max_to_keep=keep_best,
                best_fn=lambda metrics: metrics[BEST_METRIC],
                best_mode="max",
                keep_checkpoints_without_metrics=False,
                create=not read_only,
                read_only=read_only,
                multiprocessing_options=_barrier_prefix("best"),
            ),
        )

    def save(self, step: int, state: Any, data_iterator: Any, *, val_metrics: dict[str, float] | None):
        """Saves the full state for resume and, with validation metrics, a best-model candidate."""
        self.latest.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state),
                data=grain.checkpoint.CheckpointSave(data_iterator),
            ),
        )
        if val_metrics is not None:
            model = {"params": state.params, "batch_stats": state.batch_stats}
            self.best.save(
                step,
                args=ocp.args.Composite(model=ocp.args.StandardSave(model)),
                metrics={BEST_METRIC: float(val_metrics["accuracy"])},
            )

    def latest_step(self) -> int | None:
        return self.latest.latest_step()

    def restore_latest(self, state_template: Any, data_iterator: Any) -> Any:
        """Restores the newest full state (sharded like `state_template`) and the iterator in place."""
        step = self.latest.latest_step()
        restored = self.latest.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(_abstract(state_template)),
                data=grain.checkpoint.CheckpointRestore(data_iterator),
            ),
        )
        return restored["state"]

    def best_step(self) -> int | None:
        return self.best.best_step()

    def restore_model(self, model_template: dict, which: str | int = "best") -> tuple[dict, int]:
        """Params and batch_stats only (no optimizer state): `which` is 'best', 'latest' or a step.

        Arrays are placed as `model_template` (arrays or ShapeDtypeStructs) says: explicit restore
        arguments, because Orbax would otherwise re-create the shardings saved with the checkpoint,
        which fails when it was written on a different set of devices (trained on GPUs, evaluated on
        a CPU)."""
        template = _abstract(model_template)
        latest_steps, best_steps = set(self.latest.all_steps()), set(self.best.all_steps())
        if which == "best":
            step = self.best.best_step()
            if step is None:
                raise FileNotFoundError(f"No best checkpoint under {self.best.directory}")
        else:
            step = self.latest.latest_step() if which == "latest" else int(which)
        if which != "best" and step in latest_steps:
            restored = self.latest.restore(
                step,
                args=ocp.args.Composite(
                    state=ocp.args.PyTreeRestore(
                        item=template,
                        restore_args=ocp.checkpoint_utils.construct_restore_args(template),
                        partial_restore=True,
                    )
                ),
            )
            return restored["state"], step
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
