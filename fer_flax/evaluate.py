"""Evaluate trained checkpoints on any split of any FER2013 source, and say everything about it.

Command:
  python -m fer_flax.evaluate --workdir W [--workdir W2 ...] [--checkpoint best|latest|STEP]
      [--weights raw|ema] [--data PATH] [--split train|val|test] [--tta none|flip|tencrop]
      [--out report.json]

It reads the run's config from `W/config.json`, restores only what inference needs (params and
batch statistics; no optimizer state), runs every example of the split exactly once (padded, masked
batches), prints a summary and writes a JSON report plus `<report>.confusion.png` and
`<report>.reliability.png` beside it. Without `--out` the report goes to
`W/eval/<split>-<checkpoint>-<tta>.json` (`<split>-<checkpoint>-ema-<tta>.json` for `--weights ema`),
where `fer_flax.leaderboard` finds it.

A run trained with an EMA (`config.ema.decay > 0`) keeps both weight sets in its full checkpoints:
`--weights ema` with `--checkpoint latest|STEP` evaluates the EMA ones. Its `best/` checkpoint holds
one set, selected in training by `config.ema.select`; the report's `weights` says which.

Protocol: this command (and `fer_flax.multiseed`, which calls it) is the only place the `test` split
is ever read. Training selects checkpoints on `val`. The default split is `val`: reading `test` is
always an explicit request.

Several `--workdir`s form an ensemble: each model's class probabilities (after its own test-time
augmentation, which averages logits over views, see `fer_flax.tta`) are averaged, and the ensemble is
reported like a single model.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from absl import app, flags, logging
from jax.experimental import multihost_utils
from ml_collections import ConfigDict

from fer_flax import checkpoint as checkpoint_lib
from fer_flax import input_pipeline, metrics, parallel, train, tta, xla_cpu
from fer_flax.augment import preprocess
from fer_flax.data import ArraySplit, default_cache_dir, load_splits
from fer_flax.data.splits import SPLITS

# Data-config keys that decide which examples a split holds; the others (sampling, workers, cache)
# only affect training or speed.
_DATA_IDENTITY_KEYS = ("path", "synthetic_train", "synthetic_val", "synthetic_test", "synthetic_seed")


# ------------------------------------------------------------------------------------ restoring


def _as_tuples(value: Any) -> Any:
    """JSON has no tuples: every list in a saved config was a tuple (the configs use tuples only)."""
    if isinstance(value, dict):
        return {k: _as_tuples(v) for k, v in value.items()}
    if isinstance(value, list):
        return tuple(_as_tuples(v) for v in value)
    return value


def read_run_info(workdir: str) -> dict:
    """The `{"config": {...}, "derived": {...}}` a training run wrote to `<workdir>/config.json`."""
    path = os.path.join(workdir, "config.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"{path} not found: {workdir!r} is not a fer_flax training workdir. Train first with "
            "`python -m fer_flax.main --config configs/<x>.py --workdir <dir>`."
        )
    with open(path) as f:
        return json.load(f)


def load_run_config(workdir: str) -> ConfigDict:
    """The run's resolved config as a ConfigDict (lists from JSON turned back into tuples)."""
    return ConfigDict(_as_tuples(read_run_info(workdir)["config"]))


def parse_checkpoint(which: str | int) -> str | int:
    """'best', 'latest' or a step number (int or digit string)."""
    if isinstance(which, int) or (isinstance(which, str) and which.isdigit()):
        return int(which)
    if which in ("best", "latest"):
        return which
    raise ValueError(f"--checkpoint must be 'best', 'latest' or a step number, got {which!r}")


WEIGHTS = ("raw", "ema")


def restore_for_inference(
    workdir: str,
    checkpoint: str | int = "best",
    *,
    mesh: jax.sharding.Mesh | None = None,
    weights: str = "raw",
) -> tuple[nn.Module, dict, ConfigDict, int]:
    """(model, variables, config, step): the model rebuilt from `<workdir>/config.json` and its
    params + batch statistics from checkpoint 'best', 'latest' or a step, replicated over `mesh`.

    `weights="ema"` takes the EMA weights of a full checkpoint ('latest' or a step) of a run trained
    with `config.ema.decay > 0`. 'best' holds the one set selected in training (`config.ema.select`),
    so it takes only the default."""
    return _restore(workdir, checkpoint, mesh=mesh, weights=weights)[:4]


def _restore(
    workdir: str, checkpoint: str | int, *, mesh: jax.sharding.Mesh | None, weights: str
) -> tuple[nn.Module, dict, ConfigDict, int, str]:
    """`restore_for_inference` plus which weights were restored: "raw" or "ema" (for a best
    checkpoint, what its selection record says; "raw" for one written before EMA existed)."""
    workdir = os.path.abspath(workdir)
    config = load_run_config(workdir)
    which = parse_checkpoint(checkpoint)
    if weights not in WEIGHTS:
        raise ValueError(f"--weights must be one of {', '.join(WEIGHTS)}, got {weights!r}")
    if weights == "ema":
        if not train.ema_enabled(config):
            raise ValueError(
                f"the run in {workdir} kept no EMA of its weights (config.ema.decay is 0 or absent); "
                "--weights ema needs a run trained with --config.ema.decay > 0 (e.g. 0.999)"
            )
        if which == "best":
            raise ValueError(
                "--weights ema needs --checkpoint latest or a step: best/ holds only the weights "
                f"selected in training (config.ema.select={config.ema.select!r})"
            )
    model = train.create_model(config)
    mesh = parallel.make_mesh() if mesh is None else mesh
    abstract = jax.eval_shape(lambda: train.initial_variables(model, jax.random.key(0)))
    replicated = parallel.replicated_sharding(mesh)
    template = jax.tree.map(
        lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=replicated),
        {"params": abstract["params"], "batch_stats": abstract.get("batch_stats", {})},
    )
    ckpt = checkpoint_lib.Checkpointer(workdir, read_only=True)
    try:
        variables, step = ckpt.restore_model(template, which, weights=weights)
        restored_weights = weights
        if weights == "raw" and (which == "best" or step not in ckpt.latest.all_steps()):
            selection = ckpt.best_selection(step)
            restored_weights = selection["weights"] if selection else "raw"
    except FileNotFoundError:
        raise
    except Exception as e:  # Orbax reports a structure/shape mismatch with many exception types
        raise ValueError(
            f"checkpoint {checkpoint!r} in {workdir} does not match the model "
            f"{config.model_name}/{config.model.variant} rebuilt from its config.json "
            f"({type(e).__name__}: {e})"
        ) from e
    finally:
        ckpt.close()
    return model, variables, config, int(step), restored_weights


@dataclasses.dataclass(frozen=True)
class Member:
    """One restored model of an evaluation (an ensemble has several)."""

    workdir: str
    model: nn.Module
    variables: dict
    config: ConfigDict
    step: int
    weights: str = "raw"  # "raw" or "ema": which weights of the run these are

    def describe(self) -> dict:
        return {
            "workdir": self.workdir,
            "model_name": self.config.model_name,
            "variant": self.config.model.variant,
            "checkpoint_step": self.step,
            "weights": self.weights,
        }


def load_members(
    workdirs: Sequence[str],
    checkpoint: str | int = "best",
    *,
    mesh: jax.sharding.Mesh | None = None,
    weights: str = "raw",
) -> list[Member]:
    if not workdirs:
        raise ValueError("at least one workdir is needed")
    members = []
    for w in workdirs:
        model, variables, config, step, restored = _restore(w, checkpoint, mesh=mesh, weights=weights)
        members.append(Member(os.path.abspath(w), model, variables, config, step, restored))
    return members


# ------------------------------------------------------------------------------------ inference


def check_batch_size(batch_size: int, mesh: jax.sharding.Mesh) -> None:
    n = mesh.devices.size
    if batch_size <= 0 or batch_size % n:
        raise ValueError(
            f"evaluation batch size {batch_size} must be a positive multiple of the {n} devices; "
            f"use e.g. --batch_size={max(n, batch_size // n * n)}"
        )


@functools.lru_cache(maxsize=32)
def make_logits_fn(model: nn.Module, tta_mode: str = "none", crop_size: int = tta.DEFAULT_CROP_SIZE):
    """jit(variables, uint8 images [B, 48, 48, 1]) -> float32 logits [B, K], averaged over TTA views.

    Cached: Linen modules compare by their fields, so evaluating the same architecture again (another
    seed, split or checkpoint) reuses the compiled function; the variables are an argument."""
    tta.check_mode(tta_mode)

    def logits_fn(variables, images):
        def apply(x):
            return model.apply(variables, x, train=False)[0]

        return tta.apply_with_tta(apply, preprocess(images), tta_mode, crop_size)

    return xla_cpu.jit(logits_fn)


def _to_host(x: jax.Array) -> np.ndarray:
    if x.is_fully_addressable:
        return np.asarray(x)
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def predict_logits(
    model: nn.Module,
    variables: dict,
    data: ArraySplit | np.ndarray,
    *,
    batch_size: int,
    mesh: jax.sharding.Mesh | None = None,
    tta_mode: str = "none",
    crop_size: int = tta.DEFAULT_CROP_SIZE,
) -> np.ndarray:
    """float32 logits [N, K] for every example of `data` (an ArraySplit or uint8 images [N, 48, 48]),
    in order, each exactly once: batches are `input_pipeline.eval_batches` (the last one padded) and
    padded rows are dropped. `batch_size` is global (all devices and processes)."""
    if isinstance(data, np.ndarray):
        data = ArraySplit(images=data, labels=np.zeros(len(data), np.int32))
    n = len(data)
    if n == 0:
        raise ValueError("nothing to evaluate: the split has no examples")
    mesh = parallel.make_mesh() if mesh is None else mesh
    check_batch_size(batch_size, mesh)
    variables = parallel.replicate(variables, mesh)
    logits_fn = make_logits_fn(model, tta_mode, crop_size)
    outputs = []
    for local in input_pipeline.eval_batches(
        data,
        global_batch_size=batch_size,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
    ):
        images = parallel.to_global_batch({"image": local["image"]}, mesh)["image"]
        outputs.append(logits_fn(variables, images))  # dispatched asynchronously; fetched below
    logits = np.concatenate([_to_host(o) for o in outputs])
    # eval_batches pads only after the last example, so the first n rows are the examples in order.
    assert logits.shape[0] == input_pipeline.num_eval_batches(n, batch_size) * batch_size
    return logits[:n].astype(np.float32)


def ensemble_probabilities(logits_per_model: Sequence[np.ndarray]) -> np.ndarray:
    """Mean over models of each model's softmax (float64 [N, K]): probability averaging, so a model
    with large logits does not outvote the others as it would if logits were averaged."""
    if not logits_per_model:
        raise ValueError("no models to ensemble")
    return np.mean([metrics.softmax(logits) for logits in logits_per_model], axis=0)


def member_probabilities(
    members: Sequence[Member],
    data: ArraySplit | np.ndarray,
    *,
    batch_size: int,
    tta_mode: str = "none",
    crop_size: int = tta.DEFAULT_CROP_SIZE,
    mesh: jax.sharding.Mesh | None = None,
) -> np.ndarray:
    """The (ensemble's) class probabilities float64 [N, K] for `data`."""
    logits = [
        predict_logits(
            m.model,
            m.variables,
            data,
            batch_size=batch_size,
            mesh=mesh,
            tta_mode=tta_mode,
            crop_size=crop_size,
        )
        for m in members
    ]
    return ensemble_probabilities(logits)


def evaluate_split(
    members: Sequence[Member],
    split: ArraySplit,
    *,
    batch_size: int,
    tta_mode: str = "none",
    crop_size: int = tta.DEFAULT_CROP_SIZE,
    mesh: jax.sharding.Mesh | None = None,
    num_bins: int = metrics.ECE_BINS,
) -> dict:
    """The classification report (see `metrics.classification_report`) of `members` on `split`, with
    what was evaluated: tta, crop_size, num_models, models, checkpoint_step."""
    probs = member_probabilities(
        members, split, batch_size=batch_size, tta_mode=tta_mode, crop_size=crop_size, mesh=mesh
    )
    report = metrics.classification_report(probs, split.labels, num_bins=num_bins)
    steps = [m.step for m in members]
    return {
        "tta": tta_mode,
        "crop_size": crop_size if tta_mode == "tencrop" else None,
        "num_models": len(members),
        "models": [m.describe() for m in members],
        "checkpoint_step": steps[0] if len(steps) == 1 else steps,
        **report,
    }


# ------------------------------------------------------------------------------------------ data


def resolve_data_config(members: Sequence[Member], data_path: str | None) -> ConfigDict:
    """The data config to evaluate on: the first run's, with `data_path` (any FER2013 CSV or image
    folder) replacing its source. Without `data_path`, the members must agree on their data."""
    base = members[0].config.data.to_dict()
    if data_path is not None:
        base["path"] = data_path
    else:
        ident = {k: base.get(k) for k in _DATA_IDENTITY_KEYS}
        for m in members[1:]:
            other = {k: m.config.data.get(k) for k in _DATA_IDENTITY_KEYS}
            if other != ident:
                raise ValueError(
                    f"the ensemble's runs were trained on different data ({members[0].workdir}: "
                    f"{ident}; {m.workdir}: {other}); pass --data to say which source to evaluate on"
                )
    if base["path"] is not None:  # relative paths are relative to the working directory, as in training
        base["path"] = os.path.abspath(os.path.expanduser(base["path"]))
    return ConfigDict(base)


def load_eval_split(
    members: Sequence[Member], split: str, data_path: str | None = None, *, announce: Callable = print
) -> tuple[ArraySplit, ConfigDict]:
    """Reads only `split` from `data_path` (or the run's own data). A source that holds only that
    split is fine: the readers parse nothing else."""
    if split not in SPLITS:
        raise ValueError(f"Unknown split {split!r}; valid choices: {', '.join(SPLITS)}")
    data_config = resolve_data_config(members, data_path)
    cache_dir = data_config.cache_dir or default_cache_dir(members[0].workdir)
    try:
        loaded = load_splits(data_config, (split,), cache_dir=cache_dir, announce=announce)
    except FileNotFoundError as e:
        raise FileNotFoundError(f"{e} (Evaluating elsewhere? Pass the data with --data PATH.)") from e
    return loaded[split], data_config


# ---------------------------------------------------------------------------------------- reports


def default_report_path(
    workdirs: Sequence[str], split: str, checkpoint: str | int, tta_mode: str, weights: str = "raw"
) -> str:
    name = f"{split}-{checkpoint if not isinstance(checkpoint, int) else f'step{checkpoint}'}"
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
    models = report["models"]
    if len(models) == 1:
        who = f"{models[0]['model_name']}/{models[0]['variant']} (step {models[0]['checkpoint_step']})"
    else:
        who = f"ensemble of {len(models)}: " + ", ".join(
            f"{m['model_name']}/{m['variant']}@{m['checkpoint_step']}" for m in models
        )
    tta_text = report["tta"] + (f" (crop {report['crop_size']})" if report["crop_size"] else "")
    lines = [
        f"Evaluated {who} on split '{report['split']}' of {report['data_path'] or 'synthetic faces'}: "
        f"{report['num_examples']} examples, TTA {tta_text}",
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
        from fer_flax import plots  # matplotlib only when figures are asked for

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
    tmp = out_path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(report, f, indent=2)
    os.replace(tmp, out_path)  # a reader (the leaderboard) never sees half a report
    return files


def evaluate_workdirs(
    workdirs: Sequence[str],
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
) -> dict:
    """The whole command as a library call: restore, read the split, evaluate, write the report.
    `weights`: "raw" or "ema" (the EMA weights of checkpoint 'latest' or a step; see
    `restore_for_inference`).

    Returns the report (as written to JSON, with a `files` entry)."""
    tta.check_mode(tta_mode)
    which = parse_checkpoint(checkpoint)
    mesh = parallel.make_mesh()
    members = load_members(workdirs, which, mesh=mesh, weights=weights)
    split_data, data_config = load_eval_split(members, split, data_path, announce=announce)
    batch_size = batch_size or members[0].config.eval_batch_size
    report = evaluate_split(
        members, split_data, batch_size=batch_size, tta_mode=tta_mode, crop_size=crop_size, mesh=mesh
    )
    report = {
        "split": split,
        "data_path": data_config.path,
        "data_source": "fer2013" if data_config.path else f"synthetic (seed {data_config.synthetic_seed})",
        "checkpoint": which,
        # Which weights were evaluated, "raw" or "ema" (per model for an ensemble).
        "weights": members[0].weights if len(members) == 1 else [m.weights for m in members],
        "workdirs": [m.workdir for m in members],
        **report,
    }
    out = out or default_report_path(workdirs, split, which, tta_mode, weights)
    if jax.process_index() == 0:
        report["files"] = write_report(report, out, figures=figures)
    return report


# ------------------------------------------------------------------------------------ command line


def define_flags() -> None:
    """Command-line flags, defined only when run as a program: the library is importable next to
    other programs' flags (fer_flax.main also has --workdir)."""
    flags.DEFINE_multi_string(
        "workdir", None, "Training workdir; repeat the flag for an ensemble (probabilities averaged)."
    )
    flags.DEFINE_string("checkpoint", "best", "'best' (by val accuracy), 'latest' or a step number.")
    flags.DEFINE_enum(
        "weights",
        "raw",
        list(WEIGHTS),
        "With --checkpoint latest|STEP: the raw weights or their EMA (runs with config.ema.decay > 0). "
        "best/ holds the weights selected in training (config.ema.select); the report names them.",
    )
    flags.DEFINE_string(
        "data", None, "FER2013 CSV (.csv/.csv.gz), image folder or .tar.gz; default: the run's own data."
    )
    flags.DEFINE_enum("split", "val", list(SPLITS), "Split to evaluate (test only on purpose).")
    flags.DEFINE_enum("tta", "none", list(tta.TTA_MODES), "Test-time augmentation.")
    flags.DEFINE_integer("crop_size", tta.DEFAULT_CROP_SIZE, "Ten-crop crop side (of 48).")
    flags.DEFINE_string("out", None, "Report path (.json); default <workdir>/eval/<split>-<ckpt>-<tta>.json")
    flags.DEFINE_integer("batch_size", None, "Global batch size; default: the run's eval_batch_size.")
    flags.mark_flag_as_required("workdir")


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.ERROR)  # Orbax warns about read-only checkpoint folders
    f = flags.FLAGS
    try:
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
        )
    except (FileNotFoundError, ValueError) as e:  # includes FERDataError: say what and where, no trace
        sys.exit(f"error: {e}")
    if jax.process_index() == 0:
        print(format_report(report))
        print("Wrote " + ", ".join(report["files"].values()))


if __name__ == "__main__":
    define_flags()
    app.run(main)
