"""Classify faces in photos, face crops, videos and a webcam with a trained checkpoint.

Command:
  python -m fer_flax.predict [--workdir W [--workdir W2 ...]] [--checkpoint best|latest|STEP]
      [--tta none|flip|tencrop] [--faces auto|detect|whole] [--detector auto|haar|dnn]
      [--margin 0.125] [--fit stretch|center_crop]
      [--out_dir DIR] [--out preds.json|preds.csv] [--format table|json|csv]
      [--every N] [--annotate_video] PATH [PATH ...]
  python -m fer_flax.predict [--workdir W] --webcam 0

Without --workdir the model bundled with fer_flax is used (`fer_flax.run.bundled`; its card is
fer_flax/bundled/MODEL_CARD.md). A model trained on the built-in synthetic faces gets a note on stderr:
its labels for real photos mean nothing.

PATH is an image file, a folder (searched recursively for *.png, *.jpg, *.jpeg; hidden files are
skipped) or a video file (.mp4, .avi, .mov, ...). Photos of any size and colour go through face
detection (`fer_flax.inference.faces`: MTCNN with landmarks from the `faces-dnn` extra where it is
installed, else OpenCV's Haar cascade from the `photos` extra; `--detector` chooses); each face is
cropped square with a margin, like FER2013's faces (turned so the eyes are level when the detector
found them), and classified with the run's test-time augmentation (`--tta` overrides it). 48x48
images are taken as face crops already and classified whole (`--faces whole` does that for every
image, resizing it as `--fit` says). Each image's faces are printed (table, JSON or CSV) and written
to `--out`; with `--out_dir`, each image also gets a JSON record, an annotated copy and a contact sheet
of its crops (`fer_flax.inference.photos`). Videos need `--out_dir`: a timeline CSV, per-face
probability plots and, with `--annotate_video`, an annotated video (`fer_flax.inference.video`).
`--webcam INDEX` opens a live window (`fer_flax.inference.webcam`).

An unreadable input stops the command with an error naming it, before any output is written.

Preprocessing matches how the training data was prepared (`fer_flax.inference.image_io`): decode with Pillow,
apply the EXIF orientation, grayscale with `convert("L")` (ITU-R 601-2 luma; alpha dropped; 16-bit
scaled to 8 bits), resize to 48x48 with Pillow's bilinear filter (area-averaging when shrinking),
then the training normalisation, `fer_flax.core.augment.preprocess`, on the device.
"""

from __future__ import annotations

import csv
import functools
import io
import json
import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
from absl import app, flags

from fer_flax import cli
from fer_flax.base import output_paths
from fer_flax.base.atomic_files import write_text
from fer_flax.base.errors import check_choice
from fer_flax.config.choices import TTA_MODES
from fer_flax.data import sources
from fer_flax.data.spec import FER2013, DataSpec
from fer_flax.inference import photos, video, webcam
from fer_flax.inference.faces import crop as crop_lib
from fer_flax.inference.faces.detect import DETECTORS, MissingDependencyError, make_detector
from fer_flax.inference.image_io import (
    FIT_MODES,
    ImageReadError,
    collect_inputs,
    fit_whole,
    open_image,
)

# The modules that import JAX are imported where they are used, so that `--help` and the printing
# of results start no JAX.
if TYPE_CHECKING:
    from fer_flax.inference.faces.classify import FaceClassifier
    from fer_flax.run.trained import Restored

OUTPUT_FORMATS: tuple[str, ...] = ("table", "json", "csv")


def load_image(path: str | os.PathLike, *, fit: str = "stretch", spec: DataSpec = FER2013) -> np.ndarray:
    """uint8 face of `spec`'s size from a whole image file that is a face crop (any size, colour or
    grayscale): [H, W] grayscale for a 1-channel spec (FER2013's 48x48), [H, W, 3] RGB for a
    3-channel one; ImageReadError naming the file when it cannot be read."""
    return fit_whole(open_image(path), fit, spec)


def classify(
    members: Sequence[Restored],
    paths: Sequence[str],
    *,
    batch_size: int | None = None,
    tta_mode: str = "none",
    crop_size: int | None = None,
    fit: str = "stretch",
) -> list[dict]:
    """One result per input file, in order: {"path", "label", "probabilities": {class: p}} or
    {"path", "error"}, in the classes (and at the image size) the models were trained with.
    `crop_size`: the ten-crop side (default `tta.DEFAULT_CROP_SIZE`)."""
    from fer_flax.core import tta
    from fer_flax.inference import engine as inference

    spec = members[0].spec
    results: list[dict] = []
    images, ok = [], []
    for path in collect_inputs(paths):
        try:
            images.append(load_image(path, fit=fit, spec=spec))
            ok.append(len(results))
            results.append({"path": path})
        except (ImageReadError, FileNotFoundError) as e:
            results.append({"path": path, "error": str(e)})
    if images:
        probs = inference.member_probabilities(
            members,
            np.stack(images),
            batch_size=batch_size or members[0].config.eval_batch_size,
            tta_mode=tta_mode,
            crop_size=crop_size or tta.DEFAULT_CROP_SIZE,
        )
        for i, p in zip(ok, probs, strict=True):
            results[i]["label"] = spec.class_names[int(np.argmax(p))]
            results[i]["probabilities"] = dict(zip(spec.class_names, map(float, p), strict=True))
    return results


# ------------------------------------------------------------------------------------------- output


def to_json(records: Sequence[dict]) -> str:
    return json.dumps(list(records), indent=2)


def _class_names(records: Sequence[dict]) -> tuple[str, ...]:
    """The classes the records are in (FER2013's when no face was classified)."""
    faces = (face for r in records for face in r["faces"])
    return next((tuple(face["probabilities"]) for face in faces), FER2013.class_names)


def _face_rows(records: Sequence[dict]):
    """(path, face number or None, face record or None, note) per face; one row for a faceless image."""
    for r in records:
        if not r["faces"]:
            yield r["path"], None, None, r.get("note", "")
        for i, face in enumerate(r["faces"], start=1):
            yield r["path"], i, face, ""


def to_csv(records: Sequence[dict]) -> str:
    """One row per face (an image without faces gets one row with only its path and note)."""
    names = _class_names(records)
    columns = ("path", "face", "x", "y", "width", "height", "label", "confidence", *names, "note")
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(columns)
    for path, i, face, note in _face_rows(records):
        if face is None:
            writer.writerow([path, *[""] * (len(columns) - 2), note])
            continue
        box, probs = face["box"], [f"{face['probabilities'][n]:.6f}" for n in names]
        writer.writerow([path, i, box["x"], box["y"], box["width"], box["height"], face["label"],
                         f"{face['confidence']:.6f}", *probs, note])  # fmt: skip
    return buf.getvalue()


def to_table(records: Sequence[dict]) -> str:
    names = _class_names(records)
    width = max([len(r["path"]) for r in records] + [4])
    head = f"{'path':<{width}}  face  {'box (x,y,w,h)':<19}  {'label':<9}"
    lines = [head + "".join(f"{n[:8]:>9}" for n in names)]
    for path, i, face, note in _face_rows(records):
        if face is None:
            lines.append(f"{path:<{width}}  -     {note}")
            continue
        box = ",".join(str(face["box"][k]) for k in ("x", "y", "width", "height"))
        probs = "".join(f"{face['probabilities'][n]:>9.4f}" for n in names)
        lines.append(f"{path:<{width}}  {i:<4}  {box:<19}  {face['label']:<9}{probs}")
    return "\n".join(lines)


def render(results: Sequence[dict], fmt: str) -> str:
    if fmt not in OUTPUT_FORMATS:
        check_choice("--format", fmt, OUTPUT_FORMATS)
    return {"table": to_table, "json": to_json, "csv": to_csv}[fmt](results)


def output_format(out: str | None, fmt: str | None) -> str:
    """--format wins; otherwise the extension of --out (.json or .csv); otherwise a table."""
    if fmt:
        return fmt
    if out:
        ext = os.path.splitext(out)[1].lower()
        if ext in (".json", ".csv"):
            return ext[1:]
        raise ValueError(f"--out {out!r}: use a .json or .csv name, or say --format json|csv")
    return "table"


# ------------------------------------------------------------------------------------ command line


# Absl logging at ERROR: Orbax warns about every read-only checkpoint folder it opens. No optional
# face detector or no camera is the user's to fix, like a missing file: one line.
COMMAND = cli.Command(
    arguments=True,
    log_level="error",
    expected_errors=(MissingDependencyError, webcam.WebcamUnavailable),
)


def define_flags() -> None:
    flags.DEFINE_multi_string(
        "workdir", None, "Training workdir; repeat for an ensemble. Without it: the bundled model."
    )
    flags.DEFINE_string("checkpoint", "best", "'best' (by val accuracy), 'latest' or a step number.")
    flags.DEFINE_enum("tta", None, list(TTA_MODES), "TTA; default: the run's eval_tta.")
    flags.DEFINE_integer("crop_size", None, "Ten-crop crop side (default: the run's augment.crop_size).")
    flags.DEFINE_enum("faces", "auto", list(photos.FACE_MODES),
                      "auto: detect faces except in 48x48 crops; detect: always; whole: never.")  # fmt: skip
    flags.DEFINE_enum("detector", "auto", list(DETECTORS),
                      "Face detector: haar, dnn (MTCNN, with landmarks: eye-aligned crops), or auto: dnn "
                      "when the faces-dnn extra is installed, else haar.")  # fmt: skip
    flags.DEFINE_float("margin", crop_lib.FER2013_MARGIN, "Margin around a detected face, of its side.")
    flags.DEFINE_enum("fit", "stretch", list(FIT_MODES), "How a whole non-square image becomes 48x48.")
    flags.DEFINE_string("out_dir", None, "Per-input outputs: JSON records, annotated copies, plots.")
    flags.DEFINE_string("out", None, "Write the photos' predictions to this .json or .csv file.")
    flags.DEFINE_enum("format", None, list(OUTPUT_FORMATS), "Printed format (default: table).")
    flags.DEFINE_integer("batch_size", None, "Largest batch; default: the run's eval_batch_size.")
    flags.DEFINE_integer("every", 1, "Videos: classify every N-th frame.")
    flags.DEFINE_bool("annotate_video", False, "Videos: also write an annotated video.")
    flags.DEFINE_integer("webcam", None, "Open camera INDEX in a live window instead of reading files.")


def make_classifier(
    members: Sequence[Restored],
    tta_mode: str | None = None,
    crop_size: int | None = None,
    batch_size: int | None = None,
) -> FaceClassifier:
    """The run's test-time augmentation (eval_tta and its ten-crop size) unless overridden."""
    from fer_flax.inference.faces.classify import FaceClassifier

    config = members[0].config
    return FaceClassifier(
        members,
        tta_mode=tta_mode or config.eval_tta,
        crop_size=crop_size or config.augment.crop_size,
        max_batch=batch_size,
    )


def predict_inputs(
    paths: Sequence[str],
    classifier: FaceClassifier,
    *,
    faces: str = "auto",
    fit: str = "stretch",
    margin: float = crop_lib.FER2013_MARGIN,
    detector: str = "auto",
    out_dir: str | None = None,
    every: int = 1,
    annotate_video: bool = False,
) -> tuple[list[dict], list[dict]]:
    """(photo records, video summaries) of image files, folders and videos; every video is checked
    readable before any output is written."""
    videos = [p for p in paths if video.is_video(p)]
    images = [p for p in paths if not video.is_video(p)]
    if videos and out_dir is None:
        raise ValueError("videos write a timeline, plots and an optional video: give --out_dir DIR")
    for v in videos:
        video.check_readable(v)
    get_detector = functools.cache(lambda: make_detector(detector, log=_stderr))
    records = []
    if images:
        records = photos.analyze_photos(
            images, classifier, detector=get_detector, faces=faces, fit=fit, margin=margin, out_dir=out_dir
        )
    summaries = [
        video.analyze_video(
            v,
            classifier,
            detector=get_detector(),
            out_dir=out_dir,
            every=every,
            annotate_video=annotate_video,
            margin=margin,
        )
        for v in videos
    ]
    return records, summaries


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def describe_video(summary: dict) -> str:
    tracks = ", ".join(
        f"#{t['track']} {t['label']} (frames {t['first_frame']}-{t['last_frame']})" for t in summary["tracks"]
    )
    return (
        f"{summary['video']}: {summary['processed_frames']} frames processed, {summary['faces']} faces, "
        f"{len(summary['tracks'])} tracked: {tracks or 'no face found'}; timeline {summary['timeline']}"
    )


def main(argv: list[str]) -> None:
    paths = argv[1:]
    f = flags.FLAGS
    if not paths and f.webcam is None:
        raise app.UsageError("give at least one image file, folder or video, or --webcam INDEX")
    # Expected errors (an unreadable input, a missing detector or camera): one line, via cli.
    file_format = output_format(f.out, None) if f.out else None
    # The outputs, before any model or input is read: a path that cannot be written fails now.
    if f.out:
        output_paths.check_file("--out", f.out)
    if f.out_dir:
        output_paths.check_folder("--out_dir", f.out_dir, staged=True)
    camera = webcam.check_available(f.webcam) if f.webcam is not None else None
    from fer_flax.inference import engine
    from fer_flax.run import trained

    members = engine.load_members(f.workdir, f.checkpoint)  # no --workdir: the bundled model
    if any(sources.resolve_format(m.config.data) == "synthetic" for m in members):
        print(sources.SYNTHETIC_MODEL_NOTICE, file=sys.stderr)
    which = trained.parse_checkpoint(f.checkpoint)
    for m in members:  # on stderr: stdout holds the predictions, as JSON or CSV if asked
        model = f"{m.config.model_name}/{m.config.model.variant}"
        used = trained.checkpoint_used(m.describe(), which)
        print(f"Predicting with {m.workdir} ({model}, {used})", file=sys.stderr)
    classifier = make_classifier(members, f.tta, f.crop_size, f.batch_size)
    if camera is not None:
        webcam.run(camera, classifier, make_detector(f.detector, log=_stderr), margin=f.margin)
        return
    records, summaries = predict_inputs(
        paths, classifier, faces=f.faces, fit=f.fit, margin=f.margin, detector=f.detector,
        out_dir=f.out_dir, every=f.every, annotate_video=f.annotate_video,
    )  # fmt: skip
    if records:
        print(render(records, f.format or "table"))
        if f.out:
            write_text(f.out, render(records, file_format))
    for summary in summaries:
        print(describe_video(summary))
    for r in records:
        if not r["faces"]:
            print(f"{r['path']}: no face found", file=sys.stderr)
    if f.out_dir:
        print(f"Outputs written to {os.path.abspath(f.out_dir)}", file=sys.stderr)
