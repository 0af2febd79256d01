"""One report comparing training runs of any model families, on one self-contained HTML page.

Command:
  python -m fer_flax.compare workdirs/cnn workdirs/vit [more workdirs ...] --out compare/
      [--data PATH] [--split train|val|test] [--tta none|flip|tencrop]

Per run, in the order given:
- its best checkpoint evaluated on `--split` (default `val`, PublicTest) with `--tta` (default `flip`)
  through the one inference path (`fer_flax.inference.evaluate`): accuracy, balanced accuracy,
  macro-F1, per-class F1 and the confusion matrix. The data is each run's own (its config.json)
  unless `--data` names a source for all of them;
- its size: parameters, and GFLOPs of one image's forward pass (`fer_flax.core.flops`; the matrix
  work of convolutions and dot products, one view: flip TTA doubles it at inference);
- from `metrics.jsonl`: training images/s and training time (`fer_flax.research.leaderboard`), the
  learning curve (validation accuracy at each evaluation, against epochs and against training time),
  and the time to 60, 65 and 70% validation accuracy.

Training time counts the seconds spent in training steps (compilation included, evaluations and
checkpoint writes not), added up over the logged training windows. The time to a threshold is that
sum up to the first evaluation at or above it ("–" when no evaluation reached it). Where a run kept
an EMA of its weights, the curve is the accuracy of the weights selected at each evaluation (as its
best checkpoint holds them).

`--out DIR` receives `report.html` (table and figures, the figures embedded as PNG: it opens from
disk, without a server or network), `report.md` (the table) and `report.json` (every number), each
written atomically. The page is drawn by `fer_flax.research.compare_page`.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence

import jax
from absl import app, flags

from fer_flax import cli
from fer_flax.base import atomic_files, output_paths
from fer_flax.core import flops, parallel, tta
from fer_flax.core.model import create_model
from fer_flax.data.splits import SPLITS
from fer_flax.inference import engine
from fer_flax.inference import evaluate as evaluate_lib
from fer_flax.research import compare_page, leaderboard
from fer_flax.run import tracking
from fer_flax.run import workdir as workdir_lib

THRESHOLDS: tuple[float, ...] = (0.60, 0.65, 0.70)
FILES = {"html": "report.html", "markdown": "report.md", "json": "report.json"}


def _print_flushed(message: str) -> None:
    print(message, flush=True)  # progress lines show at once, also through a pipe


def check_run(workdir: str) -> str:
    """The absolute path of `workdir`; FileNotFoundError (one line naming it) unless it is a run."""
    path = os.path.abspath(workdir)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"{workdir}: no such folder")
    if not os.path.isfile(os.path.join(path, "config.json")):
        raise FileNotFoundError(f"{workdir}: not a training run (no config.json in it)")
    return path


# ------------------------------------------------------------------------------ from metrics.jsonl


def learning_curve(records: Sequence[dict], steps_per_epoch: int | None = None) -> list[dict]:
    """One point per evaluation in `metrics.jsonl`'s records, by step: {step, epoch, train_seconds,
    accuracy}. `train_seconds`: the training windows' `train/seconds` logged up to it (a window is
    always logged before the evaluation at its step). `accuracy`: of the weights selected at that
    evaluation (the EMA's where a run selects them), else `val/accuracy`. A step evaluated twice keeps
    its last record. `epoch` is step / `steps_per_epoch`, else from the records' `train/epoch`."""
    seconds, epochs_per_step, points = 0.0, None, {}
    for r in records:
        seconds += r.get("train/seconds", 0.0)
        if r.get("train/epoch") and r["step"]:
            epochs_per_step = r["train/epoch"] / r["step"]
        if "val/accuracy" in r:
            points[r["step"]] = {
                "step": r["step"],
                "train_seconds": seconds,
                "accuracy": r.get("selected/accuracy", r["val/accuracy"]),
            }
    for step, point in points.items():
        per_step = 1 / steps_per_epoch if steps_per_epoch else epochs_per_step
        point["epoch"] = None if per_step is None else step * per_step
    return [points[s] for s in sorted(points)]


def time_to_accuracy(
    curve: Sequence[dict], thresholds: Sequence[float] = THRESHOLDS
) -> dict[str, dict | None]:
    """For each threshold (keyed "0.60"): the first point of `curve` at or above it ({step, epoch,
    train_seconds}), or None when none is."""
    out = {}
    for threshold in thresholds:
        first = next((p for p in curve if p["accuracy"] >= threshold), None)
        out[f"{threshold:.2f}"] = (
            None if first is None else {k: first[k] for k in ("step", "epoch", "train_seconds")}
        )
    return out


def training_record(workdir: str) -> dict:
    """What a run's own files say: model, parameters, training time and images/s (the leaderboard's
    reading), its learning curve and its times to the thresholds."""
    record = leaderboard.run_record(workdir)
    metrics_path = os.path.join(workdir, "metrics.jsonl")
    records = tracking.read_metrics(metrics_path) if os.path.isfile(metrics_path) else []
    info = workdir_lib.read_run_info(workdir)
    curve = learning_curve(records, info.get("derived", {}).get("steps_per_epoch"))
    return {
        "model_name": record["model_name"],
        "variant": record["variant"],
        "num_params": record["num_params"],
        "finished": record["finished"],
        "training_best_val_accuracy": record["best_val_accuracy"],
        "train_seconds": record["train_seconds"],
        "images_per_sec": record["images_per_sec"],
        "time_to_accuracy": time_to_accuracy(curve),
        "curve": curve,
    }


# ------------------------------------------------------------------------------------- evaluation


def evaluate_run(
    workdir: str,
    *,
    split: str,
    data_path: str | None,
    tta_mode: str,
    mesh: jax.sharding.Mesh,
    announce: Callable[[str], object] = print,
) -> dict:
    """The best checkpoint of `workdir` on `split` (`inference.evaluate`'s path, nothing written into
    the run) and its forward GFLOPs per image."""
    members = engine.load_members([workdir], "best", mesh=mesh)
    data, data_config = evaluate_lib.load_eval_split(members, split, data_path, announce=announce)
    report = evaluate_lib.evaluate_split(
        members, data, batch_size=members[0].config.eval_batch_size, tta_mode=tta_mode, mesh=mesh
    )
    member = members[0]
    stock = create_model(member.config, member.spec, cpu_kernels=False)
    keys = ("num_examples", "accuracy", "balanced_accuracy", "macro_f1", "nll", "ece", "per_class")
    return {
        "checkpoint_step": member.step,
        "weights": member.weights,
        "gflops_per_image": flops.forward_flops(stock, member.spec.image_shape) / 1e9,
        "data_source": evaluate_lib.data_source(data_config),
        "data_path": data_config.path,
        **{k: report[k] for k in keys},
        "confusion_matrix": report["confusion_matrix"],
        "class_names": report["class_names"],
    }


def compare(
    workdirs: Sequence[str],
    *,
    split: str = "val",
    data_path: str | None = None,
    tta_mode: str = "flip",
    announce: Callable[[str], object] | None = None,
) -> dict:
    """Everything the report shows, as one JSON-ready dict: the settings and one entry per run, in
    the order of `workdirs`. Announces a line per run as it evaluates."""
    if not workdirs:
        raise ValueError("give one or more training workdirs to compare")
    announce = announce or _print_flushed
    paths = [check_run(w) for w in workdirs]
    repeated = sorted({w for w, p in zip(workdirs, paths, strict=True) if paths.count(p) > 1})
    if repeated:
        raise ValueError(f"{repeated[0]}: given more than once")
    names = leaderboard.display_names(paths)
    mesh = parallel.make_mesh()
    runs = []
    for i, (path, name) in enumerate(zip(paths, names, strict=True), start=1):
        trained = training_record(path)
        announce(
            f"[{i}/{len(paths)}] {name} ({trained['model_name']}/{trained['variant']}): "
            f"evaluating its best checkpoint on {split} with TTA {tta_mode}"
        )
        start = time.perf_counter()
        evaluation = evaluate_run(
            path, split=split, data_path=data_path, tta_mode=tta_mode, mesh=mesh, announce=announce
        )
        announce(
            f"      accuracy {evaluation['accuracy']:.4f}, balanced {evaluation['balanced_accuracy']:.4f}, "
            f"macro-F1 {evaluation['macro_f1']:.4f} on {evaluation['num_examples']} examples "
            f"(step {evaluation['checkpoint_step']}, {time.perf_counter() - start:.1f} s)"
        )
        runs.append({"name": name, "workdir": path, **trained, "evaluation": evaluation})
    return {
        "split": split,
        "tta": tta_mode,
        "data_path": data_path,
        "thresholds": list(THRESHOLDS),
        "runs": runs,
    }


def write_report(result: dict, out_dir: str) -> dict[str, str]:
    """Writes report.html, report.md and report.json into `out_dir` (created), each atomically;
    returns their paths."""
    os.makedirs(out_dir, exist_ok=True)
    paths = {kind: os.path.join(out_dir, name) for kind, name in FILES.items()}
    atomic_files.write_text(paths["markdown"], compare_page.markdown_table(result))
    atomic_files.write_json(paths["json"], result)
    atomic_files.write_text(paths["html"], compare_page.html_page(result))
    return paths


# ------------------------------------------------------------------------------------ command line


def define_flags() -> None:
    flags.DEFINE_string("out", None, "Folder for report.html, report.md and report.json.")
    flags.DEFINE_string(
        "data",
        None,
        "FER2013 CSV (.csv/.csv.gz), image folder or .tar.gz for all runs; default: each run's own.",
    )
    flags.DEFINE_enum(
        "split", "val", list(SPLITS), "Split to evaluate (val = PublicTest; test only on purpose)."
    )
    flags.DEFINE_enum("tta", "flip", list(tta.TTA_MODES), "Test-time augmentation of the evaluation.")
    flags.mark_flag_as_required("out")


# Workdirs as arguments; absl at ERROR: Orbax warns about read-only checkpoint folders.
COMMAND = cli.Command(arguments=True, log_level="error")


def main(argv: list[str]) -> None:
    workdirs = argv[1:]
    if not workdirs:
        raise app.UsageError("give one or more training workdirs to compare")
    f = flags.FLAGS
    output_paths.check_folder("--out", f.out)  # before any run is read
    # A folder that is not a run, a damaged checkpoint, missing data: one line, via cli.run.
    result = compare(workdirs, split=f.split, data_path=f.data, tta_mode=f.tta)
    if jax.process_index() == 0:
        paths = write_report(result, f.out)
        print(compare_page.markdown_table(result), end="")
        print("Wrote " + ", ".join(paths.values()))
