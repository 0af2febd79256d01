"""The five model families trained to their full GPU schedules and compared, in one run of at most 9
minutes on one GPU: `bash benchmarks/gpu_comparison.sh run` (which calls this module) hands back the
comparison report, a summary and every family's best weights.

  python -m benchmarks.model_comparison --data .gpu_data/fer2013_images.tar.gz --out OUT
      [--families cnn,resnet,beefy,googlenet,vit] [--total_seconds 525] [--epochs resnet=80,...]
      [--compile_workers 2] [--caps resnet=90,...] [--max_out_mib 64] [--workdir_root W]
      [--compile_cache D] [--dry_run [--dry_run_steps 2] [--dry_run_eval_every N]]

Phases, each with a progress line:
1. start-up and the data, parsed once (the runs read it back from the cache this writes);
2. every family's `:gpu` config (`FAMILIES`) compiled before its clock starts
   (`benchmarks.comparison_warmup`): the training program and the evaluation, two families at a time,
   the longest compilation (GoogLeNet's) first, each timed once compiled to predict its training time;
3. the families trained one after another (`fer_flax.training.loop.train_and_evaluate`), each within
   a time cap: its share of the time left for training, in proportion to its predicted seconds (time
   a family leaves unused goes to the ones after it). A family that reaches its cap is stopped after
   the call under way (SIGTERM, as a scheduler would) and keeps its best checkpoint; one whose warm-up
   failed, or whose share is under MIN_TRAIN_S, is skipped, and the summary says why;
4. the comparison report of the trained runs (`fer_flax.research.compare`: report.html, report.md,
   report.json), the ensemble of them (`fer_flax.inference.evaluate`'s ensemble path) and the pack of
   their best weights (`benchmarks.comparison_outputs`: weights.npz, bfloat16 or int8 within the size
   limit, each family re-scored from the pack).

Per family the summary (summary.json, summary.md) gives PublicTest accuracy (the best checkpoint, flip
TTA), the training seconds to 0.70 and 0.73 (the logged training windows up to the first evaluation at
or above it, less the compilation left in the first window: the first window's seconds beyond what the
median window's speed gives), images/s (median window), compile and wall seconds, and what JAX still
compiled during its training (the persistent cache should have served the programs).

The budget of one run (the constants below; estimates, as no such run has been measured):
start-up, imports and the JPEG data about 25 s; compilation about 130 s (GoogLeNet's first call
took about 110 s on one H200; the other four compile beside it); training about 310 s (the `:gpu`
configs' docstrings give each family's estimate: cnn 15, ResNet-18 82, BeefyModel 71, GoogLeNet 66,
ViT 82); the report, the ensemble and the pack about 50 s; a margin of 15 s.

`--dry_run` runs the same path on a CPU: each family's `:gpu` config with a model about as small as
cnn/tiny (`Family.dry_run_model`), in float32, for `--dry_run_steps` steps of batch 8 (one a call),
on the given data (synthetic faces without `--data`).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import os
import shutil
import signal
import sys
import threading
import time
from typing import Any

START = time.monotonic()  # at import: the budget counts the imports too

import jax  # noqa: E402
from absl import logging  # noqa: E402

from benchmarks import comparison_outputs as outputs  # noqa: E402
from benchmarks import comparison_report  # noqa: E402
from benchmarks import comparison_warmup as warmup  # noqa: E402
from fer_flax import runtime  # noqa: E402
from fer_flax.core import parallel  # noqa: E402
from fer_flax.data import load_splits  # noqa: E402
from fer_flax.run import tracking  # noqa: E402
from fer_flax.run.interrupts import TrainingInterrupted  # noqa: E402
from fer_flax.training import loop as train  # noqa: E402
from fer_flax.training.step_plan import step_plan  # noqa: E402


@dataclasses.dataclass(frozen=True)
class Family:
    config: str  # module under configs/, trained with get_config("gpu")
    target: float | None  # the PublicTest accuracy it aims at (single models from scratch)
    # --dry_run: the model (variant and overrides) over the smoke config's, about as small as cnn/tiny.
    dry_run_model: dict = dataclasses.field(default_factory=dict)


# Training order; the small CNN first (seconds), the ViT, whose speed is least known, last.
FAMILIES: dict[str, Family] = {
    "cnn": Family("cpu_recipe", None, {"variant": "tiny"}),
    "resnet": Family("resnet18", 0.73, {"variant": "resnet10_half", "widths": (8, 16, 32, 64)}),
    "beefy": Family("beefy", 0.73, {"variant": "small", "width": 8, "head_widths": (32,)}),
    # Its smoke model (quarter width, three modules) with the stride-2 stem: a quarter of the work.
    "googlenet": Family("googlenet_aux", 0.72, {"stem": "fer_s2"}),
    "vit": Family("vit_small", 0.70, {"variant": "vit_micro"}),
}
COMPILE_ORDER = ("googlenet", "vit", "resnet", "beefy", "cnn")  # the longest compilation first (estimate)
THRESHOLDS = (0.70, 0.73)
SPEED_GOAL = (0.73, 60.0)  # the fastest family at 0.73 PublicTest within 60 s of training

# The budget, in seconds of one run on one NVIDIA H200 (estimates; see the module docstring).
TOTAL_S = 525.0  # this process's share of the run's 540 s (the shell installs the wheels first)
WARMUP_DEADLINE_S = 250.0  # since the start: a family not compiled by then is skipped
REPORT_RESERVE_S = 50.0  # kept for the report, the ensemble and the pack (about 40 s expected)
MARGIN_S = 15.0  # for what the estimates miss
MIN_TRAIN_S = 10.0  # a family offered less than this is skipped
OUT_LIMIT_MIB = 64.0  # everything handed back, report and log included, in at most 8 files
LOG_HEADROOM_MIB = 1.0  # the log, written by the shell, keeps growing after the pack is written


def say(message: str) -> None:
    print(f"[{time.monotonic() - START:6.1f} s] {message}", flush=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=".gpu_data/fer2013_images.tar.gz", help="absent: synthetic faces")
    p.add_argument("--out", required=True, help="report, summary and weights")
    p.add_argument("--families", default=",".join(FAMILIES))
    p.add_argument("--total_seconds", type=float, default=None, help=f"default {TOTAL_S:.0f}")
    p.add_argument("--warmup_deadline", type=float, default=None, help=f"default {WARMUP_DEADLINE_S:.0f}")
    p.add_argument("--epochs", default="", help="family=epochs,... (whole epochs) instead of the configs'")
    p.add_argument("--compile_workers", type=int, default=2, help="families compiled at once (1: serial)")
    p.add_argument("--max_out_mib", type=float, default=OUT_LIMIT_MIB)
    p.add_argument("--workdir_root", default="/tmp/gpu_comparison_work", help="runs and caches (emptied)")
    p.add_argument("--compile_cache", default=None, help="JAX's compilation cache; default in workdir_root")
    p.add_argument("--dry_run", action="store_true", help="smoke-sized models, a few steps (a CPU check)")
    p.add_argument("--caps", default="", help="family=seconds,...: fixed time caps instead of shares")
    p.add_argument("--dry_run_steps", type=int, default=2, help="--dry_run: training steps per family")
    p.add_argument("--dry_run_eval_every", type=int, default=None, help="--dry_run: default half the steps")
    args = p.parse_args(argv)
    args.names = [n for n in args.families.split(",") if n]
    args.epoch_overrides = _pairs(args.epochs, int)
    args.caps = _pairs(args.caps, float)
    unknown = sorted((set(args.names) | set(args.epoch_overrides) | set(args.caps)) - set(FAMILIES))
    if unknown or not args.names:
        p.error(f"unknown families {unknown}; known: {', '.join(FAMILIES)}")
    args.total_seconds = args.total_seconds or (1800.0 if args.dry_run else TOTAL_S)
    args.warmup_deadline = args.warmup_deadline or (1200.0 if args.dry_run else WARMUP_DEADLINE_S)
    args.data_path = args.data if os.path.exists(args.data) else None
    return args


def _pairs(text: str, cast) -> dict:
    """'a=1,b=2' -> {"a": cast("1"), "b": cast("2")}."""
    return {k: cast(v) for k, v in (kv.split("=") for kv in text.split(",") if kv)}


def family_config(name: str, args: argparse.Namespace, num_train: int):
    """The family's `:gpu` config, writing nothing the comparison does not read; with --dry_run a tiny
    model for `--dry_run_steps` steps."""
    module = importlib.import_module(f"configs.{FAMILIES[name].config}")
    c = module.get_config("gpu")
    if name in args.epoch_overrides:
        evaluations = round(c.num_epochs / c.eval_every_epochs)
        c.num_epochs = float(args.epoch_overrides[name])
        c.eval_every_epochs = float(max(1, round(c.num_epochs / evaluations)))
    if args.dry_run:
        c.model = module.get_config("smoke").model
        c.model.update(FAMILIES[name].dry_run_model)
        # float32 and one step a call: XLA:CPU emulates bfloat16 convolutions slowly, and unrolls a
        # call of several steps into a program as many times larger to compile.
        c.dtype, c.batch_size, c.eval_batch_size = "float32", 8, 16
        c.steps_per_call = c.log_every_steps = 1
        per_epoch = step_plan(c, num_train)["steps_per_epoch"]
        c.num_epochs = (args.dry_run_steps - 0.5) / per_epoch  # exactly dry_run_steps steps
        every = args.dry_run_eval_every or max(1, args.dry_run_steps // 2)  # half-way and at the end
        c.eval_every_epochs = every / per_epoch
    c.data.update(path=args.data_path, cache_dir=os.path.join(args.workdir_root, "data_cache"))
    sizes = (64, 32, 32) if args.dry_run else (8000, 1000, 1000)  # the same for every family
    c.data.update(synthetic_train=sizes[0], synthetic_val=sizes[1], synthetic_test=sizes[2])
    c.update_from_flattened_dict({"progress_bar": False, "curves_png": False, "wandb.mode": "disabled"})
    return c


# ------------------------------------------------------------------------------------------- training


# Set while a family's time cap is signalling: a SIGTERM outside a training run is then the cap's (ignored),
# otherwise it comes from outside and ends the process (`_on_sigterm`).
CAP_SIGNALLING = threading.Event()


def _on_sigterm(signum, frame) -> None:
    if CAP_SIGNALLING.is_set():
        say("(a time-cap signal outside a training run: ignored)")
        return
    raise SystemExit(128 + signum)


def _stop_after(seconds: float, done: threading.Event) -> None:
    """SIGTERM to this process after `seconds`, then every 5 s until `done`: the loop stops after the
    call under way; a signal that arrives before the loop listens is ignored and the next one stops it."""
    if done.wait(seconds):
        return
    CAP_SIGNALLING.set()
    while not done.is_set():
        os.kill(os.getpid(), signal.SIGTERM)
        done.wait(5.0)


def train_family(config, cap_s: float, workdir: str, num_train: int, log: warmup.CompileLog) -> dict:
    """Trains `config` in a fresh `workdir`, stopped after the call under way once `cap_s` is spent."""
    shutil.rmtree(workdir, ignore_errors=True)
    mark, start, done = log.mark(), time.time(), threading.Event()
    timer = threading.Thread(target=_stop_after, args=(cap_s, done), daemon=True)
    timer.start()
    out: dict[str, Any] = {"cap_s": round(cap_s, 1)}
    try:
        summary = train.train_and_evaluate(config, workdir)
        out.update(outcome="finished", final_step=summary["final_step"])
    except TrainingInterrupted as stopped:
        out.update(outcome="cut at its time cap", final_step=stopped.step)
    except Exception as e:  # one family's failure must not end the comparison
        out.update(outcome="failed", error=f"{type(e).__name__}: {e}")
    finally:
        done.set()
        timer.join()
    out["wall_s"] = round(time.time() - start, 2)
    time.sleep(0.1 if CAP_SIGNALLING.is_set() else 0.0)  # a last cap signal is handled while set
    CAP_SIGNALLING.clear()
    out["compiled_in_training"] = log.since(mark)
    metrics = os.path.join(workdir, "metrics.jsonl")
    records = tracking.read_metrics(metrics) if os.path.isfile(metrics) else []
    per_epoch = step_plan(config, num_train)["steps_per_epoch"]
    out.update(outputs.curve_figures(records, start, per_epoch, THRESHOLDS))
    if out.get("final_step") is not None:
        out["epochs_trained"] = out["final_step"] / per_epoch
    out["has_best"] = os.path.isdir(os.path.join(workdir, "best")) and any(
        n.isdigit() for n in os.listdir(os.path.join(workdir, "best"))
    )
    return out


def train_all(args, configs: dict, warm: dict, summary: dict, num_train: int, log) -> None:
    """Phase 3: each family compiled in time trained within its cap, in FAMILIES' order."""
    ready = [n for n in configs if warm[n].ok]
    train_end = START + args.total_seconds - REPORT_RESERVE_S - MARGIN_S
    predicted = {n: warm[n].predicted_train_s for n in ready if n not in args.caps}
    window = train_end - time.monotonic() - sum(args.caps.get(n, 0.0) for n in ready)
    if predicted and sum(predicted.values()) > window:
        scale = window / sum(predicted.values())
        fit = ",".join(f"{n}={max(1, int(configs[n].num_epochs * scale))}" for n in predicted)
        summary["notes"].append(
            f"Predicted training ({sum(predicted.values()):.0f} s) exceeds the {window:.0f} s left for it: "
            f"each family is capped at about {scale:.0%} of its prediction. Epochs that would fit: "
            f"GPU_COMPARISON_EPOCHS={fit}"
        )
        say(summary["notes"][-1])
    for i, name in enumerate(ready):
        # What is left, less the fixed caps still to come, shared by the predictions of the others.
        fixed_later = sum(args.caps.get(n, 0.0) for n in ready[i + 1 :])
        left = train_end - time.monotonic() - fixed_later
        predicted = {n: max(warm[n].predicted_train_s or 1.0, 1.0) for n in ready[i:] if n not in args.caps}
        cap = args.caps[name] if name in args.caps else left * predicted[name] / sum(predicted.values())
        entry = summary["families"][name]
        if cap < MIN_TRAIN_S and name not in args.caps:
            entry.update(outcome=f"skipped: {cap:.0f} s left for it (under {MIN_TRAIN_S:.0f} s)")
            say(f"{name}: {entry['outcome']}")
            continue
        say(f"== {name}: training, predicted {warm[name].predicted_train_s:.0f} s, cap {cap:.0f} s")
        workdir = os.path.join(args.workdir_root, "runs", name)
        entry.update(train_family(configs[name], cap, workdir, num_train, log))
        say(
            f"{name}: {entry['outcome']} in {entry['wall_s']:.0f} s; images/s "
            f"{entry['images_per_s'] or 0:,.0f}; to 0.70: {entry['time_to'].get('0.70')}; "
            f"compiled during training: {entry['compiled_in_training']}"
        )
        outputs.write_summary(args.out, summary)


# ---------------------------------------------------------------------------------------------- main


def _warm_up_phase(args, configs: dict, data: dict, summary: dict, mesh) -> dict:
    """Phase 2, its facts recorded per family."""
    jobs = {n: configs[n] for n in COMPILE_ORDER if n in configs}
    workers = args.compile_workers
    if jax.device_count() > 1 and workers > 1:
        # Two programs that both all-reduce over several devices, run from two threads, can each hold
        # some of the devices the other waits for (XLA:CPU aborts after 40 s; NCCL would hang).
        workers = 1
        summary["notes"].append("Compiled one family at a time: several devices (see comparison_warmup).")
    say(f"== compiling {', '.join(jobs)}, {workers} at a time")
    # No later than leaves one family its minimum before the report's reserve.
    latest = args.total_seconds - REPORT_RESERVE_S - MARGIN_S - MIN_TRAIN_S
    deadline = START + min(args.warmup_deadline, latest)
    warm = warmup.warm_up_all(jobs, data, mesh, workers=workers, deadline=deadline, announce=say)
    for name, w in warm.items():
        entry = summary["families"][name]
        if w.ok:
            entry.update(
                compile_s=round(w.first_call_s + w.eval_compile_s, 1),
                warm_up_s=round(w.seconds, 1),
                predicted_train_s=round(w.predicted_train_s, 1),
                step_ms=round(w.step_s * 1e3, 3),
                call_lengths=list(w.call_lengths),
            )
        else:
            entry["outcome"] = f"skipped: {w.error}"
    return warm


def new_summary(args, configs: dict) -> dict:
    import flax

    return {
        "device": f"{jax.device_count()} x {jax.devices()[0].device_kind}",
        "versions": f"jax {jax.__version__}, flax {flax.__version__}",
        "dry_run": args.dry_run,
        "data": args.data_path or "synthetic faces",
        "budget": {
            "total_s": args.total_seconds,
            "warmup_deadline_s": args.warmup_deadline,
            "report_reserve_s": REPORT_RESERVE_S,
            "margin_s": MARGIN_S,
            "min_train_s": MIN_TRAIN_S,
            "max_out_mib": args.max_out_mib,
        },
        "goals": {
            "targets": {n: FAMILIES[n].target for n in configs},
            "ensemble_target": comparison_report.ENSEMBLE_TARGET,
            "speed": f"a family at {SPEED_GOAL[0]:.2f} PublicTest within {SPEED_GOAL[1]:.0f} s of training",
            "speed_verdict": "–",
        },
        "families": {
            n: {
                "config": f"configs/{FAMILIES[n].config}.py:gpu",
                "model": f"{c.model_name}/{c.model.variant}",
                "epochs": c.num_epochs,
                "batch_size": c.batch_size,
                "steps_per_call": c.steps_per_call,
                "target": FAMILIES[n].target,
                "outcome": "not run",
            }
            for n, c in configs.items()
        },
        "phases": {},
        "compiled": {},  # per phase: what JAX compiled (CompileLog.since)
        "notes": [],
    }


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    shutil.rmtree(args.workdir_root, ignore_errors=True)
    os.makedirs(args.out, exist_ok=True)
    cache_problems = warmup.enable_compilation_cache(
        args.compile_cache or os.path.join(args.workdir_root, "jax_cache")
    )
    log = warmup.CompileLog.install()
    runtime.start()
    logging.set_verbosity(logging.ERROR)  # Orbax warns about every read-only checkpoint folder it opens
    signal.signal(signal.SIGTERM, _on_sigterm)
    base = family_config(args.names[0], args, num_train=1)
    data = load_splits(base.data, ("train", "val"), cache_dir=base.data.cache_dir, announce=say)
    configs = {n: family_config(n, args, len(data["train"])) for n in args.names}
    summary = new_summary(args, configs)
    summary["notes"] += [f"JAX's compilation cache option not set: {p}" for p in cache_problems]
    summary["phases"]["start-up and data"] = round(time.monotonic() - START, 1)
    say(
        f"{summary['device']}, {summary['versions']}; data {summary['data']}; "
        f"budget {args.total_seconds:.0f} s" + (" -- DRY RUN" if args.dry_run else "")
    )
    mesh = parallel.make_mesh()
    start, mark = time.monotonic(), log.mark()
    warm = _warm_up_phase(args, configs, data, summary, mesh)
    summary["phases"]["compilation"] = round(time.monotonic() - start, 1)
    summary["compiled"]["compilation"] = log.since(mark)
    num_train = len(data["train"])
    del data
    outputs.write_summary(args.out, summary)
    start = time.monotonic()
    train_all(args, configs, warm, summary, num_train, log)
    summary["phases"]["training"] = round(time.monotonic() - start, 1)
    comparison_report.report_all(
        summary,
        out=args.out,
        runs_dir=os.path.join(args.workdir_root, "runs"),
        data_path=args.data_path,
        max_out_bytes=int((args.max_out_mib - LOG_HEADROOM_MIB) * 2**20),
        mesh=mesh,
        log=log,
        say=say,
    )
    summary["goals"]["speed_verdict"] = outputs.speed_verdict(summary, *SPEED_GOAL)
    summary["phases"]["total"] = round(time.monotonic() - START, 1)
    outputs.write_summary(args.out, summary)
    size, files = outputs.folder_bytes(args.out)
    say(f"done in {summary['phases']['total']:.0f} s: {files} files, {size / 2**20:.1f} MiB in {args.out}")
    print(outputs.summary_markdown(summary), flush=True)
    if warmup.still_compiling():  # a late compilation would hold the process at exit; the files are out
        say("a compilation past its deadline is still running: leaving without waiting for it")
        sys.stderr.flush()
        os._exit(0)


if __name__ == "__main__":
    main()
