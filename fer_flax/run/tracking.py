"""Where run metrics go: `<workdir>/metrics.jsonl`, the console, and Weights & Biases.

wandb is offline by default (no login, no network; `wandb sync <workdir>/wandb/offline-run-*` uploads
later), `online` on request, and `disabled` makes it a no-op that is never even imported. Only process 0
writes anything, so multi-host runs produce one record.
`config.wandb.mode` is one of `fer_flax.config.choices.WANDB_MODES`, checked by
`fer_flax.config.schema.validate`.
`wandb.watch` is PyTorch-only; `log_histograms` gives the same weight and gradient histograms for JAX.
"""

from __future__ import annotations

import json
import math
import os
import secrets
import sys
import time
from typing import Any

import jax
import numpy as np
from flax import traverse_util
from ml_collections import ConfigDict

from fer_flax.base import atomic_files


class MetricWriter:
    def __init__(self, workdir: str, config: ConfigDict, *, enabled: bool | None = None):
        self.enabled = jax.process_index() == 0 if enabled is None else enabled
        self.path = os.path.join(workdir, "metrics.jsonl")
        self._wandb_run = None
        if not self.enabled:
            return
        if config.wandb.mode != "disabled":
            self._wandb_run = _start_wandb(workdir, config)

    def write(self, step: int, metrics: dict[str, Any]) -> None:
        """Appends one JSON line (flushed at once, so a killed run keeps what it logged) and logs to wandb."""
        if not self.enabled:
            return
        record = {
            "step": int(step),
            "time": time.time(),
            **{k: _to_python(v) for k, v in metrics.items()},
        }
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self._wandb_run is not None:
            # Numbers only: structured values (a confusion matrix as nested lists) stay in the JSONL;
            # wandb gets those as media from `log_evaluation_media`.
            scalars = {
                k: v
                for k, v in record.items()
                if k not in ("step", "time") and isinstance(v, (int, float)) and not isinstance(v, bool)
            }
            self._wandb_run.log(scalars, step=step)

    @property
    def media_enabled(self) -> bool:
        """Whether `log_evaluation_media` logs anything (wandb is on in this process): callers skip
        computing sample predictions otherwise."""
        return self.enabled and self._wandb_run is not None

    def log_evaluation_media(
        self,
        step: int,
        *,
        confusion: Any,
        images: np.ndarray,
        labels: np.ndarray,
        predictions: np.ndarray,
        class_names: Any = None,
        prefix: str = "val",
    ) -> None:
        """The confusion matrix and a grid of sample predictions (uint8 faces, true and predicted
        labels) as wandb images under `<prefix>/confusion_matrix` and `<prefix>/predictions`;
        `class_names` default to FER2013's."""
        if not self.media_enabled:
            return
        import wandb

        from fer_flax.run import plots  # matplotlib only when there is something to draw

        names = {} if class_names is None else {"class_names": tuple(class_names)}
        confusion_fig = plots.confusion_figure(confusion, title=f"{prefix} confusion, step {step}", **names)
        grid_fig = plots.predictions_grid(images, labels, predictions, **names)
        self._wandb_run.log(
            {
                f"{prefix}/confusion_matrix": wandb.Image(plots.to_array(confusion_fig)),
                f"{prefix}/predictions": wandb.Image(plots.to_array(grid_fig)),
            },
            step=step,
        )

    def log_histograms(self, step: int, trees: dict[str, Any], bins: int = 64) -> None:
        """One wandb histogram per leaf, e.g. trees={'params': params, 'grads': grads}."""
        if not self.enabled or self._wandb_run is None:
            return
        import wandb

        payload = {}
        for prefix, tree in trees.items():
            for path, leaf in traverse_util.flatten_dict(jax.device_get(tree), sep="/").items():
                values = np.asarray(leaf, dtype=np.float32).ravel()
                payload[f"{prefix}/{path}"] = wandb.Histogram(np_histogram=np.histogram(values, bins=bins))
        self._wandb_run.log(payload, step=step)

    def close(self) -> None:
        if self._wandb_run is not None:
            self._wandb_run.finish()
            self._wandb_run = None


def _start_wandb(workdir: str, config: ConfigDict):
    import wandb  # imported lazily: a run with wandb disabled never needs it

    # Reuse the run id stored in the workdir so a resumed job continues the same wandb run.
    id_path = os.path.join(workdir, "wandb_run_id.txt")
    run_id = ""
    if os.path.exists(id_path):
        with open(id_path) as f:
            run_id = f.read().strip()
    if not run_id:
        run_id = secrets.token_hex(4)  # wandb ids are [a-z0-9]; 8 hex chars, as wandb makes
        atomic_files.write_text(id_path, run_id)
    return wandb.init(
        project=config.wandb.project,
        entity=config.wandb.entity,
        group=config.wandb.group,
        mode=config.wandb.mode,
        dir=workdir,
        id=run_id,
        resume="allow",
        config=config.to_dict(),
        name=os.path.basename(os.path.abspath(workdir)),
        settings=wandb.Settings(silent=True, console="off"),
    )


def read_metrics(path: str | os.PathLike) -> list[dict]:
    """The records of a metrics.jsonl in step order (a step's train record before its val record).
    A resumed run may log a step twice: the last record for a (step, train|val) pair wins. A last
    line that a kill cut short is skipped; any other damaged line is an error naming the file and line."""
    by_key: dict[tuple[int, str], dict] = {}
    with open(path) as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                int(record["step"])
            except (ValueError, KeyError, TypeError) as e:
                if not line.endswith("\n"):
                    break  # the unfinished last line of a killed run
                raise ValueError(
                    f"{path}, line {number}: damaged metrics record ({type(e).__name__}: {e})"
                ) from e
            kind = "val" if any(k.startswith("val/") for k in record) else "train"
            by_key[(int(record["step"]), kind)] = record
    return [by_key[k] for k in sorted(by_key)]


def _to_python(v: Any) -> Any:
    if isinstance(v, (np.generic, np.ndarray)) or hasattr(v, "item"):
        v = np.asarray(v)
        return v.item() if v.ndim == 0 else v.tolist()
    return v


class ProgressBar:
    """A one-line progress display with images/s and ETA; plain periodic lines when not on a terminal."""

    def __init__(self, total_steps: int, batch_size: int, *, enabled: bool = True, stream=sys.stderr):
        self.total = total_steps
        self.batch_size = batch_size
        self.enabled = enabled and jax.process_index() == 0
        self.stream = stream
        self.tty = getattr(stream, "isatty", lambda: False)()
        self._t0 = None
        self._step0 = 0
        self._last_print = 0.0

    def start(self, step: int) -> None:
        self._t0 = time.perf_counter()
        self._step0 = step

    def update(self, step: int, extra: str = "") -> None:
        if not self.enabled or self._t0 is None:
            return
        now = time.perf_counter()
        if now - self._last_print < (0.5 if self.tty else 15.0) and step < self.total:
            return
        self._last_print = now
        done = step - self._step0
        elapsed = max(now - self._t0, 1e-9)
        rate = done / elapsed
        eta = (self.total - step) / rate if rate > 0 else math.inf
        frac = step / max(self.total, 1)
        bar = "#" * int(frac * 24)
        line = (
            f"[{bar:<24}] step {step}/{self.total} {100 * frac:5.1f}% "
            f"{rate * self.batch_size:7.1f} img/s ETA {_format_seconds(eta)} {extra}"
        )
        if self.tty:
            self.stream.write("\r" + line[:160].ljust(160))
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def pause(self) -> None:
        """Ends the current line so other output starts on a fresh one."""
        if self.enabled and self.tty:
            self.stream.write("\n")
            self.stream.flush()


def _format_seconds(s: float) -> str:
    if not math.isfinite(s):
        return "--:--"
    s = int(s)
    return f"{s // 3600:d}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60:02d}:{s % 60:02d}"
