"""GPU-trained teachers for a CPU student: after the time-to-accuracy suite (`gpu_suite.sh`), pick its
best runs that fit a size budget, score ensembles of them on PublicTest, precompute the student's
cached distillation targets on the GPU (one file per teacher), and pack the teachers and targets into
parts of at most 15 MiB, for copying back from the GPU machine.

  python -m benchmarks.gpu_teachers --runs /tmp/gpu_suite_work/runs --out /tmp/teachers \
      --parts_dir "$OUT" [--data .gpu_data/fer2013_images.tar.gz] [--max_mib 56] \
      [--student distill_cpu:tuned]

(`/tmp/gpu_suite_work/runs` is where `gpu_suite.sh run` trains.) A teacher travels as what
distillation and evaluation read from a workdir: config.json, summary.json, metrics.jsonl and the best
checkpoint (params and batch statistics; the resumable state in checkpoints/ stays behind, so a
teacher is ~4 bytes per parameter). They are chosen by PublicTest accuracy, best first, while they fit
`--max_mib`. The targets are computed by `training.distill` exactly as the student's run would compute
them (same teachers, temperature, views and training images), so the student finds them in its cache
and starts training at once; the teachers' inference on a CPU would otherwise take longer than the
student's training. Back on the CPU machine:

  cat teachers.tar.part* | tar x -C workdirs          # workdirs/gpu_teachers/<family>, targets/
  mkdir -p workdirs/.fer_flax_cache
  cp -r workdirs/gpu_teachers/targets/distill workdirs/.fer_flax_cache/   # the student's cache
  python -m fer_flax.main --config configs/distill_cpu.py:tuned --workdir workdirs/student \
      --config.data.path=../shared/data/fer2013/fer2013_images.tar.gz \
      --config.distill.teachers="('workdirs/gpu_teachers/resnet',...)"   # any of those printed here

The student must train on the same data file (the targets are keyed by the training images).
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import json
import os
import shutil
import tarfile
import time

from fer_flax import runtime
from fer_flax.core import parallel
from fer_flax.data import load_splits, resolve_spec
from fer_flax.inference import evaluate
from fer_flax.run import checkpoint
from fer_flax.training import distill

PART_BYTES = 15 * 1024 * 1024  # a part's size: small enough for transfers that limit a file to 16 MiB


def tree_bytes(path: str) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files)


def finished_runs(root: str) -> list[dict]:
    """Each run under `root` with a best checkpoint: its family, workdir, best step, accuracy, size."""
    runs = []
    for name in sorted(os.listdir(root)):
        workdir = os.path.join(root, name)
        if not os.path.isfile(os.path.join(workdir, "config.json")):
            continue
        ckpt = checkpoint.Checkpointer(workdir, read_only=True)
        try:
            order = ckpt.best_first()
            selection = ckpt.best_selection(order[0]) if order else None
        finally:
            ckpt.close()
        if not order:
            print(f"{name}: no best checkpoint, skipped")
            continue
        step_dir = os.path.join(workdir, "best", str(order[0]))
        runs.append(
            {
                "family": name,
                "workdir": workdir,
                "step": order[0],
                "val_accuracy": float((selection or {}).get(checkpoint.BEST_METRIC, float("nan"))),
                "weights": (selection or {}).get("weights", "raw"),
                "bytes": tree_bytes(step_dir),
            }
        )
    return sorted(runs, key=lambda r: -r["val_accuracy"])


def stage(run: dict, dest: str) -> str:
    """The teacher as a workdir of its own: the run's records and its best checkpoint alone."""
    target = os.path.join(dest, run["family"])
    shutil.rmtree(target, ignore_errors=True)
    os.makedirs(os.path.join(target, "checkpoints"))
    for name in ("config.json", "summary.json", "metrics.jsonl"):
        if os.path.exists(os.path.join(run["workdir"], name)):
            shutil.copy2(os.path.join(run["workdir"], name), target)
    best = os.path.join(run["workdir"], "best")
    keep = str(run["step"])
    shutil.copytree(
        best,
        os.path.join(target, "best"),
        ignore=lambda d, names: [n for n in names if d == best and n.isdigit() and n != keep],
    )
    return target


def ensemble_accuracy(workdirs: list[str], data: str, out_json: str, tta: str) -> float | None:
    """`fer_flax.inference.evaluate`'s ensemble on PublicTest, in this process; its accuracy (None on failure:
    one ensemble must not stop the packing)."""
    try:
        report = evaluate.evaluate_workdirs(workdirs, data_path=data, tta_mode=tta, out=out_json)
    except Exception as e:
        print(f"ensemble of {workdirs} failed: {type(e).__name__}: {e}")
        return None
    return float(report["accuracy"])


def targets(teachers: list[str], student: str, data: str, cache_dir: str) -> tuple[str, ...]:
    """The student's cached targets for `teachers`, computed as its training run would: one file
    per teacher, in order."""
    module, _, arg = student.partition(":")
    config = importlib.import_module(f"configs.{module}").get_config(arg)
    config.data.path = data
    config.distill.teachers = tuple(teachers)
    spec = resolve_spec(config.data)
    mesh = parallel.make_mesh()
    loaded = distill.load_teachers(config, spec, mesh, workdir=os.path.join(cache_dir, "student"))
    split = load_splits(config.data, ("train",), cache_dir=cache_dir)["train"]
    # The targets are keyed by these bytes: the same digest on the student's machine means its
    # decoder read the JPEGs identically.
    print(f"training images sha256 {hashlib.sha256(split.images.tobytes()).hexdigest()[:16]}")
    _, loaded = distill.with_targets(loaded, split, config, mesh, cache_dir)
    return loaded.targets_files


def pack(folder: str, parts_dir: str, name: str) -> list[str]:
    """`folder` as an uncompressed tar (weights do not compress) cut into PART_BYTES parts."""
    archive = os.path.join(os.path.dirname(folder), f"{name}.tar")
    with tarfile.open(archive, "w") as tar:
        tar.add(folder, arcname=os.path.basename(folder))
    os.makedirs(parts_dir, exist_ok=True)
    parts = []
    with open(archive, "rb") as f:
        for i, chunk in enumerate(iter(lambda: f.read(PART_BYTES), b"")):
            parts.append(os.path.join(parts_dir, f"{name}.tar.part{i:02d}"))
            with open(parts[-1], "wb") as out:
                out.write(chunk)
    return parts


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", required=True, help="the suite's --workdir_root")
    parser.add_argument("--out", required=True, help="staging folder (gpu_teachers/ is made in it)")
    parser.add_argument("--parts_dir", required=True, help="where the packed parts go")
    parser.add_argument("--data", default=".gpu_data/fer2013_images.tar.gz")
    parser.add_argument("--cache_dir", default=None, help="the suite's data cache (default: under --out)")
    parser.add_argument("--max_mib", type=float, default=56.0)
    parser.add_argument("--student", default="distill_cpu:tuned", help="configs module:arg of the student")
    parser.add_argument("--tta", default="flip", help="views of the ensemble evaluations")
    args = parser.parse_args()
    runtime.start()
    start = time.time()
    runs = finished_runs(args.runs)
    chosen, total = [], 0
    for run in runs:
        if total + run["bytes"] <= args.max_mib * 2**20:
            chosen.append(run)
            total += run["bytes"]
    print(f"{'family':<10} {'best step':>9} {'weights':>7} {'PublicTest':>10} {'MiB':>6}  travels")
    for r in runs:
        print(
            f"{r['family']:<10} {r['step']:>9} {r['weights']:>7} {r['val_accuracy']:>10.4f} "
            f"{r['bytes'] / 2**20:>6.1f}  {'yes' if r in chosen else 'no'}"
        )
    dest = os.path.join(args.out, "gpu_teachers")
    os.makedirs(dest, exist_ok=True)
    staged = [stage(r, dest) for r in chosen]
    record = {"runs": runs, "chosen": [r["family"] for r in chosen], "ensembles": {}, "targets": {}}
    for label, members in (("all", [r["workdir"] for r in runs]), ("travelling", staged)):
        if len(members) > 1 and not (label == "travelling" and len(chosen) == len(runs)):
            acc = ensemble_accuracy(
                members, args.data, os.path.join(dest, f"ensemble_{label}.json"), args.tta
            )
            record["ensembles"][label] = {"members": members, "tta": args.tta, "accuracy": acc}
            print(f"ensemble of {label} ({len(members)} runs, {args.tta} views): PublicTest {acc}")
    if not staged:
        raise SystemExit(f"no run under {args.runs} has a best checkpoint within {args.max_mib} MiB")
    cache_dir = args.cache_dir or os.path.join(args.out, "cache")
    # One file per teacher (fer_flax.training.distill): a student of any subset of them finds its targets.
    os.makedirs(os.path.join(dest, "targets", distill.CACHE_FOLDER), exist_ok=True)
    for teacher, file in zip(staged, targets(staged, args.student, args.data, cache_dir), strict=True):
        shutil.copy2(file, os.path.join(dest, "targets", distill.CACHE_FOLDER))
        record["targets"][os.path.basename(teacher)] = os.path.basename(file)
        print(f"targets of {os.path.basename(teacher)}: {os.path.basename(file)}")
    with open(os.path.join(dest, "teachers.json"), "w") as f:
        json.dump(record, f, indent=2)
    parts = pack(dest, args.parts_dir, "teachers")
    print(f"packed {tree_bytes(dest) / 2**20:.1f} MiB into {len(parts)} parts in {time.time() - start:.0f} s")


if __name__ == "__main__":
    main()
