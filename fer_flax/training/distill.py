"""Knowledge distillation (Hinton, Vinyals & Dean, "Distilling the knowledge in a neural network",
2015): a student trained against the temperature-softened class probabilities of finished runs, its
teachers, mixed with the true labels.

  config.distill.teachers     ("W1", "W2:latest", "W3:1200", ...): workdirs of finished runs, each
                              optionally with a checkpoint as in `init_from` (default best); any
                              families, several form an ensemble. Empty: no distillation.
  config.distill.alpha        the weight of the true-label loss; 1 - alpha weighs the distillation term.
  config.distill.temperature  T.
  config.distill.mode         "cached" | "on_the_fly" (below).
  config.distill.tta          the teachers' test-time views (`fer_flax.core.tta`); unset: each teacher's
                              own `eval_tta`, the views it was selected and evaluated with.

The loss per example is alpha * CE(labels) + (1 - alpha) * T^2 * KL(p || softmax(student / T))
(`fer_flax.core.losses.distilled_loss`), CE with the config's label smoothing, class weights and logit
adjustment. The teachers' probabilities p (`steps.teacher_probabilities`): each teacher's logits
averaged over its TTA views, softened as softmax(logits / T), then averaged over the teachers. Logits
over views, because the views are one model's guesses about one image and their mean logit is exactly
the function the teacher was evaluated (and its checkpoint selected) with (`fer_flax.core.tta`);
probabilities over teachers, because different models' logits have different scales and averaging
them would let the most confident model outvote the others, whereas each teacher's softened
distribution counts equally (as in `fer_flax.inference.engine`'s ensembles).

Modes:
  cached      p of every training image's augmentation-free view (with the teacher's TTA views of
              it), computed once before training through `fer_flax.inference.engine` (the one inference path)
              with progress lines, and stored per teacher in `<data cache>/distill/<key>.npy`. The key
              digests the teacher's model, variables and views, T and the training images, so any
              run with that teacher, T, views and data reuses the file, in any ensemble; a run
              averages its teachers' files. The probabilities ride with each batch
              (`ArraySplit.teacher_probs`) and go through ten-crop and mixing like the labels (mixup
              mixes them with the same lambda). The student sees augmented images but the
              teachers' answer for the clean one; a step costs what a plain one does.
  on_the_fly  the teachers' forward pass (inference mode, their TTA views) on the student's augmented
              and mixed batch inside the jitted train step: the teachers' apply functions are bound
              into the step, their variables are an argument of it, and no gradient reaches them.
              Each step pays one teacher forward pass per teacher and view.
Both are measured in benchmarks/RESULTS.md ("Distillation modes").

The run records its teachers (config.json's `derived.distill`, summary.json's `distill`).
`distill.teachers` defines a run (`fer_flax.run.workdir.RUN_IDENTITY_KEYS`): a resume with another set is
refused. A resumed run restores each teacher at the checkpoint step it started with, so a teacher that
trained on in the meantime does not change the targets midway. The other distill keys may change on a
resume (recorded in config_history.jsonl).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from ml_collections import ConfigDict

from fer_flax.base import atomic_files
from fer_flax.core import metrics
from fer_flax.data import ArraySplit, records
from fer_flax.data.spec import DataSpec
from fer_flax.inference import engine as inference
from fer_flax.run import trained
from fer_flax.run.checkpoint_errors import NoRestorableCheckpointError
from fer_flax.training import init_from, steps

CACHE_FOLDER = "distill"
_CACHE_VERSION = 1  # part of the cache key: raise it when the targets' definition changes
_PROGRESS_IMAGES = 8192  # about this many images between two progress lines


class DistillError(ValueError):
    """`config.distill.teachers` cannot teach this run; the message names the teacher(s)."""


@dataclasses.dataclass(frozen=True)
class Teacher:
    """One restored teacher and the views it is scored with."""

    given: str  # as config.distill.teachers has it
    checkpoint: str | int  # what was asked for: 'best', 'latest' or a step
    restored: trained.Restored
    tta_mode: str
    crop_size: int

    def record(self) -> dict[str, Any]:
        r = self.restored
        return {
            "teacher": self.given,
            "workdir": r.workdir,
            "checkpoint": self.checkpoint,
            "checkpoint_step": r.step,
            "weights": r.weights,
            "model": f"{r.config.model_name}/{r.config.model.variant}",
            "tta": self.tta_mode,
        }


@dataclasses.dataclass(frozen=True)
class Distillation:
    """A run's teachers and how it learns from them."""

    teachers: tuple[Teacher, ...]
    mode: str
    alpha: float
    temperature: float
    targets_files: tuple[str, ...] = ()  # cached mode: each teacher's probabilities, in order

    def models(self) -> steps.TeacherModels:
        return steps.TeacherModels(
            apply_fns=tuple(t.restored.model.apply for t in self.teachers),
            tta_modes=tuple(t.tta_mode for t in self.teachers),
            crop_sizes=tuple(t.crop_size for t in self.teachers),
        )

    def variables(self) -> tuple[dict, ...]:
        return tuple(t.restored.variables for t in self.teachers)

    def step_arguments(self) -> tuple[steps.TeacherModels | None, tuple]:
        """(teachers, teacher_variables) for the train step: the teachers only on the fly."""
        return (self.models(), self.variables()) if self.mode == "on_the_fly" else (None, ())

    def record(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "alpha": self.alpha,
            "temperature": self.temperature,
            "teachers": [t.record() for t in self.teachers],
            "targets_files": list(self.targets_files),
        }


def _load_teacher(
    given: str, pinned_step: int | None, spec: DataSpec, mesh: jax.sharding.Mesh, workdir: str, views: Any
) -> Teacher:
    path, checkpoint = init_from.parse_init_from(given)
    if path == os.path.abspath(workdir):
        raise DistillError(f"{given!r} is this run's own workdir; a run cannot teach itself")
    if not os.path.isfile(os.path.join(path, "config.json")):
        raise DistillError(f"{given!r}: {path} is not a fer_flax training workdir (no config.json)")
    try:
        restored = trained.restore(path, checkpoint if pinned_step is None else pinned_step, mesh=mesh)
    except (FileNotFoundError, ValueError, NoRestorableCheckpointError) as e:
        raise DistillError(f"{given!r}: {e}") from e
    ours = (tuple(spec.class_names), tuple(spec.image_shape))
    theirs = (tuple(restored.spec.class_names), tuple(restored.spec.image_shape))
    if theirs != ours:
        raise DistillError(
            f"{given!r} predicts classes {list(theirs[0])} from images {theirs[1]}; this run trains "
            f"classes {list(ours[0])} on images {ours[1]}"
        )
    config = restored.config
    tta_mode = views or config.eval_tta  # a run's own views unless distill.tta says
    crop_size = config.augment.crop_size
    return Teacher(given, checkpoint, restored, tta_mode, int(crop_size))


def load_teachers(
    config: ConfigDict,
    spec: DataSpec,
    mesh: jax.sharding.Mesh,
    workdir: str,
    record: dict[str, Any] | None = None,
) -> Distillation | None:
    """Restores `config.distill.teachers` for a run in `workdir` (None without teachers), before any
    data is read. `record` is a resumed run's `derived.distill`: its teachers are restored at the
    checkpoint steps it started with. Raises DistillError naming every teacher that is not a finished
    run, cannot be restored, or predicts other classes or image shapes than this run's."""
    if steps.distill_settings(config) is None:
        return None
    pinned = {t["teacher"]: t["checkpoint_step"] for t in (record or {}).get("teachers", [])}
    teachers, problems = [], []
    for given in config.distill.teachers:
        try:
            teachers.append(_load_teacher(given, pinned.get(given), spec, mesh, workdir, config.distill.tta))
        except DistillError as e:
            problems.append(str(e))
    if problems:
        raise DistillError("config.distill.teachers: " + "; ".join(problems))
    return Distillation(
        tuple(teachers), config.distill.mode, float(config.distill.alpha), float(config.distill.temperature)
    )


def teacher_targets(
    distillation: Distillation,
    images: np.ndarray,
    *,
    batch_size: int,
    mesh: jax.sharding.Mesh | None = None,
    say: Callable[..., Any] = print,
) -> np.ndarray:
    """float32 [N, K]: the teachers' probabilities at T of uint8 `images` [N, H, W(, C)] as they are
    (no augmentation), through `fer_flax.inference.engine` with each teacher's views; what
    `steps.teacher_probabilities` computes inside the step, on the host. Says its progress."""
    n = len(distillation.teachers)
    probs = [
        _one_teacher(t, distillation.temperature, images, batch_size, mesh, say, f"{i}/{n}")
        for i, t in enumerate(distillation.teachers, 1)
    ]
    return _mean(probs)


def _mean(probs: list[np.ndarray]) -> np.ndarray:
    return (np.sum(np.asarray(probs, np.float64), axis=0) / len(probs)).astype(np.float32)


def _one_teacher(
    teacher: Teacher,
    temperature: float,
    images: np.ndarray,
    batch_size: int,
    mesh: jax.sharding.Mesh | None,
    say: Callable[..., Any],
    which: str = "1/1",
) -> np.ndarray:
    """float32 [N, K]: one teacher's softmax(mean logit over its views / T) of `images`."""
    n, step = len(images), max(1, _PROGRESS_IMAGES // batch_size) * batch_size
    start, model, variables = time.perf_counter(), teacher.restored.model, teacher.restored.variables
    parts = []
    for lo in range(0, n, step):
        logits = inference.predict_logits(
            model,
            variables,
            images[lo : lo + step],
            batch_size=batch_size,
            mesh=mesh,
            tta_mode=teacher.tta_mode,
            crop_size=teacher.crop_size,
        )
        parts.append(metrics.softmax(logits / temperature).astype(np.float32))
        done, seconds = min(lo + step, n), time.perf_counter() - start
        say(
            f"  teacher {which} ({teacher.given}, {teacher.tta_mode} views): "
            f"{done}/{n} images, {seconds:.0f} s ({done / max(seconds, 1e-9):.0f} images/s)"
        )
    return np.concatenate(parts)


def _digest(teacher: Teacher, temperature: float, split: ArraySplit) -> str:
    """One teacher's cache key: its model, variables and views, T, and the training images. Keys are
    per teacher, so an ensemble reuses what its members already computed, alone or in other sets."""
    h = hashlib.sha256()
    about = {
        "version": _CACHE_VERSION,
        "temperature": temperature,
        "images": list(split.images.shape),
        "teachers": [  # a list of one, so that cache files already written keep their keys
            {
                "model": teacher.restored.config.model.to_dict(),
                "family": teacher.restored.config.model_name,
                "dtype": teacher.restored.config.dtype,
                "tta": teacher.tta_mode,
                "crop_size": teacher.crop_size,
            }
        ],
    }
    h.update(json.dumps(about, sort_keys=True, default=str).encode())
    for leaf in jax.tree.leaves(teacher.restored.variables):
        local = leaf.addressable_data(0) if isinstance(leaf, jax.Array) else leaf
        h.update(np.ascontiguousarray(np.asarray(local)).tobytes())
    if records.is_lazy(split):  # records: their description and files, not a read of every image
        h.update(split.images.fingerprint().encode())
    else:
        h.update(np.ascontiguousarray(split.images).tobytes())
    return h.hexdigest()[:32]


def _read_targets(file: str, shape: tuple[int, int]) -> np.ndarray | None:
    """The cached targets in `file`, or None when they are unreadable or not [N, K] distributions."""
    try:
        probs = np.load(file)
    except (OSError, ValueError):
        return None
    if probs.shape != shape or probs.dtype != np.float32 or not np.isfinite(probs).all():
        return None
    return probs if np.allclose(probs.sum(axis=1), 1.0, atol=1e-4) else None


def with_targets(
    distillation: Distillation,
    split: ArraySplit,
    config: ConfigDict,
    mesh: jax.sharding.Mesh,
    cache_dir: str,
    say: Callable[..., Any] = print,
) -> tuple[ArraySplit, Distillation]:
    """In cached mode, the training `split` with its `teacher_probs` and the distillation with its
    `targets_files`; on the fly, both unchanged. Each teacher's probabilities are read from
    `cache_dir`, or computed with `config.eval_batch_size` and written there atomically by process 0,
    then averaged over the teachers. Multi-process runs always compute them: every process takes part
    in the inference collectively."""
    if distillation.mode != "cached":
        return split, distillation
    t, n, shape = distillation.temperature, len(distillation.teachers), (len(split), split.num_classes)
    say(f"Distillation targets of {len(split)} training images at T={t:g}, one file per teacher:")
    files, probs = [], []
    for i, teacher in enumerate(distillation.teachers, 1):
        file = os.path.join(cache_dir, CACHE_FOLDER, f"{_digest(teacher, t, split)}.npy")
        cached = None
        if jax.process_count() == 1 and os.path.exists(file):
            cached = _read_targets(file, shape)
            say(
                f"  teacher {i}/{n} ({teacher.given}): {file}"
                + (" (cached)" if cached is not None else " is damaged; recomputing")
            )
        if cached is None:
            cached = _one_teacher(teacher, t, split.images, config.eval_batch_size, mesh, say, f"{i}/{n}")
            if jax.process_index() == 0:
                os.makedirs(os.path.dirname(file), exist_ok=True)
                atomic_files.write_with(file, lambda f, p=cached: np.save(f, p))
                say(f"  teacher {i}/{n} saved to {file}")
        files.append(file)
        probs.append(cached)
    split = dataclasses.replace(split, teacher_probs=_mean(probs))
    return split, dataclasses.replace(distillation, targets_files=tuple(files))
