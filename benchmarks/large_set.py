"""A set larger than memory: N RGB faces at 112x112 written to a records folder, then the loader's
images/s and the peak memory (RSS) reading it, and a short training run from it.

  python -m benchmarks.large_set [--faces 300000] [--val 2000] [--dir $DATA/tmp] [--keep]
      [--shards 64] [--batch 256] [--loader_seconds 20] [--num_workers 0] [--steps 20]
      [--fer2013 $DATA/fer2013.csv] [--cache_dir D] [--json out.json]

A quick check at a small size:

  python -m benchmarks.large_set --faces 2000 --val 200 --batch 32 --steps 2 --loader_seconds 2

1. generate  the synthetic faces (`fer_flax.data.synthetic`, 48x48 grayscale) enlarged to 112x112
             (nearest neighbour) and tinted into three channels, drawn chunk by chunk and written
             straight into the records folder (`record_writer.RecordsFolder`): the set is never in
             memory. Each face is 112 x 112 x 3 + 4 bytes, so 300000 of them are 11.3 GB of pixels
             (that much free disk is checked before anything is written; ArrayRecord's
             compression stored the synthetic faces in 1.5 GB).
2. loader    the Grain training stream over the records (balanced sampling, as training builds it):
             host batches per second, without the copy to the devices.
3. train     `python -m fer_flax.main` (configs/simple_cnn.py, the tiny CNN) for `--steps` steps of
             `--batch` from the records, in a child process, with its evaluation of the val split.
4. fer2013   with `--fer2013`: the in-memory stream's images/s over FER2013's training split (parsed
             through the cache), for comparison.

Peak RSS is `resource.getrusage`'s ru_maxrss: of this process after each phase (generation, the
records' loader, the FER2013 loader, which holds its whole split) and of the child processes (the
training run). A records folder made by an earlier run is reused when `--dir` holds one of the
same size.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from fer_flax.data import records
from fer_flax.data.record_writer import RecordsFolder
from fer_flax.data.spec import FER2013, DataSpec
from fer_flax.data.splits import FER2013_TRAIN_COUNTS
from fer_flax.data.synthetic import render_faces

SIDE = 112
SPEC = DataSpec(FER2013.class_names, (SIDE, SIDE), 3)
CHUNK = 2000  # faces drawn and written at a time
_TINT = np.asarray([1.0, 0.85, 0.7], np.float32)  # per-channel scale: a colour image, not 3 copies
_ROOT = Path(__file__).resolve().parents[1]


def peak_rss_mb(who: int = resource.RUSAGE_SELF) -> float:
    """The peak resident memory of this process (or of its finished children), in MB."""
    return resource.getrusage(who).ru_maxrss / 1024  # kilobytes on Linux


def faces(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """uint8 [n, 112, 112, 3]: synthetic faces of `labels`, enlarged and tinted."""
    small = render_faces(labels, rng)
    rows = np.arange(SIDE) * small.shape[1] // SIDE
    big = small[:, rows][:, :, rows].astype(np.float32)
    return (big[..., None] * _TINT).astype(np.uint8)


def generate(out: Path, num_train: int, num_val: int, shards: int | None, seed: int = 0) -> float:
    """Writes the faces into the records folder `out`; returns the seconds it took."""
    probs = np.asarray(FER2013_TRAIN_COUNTS, np.float64) / sum(FER2013_TRAIN_COUNTS)
    rng = np.random.default_rng(seed)
    start = time.perf_counter()
    with RecordsFolder(out, SPEC, source="synthetic faces (benchmarks.large_set)", shards=shards) as folder:
        for split, n in (("train", num_train), ("val", num_val)):
            writer = folder.split(split, n)
            for lo in range(0, n, CHUNK):
                labels = rng.choice(len(probs), size=min(CHUNK, n - lo), p=probs).astype(np.int32)
                writer.write(faces(labels, rng), labels)
    return time.perf_counter() - start


def loader_rate(split: Any, batch: int, seconds: float, num_workers: int) -> dict[str, Any]:
    """Host batches per second of the training stream over `split` (balanced sampling)."""
    from fer_flax.core import input_pipeline

    it = input_pipeline.make_train_iterator(
        split, global_batch_size=batch, seed=0, sampling="balanced", num_workers=num_workers
    )
    next(it)  # starts the workers and the prefetch
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        next(it)
        n += batch
    rate = n / (time.perf_counter() - start)
    it.close()
    return {"images_per_s": rate, "batch": batch, "num_workers": num_workers, "num_train": len(split)}


def train(folder: Path, workdir: Path, steps: int, batch: int, num_train: int) -> dict[str, Any]:
    """`python -m fer_flax.main` on the records for `steps` steps, in a child process."""
    overrides = {
        "data.path": str(folder),
        "batch_size": batch,
        "eval_batch_size": batch,
        # Just under `steps` epochs-worth of steps: the loop runs ceil(num_epochs * steps_per_epoch).
        "num_epochs": (steps - 0.5) / -(-num_train // batch),
        "log_every_steps": max(1, steps),
        "progress_bar": False,
        "curves_png": False,
        "wandb.mode": "disabled",
    }
    cmd = [
        sys.executable,
        "-m",
        "fer_flax.main",
        "--config",
        "configs/simple_cnn.py",
        "--workdir",
        str(workdir),
    ]
    cmd += [f"--config.{k}={v}" for k, v in overrides.items()]
    start = time.perf_counter()
    run = subprocess.run(cmd, cwd=_ROOT, capture_output=True, text=True)
    if run.returncode:
        raise RuntimeError(f"training failed ({run.returncode}):\n{run.stdout}\n{run.stderr}")
    last = [line for line in run.stdout.splitlines() if line.startswith("Done.")]
    return {
        "seconds": time.perf_counter() - start,
        "steps": steps,
        "result": last[-1] if last else run.stdout.strip().splitlines()[-1],
        "peak_rss_mb": peak_rss_mb(resource.RUSAGE_CHILDREN),
    }


def _check_disk(where: Path, num_faces: int) -> None:
    need = num_faces * (SIDE * SIDE * 3 + 4) * 1.05
    free = shutil.disk_usage(where).free
    if free < need:
        raise SystemExit(f"{where} has {free / 1e9:.1f} GB free; {num_faces} faces need {need / 1e9:.1f} GB")


def run(args: argparse.Namespace) -> dict[str, Any]:
    base = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="large_set."))
    base.mkdir(parents=True, exist_ok=True)
    folder = base / f"faces{args.faces}_records"
    report: dict[str, Any] = {"faces": args.faces, "val": args.val, "records": str(folder)}
    try:
        counts = {"train": args.faces, "val": args.val}
        if (
            records.is_records(folder)
            and {s: e["count"] for s, e in records.read_meta(folder)["splits"].items()} == counts
        ):
            print(f"generate: reusing {folder}")
        else:
            _check_disk(base, args.faces + args.val)
            shutil.rmtree(folder, ignore_errors=True)
            seconds = generate(folder, args.faces, args.val, args.shards)
            report["generate_s"] = seconds
            print(f"generate: {args.faces + args.val} faces in {seconds:.0f} s ({folder})")
        report["rss_after_generate_mb"] = peak_rss_mb()
        print(f"  peak RSS so far {report['rss_after_generate_mb']:.0f} MB")

        split = records.load_splits(folder, ("train",))["train"]
        report["records_loader"] = loader_rate(split, args.batch, args.loader_seconds, args.num_workers)
        report["rss_after_records_loader_mb"] = peak_rss_mb()
        print(
            f"loader (records, {SIDE}x{SIDE}x3): {report['records_loader']['images_per_s']:,.0f} images/s; "
            f"peak RSS {report['rss_after_records_loader_mb']:.0f} MB"
        )
        if args.steps > 0:
            report["train"] = train(folder, base / "train_run", args.steps, args.batch, args.faces)
            print(
                f"train: {args.steps} steps of {args.batch} in {report['train']['seconds']:.0f} s; "
                f"peak RSS of the training process {report['train']['peak_rss_mb']:.0f} MB\n  "
                + report["train"]["result"]
            )
        if args.fer2013:
            report["fer2013_loader"] = fer2013_rate(args)
            report["rss_after_fer2013_loader_mb"] = peak_rss_mb()
            print(
                f"loader (FER2013 in memory, 48x48x1): {report['fer2013_loader']['images_per_s']:,.0f} "
                f"images/s; peak RSS {report['rss_after_fer2013_loader_mb']:.0f} MB"
            )
    finally:
        if not args.keep and not args.dir:
            shutil.rmtree(base, ignore_errors=True)
    return report


def fer2013_rate(args: argparse.Namespace) -> dict[str, Any]:
    from configs.common import get_base_config
    from fer_flax.data import load_splits

    config = get_base_config()
    config.data.path = args.fer2013
    cache_dir = args.cache_dir or tempfile.mkdtemp(prefix="large_set_cache.")
    split = load_splits(config.data, ("train",), cache_dir=cache_dir, announce=lambda _: None)["train"]
    return loader_rate(split, args.batch, args.loader_seconds, args.num_workers)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--faces", type=int, default=300_000, help="training faces to generate")
    p.add_argument("--val", type=int, default=2000, help="validation faces to generate")
    p.add_argument("--dir", help="where the records go (kept; default: a temporary folder, removed)")
    p.add_argument("--keep", action="store_true", help="keep the temporary folder")
    p.add_argument("--shards", type=int, help="shards per split (default: 10000 records each)")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--loader_seconds", type=float, default=20.0)
    p.add_argument("--num_workers", type=int, default=0, help="Grain worker processes of the loader")
    p.add_argument("--steps", type=int, default=20, help="training steps from the records (0: none)")
    p.add_argument("--fer2013", help="FER2013 CSV (or image folders) for the in-memory loader's figure")
    p.add_argument("--cache_dir", help="parsed-array cache for --fer2013 (default: a temporary folder)")
    p.add_argument("--json", help="write the figures here as JSON")
    args = p.parse_args(argv)
    report = run(args)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    main()
