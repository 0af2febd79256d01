"""What `benchmarks.model_comparison` hands back: every family's best weights packed into one file within
a size limit, and the summary as JSON and Markdown.

The pack, `weights.npz` (numpy's zip of arrays, read with `load_pack`), holds each family's best
checkpoint (`best/`: the raw or EMA weights its training selected) as bfloat16. When all of them in
bfloat16 would pass the byte budget, the family whose kernels save the most is re-encoded as int8 with
one float32 scale per output channel (symmetric, round to nearest: kernels and embeddings of 4,096
values or more; smaller tensors stay bfloat16), then the next, and when every family is int8 and the
pack is still too large, the families with the lowest PublicTest accuracy are left out; the summary
names each family's encoding. Its `__manifest__` entry (UTF-8 JSON as bytes) gives per family the run's
config, checkpoint step, weights, encoding and accuracies, so `load_pack` rebuilds float32 variables
that `fer_flax.core.model.create_model` of that config takes.
"""

from __future__ import annotations

import json
import os
import statistics
from collections.abc import Sequence
from typing import Any

import ml_dtypes
import numpy as np
from flax import traverse_util

from fer_flax.base import atomic_files

MANIFEST = "__manifest__"
SCALE_SUFFIX = "@scale"
# Tensors with fewer values than this (biases, norms, statistics) stay bfloat16 in an int8 pack.
MIN_INT8_SIZE = 4096
# Bytes a zip entry and its .npy header add to an array's own bytes (an upper bound).
ENTRY_OVERHEAD = 400
ENCODINGS = ("bfloat16", "int8")


def _flat(variables: Any) -> dict[str, np.ndarray]:
    tree = traverse_util.flatten_dict(dict(variables), sep="/")
    return {k: np.asarray(v, np.float32) for k, v in tree.items()}


def _quantizable(x: np.ndarray) -> bool:
    return x.ndim >= 2 and x.size >= MIN_INT8_SIZE


def encode(variables: Any, encoding: str) -> dict[str, np.ndarray]:
    """The arrays one family's variables are stored as: bfloat16 bits (uint16), or with "int8" the
    large tensors as int8 with a float32 scale per output channel (the last axis) under `path@scale`."""
    out = {}
    for path, x in _flat(variables).items():
        if encoding == "int8" and _quantizable(x):
            peak = np.abs(x.reshape(-1, x.shape[-1])).max(axis=0)
            scale = np.where(peak > 0, peak / 127.0, 1.0).astype(np.float32)
            out[path] = np.clip(np.rint(x / scale), -127, 127).astype(np.int8)
            out[path + SCALE_SUFFIX] = scale
        else:
            out[path] = x.astype(ml_dtypes.bfloat16).view(np.uint16)
    return out


def decode(arrays: dict[str, np.ndarray]) -> dict:
    """Float32 variables (nested dicts) from `encode`'s arrays."""
    flat = {}
    for path, x in arrays.items():
        if path.endswith(SCALE_SUFFIX):
            continue
        if x.dtype == np.int8:
            flat[path] = x.astype(np.float32) * arrays[path + SCALE_SUFFIX]
        else:
            flat[path] = x.view(ml_dtypes.bfloat16).astype(np.float32)
    return traverse_util.unflatten_dict(flat, sep="/")


def encoded_bytes(variables: Any) -> dict[str, int]:
    """The bytes the pack would hold for `variables` in each encoding, entry overheads included."""
    sizes = {}
    for encoding in ENCODINGS:
        arrays = encode(variables, encoding)
        sizes[encoding] = sum(a.nbytes + ENTRY_OVERHEAD for a in arrays.values())
    return sizes


def plan_encodings(sizes: dict[str, dict[str, int]], priority: Sequence[str], budget: int) -> dict:
    """Each family's encoding ("bfloat16", "int8" or None: left out) so that the total of `sizes`
    stays within `budget` bytes: bfloat16 for all, then int8 for the family that saves the most,
    and so on; then, all int8, leaving out the last of `priority` (best first) until it fits."""
    plan: dict[str, str | None] = {name: "bfloat16" for name in priority}

    def total() -> int:
        return sum(sizes[n][e] for n, e in plan.items() if e is not None)

    while total() > budget:
        wide = [n for n in priority if plan[n] == "bfloat16"]
        if wide:
            plan[max(wide, key=lambda n: sizes[n]["bfloat16"] - sizes[n]["int8"])] = "int8"
        else:
            kept = [n for n in priority if plan[n] is not None]
            if not kept:
                break
            plan[kept[-1]] = None
    return plan


def write_pack(path: str, families: dict[str, dict], budget: int) -> dict[str, dict]:
    """Packs `families` ({name: {"variables", "accuracy", ...JSON-ready facts}}, best first) into
    `path` within `budget` bytes; returns the manifest ({name: facts + encoding + bytes}), in which a
    family left out has encoding None. Nothing is written when every family is left out."""
    sizes = {name: encoded_bytes(f["variables"]) for name, f in families.items()}
    manifest = {name: {k: v for k, v in f.items() if k != "variables"} for name, f in families.items()}
    # The manifest's own bytes first (its encodings and sizes are not known yet: room for the longest).
    room = {"encoding": "bfloat16", "bytes": 10**12}
    manifest_bytes = len(_manifest_array({n: {**e, **room} for n, e in manifest.items()})) + ENTRY_OVERHEAD
    plan = plan_encodings(sizes, list(families), budget - manifest_bytes)
    arrays: dict[str, np.ndarray] = {}
    for name, facts in families.items():
        encoding = plan[name]
        manifest[name].update(encoding=encoding, bytes=sizes[name][encoding] if encoding else 0)
        if encoding:
            arrays.update({f"{name}/{k}": v for k, v in encode(facts["variables"], encoding).items()})
    if arrays:
        arrays[MANIFEST] = _manifest_array(manifest)
        tmp = path + ".tmp.npz"
        np.savez(tmp, **arrays)
        os.replace(tmp, path)
    return manifest


def _manifest_array(manifest: dict) -> np.ndarray:
    """The manifest as UTF-8 JSON bytes (a uint8 array: numpy's strings take 4 bytes a character)."""
    return np.frombuffer(json.dumps(manifest).encode(), np.uint8)


def load_pack(path: str) -> dict[str, dict]:
    """{family: {"manifest": its entry (config, step, weights, encoding, ...), "variables": float32}}."""
    with np.load(path, allow_pickle=False) as npz:
        manifest = json.loads(npz[MANIFEST].tobytes().decode())
        out = {}
        for name, entry in manifest.items():
            if entry["encoding"] is None:
                continue
            prefix = name + "/"
            arrays = {k[len(prefix) :]: npz[k] for k in npz.files if k.startswith(prefix)}
            out[name] = {"manifest": entry, "variables": decode(arrays)}
    return out


def folder_bytes(folder: str) -> tuple[int, int]:
    """(bytes, files) of the plain files directly in `folder`."""
    names = [n for n in os.listdir(folder) if os.path.isfile(os.path.join(folder, n))]
    return sum(os.path.getsize(os.path.join(folder, n)) for n in names), len(names)


# -------------------------------------------------------------------------------------------- summary


def curve_figures(
    records: list[dict], start: float, steps_per_epoch: int, thresholds: Sequence[float]
) -> dict:
    """From a run's metrics.jsonl records: images/s (median window after the first), the training
    seconds with the first window's compilation taken out, and the first evaluation at or above each
    of `thresholds` (the weights best/ would keep: raw or EMA)."""
    windows = [r for r in records if "train/seconds" in r]
    if not windows:
        return {"images_per_s": None, "train_s": None, "first_window_excess_s": None, "time_to": {}}
    rates = [r["train/images_per_sec"] for r in windows]
    median = statistics.median(rates[1:] or rates)
    first = windows[0]
    first_images = first["train/seconds"] * first["train/images_per_sec"]
    excess = max(0.0, first["train/seconds"] - first_images / median)
    seconds, time_to = -excess, {}
    for r in records:
        seconds += r.get("train/seconds", 0.0)
        accuracy = r.get("selected/accuracy", r.get("val/accuracy"))
        for threshold in thresholds:
            key = f"{threshold:.2f}"
            if accuracy is not None and accuracy >= threshold and key not in time_to:
                time_to[key] = {
                    "train_s": round(seconds, 2),
                    "wall_s": round(r["time"] - start, 2),
                    "step": r["step"],
                    "epoch": r["step"] / steps_per_epoch,
                }
    return {
        "images_per_s": median,
        "train_s": round(seconds, 2),
        "first_window_excess_s": round(excess, 2),
        "time_to": time_to,
    }


def speed_verdict(summary: dict, threshold: float, seconds: float) -> str:
    """Whether a family reached `threshold` within `seconds` of training: the fastest one's figures."""
    times = {
        n: f["time_to"][f"{threshold:.2f}"]["train_s"]
        for n, f in summary["families"].items()
        if (f.get("time_to") or {}).get(f"{threshold:.2f}")
    }
    if not times:
        return f"missed: no family reached {threshold:.2f}"
    fastest = min(times, key=times.get)
    verdict = "met" if times[fastest] <= seconds else "missed"
    return f"{verdict}: {fastest} reached {threshold:.2f} after {times[fastest]:.0f} s of training"


def _cell(value: Any, fmt: str = "{:.4f}") -> str:
    return "–" if value is None else fmt.format(value)


def _time_to(family: dict, threshold: str) -> str:
    point = (family.get("time_to") or {}).get(threshold)
    return "–" if point is None else f"{point['train_s']:.0f} s (epoch {point['epoch']:.0f})"


def summary_markdown(summary: dict) -> str:
    """The summary as a Markdown page: one row per family, then the ensemble, the goals, the budget
    and the pack."""
    lines = [
        "# Model families on one GPU",
        "",
        f"{summary['device']}; {summary['versions']}" + (" (dry run)" if summary["dry_run"] else ""),
        "",
        "| family | config | outcome | epochs | PublicTest | target | to 0.70 | to 0.73 | images/s "
        "| compile s | wall s | cap s |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, f in summary["families"].items():
        lines.append(
            f"| {name} | {f['config']} | {f['outcome']} | {_cell(f.get('epochs_trained'), '{:.1f}')} "
            f"| {_cell(f.get('accuracy'))} | {_cell(f.get('target'), '{:.2f}')} | {_time_to(f, '0.70')} "
            f"| {_time_to(f, '0.73')} | {_cell(f.get('images_per_s'), '{:,.0f}')} "
            f"| {_cell(f.get('compile_s'), '{:.0f}')} | {_cell(f.get('wall_s'), '{:.0f}')} "
            f"| {_cell(f.get('cap_s'), '{:.0f}')} |"
        )
    ensemble = summary.get("ensemble") or {}
    lines += [
        "",
        "PublicTest: the best checkpoint with flip TTA. Time to an accuracy: seconds of training steps "
        "up to the first evaluation at or above it (compilation, evaluations and checkpoints excluded).",
        "",
        f"Ensemble of {len(ensemble.get('members', []))} (mean of probabilities, flip TTA): "
        f"{_cell(ensemble.get('accuracy'))}, target {summary['goals']['ensemble_target']:.2f}: "
        f"{ensemble.get('verdict', '–')}.",
        f"Speed goal ({summary['goals']['speed']}): {summary['goals']['speed_verdict']}.",
        "",
        "| phase | seconds |",
        "|---|---:|",
    ]
    lines += [f"| {phase} | {seconds:.0f} |" for phase, seconds in summary["phases"].items()]
    pack = summary.get("pack") or {}
    if pack.get("families"):
        lines += ["", f"Weights: {pack['file']} ({pack['bytes'] / 2**20:.1f} MiB)", ""]
        lines += ["| family | encoding | MiB | PublicTest of the packed weights |", "|---|---|---:|---:|"]
        for name, entry in pack["families"].items():
            lines.append(
                f"| {name} | {entry['encoding'] or 'left out'} | {entry['bytes'] / 2**20:.1f} "
                f"| {_cell(entry.get('packed_accuracy'))} |"
            )
    for note in summary.get("notes", []):
        lines.append(f"\n{note}")
    return "\n".join(lines) + "\n"


def write_summary(out_dir: str, summary: dict) -> None:
    """summary.json and summary.md in `out_dir`, each written atomically."""
    atomic_files.write_json(os.path.join(out_dir, "summary.json"), summary)
    atomic_files.write_text(os.path.join(out_dir, "summary.md"), summary_markdown(summary))
