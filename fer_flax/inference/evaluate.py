"""Evaluate trained checkpoints on any split of any FER2013 source, and say everything about it.

Command:
  python -m fer_flax.evaluate --workdir W [--workdir W2 ...] [--checkpoint best|latest|STEP]
      [--weights raw|ema] [--data PATH] [--split train|val|test] [--tta none|flip|tencrop]
      [--class_map by_name|DATA=MODEL,...] [--out report.json]
  python -m fer_flax.evaluate --data PATH [--split ...] [--tta ...] [--out report.json]   # bundled model

It reads the run's config from `W/config.json`, restores only what inference needs (params and
batch statistics; no optimizer state), runs every example of the split exactly once (padded, masked
batches), prints a summary and writes a JSON report plus `<report>.confusion.png` and
`<report>.reliability.png` beside it. Without `--out` the report goes to
`W/eval/<split>-<checkpoint>-<tta>.json` (`<split>-<checkpoint>-ema-<tta>.json` for `--weights ema`),
where `fer_flax.research.leaderboard` finds it. Without `--workdir` the model bundled with fer_flax
(`fer_flax.run.bundled`) is evaluated on `--data`, and its report is written only where `--out` says.

A run trained with an EMA (`config.ema.decay > 0`) keeps both weight sets in its full checkpoints:
`--weights ema` with `--checkpoint latest|STEP` evaluates the EMA ones. Its `best/` checkpoint holds
one set, selected in training by `config.ema.select`; the report's `weights` says which.

Protocol: this command (and `fer_flax.research.multiseed`, which calls it) is the only place the `test` split
is ever read. Training selects checkpoints on `val`. The default split is `val`: reading `test` is
always an explicit request.

Data with another class set than the model's (a FER2013 model on FER+, a FER+ model on FER2013) is
evaluated through an explicit `--class_map` (`fer_flax.core.class_mapping`): data classes without a partner
are excluded, model classes without one are masked out, and the report says so (`class_mapping`).

Several `--workdir`s form an ensemble: each model's class probabilities (after its own test-time
augmentation, which averages logits over views, see `fer_flax.core.tta`) are averaged, and the ensemble is
reported like a single model.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

import jax
from absl import flags
from ml_collections import ConfigDict

from fer_flax import cli
from fer_flax.base import output_paths
from fer_flax.config import choices as config_choices
from fer_flax.config import schema as config_schema
from fer_flax.core import class_mapping, metrics, parallel, tta
from fer_flax.data import ArraySplit, default_cache_dir, load_splits, user_cache_dir
from fer_flax.data.splits import SPLITS
from fer_flax.inference import engine as inference
from fer_flax.run import trained
from fer_flax.run import workdir as workdir_lib
from fer_flax.run.trained import Restored

# Data-config keys that decide which examples a split holds; the others (sampling, workers, cache)
# only affect training or speed.
_DATA_IDENTITY_KEYS = ("path", "synthetic_train", "synthetic_val", "synthetic_test", "synthetic_seed")


def resolve_mapping(
    members: Sequence[Restored], split: ArraySplit, class_map: str | None
) -> class_mapping.ClassMapping | None:
    """The class mapping between `split`'s classes and the models' (None when they are the same and
    none is asked for). ValueError when the data does not fit the models without one."""
    spec = members[0].spec
    for m in members[1:]:
        if m.spec != spec:
            raise ValueError(
                f"the ensemble's runs were trained on different classes or image shapes: {m.workdir}"
            )
    if split.image_shape != spec.image_shape:
        raise ValueError(
            f"the data's images are {split.image_shape} (height, width, channels), the model takes "
            f"{spec.image_shape}; evaluate on data of the model's shape"
        )
    if class_map is None:
        if tuple(split.class_names) == spec.class_names:
            return None
        raise ValueError(
            f"the data's classes ({', '.join(split.class_names)}) are not the model's "
            f"({', '.join(spec.class_names)}); pass --class_map {class_mapping.BY_NAME} or "
            "--class_map DATA_CLASS=MODEL_CLASS,... to evaluate through a class mapping"
        )
    return class_mapping.parse(class_map, split.class_names, spec.class_names)


def evaluate_split(
    members: Sequence[Restored],
    split: ArraySplit,
    *,
    batch_size: int,
    tta_mode: str = "none",
    crop_size: int = tta.DEFAULT_CROP_SIZE,
    mesh: jax.sharding.Mesh | None = None,
    num_bins: int = metrics.ECE_BINS,
    class_map: str | None = None,
) -> dict:
    """The classification report (see `metrics.classification_report`) of `members` on `split`, with
    what was evaluated: tta, crop_size, num_models, models, checkpoint_step, class_mapping (None, or the
    mapping of `class_map` with the examples it excluded)."""
    mapping = resolve_mapping(members, split, class_map)
    probs = inference.member_probabilities(
        members, split, batch_size=batch_size, tta_mode=tta_mode, crop_size=crop_size, mesh=mesh
    )
    labels, names, mapped = split.labels, split.class_names, None
    if mapping is not None:
        probs, labels, excluded = mapping.apply(probs, labels)
        names = tuple(d for d, _ in mapping.pairs)
        mapped = {**mapping.record(), "excluded_examples": excluded}
    report = metrics.classification_report(probs, labels, num_bins=num_bins, class_names=names)
    steps = [m.step for m in members]
    return {
        "tta": tta_mode,
        "crop_size": crop_size if tta_mode == "tencrop" else None,
        "num_models": len(members),
        "models": [m.describe() for m in members],
        "checkpoint_step": steps[0] if len(steps) == 1 else steps,
        "class_mapping": mapped,
        **report,
    }


# ------------------------------------------------------------------------------------------ data


def resolve_data_config(members: Sequence[Restored], data_path: str | None) -> ConfigDict:
    """The data config to evaluate on: the first run's, with `data_path` (any FER2013 CSV or image
    folder) replacing its source. Without `data_path`, the members must agree on their data."""
    if data_path is None and members[0].bundled:
        raise ValueError(
            "the bundled model (used without --workdir) carries no data: pass --data PATH, the FER2013 "
            "CSV (.csv or .csv.gz) or its image folders"
        )
    base = members[0].config.data.to_dict()
    if data_path is not None:
        base["path"] = data_path
        base["format"] = "auto"  # the new source says what it is
    else:
        ident = {k: base[k] for k in _DATA_IDENTITY_KEYS}
        for m in members[1:]:
            other = {k: m.config.data[k] for k in _DATA_IDENTITY_KEYS}
            if other != ident:
                raise ValueError(
                    f"the ensemble's runs were trained on different data ({members[0].workdir}: "
                    f"{ident}; {m.workdir}: {other}); pass --data to say which source to evaluate on"
                )
    if base["path"] is not None:  # relative paths are relative to the working directory, as in training
        base["path"] = os.path.abspath(os.path.expanduser(base["path"]))
    return ConfigDict(base)


def load_eval_split(
    members: Sequence[Restored],
    split: str,
    data_path: str | None = None,
    *,
    announce: Callable = print,
    cache_dir: str | None = None,
) -> tuple[ArraySplit, ConfigDict]:
    """Reads only `split` from `data_path` (or the run's own data). A source that holds only that
    split is fine: the readers parse nothing else. Parsed arrays are cached in `cache_dir`, else the
    run's `data.cache_dir`, else beside the workdir (the user's cache folder for the bundled model)."""
    config_schema.check_choice("--split", split, SPLITS)
    data_config = resolve_data_config(members, data_path)
    beside = user_cache_dir() if members[0].bundled else default_cache_dir(members[0].workdir)
    cache_dir = cache_dir or data_config.cache_dir or beside
    try:
        # Evaluation scores majority labels, which every source has, whatever the run trained on.
        loaded = load_splits(
            data_config, (split,), cache_dir=cache_dir, announce=announce, label_mode="majority"
        )
    except FileNotFoundError as e:
        raise FileNotFoundError(f"{e} (Evaluating elsewhere? Pass the data with --data PATH.)") from e
    return loaded[split], data_config


# ---------------------------------------------------------------------------------------- reports


def data_source(data_config: ConfigDict) -> str:
    """ "fer2013", "folder", "ferplus" or "synthetic (seed N)": what the evaluated split came from."""
    from fer_flax.data import sources

    fmt = sources.resolve_format(data_config)
    return f"synthetic (seed {data_config.synthetic_seed})" if fmt == "synthetic" else fmt


def default_report_path(
    workdirs: Sequence[str],
    split: str,
    checkpoint: str | int,
    tta_mode: str,
    weights: str = "raw",
    *,
    mapped: bool = False,
) -> str:
    name = f"{split}-{checkpoint if not isinstance(checkpoint, int) else f'step{checkpoint}'}"
    if mapped:  # another data set's classes: a report of its own, beside the run's own-data reports
        name = f"mapped-{name}"
    # The EMA weights of a checkpoint get their own report instead of overwriting the raw weights' one.
    name += f"-ema-{tta_mode}" if weights == "ema" else f"-{tta_mode}"
    if len(workdirs) > 1:
        name = f"ensemble{len(workdirs)}-{name}"
    return os.path.join(os.path.abspath(workdirs[0]), "eval", name + ".json")


def figure_paths(report_path: str) -> dict[str, str]:
    stem = report_path[:-5] if report_path.endswith(".json") else report_path
    return {"confusion": stem + ".confusion.png", "reliability": stem + ".reliability.png"}


def format_report(report: dict) -> str:
    """A readable summary: what was evaluated, the headline numbers, per-class table, confusion."""
    models, which = report["models"], report.get("checkpoint", "best")
    named = [f"{m['model_name']}/{m['variant']} ({trained.checkpoint_used(m, which)})" for m in models]
    who = named[0] if len(models) == 1 else f"ensemble of {len(models)}: " + ", ".join(named)
    tta_text = report["tta"] + (f" (crop {report['crop_size']})" if report["crop_size"] else "")
    lines = [
        f"Evaluated {who} on split '{report['split']}' of {report['data_path'] or 'synthetic faces'}: "
        f"{report['num_examples']} examples, TTA {tta_text}",
    ]
    mapped = report.get("class_mapping")
    if mapped:
        pairs = ", ".join(f"{d}={m}" for d, m in mapped["pairs"].items())
        excluded = ", ".join(f"{c} ({n} examples)" for c, n in mapped["excluded_examples"].items())
        lines.append(f"  through the class mapping {pairs}" + (f"; excluded {excluded}" if excluded else ""))
        if mapped["unmapped_model_classes"]:
            lines.append(f"  model classes masked out: {', '.join(mapped['unmapped_model_classes'])}")
    lines += [
        f"  accuracy {report['accuracy']:.4f}   balanced accuracy {report['balanced_accuracy']:.4f}   "
        f"macro-F1 {report['macro_f1']:.4f}   NLL {report['nll']:.4f}   "
        f"ECE {report['ece']:.4f} ({report['calibration']['num_bins']} bins)",
        "",
        f"  {'class':<10}{'precision':>10}{'recall':>10}{'F1':>10}{'support':>10}",
    ]
    for name, s in report["per_class"].items():
        lines.append(
            f"  {name:<10}{s['precision']:>10.4f}{s['recall']:>10.4f}{s['f1']:>10.4f}{s['support']:>10d}"
        )
    lines += ["", "  confusion matrix (rows true, columns predicted):"]
    short = [n[:7] for n in report["class_names"]]
    lines.append("  " + " " * 10 + "".join(f"{n:>8}" for n in short))
    for name, row in zip(report["class_names"], report["confusion_matrix"], strict=True):
        lines.append(f"  {name:<10}" + "".join(f"{v:>8d}" for v in row))
    return "\n".join(lines)


def write_report(report: dict, out_path: str, *, figures: bool = True) -> dict[str, str]:
    """Writes the JSON (and the two PNGs next to it); returns the paths written."""
    out_path = os.path.abspath(out_path)
    os.makedirs(os.path.dirname(out_path), exist_ok=True)
    files = {"report": out_path}
    if figures:
        from fer_flax.run import plots  # matplotlib only when figures are asked for

        paths = figure_paths(out_path)
        title = f"{report['split']} ({report['num_examples']} examples)"
        plots.save(
            plots.confusion_figure(report["confusion_matrix"], report["class_names"], f"Confusion: {title}"),
            paths["confusion"],
        )
        plots.save(
            plots.reliability_figure(report["calibration"], report["ece"], f"Reliability: {title}"),
            paths["reliability"],
        )
        files.update(paths)
    report = {**report, "files": files}
    workdir_lib.write_json(out_path, report)  # atomic: the leaderboard never sees half a report
    return files


def evaluate_workdirs(
    workdirs: Sequence[str] | None,
    *,
    checkpoint: str | int = "best",
    split: str = "val",
    data_path: str | None = None,
    tta_mode: str = "none",
    crop_size: int = tta.DEFAULT_CROP_SIZE,
    batch_size: int | None = None,
    out: str | None = None,
    figures: bool = True,
    announce: Callable = print,
    weights: str = "raw",
    class_map: str | None = None,
) -> dict:
    """The whole command as a library call: restore, read the split, evaluate, write the report.
    No `workdirs`: the bundled model (`run.bundled`), which needs `data_path`; its report is written
    only to `out`. `weights`: "raw" or "ema" (the EMA weights of checkpoint 'latest' or a step; see
    `trained.restore`). `class_map`: see `fer_flax.core.class_mapping`.

    Returns the report (as written to JSON, with a `files` entry)."""
    config_schema.check_choice("--tta", tta_mode, tta.TTA_MODES)
    which = trained.parse_checkpoint(checkpoint)
    # The report's path is checked before any model or data is read; the default one too, so that a
    # workdir one may only read fails at once, naming --out (a workdir that is not there is
    # load_members' to report).
    flag = "--out" if out else "--out (not given: the default in the workdir)"
    if out or (workdirs and os.path.isdir(workdirs[0])):
        mapped = class_map is not None
        out = output_paths.check_file(
            flag, out or default_report_path(workdirs, split, which, tta_mode, weights, mapped=mapped)
        )
    mesh = parallel.make_mesh()
    members = inference.load_members(workdirs, which, mesh=mesh, weights=weights)
    split_data, data_config = load_eval_split(members, split, data_path, announce=announce)
    batch_size = batch_size or members[0].config.eval_batch_size
    report = evaluate_split(
        members,
        split_data,
        batch_size=batch_size,
        tta_mode=tta_mode,
        crop_size=crop_size,
        mesh=mesh,
        class_map=class_map,
    )
    report = {
        "split": split,
        "data_path": data_config.path,
        "data_source": data_source(data_config),
        "checkpoint": which,
        # Which weights were evaluated, "raw" or "ema" (per model for an ensemble).
        "weights": members[0].weights if len(members) == 1 else [m.weights for m in members],
        "workdirs": [m.workdir for m in members],
        **report,
    }
    if out is None and workdirs:
        out = default_report_path(workdirs, split, which, tta_mode, weights, mapped=class_map is not None)
    report["files"] = {}  # the bundled model's report is written only where --out says
    if jax.process_index() == 0 and out is not None:
        report["files"] = write_report(report, out, figures=figures)
    return report


# ------------------------------------------------------------------------------------ command line


# Absl logging at ERROR: Orbax warns about every read-only checkpoint folder it opens.
COMMAND = cli.Command(log_level="error")


def define_flags() -> None:
    """Command-line flags, defined only when run as a program: the library is importable next to
    other programs' flags (fer_flax.main also has --workdir)."""
    flags.DEFINE_multi_string(
        "workdir",
        None,
        "Training workdir; repeat the flag for an ensemble (probabilities averaged). Without it: the "
        "model bundled with fer_flax (with --data).",
    )
    flags.DEFINE_string("checkpoint", "best", "'best' (by val accuracy), 'latest' or a step number.")
    flags.DEFINE_enum(
        "weights",
        "raw",
        list(config_choices.WEIGHT_SETS),
        "With --checkpoint latest|STEP: the raw weights or their EMA (runs with config.ema.decay > 0). "
        "best/ holds the weights selected in training (config.ema.select); the report names them.",
    )
    flags.DEFINE_string(
        "data", None, "FER2013 CSV (.csv/.csv.gz), image folder or .tar.gz; default: the run's own data."
    )
    flags.DEFINE_enum("split", "val", list(SPLITS), "Split to evaluate (test only on purpose).")
    flags.DEFINE_enum("tta", "none", list(tta.TTA_MODES), "Test-time augmentation.")
    flags.DEFINE_integer("crop_size", tta.DEFAULT_CROP_SIZE, "Ten-crop crop side (of 48).")
    flags.DEFINE_string(
        "class_map",
        None,
        "For data with other classes than the model's: 'by_name' or 'DATA_CLASS=MODEL_CLASS,...'; unmapped "
        "data classes are excluded and unmapped model classes masked out.",
    )
    flags.DEFINE_string("out", None, "Report path (.json); default <workdir>/eval/<split>-<ckpt>-<tta>.json")
    flags.DEFINE_integer("batch_size", None, "Global batch size; default: the run's eval_batch_size.")


def main(argv: list[str]) -> None:
    del argv  # the program name only: the preamble refuses positional arguments
    f = flags.FLAGS
    # Expected errors (a missing workdir, a bad data row, damaged checkpoints): one line, via cli.
    report = evaluate_workdirs(
        f.workdir,
        checkpoint=f.checkpoint,
        split=f.split,
        data_path=f.data,
        tta_mode=f.tta,
        crop_size=f.crop_size,
        batch_size=f.batch_size,
        out=f.out,
        weights=f.weights,
        class_map=f.class_map,
    )
    if jax.process_index() == 0:
        print(format_report(report))
        if report["files"]:
            print("Wrote " + ", ".join(report["files"].values()))
