"""What a training run keeps in its workdir besides checkpoints: its identity and config, the record
of config changes across resumes, metric files and the final summary.

  <workdir>/config.json           {"config": the resolved config, "derived": step plan, sizes, devices,
                                  the data spec (classes, image size, channels), init_from's record,
                                  the distillation teachers' record}
  <workdir>/config_history.jsonl  one record per resume that changed a setting
  <workdir>/metrics.jsonl         one record per log / evaluation step (fer_flax.run.tracking writes it)
  <workdir>/summary.json          the final summary of the last finished run
  <workdir>/curves.png            train / val curves from metrics.jsonl

Every file here is written atomically (`fer_flax.base.atomic_files`), so a reader never sees half a file;
one that is damaged all the same (emptied or edited by hand) is named in the error. Nothing here
imports the training loop: evaluation reads runs through this module too.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Callable
from typing import Any

import orbax.checkpoint as ocp
from ml_collections import ConfigDict

from fer_flax.base.atomic_files import write_json, write_text
from fer_flax.config import defaults
from fer_flax.run import tracking

CONFIG_FILE = "config.json"
SUMMARY_FILE = "summary.json"
METRICS_FILE = "metrics.jsonl"
HISTORY_FILE = "config_history.jsonl"

# The settings that define a run: resuming a workdir with any of them changed is refused. Everything
# else (num_epochs, optim.lr and the schedule, augmentation, cadence, ...) may change on a resume:
# the change is recorded in `<workdir>/config_history.jsonl`.
RUN_IDENTITY_KEYS = (
    "model_name",
    "model",
    "seed",
    "batch_size",
    "optim.name",
    "data.path",
    "data.synthetic_train",
    "data.synthetic_val",
    "data.synthetic_seed",
    "data.sampling",
    "data.class_weights",
    "data.format",
    "data.classes",
    "data.class_folders",
    "data.image_size",
    "data.channels",
    "init_from",
    "init_skip",
    "init_weights",
    "optim.freeze",
    "data.pipeline",
    "distill.teachers",
)


class IncompatibleWorkdirError(ValueError):
    """The workdir holds a run whose defining settings differ from this config's."""


def path(workdir: str, name: str) -> str:
    return os.path.join(workdir, name)


def check_writable(workdir: str) -> None:
    """Creates `workdir` and proves it writable, or raises PermissionError saying what to do.

    The probe is a file without a name (`tempfile.TemporaryFile`: O_TMPFILE where the filesystem has
    it, else a unique name removed at once), and nothing is written into it: a nearly full disk or
    processes sharing the workdir leave nothing behind. A full disk is reported by the first write
    that fails, naming its file."""
    try:
        os.makedirs(workdir, exist_ok=True)
        with tempfile.TemporaryFile(dir=workdir):
            pass
    except OSError as e:
        raise PermissionError(
            f"workdir {workdir!r} is not writable ({type(e).__name__}: {e}); choose a --workdir in a "
            "folder you can write to."
        ) from e


def has_checkpoint(workdir: str) -> bool:
    """Whether `<workdir>/checkpoints` holds a finished checkpoint, so that a run there resumes. Orbax's
    own listing (that of the `fer_flax.run.checkpoint` managers), read without opening a manager: a
    manager creates its folder and starts background work, which training defers until its data is
    read."""
    steps = ocp.step.standard_name_format().find_all(path(workdir, "checkpoints"))
    return next(iter(steps), None) is not None


# ----------------------------------------------------------------------------- the run's config


def _as_tuples(value: Any) -> Any:
    """JSON has no tuples: every list in a saved config was a tuple (the configs use tuples only)."""
    if isinstance(value, dict):
        return {k: _as_tuples(v) for k, v in value.items()}
    if isinstance(value, list):
        return tuple(_as_tuples(v) for v in value)
    return value


def _as_json(value: Any) -> Any:
    """`value` as config.json stores it (tuples as lists)."""
    return json.loads(json.dumps(value, default=str))


def read_run_info(workdir: str) -> dict:
    """The `{"config": {...}, "derived": {...}}` a training run wrote to `<workdir>/config.json`, its
    config completed with the package's default of every key it lacks (a run written before the key
    existed ran with that default), as JSON stores it. Every reader of a run's config comes here, so
    no code needs a fallback for an absent key."""
    file_path = path(workdir, CONFIG_FILE)
    if not os.path.isfile(file_path):
        raise FileNotFoundError(
            f"{file_path} not found: {workdir!r} is not a fer_flax training workdir. Train first with "
            "`python -m fer_flax.main --config configs/<x>.py --workdir <dir>`."
        )
    try:
        with open(file_path) as f:
            info = json.load(f)
    except ValueError as e:
        raise ValueError(
            f"{file_path} is damaged: not valid JSON ({e}); the run's config cannot be read"
        ) from e
    if not isinstance(info, dict) or not isinstance(info.get("config"), dict):
        raise ValueError(f"{file_path} is damaged: it holds no run config (no 'config' entry)")
    return {**info, "config": _as_json(defaults.complete(info["config"]))}


def load_run_config(workdir: str) -> ConfigDict:
    """The run's resolved config as a ConfigDict, completed with the defaults of the keys its config.json
    lacks (lists from JSON turned back into tuples)."""
    return ConfigDict(_as_tuples(read_run_info(workdir)["config"]))


def write_run_info(workdir: str, config: ConfigDict, derived: dict[str, Any]) -> None:
    write_json(path(workdir, CONFIG_FILE), {"config": config.to_dict(), "derived": derived})


def derived_value(workdir: str, key: str) -> Any:
    """`derived[key]` of the workdir's config.json (None for a new workdir or an absent key)."""
    if not os.path.exists(path(workdir, CONFIG_FILE)):
        return None
    return read_run_info(workdir).get("derived", {}).get(key)


def record_start(
    workdir: str,
    config: ConfigDict,
    derived: dict[str, Any],
    changes: dict[str, tuple[Any, Any]],
    start_step: int,
    say: Callable[[str], Any],
) -> None:
    """A (re)started run's files: metrics.jsonl cut back to the resumed step, the settings changed since
    the workdir's last run (said and appended to config_history.jsonl), and config.json."""
    truncate_metrics(workdir, start_step)
    if changes:
        say(
            "Settings changed since this workdir's last run (recorded in config_history.jsonl): "
            + "; ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in changes.items())
        )
        record_config_changes(workdir, changes, start_step)
    write_run_info(workdir, config, derived)


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(tree, dict):
        return {prefix: tree}
    out: dict[str, Any] = {}
    for k, v in tree.items():
        out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def _state_layout(flat_config: dict[str, Any]) -> dict[str, bool]:
    """The settings that decide which leaves the train state has (so a checkpoint can be restored
    only with the same answers), as {description: value} of a flattened config."""
    return {
        "EMA (ema.decay > 0)": flat_config["ema.decay"] > 0,
        "reduce-on-plateau (optim.schedule == 'plateau')": flat_config["optim.schedule"] == "plateau",
    }


def _defines_run(key: str) -> bool:
    return any(key == p or key.startswith(p + ".") for p in RUN_IDENTITY_KEYS)


def config_changes(workdir: str, config: ConfigDict) -> dict[str, tuple[Any, Any]]:
    """{dotted key: (the workdir's run's value, value now)} for every differing key, the run's value of a
    key its config.json lacks being the key's default; raises `IncompatibleWorkdirError` when a key of
    `RUN_IDENTITY_KEYS` differs. Empty for a new workdir."""
    if not os.path.exists(path(workdir, CONFIG_FILE)):
        return {}
    # Both as config.json stores them. A key that an older config.json lacks reads as its default (what
    # that run used), so it is unchanged while it keeps the default; one on a side only (a model
    # option, a key no longer declared) is compared with absent.
    old = _flatten(read_run_info(workdir)["config"])
    new = _flatten(_as_json(config.to_dict()))
    missing = object()
    changes = {
        k: (old.get(k, missing), new.get(k, missing))
        for k in sorted(set(old) | set(new))
        if old.get(k, missing) != new.get(k, missing)
    }
    refused = {k: (a, b) for k, (a, b) in changes.items() if _defines_run(k)}
    # Switching EMA or reduce-on-plateau on or off adds or removes train-state leaves: refused too,
    # with this message rather than the restore's shape mismatch.
    old_layout, new_layout = _state_layout(old), _state_layout(new)
    refused.update({k: (old_layout[k], new_layout[k]) for k in old_layout if old_layout[k] != new_layout[k]})
    if refused:

        def show(v):
            return "(absent)" if v is missing else repr(v)

        lines = "\n".join(
            f"  {k}: {show(a)} in the workdir -> {show(b)} now" for k, (a, b) in refused.items()
        )
        raise IncompatibleWorkdirError(
            f"Workdir {workdir} holds a run with a different configuration; refusing to resume it:\n"
            f"{lines}\nThese settings define a run ({', '.join(RUN_IDENTITY_KEYS)}) and cannot change "
            "on resume; others (num_epochs, optim.lr, the schedule, augmentation, cadence, ...) can. "
            "Use a new --workdir, or rerun with the workdir's values."
        )
    return {k: (None if a is missing else a, None if b is missing else b) for k, (a, b) in changes.items()}


def record_config_changes(workdir: str, changes: dict[str, tuple[Any, Any]], resumed_at_step: int) -> None:
    """Adds one record of `changes` to config_history.jsonl (rewritten atomically)."""
    file_path = path(workdir, HISTORY_FILE)
    previous = ""
    if os.path.exists(file_path):
        with open(file_path) as f:
            previous = "".join(line for line in f if line.endswith("\n"))
    record = {"time": time.time(), "resumed_at_step": resumed_at_step, "changes": changes}
    write_text(file_path, previous + json.dumps(record, default=str) + "\n")


# ------------------------------------------------------------------------------------- metrics


def truncate_metrics(workdir: str, last_step: int) -> None:
    """Drops the records a killed run wrote after its last checkpoint (they are about to be recomputed)
    and any line a kill cut short, so metrics.jsonl reads as if the run had never stopped."""
    file_path = path(workdir, METRICS_FILE)
    if not os.path.exists(file_path):
        return
    kept = []
    with open(file_path) as f:
        lines = f.readlines()
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if line.endswith("\n") and isinstance(record, dict) and record.get("step", 0) <= last_step:
            kept.append(line)
    if len(kept) != len(lines):
        write_text(file_path, "".join(kept))


def best_accuracy(workdir: str, best_step: int | None) -> float | None:
    """The validation accuracy logged for the best checkpoint (the last record of that step)."""
    file_path = path(workdir, METRICS_FILE)
    if best_step is None or not os.path.exists(file_path):
        return None
    for record in tracking.read_metrics(file_path):
        if record["step"] == best_step and "val/accuracy" in record:
            # With EMA, the accuracy of the weights best/ holds (the selection metric).
            return record.get("selected/accuracy", record["val/accuracy"])
    return None


def plot_curves(workdir: str, title: str, say: Callable[[str], Any]) -> None:
    """`<workdir>/curves.png`: train and val loss/accuracy against step, from metrics.jsonl."""
    try:
        from fer_flax.run import plots
    except ImportError as e:  # a trained model matters more than its picture
        say(f"Skipping curves.png: {e}")
        return
    records = tracking.read_metrics(path(workdir, METRICS_FILE))
    plots.save(plots.training_curves(records, title), path(workdir, "curves.png"))
