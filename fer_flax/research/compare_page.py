"""The comparison report's table, figures and page (`fer_flax.research.compare` gathers the numbers).

The HTML page holds everything it shows: styles inline and figures as base64 PNG `data:` images, so
it opens from disk in any browser, without a server or network, and can be mailed or archived as one
file. Figures are drawn with `matplotlib.figure.Figure` on the Agg canvas (no pyplot, no display),
one colour per run throughout.
"""

from __future__ import annotations

import base64
import html
import io
import math
from collections.abc import Callable, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from fer_flax.research.leaderboard import format_params, format_seconds

NOT_REACHED = "–"  # a threshold no evaluation reached
UNKNOWN = "—"  # a number the run's files do not give


# ------------------------------------------------------------------------------------------ table


def _number(value: float | None, spec: str) -> str:
    return UNKNOWN if value is None else format(value, spec)


def format_gflops(value: float | None) -> str:
    """GFLOPs with three significant digits, never in exponent notation above 0.001."""
    if value is None:
        return UNKNOWN
    return f"{value:.1f}" if value >= 100 else (f"{value:.3g}" if value >= 1e-3 else f"{value:.1e}")


def _time_to(run: dict, key: str) -> str:
    if not run["curve"]:  # no evaluation logged: not known, rather than not reached
        return UNKNOWN
    reached = run["time_to_accuracy"].get(key)
    return NOT_REACHED if reached is None else format_seconds(reached["train_seconds"])


def columns(result: dict) -> list[tuple[str, Callable[[dict], str]]]:
    """(header, cell of a run) for every column of the table, the same in HTML and Markdown."""
    tag = f"{result['split']}, TTA {result['tta']}"
    cols: list[tuple[str, Callable[[dict], str]]] = [
        ("run", lambda r: r["name"] + ("" if r["finished"] else " (running)")),
        ("model", lambda r: f"{r['model_name']}/{r['variant']}"),
        ("params", lambda r: format_params(r["num_params"])),
        ("GFLOPs/image", lambda r: format_gflops(r["evaluation"]["gflops_per_image"])),
        ("best step", lambda r: str(r["evaluation"]["checkpoint_step"])),
        (f"accuracy ({tag})", lambda r: _number(r["evaluation"]["accuracy"], ".4f")),
        ("balanced acc.", lambda r: _number(r["evaluation"]["balanced_accuracy"], ".4f")),
        ("macro-F1", lambda r: _number(r["evaluation"]["macro_f1"], ".4f")),
        ("train img/s", lambda r: _number(r["images_per_sec"], ".0f")),
        ("train time", lambda r: format_seconds(r["train_seconds"])),
    ]
    for threshold in result["thresholds"]:
        key = f"{threshold:.2f}"
        cols.append((f"to {threshold:.0%}", lambda r, key=key: _time_to(r, key)))
    return cols


NOTES = (
    "Accuracy, balanced accuracy (mean per-class recall) and macro-F1: the best checkpoint of each run, "
    "evaluated here. GFLOPs/image: the matrix work of one image's forward pass (one view). Train img/s: "
    "median of the logged training windows. Train time: seconds in training steps (compilation "
    "included, evaluations not). To N%: training time up to the first evaluation at or above N% "
    f"validation accuracy ({NOT_REACHED}: never reached)."
)


def markdown_table(result: dict) -> str:
    """The table as Markdown, with one line of notes."""
    cols = columns(result)
    lines = ["| " + " | ".join(h for h, _ in cols) + " |", "|" + "---|" * len(cols)]
    for run in result["runs"]:
        lines.append("| " + " | ".join(cell(run).replace("|", "\\|") for _, cell in cols) + " |")
    return "\n".join([*lines, "", NOTES, ""])


# ----------------------------------------------------------------------------------------- figures


def png_data_uri(fig: Figure, *, dpi: int = 100) -> str:
    """The figure as a `data:image/png;base64,...` URI."""
    FigureCanvasAgg(fig)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _time_unit(seconds: float) -> tuple[float, str]:
    if seconds >= 3 * 3600:
        return 3600.0, "hours"
    return (60.0, "minutes") if seconds >= 180 else (1.0, "seconds")


def curves_figure(runs: Sequence[dict], x: str, thresholds: Sequence[float] = ()) -> Figure:
    """Validation accuracy at each evaluation of every run against `x`: "epoch" or "train_seconds"
    (training time, in a unit that suits the longest run). Dotted lines mark the thresholds."""
    fig = Figure(figsize=(6.0, 4.0), layout="constrained")
    ax = fig.subplots()
    longest = max((p["train_seconds"] for r in runs for p in r["curve"]), default=0.0)
    scale, unit = (1.0, "") if x == "epoch" else _time_unit(longest)
    for i, run in enumerate(runs):
        points = [p for p in run["curve"] if p[x] is not None]
        xs, ys = [p[x] / scale for p in points], [p["accuracy"] for p in points]
        ax.plot(xs, ys, "o-", color=f"C{i}", markersize=4, label=run["name"])
    for threshold in thresholds:
        ax.axhline(threshold, color="gray", linestyle=":", linewidth=1.0)
        ax.annotate(
            f"{threshold:.0%}", (1.0, threshold), xycoords=("axes fraction", "data"), xytext=(3, 0),
            textcoords="offset points", va="center", fontsize=7, color="gray",
        )  # fmt: skip
    ax.set_xlim(left=0)
    ax.set_xlabel("epoch" if x == "epoch" else f"training time ({unit})")
    ax.set_ylabel("validation accuracy")
    ax.set_title(f"Learning curves against {'epochs' if x == 'epoch' else 'training time'}")
    ax.grid(alpha=0.3)
    if runs:
        ax.legend(fontsize=8)
    return fig


def confusion_figure(runs: Sequence[dict], per_row: int = 3) -> Figure:
    """Each run's confusion matrix side by side, row-normalised (the fraction of each true class
    predicted as each class, in %), on one colour scale."""
    n = max(len(runs), 1)
    cols, rows = min(n, per_row), math.ceil(n / per_row)
    fig = Figure(figsize=(3.9 * cols + 0.8, 3.9 * rows), layout="constrained")
    axes = np.asarray(fig.subplots(rows, cols, squeeze=False)).ravel()
    image = None
    for ax, run in zip(axes, runs, strict=False):
        evaluation = run["evaluation"]
        cm = np.asarray(evaluation["confusion_matrix"], dtype=np.float64)
        totals = cm.sum(axis=1, keepdims=True)
        frac = np.divide(cm, totals, out=np.zeros(cm.shape), where=totals > 0)
        image = ax.imshow(frac, cmap="Blues", vmin=0.0, vmax=1.0)
        names = [c[:7] for c in evaluation["class_names"]]
        ax.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=7)
        ax.set_yticks(range(len(names)), names, fontsize=7)
        for (i, j), value in np.ndenumerate(frac):
            color = "white" if value > 0.5 else "black"
            ax.text(j, i, f"{100 * value:.0f}", ha="center", va="center", fontsize=6, color=color)
        ax.set_title(f"{run['name']} (acc. {evaluation['accuracy']:.3f})", fontsize=9)
        ax.set_xlabel("predicted", fontsize=8)
        ax.set_ylabel("true", fontsize=8)
    for ax in axes[len(runs) :]:
        ax.set_axis_off()
    if image is not None:
        fig.colorbar(image, ax=axes.tolist(), label="fraction of the true class", shrink=0.8)
    return fig


def class_union(runs: Sequence[dict]) -> list[str]:
    """Every class any run was evaluated on, in the order they first appear."""
    return list(dict.fromkeys(c for r in runs for c in r["evaluation"]["class_names"]))


def f1_figure(runs: Sequence[dict]) -> Figure:
    """Per-class F1 as grouped bars: a group per class, a bar per run."""
    classes = class_union(runs)
    fig = Figure(figsize=(max(7.5, 1.1 * len(classes) + 2), 4.2), layout="constrained")
    ax = fig.subplots()
    width = 0.8 / max(len(runs), 1)
    for i, run in enumerate(runs):
        per_class = run["evaluation"]["per_class"]
        xs = [k + (i - (len(runs) - 1) / 2) * width for k, c in enumerate(classes) if c in per_class]
        ax.bar(
            xs,
            [per_class[c]["f1"] for c in classes if c in per_class],
            width,
            color=f"C{i}",
            label=run["name"],
        )
    ax.set_xticks(range(len(classes)), classes)
    ax.set_ylim(0, 1)
    ax.set_ylabel("F1")
    ax.set_title("Per-class F1")
    ax.grid(axis="y", alpha=0.3)
    if runs:  # beside the axes: bars reach the top
        ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.0, 0.5))
    return fig


# -------------------------------------------------------------------------------------------- page

_STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em auto; max-width: 1200px;
       padding: 0 1em; color: #222; }
table { border-collapse: collapse; font-size: 14px; margin: 1em 0; }
th, td { border: 1px solid #ccc; padding: 4px 8px; }
th { background: #f3f3f3; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
p.notes, p.settings { font-size: 13px; color: #555; max-width: 1100px; }
div.row { display: flex; flex-wrap: wrap; gap: 1em; }
div.row figure { flex: 1 1 480px; }
figure { margin: 1em 0; }
figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
"""


def _settings(result: dict) -> str:
    runs = result["runs"]
    sizes = sorted({r["evaluation"]["num_examples"] for r in runs})
    sources = sorted({r["evaluation"]["data_source"] for r in runs})
    data = result["data_path"] or "each run's own data"
    return (
        f"Best checkpoint of each run on split <b>{html.escape(result['split'])}</b> "
        f"({', '.join(map(str, sizes))} examples; {html.escape(', '.join(sources))}: "
        f"{html.escape(data)}), test-time augmentation <b>{html.escape(result['tta'])}</b>."
    )


def html_table(result: dict) -> str:
    cols = columns(result)
    head = "".join(f"<th>{html.escape(h)}</th>" for h, _ in cols)
    rows = []
    for run in result["runs"]:
        cells = [cell(run) for _, cell in cols]
        tds = [f'<td class="{"name" if i < 2 else "num"}">{html.escape(c)}</td>' for i, c in enumerate(cells)]
        rows.append(f'<tr class="run">{"".join(tds)}</tr>')
    return (
        f'<table id="runs">\n<thead><tr>{head}</tr></thead>\n<tbody>\n'
        + "\n".join(rows)
        + "\n</tbody></table>"
    )


def _figure(fig: Figure, alt: str, caption: str) -> str:
    return (
        f'<figure><img alt="{html.escape(alt)}" src="{png_data_uri(fig)}">'
        f"<figcaption>{html.escape(caption)}</figcaption></figure>"
    )


def html_page(result: dict) -> str:
    """The whole report as one self-contained HTML page."""
    runs, thresholds = result["runs"], result["thresholds"]
    figures = [
        _figure(curves_figure(runs, "epoch", thresholds), "learning curves against epochs",
                "Validation accuracy at each evaluation against epochs."),
        _figure(curves_figure(runs, "train_seconds", thresholds), "learning curves against training time",
                "The same against training time (seconds in training steps)."),
        _figure(confusion_figure(runs), "confusion matrices",
                "Confusion matrices of the evaluation, row-normalised (% of each true class)."),
        _figure(f1_figure(runs), "per-class F1", "F1 of each class in the evaluation."),
    ]  # fmt: skip
    title = f"Comparison of {len(runs)} run{'s' if len(runs) != 1 else ''}"
    return "\n".join(
        [
            '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">',
            f"<title>fer_flax: {html.escape(title)}</title>\n<style>{_STYLE}</style>\n</head>\n<body>",
            f"<h1>{html.escape(title)}</h1>",
            f'<p class="settings">{_settings(result)}</p>',
            html_table(result),
            f'<p class="notes">{html.escape(NOTES)}</p>',
            "<h2>Learning curves</h2>",
            f'<div class="row">{figures[0]}{figures[1]}</div>',
            "<h2>Confusion matrices</h2>",
            figures[2],
            "<h2>Per-class F1</h2>",
            figures[3],
            "</body>\n</html>\n",
        ]
    )
