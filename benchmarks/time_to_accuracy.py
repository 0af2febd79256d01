"""Time to accuracy on one GPU: the strongest config of each family, trained on real FER2013 in bf16
with the device pipeline and many steps per call, each within its share of one time budget.

  python -m benchmarks.time_to_accuracy --data .gpu_data/fer2013_images.tar.gz
      [--families cnn,beefy,resnet,googlenet,vit] [--total_seconds 470] [--steps_per_call 25]
      [--epochs beefy=40,...] [--workdir_root /tmp/tta] [--cache_dir D] [--json out.json] [--dry_run]

For each family, in one process (JAX, the data cache and the imports are paid once): its config with
`data.pipeline=device`, `dtype=bfloat16`, `steps_per_call` (the log cadence equals it, so every log
window is one call), the epochs of the table below and evaluations on PublicTest (the `val` split)
every `--eval_every_epochs`. A timer sends the process SIGTERM when the family's share of what is
left of `--total_seconds` is spent (time a family leaves unused goes to the ones after it); the loop
then stops at the end of the call under way (after a checkpoint), and the family is reported as cut
at the time limit. Printed per family: training images/s (median of the logged windows after the
first, which holds the compilation), its model FLOP utilisation (the convolution and matrix FLOPs of
one train step over the device's dense bf16 peak, `benchmarks/device_peaks.py`), and PublicTest
accuracy (the weights best/ would keep: raw or EMA) against wall time since the family started (compilation,
evaluations and checkpoints included; a family cut by its time limit gets a last point, its final
checkpoint scored after the cut); then one summary table against each family's target (FAMILIES below).

`--dry_run` runs the same path on a CPU in minutes: each family's 'smoke' config for a few calls of 2
steps on the given data (synthetic faces when the path does not exist), with every figure printed.

The epochs are first estimates for an H200 from each model's FLOPs (README's model table) at a
modest utilisation; a first GPU run should adjust them so that no family is cut by its time limit.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import importlib
import json
import os
import shutil
import signal
import statistics
import tempfile
import threading
import time
from typing import Any

import jax
import numpy as np

from benchmarks import device_peaks
from fer_flax import runtime
from fer_flax.core import ema as ema_lib
from fer_flax.core import model as model_lib
from fer_flax.core import optim, parallel
from fer_flax.core import state as model_state
from fer_flax.data import load_splits
from fer_flax.inference import engine as inference
from fer_flax.run import tracking, trained
from fer_flax.run.interrupts import TrainingInterrupted
from fer_flax.training import loop as train
from fer_flax.training import steps


@dataclasses.dataclass(frozen=True)
class Family:
    config: str  # module under configs/
    arg: str  # its get_config argument
    epochs: float
    share: float  # of --total_seconds
    target: float | None  # the PublicTest accuracy the family should reach


# The strongest config of each family: the CPU recipe's CNN (the best-measured CNN config), the two
# residual CNNs at their recipes, the faithful GoogLeNet with its auxiliary heads, and ViT-Small with
# 6x6 patches (the ViT that fits this budget at a useful number of epochs).
FAMILIES: dict[str, Family] = {
    "cnn": Family("cpu_recipe", "", 30.0, 0.10, None),
    "beefy": Family("beefy", "", 40.0, 0.22, 0.72),
    "resnet": Family("resnet18", "", 40.0, 0.22, 0.72),
    "googlenet": Family("googlenet", "", 30.0, 0.20, 0.71),
    "vit": Family("vit_small", "", 50.0, 0.26, 0.68),
}


def family_config(name: str, args: argparse.Namespace, epochs: dict[str, float]):
    family = FAMILIES[name]
    module = importlib.import_module(f"configs.{family.config}")
    config = module.get_config("smoke" if args.dry_run else family.arg)
    k = 2 if args.dry_run else args.steps_per_call
    data_path = args.data if os.path.exists(args.data) else None
    config.update_from_flattened_dict(
        {
            "data.path": data_path,
            "data.cache_dir": args.cache_dir,
            "data.pipeline": "device",
            "dtype": args.dtype,
            "steps_per_call": k,
            "log_every_steps": k,
            "num_epochs": epochs.get(name, family.epochs),
            "eval_every_epochs": args.eval_every_epochs,
            "progress_bar": False,
            "wandb.mode": "disabled",
        }
    )
    if args.dry_run:  # a few calls (unless --epochs says otherwise), one evaluation at the end
        train_size = 28709 if data_path else config.data.synthetic_train
        config.num_epochs = epochs.get(name, 3 * k * config.batch_size / train_size)
        config.eval_every_epochs = 1.0
    return config


def train_flops_per_image(config) -> float:
    """The matrix FLOPs of one train step of `config` (`device_peaks.step_flops`), per training image."""
    mesh = parallel.make_mesh()
    schedule = optim.create_learning_rate_schedule(config.optim, steps_per_epoch=100, total_steps=1000)
    state = model_state.create_train_state(
        model_lib.create_model(config),
        optim.create_optimizer(config.optim, schedule),
        jax.random.key(0),
        mesh,
        ema=ema_lib.ema_enabled(config),
    )
    local = config.batch_size // jax.process_count()
    batch = parallel.to_global_batch(
        {"image": np.zeros((local, 48, 48, 1), np.uint8), "label": np.zeros(local, np.int32)}, mesh
    )
    step = jax.jit(functools.partial(steps.train_step, config=config, schedule=schedule))
    return device_peaks.step_flops(step.trace(state, batch, jax.random.key(1))) / config.batch_size


def _stop_after(seconds: float, done: threading.Event) -> None:
    """SIGTERM to this process after `seconds`, then every 5 s until `done`: a signal that arrives
    before the loop listens (data, compilation) is ignored, the next one stops it."""
    if done.wait(seconds):
        return
    while not done.is_set():
        os.kill(os.getpid(), signal.SIGTERM)
        done.wait(5.0)


def accuracy_at_cut(workdir: str, config, val) -> dict[str, float]:
    """PublicTest accuracy of the checkpoint a time-limited run stopped at: raw weights and, with an
    EMA, the better of the two (what best/ would keep with ema.select='best'), with the run's TTA."""

    def accuracy(weights: str) -> float:
        restored = trained.restore(workdir, "latest", weights=weights)
        logits = inference.predict_logits(
            restored.model,
            restored.variables,
            val,
            batch_size=config.eval_batch_size,
            tta_mode=config.eval_tta,
            crop_size=config.augment.crop_size,
        )
        return inference.split_metrics(logits, val.labels)["accuracy"]

    raw = accuracy("raw")
    return {"raw_accuracy": raw, "accuracy": max(raw, accuracy("ema")) if config.ema.decay > 0 else raw}


def run_family(name: str, config, seconds: float, workdir: str, val) -> dict[str, Any]:
    """Trains `config` in a fresh `workdir` for at most about `seconds`: then SIGTERM, and the loop
    stops after its current call (its checkpoint is then scored on `val` too)."""
    shutil.rmtree(workdir, ignore_errors=True)
    start, done = time.time(), threading.Event()
    threading.Thread(target=_stop_after, args=(seconds, done), daemon=True).start()
    outcome: dict[str, Any] = {"family": name, "seconds_limit": seconds}
    try:
        summary = train.train_and_evaluate(config, workdir)
        outcome.update(finished=True, final_step=summary["final_step"])
    except TrainingInterrupted as stopped:
        outcome.update(finished=False, final_step=stopped.step)
    finally:
        done.set()
    outcome["wall_s"] = time.time() - start
    records = tracking.read_metrics(os.path.join(workdir, "metrics.jsonl"))
    if not outcome["finished"]:
        cut = accuracy_at_cut(workdir, config, val)
        records.append(
            {"step": outcome["final_step"], "time": time.time(), "val/accuracy": cut["raw_accuracy"]}
        )
        records[-1]["selected/accuracy"] = cut["accuracy"]
    speeds = [r["train/images_per_sec"] for r in records if "train/images_per_sec" in r]
    outcome["images_per_s"] = statistics.median(speeds[1:] or speeds) if speeds else None
    outcome["speed_includes_compilation"] = len(speeds) == 1
    outcome["curve"] = [
        {
            "step": r["step"],
            "wall_s": r["time"] - start,
            "accuracy": r.get("selected/accuracy", r["val/accuracy"]),
            "raw_accuracy": r["val/accuracy"],
        }
        for r in records
        if "val/accuracy" in r
    ]
    return outcome


def report(name: str, config, outcome: dict[str, Any], flops: float, peak: float | None) -> None:
    rate = outcome["images_per_s"]
    outcome["train_gflop_per_image"] = flops / 1e9
    outcome["mfu"] = rate * flops / (peak * 1e12 * jax.device_count()) if rate and peak else None
    how = "finished" if outcome["finished"] else "cut at the time limit"
    mfu = f"{outcome['mfu']:.1%}" if outcome["mfu"] is not None else "- (no peak known for this device)"
    print(
        f"\n== {name}: configs/{FAMILIES[name].config}.py, {config.model_name}/{config.model.variant}, "
        f"{config.dtype}, batch {config.batch_size}, steps_per_call {config.steps_per_call}: {how} at "
        f"step {outcome['final_step']} after {outcome['wall_s']:.0f} s"
    )
    print(
        f"   train images/s {rate or 0:,.0f}"
        + (" (one log window: compilation included)" if outcome["speed_includes_compilation"] else "")
        + f"; {outcome['train_gflop_per_image']:.2f} GFLOP per training image; MFU {mfu}"
    )
    print(f"   {'step':>6} {'wall s':>7} {'PublicTest':>10} {'raw':>7}")
    for point in outcome["curve"]:
        step, wall, accuracy, raw = (point[k] for k in ("step", "wall_s", "accuracy", "raw_accuracy"))
        print(f"   {step:>6} {wall:>7.0f} {accuracy:>10.4f} {raw:>7.4f}")


def summary_table(outcomes: list[dict[str, Any]]) -> None:
    print(f"\n{'family':<10} {'images/s':>9} {'MFU':>6} {'best':>7} {'at s':>6} {'target':>7}  outcome")
    for o in outcomes:
        best = max(o["curve"], key=lambda p: p["accuracy"]) if o["curve"] else None
        target = FAMILIES[o["family"]].target
        verdict = (
            "-" if target is None or best is None else ("met" if best["accuracy"] >= target else "missed")
        )
        print(
            f"{o['family']:<10} {o['images_per_s'] or 0:>9,.0f} "
            + (f"{o['mfu']:>6.1%}" if o["mfu"] is not None else f"{'-':>6}")
            + (f" {best['accuracy']:>7.4f} {best['wall_s']:>6.0f}" if best else f" {'-':>7} {'-':>6}")
            + (f" {target:>7.2f}" if target else f" {'-':>7}")
            + f"  {verdict}; {'finished' if o['finished'] else 'cut at the time limit'}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", default=".gpu_data/fer2013_images.tar.gz")
    parser.add_argument("--families", default=",".join(FAMILIES))
    parser.add_argument("--total_seconds", type=float, default=None, help="default 470 (900 with --dry_run)")
    parser.add_argument("--steps_per_call", type=int, default=25)
    parser.add_argument("--eval_every_epochs", type=float, default=5.0)
    parser.add_argument("--epochs", default="", help="family=epochs,... (else the table's)")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--workdir_root", default=os.path.join(tempfile.gettempdir(), "fer_flax_tta"))
    parser.add_argument("--cache_dir", default=os.path.join(tempfile.gettempdir(), "fer_flax_cache"))
    parser.add_argument("--json", default=None)
    parser.add_argument("--dry_run", action="store_true", help="smoke configs, a few steps (a CPU check)")
    args = parser.parse_args()
    runtime.start()
    # A SIGTERM from a family's timer that arrives just after its run returned must not end the suite.
    signal.signal(
        signal.SIGTERM, lambda *_: print("(a time-limit signal outside the training loop: ignored)")
    )
    names = [n for n in args.families.split(",") if n]
    unknown = sorted(set(names) - set(FAMILIES))
    if unknown:
        parser.error(f"unknown families {unknown}; known: {', '.join(FAMILIES)}")
    epochs = {k: float(v) for k, v in (kv.split("=") for kv in args.epochs.split(",") if kv)}
    total = args.total_seconds or (900.0 if args.dry_run else 470.0)
    peak = device_peaks.peak_tflops(jax.devices()[0].device_kind, args.dtype)
    print(
        f"jax {jax.__version__}, {jax.device_count()} x {jax.devices()[0].device_kind}; data {args.data}"
        + (" (absent: synthetic faces)" if not os.path.exists(args.data) else "")
        + (" -- DRY RUN" if args.dry_run else "")
    )
    # The data once before any timer starts: the first family would otherwise pay the parse.
    data = load_splits(family_config(names[0], args, epochs).data, ("train", "val"), cache_dir=args.cache_dir)
    outcomes, suite_start = [], time.time()
    for i, name in enumerate(names):
        config = family_config(name, args, epochs)
        # Its share of what is left: time a family did not use goes to the ones after it.
        left = total - (time.time() - suite_start)
        seconds = max(left, 0.0) * FAMILIES[name].share / sum(FAMILIES[n].share for n in names[i:])
        # Outside the budget: tracing the train step to count its FLOPs is measurement, not training.
        counted = time.time()
        flops = train_flops_per_image(config)
        suite_start += time.time() - counted
        workdir = os.path.join(args.workdir_root, name)
        outcome = run_family(name, config, seconds, workdir, data["val"])
        report(name, config, outcome, flops, peak)
        outcomes.append(outcome)
        if args.json:
            with open(args.json, "w") as f:
                json.dump(
                    {"devices": str(jax.devices()), "dry_run": args.dry_run, "families": outcomes},
                    f,
                    indent=2,
                )
    summary_table(outcomes)


if __name__ == "__main__":
    main()
