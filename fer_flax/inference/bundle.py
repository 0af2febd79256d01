"""Make the bundled model (the one `predict`, `evaluate`, `explain`, `export` and `Recognizer` use
without a workdir) from any finished run.

Command:
  python -m fer_flax.bundle --workdir W [--checkpoint best|latest|STEP] [--weights raw|ema]
      [--dtype bfloat16|float16|float32] [--data FER2013_CSV] [--out DIR]

Writes into DIR (default: the package's `fer_flax/bundled/`; an earlier bundle there is replaced as a
whole, any other non-empty folder is refused) the files `fer_flax.run.bundled` describes: the weights
(`weights.msgpack`, params in `--dtype`), the run's config.json, bundle.json and a model card
(`MODEL_CARD.md`, `fer_flax.inference.model_card`). With `--data`, the card and bundle.json get the
PublicTest figures (the `val` split: accuracy overall and per class, calibration ECE, the most frequent
confusions), measured by loading the written files back and evaluating them with the run's test-time
augmentation, so they are the bundled model's own figures, storage precision included.

bfloat16 halves the weights against float32 (the CPU recipe's model: about 2 MB); bundles over 5 MB
are written with a note, as they make the package heavy.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from absl import flags

from fer_flax import cli
from fer_flax.config import choices as config_choices
from fer_flax.core import parallel
from fer_flax.data import default_cache_dir, sources
from fer_flax.inference import evaluate, model_card
from fer_flax.run import bundled, trained
from fer_flax.run.staged_outputs import StagedOutputs, check_replaceable

LARGE_BUNDLE_BYTES = 5_000_000


def build(
    workdir: str,
    out: str | os.PathLike | None = None,
    *,
    checkpoint: str | int = "best",
    weights: str = "raw",
    dtype: str = "bfloat16",
    data_path: str | None = None,
    announce: Callable[[str], object] = print,
) -> dict:
    """Writes the bundle of `workdir`'s checkpoint into `out` (default: the package's bundled folder)
    and returns its manifest (bundle.json), with `figures` measured on `data_path`'s PublicTest when
    given (None otherwise)."""
    out = check_replaceable(bundled.folder_of(out), bundled.MANIFEST_FILE, "fer_flax.bundle")
    mesh = parallel.make_mesh()
    restored = trained.restore(workdir, checkpoint, mesh=mesh, weights=weights)
    with StagedOutputs(out, replaces=bundled.MANIFEST_FILE) as staged:
        folder = os.path.dirname(staged.path(bundled.MANIFEST_FILE))
        manifest = bundled.write(restored, folder, dtype=dtype)
        if data_path is not None:
            member = bundled.load(folder, mesh=mesh)
            split, data_config = evaluate.load_eval_split(
                [member], "val", data_path, announce=announce, cache_dir=default_cache_dir(workdir)
            )
            report = evaluate.evaluate_split(
                [member],
                split,
                batch_size=restored.config.eval_batch_size,
                tta_mode=manifest["tta"],
                crop_size=restored.config.augment.crop_size,
                mesh=mesh,
            )
            manifest["figures"] = model_card.figures(report, data=os.path.basename(data_config.path))
            bundled.write_manifest(folder, manifest)
        synthetic = sources.resolve_format(restored.config.data) == "synthetic"
        with open(os.path.join(folder, bundled.CARD_FILE), "w") as f:
            f.write(model_card.render(manifest, synthetic=synthetic))
        staged.commit()
    return manifest


def describe(manifest: dict, out: str) -> str:
    """One line per fact: what was bundled where, its size and its PublicTest accuracy."""
    src = manifest["source"]
    lines = [
        f"bundled {src['model_name']}/{src['variant']} of {src['run']} (step {src['checkpoint_step']}, "
        f"{src['weights']} weights, params in {manifest['storage_dtype']}: {manifest['bytes'] / 1e6:.2f} MB) "
        f"into {out}"
    ]
    fig = manifest["figures"]
    if fig:
        lines.append(
            f"  PublicTest ({fig['num_examples']} faces, TTA {fig['tta']}): accuracy {fig['accuracy']:.4f}, "
            f"balanced {fig['balanced_accuracy']:.4f}, macro-F1 {fig['macro_f1']:.4f}, ECE {fig['ece']:.4f}"
        )
    else:
        lines.append("  no figures: give --data (the FER2013 CSV) to measure PublicTest for the card")
    if manifest["bytes"] > LARGE_BUNDLE_BYTES:
        lines.append(
            f"  note: over {LARGE_BUNDLE_BYTES / 1e6:.0f} MB of package data; --dtype bfloat16 halves float32"
        )
    lines.append(f"  edit {os.path.join(out, bundled.CARD_FILE)}: its intended use and limitations")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------ command line


# Absl logging at ERROR: Orbax warns about every read-only checkpoint folder it opens.
COMMAND = cli.Command(log_level="error")


def define_flags() -> None:
    flags.DEFINE_string("workdir", None, "The finished training run to bundle.")
    flags.DEFINE_string("checkpoint", "best", "'best' (by val accuracy), 'latest' or a step number.")
    flags.DEFINE_enum("weights", "raw", list(config_choices.WEIGHT_SETS), "The run's raw or EMA weights.")
    flags.DEFINE_enum("dtype", "bfloat16", list(bundled.STORAGE_DTYPES), "How the params are stored.")
    flags.DEFINE_string("data", None, "FER2013 CSV (or image folders): measure PublicTest for the card.")
    flags.DEFINE_string("out", None, "Folder to write (default: the package's fer_flax/bundled/).")
    flags.mark_flag_as_required("workdir")


def main(argv: list[str]) -> None:
    del argv  # the program name only: the preamble refuses positional arguments
    f = flags.FLAGS
    # Expected errors (a missing workdir or data, damaged checkpoints, a refused --out): one line, via cli.
    manifest = build(
        f.workdir, f.out, checkpoint=f.checkpoint, weights=f.weights, dtype=f.dtype, data_path=f.data
    )
    print(describe(manifest, str(bundled.folder_of(f.out).resolve())))
