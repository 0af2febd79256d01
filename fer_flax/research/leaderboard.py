"""A Markdown leaderboard of training runs.

Command:
  python -m fer_flax.leaderboard workdirs/ [more workdirs or parents ...] [--out leaderboard.md]

Every folder holding a `config.json` under the given paths is a run (checkpoint, eval and wandb
folders are not searched). One row per run: its data set and class count, model, variant, parameters,
best validation accuracy
and the validation macro-F1 and balanced accuracy at that checkpoint (from `metrics.jsonl`), the
test metrics where `fer_flax.evaluate --split test` has written a report for the best checkpoint into
`<run>/eval/` (TTA `none` preferred; another TTA is named in the cell), training time and
training throughput.

Rows are ranked by validation accuracy within each data set (the file or folder trained on, and its
class count): accuracies on different data sets or class sets do not compare, so the synthetic demo's
0.99 never ranks above a FER2013 or FER+ run. Data sets come in alphabetical order, the synthetic
faces last. Test figures are shown for reading, never used to rank or select: choosing the model with
the best test score would turn the test set into a second validation set.

Training time is the sum of the logged training windows' `train/seconds` in `metrics.jsonl`: the time
spent in training steps (compilation included) by every invocation of a resumed run, less the work a
kill lost after the last checkpoint. Runs whose records lack it show `train_seconds_this_run` from
`summary.json` (the last invocation only). Images/s is the median of the logged training windows
(robust to the first window, which includes compilation).
"""

from __future__ import annotations

import glob
import json
import os
from collections.abc import Sequence

import numpy as np
from absl import app, flags

from fer_flax import cli
from fer_flax.base import atomic_files, output_paths
from fer_flax.data.splits import CLASS_NAMES
from fer_flax.run import tracking
from fer_flax.run import workdir as workdir_lib

_SKIP_DIRS = {"checkpoints", "best", "eval", "wandb"}
_TTA_PREFERENCE = ("none", "flip", "tencrop")
SYNTHETIC = "synthetic"
_ARCHIVE_SUFFIXES = (".gz", ".tgz", ".tar", ".csv", ".zip")


def find_workdirs(roots: Sequence[str]) -> list[str]:
    """Folders with a config.json at or under `roots`, sorted; hidden folders are skipped."""
    found = set()
    for root in roots:
        if not os.path.isdir(root):
            raise FileNotFoundError(f"{root!r} is not a folder")
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and d not in _SKIP_DIRS)
            if "config.json" in filenames:
                found.add(os.path.abspath(dirpath))
    return sorted(found)


def _load_json(path: str) -> dict | None:
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        try:
            return json.load(f)
        except ValueError as e:
            raise ValueError(f"{path} is damaged: not valid JSON ({e})") from e


def test_report(workdir: str) -> dict | None:
    """The single-model report of the best checkpoint on `test` in `<workdir>/eval/`, if any
    (TTA none preferred, then flip, then ten-crop)."""
    candidates = []
    for path in glob.glob(os.path.join(workdir, "eval", "*.json")):
        report = _load_json(path)
        if (
            report
            and report.get("split") == "test"
            and report.get("num_models") == 1
            and report.get("checkpoint") == "best"
        ):
            tta = report.get("tta", "none")
            rank = _TTA_PREFERENCE.index(tta) if tta in _TTA_PREFERENCE else len(_TTA_PREFERENCE)
            candidates.append((rank, path, report))
    return min(candidates, key=lambda c: c[:2])[2] if candidates else None


def data_set(config: dict, derived: dict) -> str:
    """What a run trained on, as the leaderboard groups it: the data's name (the file or folder of
    `data.path` without its archive suffixes; "synthetic" without a path) and its class count (from
    the run's recorded data spec; FER2013's 7 for runs that predate the record)."""
    path = config["data"]["path"]
    name = SYNTHETIC
    if path:
        name = os.path.basename(os.path.normpath(path))
        while name.lower().endswith(_ARCHIVE_SUFFIXES):
            name = name[: name.rfind(".")]
    classes = len((derived.get("data_spec") or {}).get("class_names") or CLASS_NAMES)
    return f"{name} ({classes} classes)"


def run_record(workdir: str) -> dict:
    """Everything the leaderboard (and `fer_flax.research.multiseed`) reads about one run."""
    workdir = os.path.abspath(workdir)
    info = workdir_lib.read_run_info(workdir)  # its config completed with the defaults of absent keys
    config, derived = info["config"], info.get("derived", {})
    summary = _load_json(os.path.join(workdir, "summary.json"))
    metrics_path = os.path.join(workdir, "metrics.jsonl")
    records = tracking.read_metrics(metrics_path) if os.path.isfile(metrics_path) else []
    val = {r["step"]: r for r in records if "val/accuracy" in r}
    train_rates = [r["train/images_per_sec"] for r in records if "train/images_per_sec" in r]
    window_seconds = [r["train/seconds"] for r in records if "train/seconds" in r]

    best_step = summary.get("best_step") if summary else None
    if best_step not in val and val:
        # Earliest step with the highest accuracy, as the best-checkpoint manager keeps it (with an
        # EMA, the accuracy of the weights selected at each evaluation).
        best_step = max(sorted(val), key=lambda s: val[s].get("selected/accuracy", val[s]["val/accuracy"]))
    best = val.get(best_step, {})
    if best.get("selected/weights") == "ema":  # best/ holds the EMA weights: report their numbers
        best = {k.replace("val_ema/", "val/", 1): v for k, v in best.items() if k.startswith("val_ema/")}
    test = test_report(workdir)
    return {
        "workdir": workdir,
        "model_name": config["model_name"],
        "variant": config["model"]["variant"],
        "num_params": derived.get("num_params"),
        "seed": config["seed"],
        "data_set": data_set(config, derived),
        "finished": summary is not None,
        "best_step": best_step,
        "best_val_accuracy": best.get("val/accuracy"),
        "val_macro_f1": best.get("val/macro_f1"),
        "val_balanced_accuracy": best.get("val/balanced_accuracy"),
        "test": None
        if test is None
        else {k: test[k] for k in ("accuracy", "balanced_accuracy", "macro_f1", "nll", "ece", "tta")},
        "train_seconds": float(sum(window_seconds))
        if window_seconds
        else (summary.get("train_seconds_this_run") if summary else None),
        "images_per_sec": float(np.median(train_rates[1:] or train_rates)) if train_rates else None,
    }


def _fmt(value: float | None, spec: str = ".4f") -> str:
    return "—" if value is None else format(value, spec)


def format_params(n: int | None) -> str:
    """A parameter count as "1.23M" or "45.0k" ("—" when unknown)."""
    if n is None:
        return "—"
    return f"{n / 1e6:.2f}M" if n >= 1e5 else f"{n / 1e3:.1f}k"


def format_seconds(s: float | None) -> str:
    """Seconds as H:MM:SS ("—" when unknown)."""
    if s is None:
        return "—"
    s = round(s)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def display_names(workdirs: list[str]) -> list[str]:
    """Paths relative to the runs' common folder (a lone run, or the common folder itself, by name)."""
    common = os.path.commonpath(workdirs)
    names = [os.path.relpath(w, common) for w in workdirs]
    return [os.path.basename(w) if n == "." else n for w, n in zip(workdirs, names, strict=True)]


def rank(records: list[dict]) -> list[tuple[int, dict]]:
    """(rank within its data set, record): grouped by data set (alphabetically, the synthetic faces
    last), each by best validation accuracy, highest first; runs without an evaluation last."""
    ordered = sorted(
        records,
        key=lambda r: (
            r["data_set"].startswith(SYNTHETIC + " "),
            r["data_set"],
            r["best_val_accuracy"] is None,
            -(r["best_val_accuracy"] or 0.0),
            r["workdir"],
        ),
    )
    ranked, place = [], {}
    for r in ordered:
        place[r["data_set"]] = place.get(r["data_set"], 0) + 1
        ranked.append((place[r["data_set"]], r))
    return ranked


def markdown_table(records: list[dict]) -> str:
    ranked = rank(records)
    names = display_names([r["workdir"] for _, r in ranked]) if ranked else []
    header = [
        "#", "run", "data (classes)", "model", "variant", "params", "best val acc", "val macro-F1",
        "val bal. acc", "test acc", "test macro-F1", "test bal. acc", "train time (last run)", "img/s",
    ]  # fmt: skip
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for (i, r), name in zip(ranked, names, strict=True):
        test = r["test"] or {}
        tta = f" ({test['tta']})" if test and test.get("tta") != "none" else ""
        cells = [
            str(i),
            name + ("" if r["finished"] else " (running)"),
            r["data_set"],
            r["model_name"] or "—",
            r["variant"] or "—",
            format_params(r["num_params"]),
            _fmt(r["best_val_accuracy"]),
            _fmt(r["val_macro_f1"]),
            _fmt(r["val_balanced_accuracy"]),
            _fmt(test.get("accuracy")) + tta if test else "—",
            _fmt(test.get("macro_f1")) + tta if test else "—",
            _fmt(test.get("balanced_accuracy")) + tta if test else "—",
            format_seconds(r["train_seconds"]),
            _fmt(r["images_per_sec"], ".0f"),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "Ranked by validation accuracy (best checkpoint) within each data set (#: the rank there); test "
        "metrics are shown, never used to rank. "
        "Test: `fer_flax.evaluate --split test` on the best checkpoint. Train time: the training "
        "steps of the run's last invocation (a resumed run's earlier parts are not counted).",
    ]
    return "\n".join(lines) + "\n"


def leaderboard(roots: Sequence[str]) -> str:
    workdirs = find_workdirs(roots)
    if not workdirs:
        raise FileNotFoundError(f"no training runs (folders with a config.json) under {list(roots)}")
    return markdown_table([run_record(w) for w in workdirs])


# Workdirs as positional arguments; it reads files only, no JAX start-up.
COMMAND = cli.Command(arguments=True, start_jax=False)


def define_flags() -> None:
    flags.DEFINE_string("out", None, "Also write the table to this Markdown file.")


def main(argv: list[str]) -> None:
    roots = argv[1:]
    if not roots:
        raise app.UsageError("give one or more workdirs or folders of workdirs")
    if flags.FLAGS.out:
        output_paths.check_file("--out", flags.FLAGS.out)  # before the runs are read
    table = leaderboard(roots)  # a missing folder or a damaged file: one line, via cli
    print(table, end="")
    if flags.FLAGS.out:
        atomic_files.write_text(flags.FLAGS.out, table)
