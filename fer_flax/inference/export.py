"""A trained run as a portable model that runs without fer_flax: a `jax.export` artifact and ONNX.

Command:
  python -m fer_flax.export [--workdir W] --out DIR [--checkpoint best|latest|STEP] [--weights raw|ema]
      [--tta run|none|flip|tencrop] [--formats jax,onnx] [--platforms cpu,cuda]

Without --workdir the model bundled with fer_flax is exported (`fer_flax.run.bundled`).

The exported function takes uint8 grayscale faces [B, 48, 48], any batch size B, and returns float32
class probabilities [B, 7] (in `CLASS_NAMES` order). Inside: the inference preprocessing
(`augment.preprocess`), the test-time augmentation (the run's `config.eval_tta` unless --tta; logits
averaged over the views, as `inference.evaluate` does) and a softmax, with the weights as constants. The
model is built with the families' stock Flax ops (not the CPU kernels), so the program is the same on
every platform.

DIR (written all at once; an earlier export there is replaced, anything else is refused):
  model.jaxexport  `jax.export` serialization (StableHLO), symbolic batch, lowered for --platforms;
                   loads with `jax.export.deserialize` in any jax that supports its calling convention
  model.onnx       ONNX (input "images" uint8 [B, 48, 48], output "probabilities"), converted by
                   jax2onnx (the optional `onnx` extra); see docs/explain-and-export.md for what it
                   cannot convert
  load_model.py    a loader and runner that needs only jax, numpy and flatbuffers (which
                   `jax.export.deserialize` imports and jax does not install)
  model.json       what the files hold: input, output, class names, TTA, source run, versions, checks

Without --formats, the ONNX model is written when the `onnx` extra is installed and the model converts,
and a note says why when it is not. Before anything is written each artifact is run on a probe batch and
must give fer_flax's own probabilities (`engine.member_probabilities`) to within `JAX_TOLERANCE`
(`ONNX_TOLERANCE` for onnxruntime).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging as std_logging
import os
import warnings
from collections.abc import Callable, Sequence
from importlib import metadata

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from absl import flags

from fer_flax import cli
from fer_flax.base.extras import install_extra
from fer_flax.config import choices as config_choices
from fer_flax.config import schema as config_schema
from fer_flax.core import forward, parallel, tta
from fer_flax.data.splits import CLASS_NAMES, IMAGE_SIZE
from fer_flax.inference import engine as inference
from fer_flax.run import bundled
from fer_flax.run.staged_outputs import StagedOutputs, check_replaceable
from fer_flax.run.trained import Restored

JAX_FILE, ONNX_FILE, LOADER_FILE, MARKER = "model.jaxexport", "model.onnx", "load_model.py", "model.json"
FORMATS: tuple[str, ...] = ("jax", "onnx")
PLATFORMS: tuple[str, ...] = ("cpu", "cuda", "rocm", "tpu")
DEFAULT_PLATFORMS: tuple[str, ...] = ("cpu", "cuda")
JAX_TOLERANCE = 1e-5
ONNX_TOLERANCE = 1e-4
ONNX_OPSET = 23
PROBE_BATCH = 5  # odd, so no batch size of the export's own tracing is special
ONNX_EXTRA_HINT = f"install the optional extra: {install_extra('onnx')}"

LOADER = '''"""Runs an exported fer_flax model without fer_flax: it needs jax, numpy and flatbuffers
(`pip install jax numpy flatbuffers`; jax's deserializer imports flatbuffers, which jax does not
install).

    python load_model.py faces.npy [probabilities.npy]

faces.npy: uint8 grayscale face crops [B, 48, 48], any B. Prints each face's class and writes the
float32 probabilities [B, 7] to the second file if given. In your own code: `exported, names = load()`,
then `exported.call(faces)`.
"""

import json
import pathlib
import sys

try:
    import flatbuffers  # noqa: F401  (jax.export's deserializer needs it; jax does not install it)
except ImportError:
    sys.exit("load_model.py needs flatbuffers, which jax does not install: pip install flatbuffers")

import numpy as np
from jax import export

HERE = pathlib.Path(__file__).resolve().parent


def load(folder=HERE):
    """(the deserialized jax.export.Exported, the class names in output order)."""
    folder = pathlib.Path(folder)
    info = json.loads((folder / "model.json").read_text())
    exported = export.deserialize(bytearray((folder / info["jax"]["file"]).read_bytes()))
    return exported, info["class_names"]


if __name__ == "__main__":
    exported, class_names = load()
    faces = np.load(sys.argv[1])
    probabilities = np.asarray(exported.call(faces))
    for i, p in enumerate(probabilities):
        print(i, class_names[int(p.argmax())], f"{p.max():.3f}")
    if len(sys.argv) > 2:
        np.save(sys.argv[2], probabilities)
'''


class ExportError(ValueError):
    """A model or option that cannot be exported, or an export that does not match fer_flax."""


def portable_model(model: nn.Module) -> nn.Module:
    """`model` with the seam's stock ops (`nn.Conv`, `nn.max_pool`) in place of any platform kernels:
    the same parameters and function, a program every platform compiles."""
    return model.clone(conv=nn.Conv, max_pool=nn.max_pool)


def probability_fn(restored: Restored, tta_mode: str, crop_size: int = tta.DEFAULT_CROP_SIZE) -> Callable:
    """uint8 [B, 48, 48] -> float32 probabilities [B, K]: `forward.logits_step` (preprocessing and TTA)
    and a softmax, with the run's variables as constants."""
    model = portable_model(restored.model)
    variables = jax.device_get(restored.variables)

    def probabilities(images: jax.Array) -> jax.Array:
        logits = forward.logits_step(model.apply, variables, images, tta_mode=tta_mode, crop_size=crop_size)
        return jax.nn.softmax(logits, axis=-1)

    return probabilities


def input_spec() -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct(jax.export.symbolic_shape(f"b, {IMAGE_SIZE}, {IMAGE_SIZE}"), jnp.uint8)


def export_jax(fn: Callable, platforms: Sequence[str] = DEFAULT_PLATFORMS) -> jax.export.Exported:
    """The `jax.export` of `fn` for uint8 [b, 48, 48] with a symbolic batch `b`."""
    return jax.export.export(jax.jit(fn), platforms=tuple(platforms))(input_spec())


def onnx_available() -> bool:
    try:
        import jax2onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def export_onnx(fn: Callable, name: str) -> bytes:
    """The ONNX model of `fn` (jax2onnx; input "images" uint8 [B, 48, 48], output "probabilities")."""
    from jax2onnx import to_onnx

    quiet = [std_logging.getLogger(n) for n in ("jax2onnx", "onnx_ir", "onnxscript")]
    levels = [q.level for q in quiet]
    try:
        for q in quiet:
            q.setLevel(std_logging.ERROR)
        # jax2onnx prints debugging lines and imports plugins that use deprecated jax names.
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            proto = to_onnx(
                fn,
                [input_spec()],
                model_name=name,
                opset=ONNX_OPSET,
                input_names=["images"],
                output_names=["probabilities"],
            )
    except Exception as e:  # jax2onnx reports an unsupported operation with many exception types
        raise ExportError(f"jax2onnx cannot convert this model ({type(e).__name__}: {str(e)[:300]})") from e
    finally:
        for q, level in zip(quiet, levels, strict=True):
            q.setLevel(level)
    return proto.SerializeToString()


def run_jax(blob: bytes, images: np.ndarray) -> np.ndarray:
    return np.asarray(jax.export.deserialize(bytearray(blob)).call(images))


def run_onnx(blob: bytes, images: np.ndarray) -> np.ndarray:
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3  # errors only: jax2onnx's layout annotations draw shape warnings
    try:
        session = onnxruntime.InferenceSession(blob, options, providers=["CPUExecutionProvider"])
        return session.run(None, {session.get_inputs()[0].name: images})[0]
    except Exception as e:  # onnxruntime raises its own exception types for graphs it refuses
        raise ExportError(f"onnxruntime cannot run the converted model ({type(e).__name__}: {e})") from e


def probe_images(n: int = PROBE_BATCH, seed: int = 0) -> np.ndarray:
    """Deterministic uint8 probes: noise, and smooth ramps (so every value range is exercised)."""
    rng = np.random.default_rng(seed)
    noise = rng.integers(0, 256, (n - n // 2, IMAGE_SIZE, IMAGE_SIZE), dtype=np.uint8)
    ramp = np.linspace(0, 255, IMAGE_SIZE)[None, :] * np.linspace(0.2, 1, IMAGE_SIZE)[:, None]
    ramps = np.stack([np.roll(ramp, 7 * i, axis=1) for i in range(n // 2)]).astype(np.uint8)
    return np.concatenate([noise, ramps])


def reference_probabilities(
    restored: Restored, images: np.ndarray, tta_mode: str, crop_size: int
) -> np.ndarray:
    """fer_flax's own probabilities (the inference path), float32."""
    mesh = parallel.make_mesh(jax.local_devices()[:1])
    probs = inference.member_probabilities(
        [restored], images, batch_size=len(images), tta_mode=tta_mode, crop_size=crop_size, mesh=mesh
    )
    return probs.astype(np.float32)


def check_against(name: str, got: np.ndarray, expected: np.ndarray, tolerance: float) -> float:
    """The largest absolute difference; ExportError when above `tolerance`."""
    diff = float(np.max(np.abs(np.asarray(got, np.float64) - expected)))
    if not np.isfinite(diff) or diff > tolerance:
        raise ExportError(f"the {name} export differs from fer_flax by {diff:.3g} (allowed {tolerance:g})")
    return diff


# ------------------------------------------------------------------------------------ the export


def _file_record(name: str, blob: bytes, max_abs_diff: float, **extra) -> dict:
    return {
        "file": name,
        "bytes": len(blob),
        "sha256": hashlib.sha256(blob).hexdigest(),
        "max_abs_diff_vs_fer_flax": max_abs_diff,
        **extra,
    }


def _onnx_artifact(fn: Callable, name: str, probes, expected, *, strict: bool) -> tuple[bytes | None, dict]:
    """(the ONNX model or None, its model.json record); a failure raises only when `strict`."""
    try:
        if not onnx_available():
            raise ExportError(f"ONNX export needs jax2onnx and onnxruntime: {ONNX_EXTRA_HINT}")
        blob = export_onnx(fn, name)
        diff = check_against("ONNX", run_onnx(blob, probes), expected, ONNX_TOLERANCE)
    except ExportError as e:
        if strict:
            raise
        return None, {"skipped": str(e)}
    versions = {p: metadata.version(p) for p in ("jax2onnx", "onnxruntime")}
    return blob, _file_record(ONNX_FILE, blob, diff, opset=ONNX_OPSET, converted_with=versions)


def export_run(
    restored: Restored,
    out: str,
    *,
    tta_mode: str | None = None,
    crop_size: int = tta.DEFAULT_CROP_SIZE,
    formats: Sequence[str] | None = None,
    platforms: Sequence[str] = DEFAULT_PLATFORMS,
) -> dict:
    """Exports, checks and writes DIR (see the module docstring); returns model.json's record.
    `formats` None: jax, and onnx where it can be made; given: each one or an ExportError."""
    check_replaceable(out, MARKER, "fer_flax.export")  # before any work
    for f in formats or ():
        config_schema.check_choice("--formats", f, FORMATS)
    for p in platforms:
        config_schema.check_choice("--platforms", p, PLATFORMS)
    here = jax.default_backend()
    if here not in platforms and (formats is None or "jax" in formats):
        raise ExportError(f"--platforms must include this machine's platform ({here}) to check the export")
    tta_mode = tta.check_mode(tta_mode or restored.config.eval_tta, "--tta")
    fn = probability_fn(restored, tta_mode, crop_size)
    probes = probe_images()
    expected = reference_probabilities(restored, probes, tta_mode, crop_size)
    blobs, record = {}, {}
    if formats is None or "jax" in formats:
        exported = export_jax(fn, platforms)
        blob = bytes(exported.serialize())
        diff = check_against("jax.export", run_jax(blob, probes), expected, JAX_TOLERANCE)
        blobs[JAX_FILE] = blob
        record["jax"] = _file_record(
            JAX_FILE,
            blob,
            diff,
            platforms=list(exported.platforms),
            calling_convention_version=exported.calling_convention_version,
            exported_with=f"jax {jax.__version__}",
        )
    if formats is None or "onnx" in formats:
        name = f"fer_flax_{restored.config.model_name}_{restored.config.model.variant}"
        blob, record["onnx"] = _onnx_artifact(fn, name, probes, expected, strict=formats is not None)
        if blob is not None:
            blobs[ONNX_FILE] = blob
    info = {
        "class_names": list(CLASS_NAMES),
        "input": {"name": "images", "dtype": "uint8", "shape": ["B", IMAGE_SIZE, IMAGE_SIZE]},
        "output": {"name": "probabilities", "dtype": "float32", "shape": ["B", len(CLASS_NAMES)]},
        "inside": "(x / 255 - 0.5) / 0.25, test-time augmentation (logits averaged over views), softmax",
        "tta": tta_mode,
        "crop_size": crop_size if tta_mode == "tencrop" else None,
        "source": restored.describe(),
        "checked_on": f"{len(probes)} probe images against fer_flax.inference.engine.member_probabilities",
        **record,
    }
    with StagedOutputs(out, replaces=MARKER) as staged:
        for file, blob in blobs.items():
            with open(staged.path(file), "wb") as f:
                f.write(blob)
        if JAX_FILE in blobs:
            with open(staged.path(LOADER_FILE), "w") as f:
                f.write(LOADER)
        with open(staged.path(MARKER), "w") as f:
            json.dump(info, f, indent=2)
        staged.commit()
    return info


# ------------------------------------------------------------------------------------ command line


# Absl logging at ERROR: Orbax warns about every read-only checkpoint folder it opens.
COMMAND = cli.Command(log_level="error")


def define_flags() -> None:
    flags.DEFINE_string("workdir", None, "Training workdir of the model (default: the bundled model).")
    flags.DEFINE_string("out", None, "Folder for the exported model.")
    flags.DEFINE_string("checkpoint", "best", "'best', 'latest' or a step number.")
    flags.DEFINE_enum("weights", "raw", list(config_choices.WEIGHT_SETS), "The run's raw or EMA weights.")
    flags.DEFINE_enum(
        "tta", "run", ["run", *tta.TTA_MODES], "Test-time augmentation ('run': config.eval_tta)."
    )
    flags.DEFINE_integer("crop_size", tta.DEFAULT_CROP_SIZE, "Ten-crop crop side (of 48).")
    flags.DEFINE_list("formats", None, "Of jax, onnx (default: jax, and onnx where it can be made).")
    flags.DEFINE_list("platforms", list(DEFAULT_PLATFORMS), "Platforms the jax.export artifact runs on.")
    flags.mark_flag_as_required("out")


def main(argv: list[str]) -> None:
    del argv  # the program name only: the preamble refuses positional arguments
    f = flags.FLAGS
    # Expected errors (a missing workdir, damaged checkpoints, a refused --out): one line, via cli.
    check_replaceable(f.out, MARKER, "fer_flax.export")  # before the model is restored
    mesh = parallel.make_mesh(jax.local_devices()[:1])
    restored = bundled.load_model(f.workdir, f.checkpoint, mesh=mesh, weights=f.weights)
    info = export_run(
        restored,
        f.out,
        tta_mode=None if f.tta == "run" else f.tta,
        crop_size=f.crop_size,
        formats=f.formats,
        platforms=f.platforms,
    )
    print(
        f"exported {restored.config.model_name}/{restored.config.model.variant} (step {restored.step}, "
        f"TTA {info['tta']}) to {os.path.abspath(f.out)}"
    )
    for kind in FORMATS:
        r = info.get(kind)
        if r and "skipped" in r:
            print(f"  {kind}: skipped: {r['skipped']}")
        elif r:
            diff = r["max_abs_diff_vs_fer_flax"]
            print(f"  {r['file']}: {r['bytes']:,} bytes, max |difference| from fer_flax {diff:.2g}")
