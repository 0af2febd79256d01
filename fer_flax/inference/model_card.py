"""The bundled model's card: the figures an evaluation gives (`figures`) and the Markdown card
(`render`), a skeleton whose measured parts are filled in and whose judgement parts (intended use,
limitations) start from what holds for any FER2013 model.

The figures are measured on PublicTest (the `val` split, on which training selected its checkpoint),
from the bundled files themselves (their stored precision included), with the test-time augmentation
that `predict` and `Recognizer` use (the run's `eval_tta`). So loading the bundled model and
evaluating it on the same data reproduces them; tests/inference/test_bundle.py checks that.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

TOP_CONFUSIONS = 5
SPLIT_NAME = "PublicTest (the `val` split)"


def top_confusions(confusion: Sequence[Sequence[int]], class_names: Sequence[str], n: int) -> list[dict]:
    """The `n` largest off-diagonal cells of a confusion matrix (rows true): true and predicted class,
    the number of faces and their share of the true class; largest first, ties by class order."""
    cm = np.asarray(confusion, np.int64)
    cells = [(int(cm[t, p]), t, p) for t in range(len(cm)) for p in range(len(cm)) if t != p and cm[t, p] > 0]
    cells.sort(key=lambda c: (-c[0], c[1], c[2]))
    return [
        {
            "true": class_names[t],
            "predicted": class_names[p],
            "faces": count,
            "share_of_true": count / int(cm[t].sum()),
        }
        for count, t, p in cells[:n]
    ]


def figures(report: dict, *, data: str) -> dict:
    """What the card reports of an evaluation report (`inference.evaluate.evaluate_split`)."""
    return {
        "split": "val",
        "data": data,
        "num_examples": report["num_examples"],
        "tta": report["tta"],
        "accuracy": report["accuracy"],
        "balanced_accuracy": report["balanced_accuracy"],
        "macro_f1": report["macro_f1"],
        "nll": report["nll"],
        "ece": report["ece"],
        "ece_bins": report["calibration"]["num_bins"],
        "per_class": {
            name: {k: s[k] for k in ("recall", "precision", "f1", "support")}
            for name, s in report["per_class"].items()
        },
        "top_confusions": top_confusions(report["confusion_matrix"], report["class_names"], TOP_CONFUSIONS),
    }


def _figures_section(fig: dict | None) -> list[str]:
    if fig is None:
        return [
            "Not measured: this bundle was built without data. Rebuild it with `--data` (the FER2013 CSV)",
            "to measure its PublicTest figures.",
        ]
    lines = [
        f"{SPLIT_NAME} of `{fig['data']}`: {fig['num_examples']} faces, test-time augmentation "
        f"`{fig['tta']}`, measured from the bundled files (stored precision included).",
        "",
        "| accuracy | balanced accuracy | macro-F1 | NLL | ECE |",
        "|---|---|---|---|---|",
        f"| {fig['accuracy']:.4f} | {fig['balanced_accuracy']:.4f} | {fig['macro_f1']:.4f} "
        f"| {fig['nll']:.4f} | {fig['ece']:.4f} ({fig['ece_bins']} bins) |",
        "",
        "Per class (accuracy on the class's faces = recall):",
        "",
        "| class | accuracy (recall) | precision | F1 | faces |",
        "|---|---|---|---|---|",
    ]
    for name, s in fig["per_class"].items():
        lines.append(
            f"| {name} | {s['recall']:.4f} | {s['precision']:.4f} | {s['f1']:.4f} | {s['support']} |"
        )
    lines += [
        "",
        "Most frequent confusions:",
        "",
        "| true | predicted as | faces | share of the true class |",
    ]
    lines.append("|---|---|---|---|")
    for c in fig["top_confusions"]:
        lines.append(f"| {c['true']} | {c['predicted']} | {c['faces']} | {c['share_of_true']:.3f} |")
    return lines


def render(manifest: dict, *, synthetic: bool) -> str:
    """MODEL_CARD.md of a bundle from its manifest (bundle.json); `synthetic`: trained on the built-in
    synthetic faces, which the card then says first."""
    src = manifest["source"]
    params = (
        f"{src['num_params'] / 1e6:.2f}M parameters"
        if src.get("num_params")
        else "parameters: see config.json"
    )
    size = manifest["bytes"] / 1e6
    tta = manifest["tta"] + (f" (crops of {manifest['crop_size']})" if manifest["crop_size"] else "")
    lines = [f"# Model card: fer_flax's bundled model ({src['model_name']}/{src['variant']})", ""]
    if synthetic:
        lines += [
            "**Trained on fer_flax's built-in SYNTHETIC faces, not on real faces: its labels for real "
            "photos mean nothing.** Rebuild the bundle from a run trained on FER2013.",
            "",
        ]
    lines += [
        "## Model",
        "",
        f"- Architecture: Flax linen `{src['model_name']}`, variant `{src['variant']}`, {params}.",
        f"- Source: the run `{src['run']}` trained on `{src['data'] or 'synthetic faces'}`, checkpoint "
        f"step {src['checkpoint_step']}, its {src['weights']} weights; its config is `config.json` beside "
        "this card.",
        f"- Weights: `{manifest['weights_file']}` ({size:.2f} MB), params stored in "
        f"{manifest['storage_dtype']} and batch statistics in float32, loaded into float32; SHA-256 in "
        "`bundle.json`.",
        f"- Input: a face crop, 48×48 grayscale (FER2013's framing); output: probabilities of "
        f"{', '.join(manifest['class_names'])}.",
        f"- Test-time augmentation: {tta}, as `predict` and `Recognizer` use it.",
        f"- Written by fer_flax {manifest['versions']['fer_flax']} with jax {manifest['versions']['jax']} "
        f"and flax {manifest['versions']['flax']}.",
        "",
        "## PublicTest figures",
        "",
        *_figures_section(manifest.get("figures")),
        "",
        "## Intended use",
        "",
        "Research and demonstrations of facial-expression recognition: labelling the expression of "
        "frontal faces in photos, videos and webcam frames (`python -m fer_flax.predict`, "
        "`fer_flax.Recognizer`). Not for decisions about people: an expression is not an emotion, and "
        "the labels are often wrong.",
        "",
        "## Limitations",
        "",
        "- FER2013's faces were collected by web image search and labelled once each; its labels are noisy "
        "(human accuracy on it is about 65%), and its classes are imbalanced (disgust is rare: read its "
        "per-class figure).",
        "- Faces are found by OpenCV's Haar cascade: profiles, strongly tilted and small (< 24 px) faces "
        "are missed, and the crop's framing affects the label.",
        "- The data's demographics are unknown; accuracy across age, sex and skin tone was not measured.",
        "",
        "## Rebuild",
        "",
        "`python -m fer_flax.bundle --workdir WORKDIR --data FER2013_CSV` from a finished run",
        "(docs/predict.md, 'The bundled model').",
    ]
    return "\n".join(lines) + "\n"
