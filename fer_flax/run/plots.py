"""PNG figures: training curves, confusion matrices, reliability diagrams and prediction grids.

Built on `matplotlib.figure.Figure` with the Agg canvas directly, never `pyplot`: no global backend
is switched (a notebook importing fer_flax keeps its own), no display is needed, and no figure
lingers in pyplot's registry.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from fer_flax.data.splits import CLASS_NAMES


def save(fig: Figure, path: str | os.PathLike, *, dpi: int = 120) -> str:
    """Writes `fig` as a PNG (creating the folder) and returns the path."""
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=dpi, format="png")
    return path


def to_array(fig: Figure, *, dpi: int = 100) -> np.ndarray:
    """The rendered figure as uint8 RGB [H, W, 3] (what `wandb.Image` takes)."""
    fig.set_dpi(dpi)
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


# ------------------------------------------------------------------------------------ training curves


def _series(records: list[dict], key: str) -> tuple[list[int], list[float]]:
    points = [(r["step"], r[key]) for r in records if isinstance(r.get(key), (int, float))]
    return [p[0] for p in points], [p[1] for p in points]


def training_curves(records: list[dict], title: str = "") -> Figure:
    """Loss and accuracy against step: train (per log step) and val (per evaluation)."""
    fig = Figure(figsize=(10, 4), layout="constrained")
    for ax, metric in zip(fig.subplots(1, 2), ("loss", "accuracy"), strict=True):
        for split, style, size in (("train", ".-", 3), ("val", "o-", 5)):
            steps, values = _series(records, f"{split}/{metric}")
            if steps:  # markers keep a single point visible
                ax.plot(steps, values, style, label=split, markersize=size)
        ax.set_xlabel("step")
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
        ax.legend()
    if title:
        fig.suptitle(title)
    return fig


# ------------------------------------------------------------------------------------ evaluation


def confusion_figure(
    confusion: Sequence[Sequence[int]], class_names: Sequence[str] = CLASS_NAMES, title: str = ""
) -> Figure:
    """Row-normalised colours (recall per true class) annotated with the raw counts."""
    cm = np.asarray(confusion, dtype=np.int64)
    rows = cm.sum(axis=1, keepdims=True)
    frac = np.divide(cm, rows, out=np.zeros(cm.shape), where=rows > 0)
    fig = Figure(figsize=(6.5, 5.5), layout="constrained")
    ax = fig.subplots()
    im = ax.imshow(frac, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(im, ax=ax, label="fraction of true class")
    k = len(class_names)
    ax.set_xticks(range(k), class_names, rotation=45, ha="right")
    ax.set_yticks(range(k), class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(k):
        for j in range(k):
            ax.text(
                j, i, str(cm[i, j]), ha="center", va="center", fontsize=8,
                color="white" if frac[i, j] > 0.5 else "black",
            )  # fmt: skip
    ax.set_title(title or "Confusion matrix (colour: row-normalised)")
    return fig


def reliability_figure(calibration: dict, ece: float | None = None, title: str = "") -> Figure:
    """Accuracy per confidence bin against the diagonal, with the bin populations underneath."""
    edges = np.asarray(calibration["bin_edges"])
    count = np.asarray(calibration["count"])
    acc = np.asarray(calibration["accuracy"])
    conf = np.asarray(calibration["confidence"])
    centres, width = (edges[:-1] + edges[1:]) / 2, np.diff(edges)
    fig = Figure(figsize=(5.5, 6.5), layout="constrained")
    top, bottom = fig.subplots(2, 1, height_ratios=(3, 1), sharex=True)
    filled = count > 0
    top.bar(centres[filled], acc[filled], width=width[filled], edgecolor="black", label="accuracy")
    top.bar(
        centres[filled], conf[filled] - acc[filled], bottom=acc[filled], width=width[filled],
        color="tab:red", alpha=0.3, edgecolor="tab:red", label="gap to confidence",
    )  # fmt: skip
    top.plot([0, 1], [0, 1], "k--", linewidth=1, label="perfect calibration")
    top.set_ylim(0, 1)
    top.set_ylabel("accuracy")
    top.legend(loc="upper left")
    heading = title or "Reliability diagram"
    if ece is not None:
        heading += f" (ECE {ece:.4f}, {len(count)} bins)"
    top.set_title(heading)
    bottom.bar(centres, count, width=width, color="gray", edgecolor="black")
    bottom.set_xlim(0, 1)
    bottom.set_xlabel("confidence (top-class probability)")
    bottom.set_ylabel("examples")
    return fig


def predictions_grid(
    images: np.ndarray,
    labels: Sequence[int],
    predictions: Sequence[int],
    class_names: Sequence[str] = CLASS_NAMES,
    columns: int = 4,
) -> Figure:
    """A grid of uint8 [N, H, W(, C)] faces titled 'true / predicted' (green right, red wrong)."""
    images = np.asarray(images)
    if images.ndim == 4 and images.shape[-1] == 1:
        images = images[..., 0]
    n = len(images)
    rows = max(1, -(-n // columns))
    fig = Figure(figsize=(1.8 * columns, 2.0 * rows), layout="constrained")
    axes = np.asarray(fig.subplots(rows, columns, squeeze=False)).ravel()
    for i, ax in enumerate(axes):
        ax.set_axis_off()
        if i >= n:
            continue
        ax.imshow(images[i], cmap="gray", vmin=0, vmax=255)
        right = int(labels[i]) == int(predictions[i])
        ax.set_title(
            f"{class_names[int(labels[i])]} / {class_names[int(predictions[i])]}",
            fontsize=8,
            color="tab:green" if right else "tab:red",
        )
    fig.suptitle("true / predicted", fontsize=9)
    return fig


# ------------------------------------------------------------------------------------- video tracks


def track_probabilities(
    times: Sequence[float],
    probabilities: np.ndarray,
    *,
    title: str = "",
    xlabel: str = "time (s)",
    class_names: Sequence[str] = CLASS_NAMES,
    colors: Sequence[tuple[int, int, int]] | None = None,
) -> Figure:
    """One tracked face's class probabilities [T, K] over time, a line per class."""
    probabilities = np.asarray(probabilities)
    fig = Figure(figsize=(7, 3.2), layout="constrained")
    ax = fig.subplots()
    for k, name in enumerate(class_names):
        color = None if colors is None else tuple(c / 255 for c in colors[k])
        ax.plot(times, probabilities[:, k], marker="." if len(times) < 40 else None, label=name, color=color)
    ax.set_ylim(0, 1)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("probability")
    ax.legend(loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8)
    ax.set_title(title, fontsize=10)
    return fig
