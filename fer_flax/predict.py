"""Classify image files and folders with a trained checkpoint.

Command:
  python -m fer_flax.predict --workdir W [--workdir W2 ...] [--checkpoint best|latest|STEP]
      [--tta none|flip|tencrop] [--fit stretch|center_crop] [--out preds.json|preds.csv]
      [--format table|json|csv] PATH [PATH ...]

PATH is an image file or a folder (searched recursively for *.png, *.jpg, *.jpeg; hidden files are
skipped). Each image gets the predicted label and the 7 class probabilities, printed as a table (or
JSON/CSV with `--format`) and written to `--out` (JSON or CSV by its extension). A file that cannot
be read gets an error line of its own and every other file is still classified; the exit status is
1 when any input failed, 0 otherwise.

Preprocessing matches how the training data was prepared:
  1. decode with Pillow, applying the EXIF orientation (phone photos are often stored rotated);
  2. grayscale with Pillow's `convert("L")` (ITU-R 601-2 luma, L = 0.299 R + 0.587 G + 0.114 B);
     alpha is dropped, as the FER2013 folder reader drops it; 16-bit grayscale is scaled to 8 bits;
  3. 48x48 with `Image.Resampling.BILINEAR`. FER2013 images are already 48x48, so this step only
     touches user images. Bilinear is torchvision's default `Resize` filter, and Pillow widens the
     filter by the reduction factor when shrinking, so a large photo is area-averaged (no aliasing)
     rather than point-sampled. `--fit stretch` (default) resizes the whole image, as FER2013's
     face crops were; `--fit center_crop` first takes the centred square, keeping the aspect ratio;
  4. the training normalisation, `fer_flax.augment.preprocess`, applied on the device.
The input should be a face crop: like FER2013, the models have only ever seen centred faces.
"""

from __future__ import annotations

import csv
import io
import json
import os
import sys
from collections.abc import Sequence

import numpy as np
from absl import app, flags, logging
from PIL import Image, ImageOps

from fer_flax import config_schema, inference, runtime, tta
from fer_flax.data.image_folders import IMAGE_EXTENSIONS
from fer_flax.data.spec import FER2013, DataSpec
from fer_flax.model_state import Restored

RESAMPLE = Image.Resampling.BILINEAR
FIT_MODES: tuple[str, ...] = ("stretch", "center_crop")
OUTPUT_FORMATS: tuple[str, ...] = ("table", "json", "csv")


class ImageReadError(ValueError):
    """An input image that cannot be read; the message names the file and the reason."""


def load_image(path: str | os.PathLike, *, fit: str = "stretch", spec: DataSpec = FER2013) -> np.ndarray:
    """uint8 face of `spec`'s size from any PNG/JPEG (any size, colour or grayscale): [H, W] grayscale
    for a 1-channel spec (FER2013's 48x48), [H, W, 3] RGB for a 3-channel one."""
    if fit not in FIT_MODES:
        config_schema.check_choice("--fit", fit, FIT_MODES)
    try:
        with Image.open(path) as im:
            im.load()
            im = ImageOps.exif_transpose(im)
            if im.mode == "I" or im.mode.startswith("I;16"):
                # 16-bit grayscale PNG (Pillow opens it as I;16, or I in older versions):
                # convert("L") would clip at 255 instead of rescaling.
                wide = np.asarray(im, dtype=np.float64)
                im = Image.fromarray(np.round(wide / 257.0).astype(np.uint8), mode="L")
            gray = im.convert("L" if spec.channels == 1 else "RGB")
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        # Pillow reports unreadable and truncated files as OSError (UnidentifiedImageError) and some
        # malformed headers as ValueError or SyntaxError.
        raise ImageReadError(f"{path}: cannot read image ({type(e).__name__}: {e})") from e
    height, width = spec.image_size
    if fit == "center_crop" and gray.width * height != gray.height * width:
        # The largest centred box of the spec's aspect ratio.
        scale = min(gray.width / width, gray.height / height)
        box_w, box_h = round(width * scale), round(height * scale)
        left, top = (gray.width - box_w) // 2, (gray.height - box_h) // 2
        gray = gray.crop((left, top, left + box_w, top + box_h))
    if gray.size != (width, height):
        gray = gray.resize((width, height), RESAMPLE)
    return np.asarray(gray, dtype=np.uint8)


def collect_inputs(paths: Sequence[str]) -> list[str]:
    """Files in the order given; folders expanded recursively (sorted) to their PNG/JPEG files.
    A path that does not exist is kept, so it gets its own error."""
    out: list[str] = []
    for p in paths:
        if not os.path.isdir(p):
            out.append(p)
            continue
        found = []
        for dirpath, dirnames, filenames in os.walk(p):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for name in filenames:
                if not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS):
                    found.append(os.path.join(dirpath, name))
        out.extend(sorted(found))
    return out


def classify(
    members: Sequence[Restored],
    paths: Sequence[str],
    *,
    batch_size: int | None = None,
    tta_mode: str = "none",
    crop_size: int = tta.DEFAULT_CROP_SIZE,
    fit: str = "stretch",
) -> list[dict]:
    """One result per input file, in order: {"path", "label", "probabilities": {class: p}} or
    {"path", "error"}, in the classes (and at the image size) the models were trained with."""
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
            crop_size=crop_size,
        )
        for i, p in zip(ok, probs, strict=True):
            results[i]["label"] = spec.class_names[int(np.argmax(p))]
            results[i]["probabilities"] = dict(zip(spec.class_names, map(float, p), strict=True))
    return results


# ------------------------------------------------------------------------------------------- output


def to_json(results: Sequence[dict]) -> str:
    return json.dumps(list(results), indent=2)


def _class_names(results: Sequence[dict]) -> tuple[str, ...]:
    """The classes the results are in (FER2013's when every input failed)."""
    return next((tuple(r["probabilities"]) for r in results if "probabilities" in r), FER2013.class_names)


def to_csv(results: Sequence[dict]) -> str:
    """Columns: path, label, one probability per class, error (empty on success)."""
    names = _class_names(results)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["path", "label", *names, "error"])
    for r in results:
        if "error" in r:
            writer.writerow([r["path"], "", *[""] * len(names), r["error"]])
        else:
            probs = [f"{r['probabilities'][name]:.6f}" for name in names]
            writer.writerow([r["path"], r["label"], *probs, ""])
    return buf.getvalue()


def to_table(results: Sequence[dict]) -> str:
    names = _class_names(results)
    width = max([len(r["path"]) for r in results] + [4])
    lines = [f"{'path':<{width}}  {'label':<9}" + "".join(f"{n[:8]:>9}" for n in names)]
    for r in results:
        if "error" in r:
            lines.append(f"{r['path']:<{width}}  ERROR    {r['error']}")
        else:
            probs = "".join(f"{r['probabilities'][n]:>9.4f}" for n in names)
            lines.append(f"{r['path']:<{width}}  {r['label']:<9}{probs}")
    return "\n".join(lines)


def render(results: Sequence[dict], fmt: str) -> str:
    if fmt not in OUTPUT_FORMATS:
        config_schema.check_choice("--format", fmt, OUTPUT_FORMATS)
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


def define_flags() -> None:
    flags.DEFINE_multi_string("workdir", None, "Training workdir; repeat for an ensemble.")
    flags.DEFINE_string("checkpoint", "best", "'best' (by val accuracy), 'latest' or a step number.")
    flags.DEFINE_enum("tta", "none", list(tta.TTA_MODES), "Test-time augmentation.")
    flags.DEFINE_integer("crop_size", tta.DEFAULT_CROP_SIZE, "Ten-crop crop side (of 48).")
    flags.DEFINE_enum("fit", "stretch", list(FIT_MODES), "How a non-square image becomes 48x48.")
    flags.DEFINE_string("out", None, "Write the predictions to this .json or .csv file.")
    flags.DEFINE_enum("format", None, list(OUTPUT_FORMATS), "Printed format (default: table).")
    flags.DEFINE_integer("batch_size", None, "Global batch size; default: the run's eval_batch_size.")
    flags.mark_flag_as_required("workdir")


def main(argv: list[str]) -> None:
    paths = argv[1:]
    if not paths:
        raise app.UsageError("give at least one image file or folder to classify")
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.ERROR)  # Orbax warns about read-only checkpoint folders
    runtime.start()
    f = flags.FLAGS
    try:
        file_format = output_format(f.out, None) if f.out else None
        members = inference.load_members(f.workdir, f.checkpoint)
        results = classify(
            members,
            paths,
            batch_size=f.batch_size,
            tta_mode=f.tta,
            crop_size=f.crop_size,
            fit=f.fit,
        )
    except (FileNotFoundError, ValueError) as e:
        sys.exit(f"error: {e}")
    if not results:
        sys.exit(f"error: no PNG/JPEG images found in {', '.join(paths)}")
    print(render(results, f.format or "table"))
    if f.out:
        with open(f.out, "w") as out:
            out.write(render(results, file_format))
    failed = [r for r in results if "error" in r]
    for r in failed:
        print(f"error: {r['error']}", file=sys.stderr)
    if failed:
        print(f"{len(failed)} of {len(results)} input(s) could not be classified.", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    define_flags()
    app.run(main)
