"""Checksums of saved checkpoints (a manifest written last, verified before every restore), and the
one fallback past damaged checkpoints that every restore goes through (`first_usable`).

`<checkpoint>/fer_flax_manifest.json` lists every file of a finished checkpoint (`checkpoints/<step>`
or `best/<step>`) with its size and SHA-256. It is written (atomically) after Orbax has committed
the checkpoint, so a checkpoint with a manifest is one whose every byte was on disk when the save
ended. `problem(step_dir)` compares the files with it: a missing, resized or changed file (a
truncation, zeroed blocks, bit rot of the same size) is damage, whatever the restore would have made
of it.

A checkpoint without a manifest (written before manifests existed, or by a run killed between
Orbax's commit and the manifest) is not verified: it is restored as it is, and a failing restore
cannot then tell damage from a checkpoint that does not fit the model.

Training moves the checkpoints it cannot use out of Orbax's sight, to `<workdir>/corrupt_checkpoints/`
(`set_aside`): nothing is deleted, and a step set aside can be written again.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import jax

from fer_flax.base.atomic_files import fsync_dir
from fer_flax.run import workdir as workdir_lib
from fer_flax.run.checkpoint_errors import Failure, describe, nothing_usable, quiet_orbax_leftovers

MANIFEST = "fer_flax_manifest.json"
CORRUPT_DIR = "corrupt_checkpoints"
_CHUNK = 1 << 22


def _sha256(file_path: str) -> str:
    digest = hashlib.sha256()
    with open(file_path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _files(step_dir: str) -> list[str]:
    found = []
    for dirpath, _, filenames in os.walk(step_dir):
        for name in filenames:
            rel = os.path.relpath(os.path.join(dirpath, name), step_dir)
            if rel not in (MANIFEST, MANIFEST + ".tmp"):
                found.append(rel)
    return sorted(found)


def write_manifest(step_dir: str) -> None:
    """Records the size and SHA-256 of every file under `step_dir` (a committed checkpoint)."""
    files = {}
    for rel in _files(step_dir):
        full = os.path.join(step_dir, rel)
        files[rel] = {"size": os.path.getsize(full), "sha256": _sha256(full)}
    workdir_lib.write_json(os.path.join(step_dir, MANIFEST), {"format": 1, "files": files})


def has_manifest(step_dir: str) -> bool:
    return os.path.isfile(os.path.join(step_dir, MANIFEST))


def problem(step_dir: str) -> str | None:
    """What is damaged in checkpoint `step_dir` according to its manifest, naming the file; None
    when every listed file is intact, or when there is no manifest to check against."""
    manifest_path = os.path.join(step_dir, MANIFEST)
    if not os.path.isdir(step_dir):
        return f"{step_dir} is missing"
    if not os.path.isfile(manifest_path):
        return None
    try:
        with open(manifest_path) as f:
            files = json.load(f)["files"]
        expected = {rel: (int(v["size"]), str(v["sha256"])) for rel, v in files.items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        return f"its checksum manifest {manifest_path} is unreadable ({type(e).__name__})"
    for rel, (size, sha256) in expected.items():
        full = os.path.join(step_dir, rel)
        if not os.path.isfile(full):
            return f"{full} is missing"
        actual = os.path.getsize(full)
        if actual != size:
            return f"{full} has {actual} bytes, {size} when saved"
        if _sha256(full) != sha256:
            return f"{full} does not match its checksum (same size, different content)"
    return None


def unreadable_metrics(manager_dir: str) -> dict[int, str]:
    """{step: what is wrong} for the checkpoints under `manager_dir` (best/) whose Orbax metrics
    record is not valid JSON. Orbax reads every record when it opens the folder and fails on the
    first bad one, so these are found, and kept out of its way, first."""
    found: dict[int, str] = {}
    if not os.path.isdir(manager_dir):
        return found
    for name in sorted(os.listdir(manager_dir)):
        file_path = os.path.join(manager_dir, name, "metrics", "metrics")
        if not name.isdigit() or not os.path.isfile(file_path):
            continue
        try:
            with open(file_path) as f:
                json.load(f)
        except (OSError, ValueError) as e:
            found[int(name)] = f"{file_path} is unreadable ({type(e).__name__})"
    return found


class WithoutSteps:
    """Orbax's step naming (an `ocp.step.NameFormat`) with `steps` left out: a read-only manager
    then lists, and reads, only the other checkpoints."""

    def __init__(self, inner: Any, steps: frozenset[int]):
        self.inner, self.steps = inner, steps

    def build_name(self, step: int) -> str:
        return self.inner.build_name(step)

    def find_all(self, base_path: Any) -> Iterator[Any]:
        return (m for m in self.inner.find_all(base_path) if m.step not in self.steps)

    def find_step(self, base_path: Any, step: int) -> Any:
        if step in self.steps:
            raise ValueError(f"checkpoint {step} under {base_path} is damaged")
        return self.inner.find_step(base_path, step)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def first_usable(
    directory: str,
    steps: Sequence[int],
    restore: Callable[[int], Any],
    target: str,
    known: Sequence[Failure] = (),
) -> tuple[Any, int, list[Failure]]:
    """The first checkpoint of `steps` (under `directory`, in order of preference) whose files match
    their manifest and that restores, as (restore(step), step, the failures before it, after the
    `known` ones). Raises `NoRestorableCheckpointError`, saying which were damaged and which did not
    fit `target`, when none does. Training's resume and inference's restore both come here."""
    failures = list(known)
    quiet_orbax_leftovers()  # a restore that fails leaves reports of its abandoned reads behind
    for step in steps:
        step_dir = os.path.join(directory, str(step))
        damage = problem(step_dir)
        if damage:
            failures.append(Failure(step, damage, damaged=True))
            continue
        try:
            return restore(step), step, failures
        except Exception as e:  # Orbax/TensorStore raise many types for damaged or unfitting files
            failures.append(Failure(step, describe(e), damaged=False if has_manifest(step_dir) else None))
    raise nothing_usable(directory, failures, target)


def corrupt_dir(workdir: str) -> str:
    return os.path.join(workdir, CORRUPT_DIR)


def set_aside(workdir: str, directory: str, steps: Sequence[int], prefix: str = "") -> None:
    """Moves checkpoints `steps` of `directory` to `<workdir>/corrupt_checkpoints/<prefix><step>-<time>`
    (process 0; every process waits for it), and syncs both folders: the move holds after a power cut."""
    if jax.process_index() == 0:
        target_dir = corrupt_dir(workdir)
        os.makedirs(target_dir, exist_ok=True)
        stamp = time.strftime("%Y%m%d-%H%M%S")
        for step in steps:
            target = os.path.join(target_dir, f"{prefix}{step}-{stamp}")
            n = 1
            while os.path.exists(target):  # the same step set aside twice within a second
                target, n = os.path.join(target_dir, f"{prefix}{step}-{stamp}.{n}"), n + 1
            os.replace(os.path.join(directory, str(step)), target)
        fsync_dir(target_dir)
        fsync_dir(directory)
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices("fer_flax_corrupt_checkpoints_moved")
