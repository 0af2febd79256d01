"""Train one config over several seeds and report every metric as mean ± std with a 95% CI.

Command:
  python -m fer_flax.multiseed --config configs/simple_cnn.py --seeds 0,1,2 --workdir workdirs/cnn_seeds \
      [--config.optim.lr=0.05 ...] [--eval_splits val,test] [--checkpoint best] [--tta none]

Seed s trains in `<workdir>/seed_<s>` with `config.seed = s`: model initialisation, data order,
augmentation and dropout change; the data itself (the file, or the synthetic faces'
`data.synthetic_seed`) stays fixed, so the spread measures training randomness on one data set.
Rerunning the command resumes unfinished seeds and re-evaluates finished ones.

After training, each seed's best checkpoint (selected on val) is evaluated on every split of
`--eval_splits` with `fer_flax.inference.evaluate` (reports in `<workdir>/seed_<s>/eval/`, where the
leaderboard finds them). The default is `val` only; ask for `val,test` when you are ready to report.
The summary goes to `<workdir>/multiseed.json` and `<workdir>/multiseed.md`.

Statistics over n seeds: the mean, the sample standard deviation (ddof=1) and the 95% confidence
interval of the mean, mean ± t(0.975, n-1) · std / √n (Student's t, since n is small), clipped to the
metric's range (a fraction's to [0, 1], NLL's to [0, ∞)): a small spread over few seeds would otherwise
give an ECE interval below 0. With one seed the std and CI are undefined and reported as null.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence

import numpy as np
from absl import flags
from ml_collections import ConfigDict, config_flags

from fer_flax import cli
from fer_flax.base import output_paths
from fer_flax.config import schema as config_schema
from fer_flax.core import tta
from fer_flax.data.splits import SPLITS
from fer_flax.inference import evaluate
from fer_flax.research import leaderboard
from fer_flax.run import trained
from fer_flax.run import workdir as workdir_lib
from fer_flax.training import loop as train

# Student's t 0.975 quantiles for 1..30 degrees of freedom (scipy.stats.t.ppf(0.975, df)).
_T975 = (
    12.706205, 4.302653, 3.182446, 2.776445, 2.570582, 2.446912, 2.364624, 2.306004, 2.262157,
    2.228139, 2.200985, 2.178813, 2.160369, 2.144787, 2.131450, 2.119905, 2.109816, 2.100922,
    2.093024, 2.085963, 2.079614, 2.073873, 2.068658, 2.063899, 2.059539, 2.055529, 2.051831,
    2.048407, 2.045230, 2.042272,
)  # fmt: skip
_Z975 = 1.959963984540054


def t_quantile_975(df: int) -> float:
    """Student's t 0.975 quantile: tabulated up to 30 degrees of freedom, beyond that the
    Cornish-Fisher expansion (Abramowitz & Stegun 26.7.5), within 3e-8 of the exact value there."""
    if df < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {df}")
    if df <= len(_T975):
        return _T975[df - 1]
    z = _Z975
    g1 = (z**3 + z) / 4
    g2 = (5 * z**5 + 16 * z**3 + 3 * z) / 96
    g3 = (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / 384
    g4 = (79 * z**9 + 776 * z**7 + 1482 * z**5 - 1920 * z**3 - 945 * z) / 92160
    return z + g1 / df + g2 / df**2 + g3 / df**3 + g4 / df**4


def mean_std_ci(values: Sequence[float], bounds: tuple[float, float] = (-math.inf, math.inf)) -> dict:
    """{n, mean, std (ddof=1), ci95_low, ci95_high, values}; std and CI are None for n = 1. The CI is
    clipped to `bounds`, the range the metric can take."""
    x = np.asarray(values, dtype=np.float64)
    if x.size == 0:
        raise ValueError("no values to summarise")
    out = {"n": int(x.size), "mean": float(x.mean()), "std": None, "ci95_low": None, "ci95_high": None}
    if x.size > 1:
        std = float(x.std(ddof=1))
        half = t_quantile_975(x.size - 1) * std / math.sqrt(x.size)
        low, high = bounds
        out.update(
            std=std,
            ci95_low=float(min(max(out["mean"] - half, low), high)),
            ci95_high=float(min(max(out["mean"] + half, low), high)),
        )
    out["values"] = x.tolist()
    return out


def flatten_report(report: dict) -> dict[str, float]:
    """The scalar metrics of an evaluation report: headline numbers and per-class P/R/F1."""
    flat = {k: float(report[k]) for k in ("accuracy", "balanced_accuracy", "macro_f1", "nll", "ece")}
    for name, scores in report["per_class"].items():
        for k in ("precision", "recall", "f1"):
            flat[f"{k}/{name}"] = float(scores[k])
    return flat


def metric_bounds(key: str) -> tuple[float, float]:
    """The range metric `key` can take: fractions (accuracies, F1, precision, recall, ECE) [0, 1];
    NLL, times and rates [0, ∞)."""
    name = key.rsplit("/", 1)[0] if "/" in key else key
    fractions = ("accuracy", "balanced_accuracy", "macro_f1", "ece", "precision", "recall", "f1")
    if name in fractions or name.endswith(("_accuracy", "_f1")):
        return (0.0, 1.0)
    return (0.0, math.inf)


def aggregate(per_seed: Sequence[dict[str, float | None]]) -> dict[str, dict]:
    """mean_std_ci of every metric over seeds, in the order the first seed lists them, each CI clipped
    to the metric's range (metrics a seed lacks, e.g. an unfinished evaluation, are left out of that
    metric's statistics)."""
    out = {}
    for key in per_seed[0]:
        values = [m[key] for m in per_seed if m.get(key) is not None]
        if values:
            out[key] = mean_std_ci(values, metric_bounds(key))
    return out


def seed_workdir(root: str, seed: int) -> str:
    return os.path.join(os.path.abspath(root), f"seed_{seed}")


def parse_seeds(text: str) -> list[int]:
    """'0,1,2' or a range '0-4' (inclusive)."""
    text = text.strip()
    try:
        if "-" in text and "," not in text:
            lo, hi = (int(t) for t in text.split("-"))
            seeds = list(range(lo, hi + 1))
        else:
            seeds = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise ValueError(f"--seeds must look like '0,1,2' or '0-4', got {text!r}") from None
    if not seeds or len(set(seeds)) != len(seeds) or min(seeds) < 0:
        raise ValueError(f"--seeds needs distinct non-negative integers, got {text!r}")
    return seeds


def run(
    config: ConfigDict,
    seeds: Sequence[int],
    root: str,
    *,
    eval_splits: Sequence[str] = ("val",),
    checkpoint: str | int = "best",
    tta_mode: str = "none",
    announce: Callable = print,
) -> dict:
    """Trains (or resumes) every seed, evaluates the chosen checkpoints, aggregates, writes
    `<root>/multiseed.json` and `<root>/multiseed.md`, and returns the aggregate."""
    if not seeds:
        raise ValueError("no seeds given")
    # Checked before hours of training, not after.
    for split in eval_splits:
        config_schema.check_choice("--eval_splits", split, SPLITS)
    checkpoint = trained.parse_checkpoint(checkpoint)
    config_schema.check_choice("--tta", tta_mode, tta.TTA_MODES)
    config_schema.validate(config)
    # Made by the first seed's training start (which takes it back if that start fails), so that a
    # bad data row leaves no empty root behind.
    output_paths.check_folder("--workdir", root)
    training, evaluations = [], {split: [] for split in eval_splits}
    for seed in seeds:
        cfg = config.copy_and_resolve_references()
        cfg.seed = seed
        workdir = seed_workdir(root, seed)
        announce(f"=== seed {seed}: {workdir}")
        train.train_and_evaluate(cfg, workdir)
        record = leaderboard.run_record(workdir)
        training.append(
            {
                "best_val_accuracy": record["best_val_accuracy"],
                "val_macro_f1": record["val_macro_f1"],
                "train_seconds": record["train_seconds"],
                "images_per_sec": record["images_per_sec"],
            }
        )
        for split in eval_splits:
            report = evaluate.evaluate_workdirs(
                [workdir], checkpoint=checkpoint, split=split, tta_mode=tta_mode, announce=announce
            )
            evaluations[split].append(flatten_report(report))
    result = {
        "config": config.to_dict(),
        "seeds": list(seeds),
        "workdirs": [seed_workdir(root, s) for s in seeds],
        "checkpoint": checkpoint,
        "tta": tta_mode,
        "training": aggregate(training),
        "splits": {split: aggregate(evaluations[split]) for split in eval_splits},
    }
    workdir_lib.write_json(os.path.join(root, "multiseed.json"), result)
    workdir_lib.write_text(os.path.join(root, "multiseed.md"), markdown(result))
    return result


def _cell(stats: dict, fmt: str = ".4f") -> tuple[str, str]:
    if stats["std"] is None:
        return format(stats["mean"], fmt), "—"
    return (
        f"{stats['mean']:{fmt}} ± {stats['std']:{fmt}}",
        f"[{stats['ci95_low']:{fmt}}, {stats['ci95_high']:{fmt}}]",
    )


def markdown(result: dict) -> str:
    """One table per split (and one for training figures): metric, mean ± std, 95% CI, per seed."""
    seeds = result["seeds"]
    head = "| metric | mean ± std | 95% CI | " + " | ".join(f"seed {s}" for s in seeds) + " |"
    rule = "|" + "---|" * (3 + len(seeds))
    sections = [("training", result["training"])] + [
        (f"{split} ({result['checkpoint']} checkpoint, TTA {result['tta']})", stats)
        for split, stats in result["splits"].items()
    ]
    lines = [f"# {len(seeds)} seeds: {', '.join(map(str, seeds))}", ""]
    for title, table in sections:
        lines += [f"## {title}", "", head, rule]
        for metric, stats in table.items():
            fmt = ".1f" if metric in ("train_seconds", "images_per_sec") else ".4f"
            mean_std, ci = _cell(stats, fmt)
            per_seed = " | ".join(format(v, fmt) for v in stats["values"])
            lines.append(f"| {metric} | {mean_std} | {ci} | {per_seed} |")
        lines.append("")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------ command line


# The start-up of fer_flax.main (the CPU device split of --config included): it trains. Absl logging
# at ERROR: Orbax warns about every read-only checkpoint folder the evaluations open.
COMMAND = cli.Command(cpu_devices_from_config=True, log_level="error")


def define_flags() -> None:
    config_flags.DEFINE_config_file("config", None, "Experiment config file.", lock_config=True)
    flags.DEFINE_string("workdir", None, "Root folder; seed s trains in <workdir>/seed_<s>.")
    flags.DEFINE_string("seeds", "0,1,2", "Seeds: '0,1,2' or '0-4'.")
    flags.DEFINE_list("eval_splits", ["val"], "Splits to evaluate each seed's checkpoint on.")
    flags.DEFINE_string("checkpoint", "best", "'best' (by val accuracy), 'latest' or a step number.")
    flags.DEFINE_enum("tta", "none", list(tta.TTA_MODES), "Test-time augmentation.")
    flags.mark_flags_as_required(["config", "workdir"])


def main(argv: list[str]) -> None:
    del argv  # the program name only: the preamble refuses positional arguments
    f = flags.FLAGS
    # Expected errors (a bad seed list, config value or data row, a busy workdir): one line, via cli.
    result = run(
        f.config,
        parse_seeds(f.seeds),
        f.workdir,
        eval_splits=f.eval_splits,
        checkpoint=f.checkpoint,
        tta_mode=f.tta,
    )
    print(markdown(result))
    print(f"Wrote {os.path.join(f.workdir, 'multiseed.json')} and multiseed.md")
