"""Training metrics between two records: kept on the device step by step, fetched and averaged only
when a record is written (so the host never waits on the device in between)."""

from __future__ import annotations

import time
from collections.abc import Callable

import jax
from ml_collections import ConfigDict

from fer_flax.run import tracking
from fer_flax.run.interrupts import NonFiniteError
from fer_flax.training import multi_step


class MetricWindow:
    """The training steps since the last metrics record: their device-side metrics and the wall time
    they took. `train_seconds` and `skipped_updates` add up over the whole run."""

    def __init__(
        self,
        config: ConfigDict,
        steps_per_epoch: int,
        writer: tracking.MetricWriter,
        progress: tracking.ProgressBar,
        last_good: Callable[[], str],
    ):
        self.config, self.steps_per_epoch = config, steps_per_epoch
        self.writer, self.progress, self.last_good = writer, progress, last_good
        self.pending: list[tuple[int, dict]] = []
        self.train_seconds = 0.0
        self.skipped_updates = 0
        self.restart()

    def restart(self) -> None:
        self.start, self.steps = time.perf_counter(), 0

    def add(self, step: int, step_metrics: dict, num_steps: int = 1) -> None:
        """Adds a call that ended at `step`: one step's metrics (`steps.train_step`'s) or, for a call of
        `num_steps` steps, their sums (`multi_step.train_call`'s)."""
        self.pending.append((step, step_metrics))
        self.steps += num_steps

    def close_timing(self) -> None:
        """Counts the time since the window (re)started as training time (before an evaluation)."""
        self.train_seconds += time.perf_counter() - self.start

    def flush(self, step: int) -> None:
        """Fetches the pending metrics, stops on a non-finite step (nonfinite == "stop") and writes
        one record: means over the finite steps."""
        steps = [s for s, _ in self.pending]
        fetched = jax.device_get([m for _, m in self.pending])
        # A call's sums as they are; one step's metrics in the same form.
        sums = [m if "steps" in m else multi_step.as_sums(s, m) for s, m in zip(steps, fetched, strict=True)]
        self.pending = []
        window = multi_step.window_summary(sums)
        if window["skipped"] and self.config.nonfinite == "stop":
            raise NonFiniteError(
                f"Non-finite training loss ({window['first_bad_loss']}) or gradient norm "
                f"({window['first_bad_grad_norm']}) at step {window['first_bad_step']}. Last good "
                f"checkpoint: {self.last_good()} (nothing later was saved). Lower the learning rate or set "
                "--config.nonfinite=skip to skip such updates."
            )
        self.skipped_updates += window["skipped"]
        elapsed = time.perf_counter() - self.start
        self.train_seconds += elapsed
        summary = dict(window["means"])
        summary["skipped_updates"] = window["skipped"]
        summary["images_per_sec"] = self.steps * self.config.batch_size / max(elapsed, 1e-9)
        # The window's wall time: their sum over metrics.jsonl, which a resume cuts back to its
        # checkpoint, is the run's training time over every invocation.
        summary["seconds"] = elapsed
        summary["epoch"] = step / self.steps_per_epoch
        self.writer.write(step, {f"train/{k}": v for k, v in summary.items()})
        self.progress.update(step, f"loss {summary['loss']:.3f}")
        self.restart()
