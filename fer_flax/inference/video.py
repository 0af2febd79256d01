"""Faces in a video file: every N-th frame through detection, FER2013-like cropping and the model,
faces followed across frames by box overlap (`faces.track.IoUTracker`).

`analyze_video` writes into `out_dir` (all files appear together, or none: `StagedOutputs`):
  <stem>.timeline.csv      one row per face per processed frame: frame, time_s, track, box, label,
                           confidence and the 7 class probabilities
  <stem>.tracks.json       the video's frame rate and counts, and per track its first and last
                           frame, the number of frames it was seen in and its mean probabilities
  <stem>.track<ID>.png     each track's class probabilities over time
  <stem>.annotated.mp4     with `annotate_video`: the processed frames with boxes, track ids,
                           labels and probability bars, at the frame rate / N (MPEG-4 Part 2)

Frames are decoded with OpenCV (the `photos` extra). Frames between the sampled ones are only
grabbed, not decoded into images. Sampled frames are classified in chunks of `CHUNK_FRAMES`, all
their faces in one batch.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import sys
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from fer_flax.inference import annotate
from fer_flax.inference.faces import crop as crop_lib
from fer_flax.inference.faces.detect import Box, FaceDetector, import_cv2
from fer_flax.inference.faces.track import IoUTracker
from fer_flax.run import plots
from fer_flax.run.staged_outputs import StagedOutputs

if TYPE_CHECKING:  # the classifier's module imports JAX: `predict --help` needs none
    from fer_flax.inference.faces.classify import FaceClassifier, FacePrediction

VIDEO_EXTENSIONS: tuple[str, ...] = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg")
CHUNK_FRAMES = 16
TIMELINE_COLUMNS = ("frame", "time_s", "track", "x", "y", "width", "height", "label", "confidence")


class VideoReadError(ValueError):
    """A video that cannot be opened or has no decodable frame; the message names the file."""


def is_video(path: str) -> bool:
    return not os.path.isdir(path) and path.lower().endswith(VIDEO_EXTENSIONS)


def _open(path: str):
    cv2 = import_cv2(purpose="reading videos")
    if not os.path.isfile(path):
        raise VideoReadError(f"{path}: no such video file")
    capture = cv2.VideoCapture(path)
    if not capture.isOpened():
        raise VideoReadError(f"{path}: cannot open the video (empty, corrupt or an unsupported codec)")
    return cv2, capture


def check_readable(path: str) -> None:
    """Raises VideoReadError unless `path` opens and its first frame decodes."""
    _, capture = _open(path)
    try:
        ok, _ = capture.read()
    finally:
        capture.release()
    if not ok:
        raise VideoReadError(f"{path}: no frame could be decoded (empty or corrupt video)")


def sampled_frames(path: str, every: int) -> Iterator[tuple[int, np.ndarray]]:
    """(frame index, RGB uint8 [H, W, 3]) of frames 0, every, 2 * every, ..."""
    if every < 1:
        raise ValueError(f"--every must be >= 1, got {every}")
    cv2, capture = _open(path)
    try:
        index = 0
        while capture.grab():
            if index % every == 0:
                ok, bgr = capture.retrieve()
                if not ok:
                    break
                yield index, cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
            index += 1
    finally:
        capture.release()


def frame_rate(path: str) -> float | None:
    cv2, capture = _open(path)
    fps = capture.get(cv2.CAP_PROP_FPS)
    capture.release()
    return float(fps) if fps and fps > 0 else None


@dataclasses.dataclass
class _Frame:
    index: int
    rgb: np.ndarray | None  # kept only for the annotated video
    boxes: list[Box]
    crops: np.ndarray


class _Timeline:
    """Per processed frame: tracker update, CSV rows, per-track series and the annotated video."""

    def __init__(self, fps: float | None, video_path: str | None, every: int):
        self.fps, self.video_path, self.every = fps, video_path, every
        self.tracker = IoUTracker()
        self.rows: list[list] = []
        self.tracks: dict[int, list[tuple[int, np.ndarray]]] = {}
        self.writer = None
        self.frames = 0

    def time(self, frame: int) -> float | None:
        return frame / self.fps if self.fps else None

    def add(self, frame: _Frame, predictions: list[FacePrediction]) -> None:
        self.frames += 1
        ids = self.tracker.update([p.box for p in predictions])
        t = self.time(frame.index)
        for track, p in zip(ids, predictions, strict=True):
            self.tracks.setdefault(track, []).append((frame.index, p.probabilities))
            self.rows.append([frame.index, "" if t is None else f"{t:.3f}", track, *p.box, p.label,
                              f"{p.confidence:.6f}", *(f"{v:.6f}" for v in p.probabilities)])  # fmt: skip
        if self.video_path is not None and frame.rgb is not None:
            self._write_frame(annotate.draw_faces(frame.rgb, predictions, titles=[f"#{i}" for i in ids]))

    def _write_frame(self, rgb: np.ndarray) -> None:
        cv2 = import_cv2(purpose="writing videos")
        if self.writer is None:
            fps = (self.fps or 25.0) / self.every
            size = (rgb.shape[1], rgb.shape[0])
            self.writer = cv2.VideoWriter(self.video_path, cv2.VideoWriter_fourcc(*"mp4v"), fps, size)
            if not self.writer.isOpened():
                raise RuntimeError(f"OpenCV cannot write the annotated video {self.video_path}")
        self.writer.write(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))

    def close(self) -> None:
        if self.writer is not None:
            self.writer.release()
            self.writer = None


def _write_reports(
    out: StagedOutputs,
    stem: str,
    path: str,
    timeline: _Timeline,
    every: int,
    video_name: str | None,
    class_names: tuple[str, ...],
) -> dict:
    csv_name = out.unique_name(stem, ".timeline.csv")
    with open(out.path(csv_name), "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow([*TIMELINE_COLUMNS, *class_names])
        writer.writerows(timeline.rows)
    tracks = []
    for track, series in sorted(timeline.tracks.items()):
        frames = [f for f, _ in series]
        probs = np.stack([p for _, p in series])
        times = [timeline.time(f) if timeline.fps else f for f in frames]
        plot_name = out.unique_name(stem, f".track{track}.png")
        fig = plots.track_probabilities(
            times, probs, title=f"{os.path.basename(path)}: face #{track}",
            xlabel="time (s)" if timeline.fps else "frame", class_names=class_names,
            colors=annotate.class_colors(len(class_names)),
        )  # fmt: skip
        plots.save(fig, out.path(plot_name))
        mean = probs.mean(axis=0)
        tracks.append({
            "track": track, "first_frame": frames[0], "last_frame": frames[-1], "frames": len(frames),
            "label": class_names[int(mean.argmax())],
            "mean_probabilities": {n: float(v) for n, v in zip(class_names, mean, strict=True)},
            "plot": out.final_path(plot_name),
        })  # fmt: skip
    summary = {
        "video": path, "fps": timeline.fps, "every": every, "processed_frames": timeline.frames,
        "faces": len(timeline.rows), "tracks": tracks, "timeline": out.final_path(csv_name),
    }  # fmt: skip
    if video_name:
        summary["annotated_video"] = out.final_path(video_name)
    if not tracks:
        summary["note"] = "no face found"
    json_name = out.unique_name(stem, ".tracks.json")
    with open(out.path(json_name), "w") as f:
        json.dump(summary, f, indent=2)
    return summary


def analyze_video(
    path: str,
    classifier: FaceClassifier,
    *,
    detector: FaceDetector,
    out_dir: str,
    every: int = 1,
    annotate_video: bool = False,
    margin: float = crop_lib.FER2013_MARGIN,
    log: Callable[[str], None] = lambda m: print(m, file=sys.stderr, flush=True),
) -> dict:
    """Predictions for every `every`-th frame of `path`, tracked; writes the files listed in the
    module docstring and returns the tracks summary. VideoReadError for an unreadable video."""
    check_readable(path)
    stem = os.path.splitext(os.path.basename(path))[0]
    with StagedOutputs(out_dir) as out:
        video_name = out.unique_name(stem, ".annotated.mp4") if annotate_video else None
        timeline = _Timeline(frame_rate(path), out.path(video_name) if video_name else None, every)
        chunk: list[_Frame] = []

        def flush() -> None:
            crops = np.concatenate([f.crops for f in chunk])
            probs = iter(classifier(crops))
            for frame in chunk:
                timeline.add(frame, classifier.predictions(frame.boxes, [next(probs) for _ in frame.boxes]))
            log(f"predict: {path}: {timeline.frames} frames processed, {len(timeline.rows)} faces")
            chunk.clear()

        try:
            for index, rgb in sampled_frames(path, every):
                gray = np.asarray(Image.fromarray(rgb).convert("L"))
                boxes = detector.detect(gray)
                crops = classifier.crop(gray if classifier.spec.channels == 1 else rgb, boxes, margin)
                chunk.append(_Frame(index, rgb if annotate_video else None, boxes, crops))
                if len(chunk) >= CHUNK_FRAMES:
                    flush()
            if chunk:
                flush()
        finally:
            timeline.close()
        if timeline.frames == 0:
            raise VideoReadError(f"{path}: no frame could be decoded (empty or corrupt video)")
        summary = _write_reports(out, stem, path, timeline, every, video_name, classifier.spec.class_names)
        out.commit()
    return summary
