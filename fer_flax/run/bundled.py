"""The model that ships inside the package: one trained run's weights, config and data spec as package
data, loaded with no training, no data and no workdir.

`fer_flax/bundled/` (beside this package) holds, once built:

  weights.msgpack  the params (stored in bfloat16, float16 or float32) and batch statistics (float32),
                   serialized with `flax.serialization.msgpack_serialize`: plain arrays, no pickle, so
                   loading it runs no code
  config.json      the run's `config.json` ({"config", "derived"}: the model and its data spec), with
                   absolute paths reduced to their last component (they name folders of the machine
                   that trained it)
  bundle.json      what the files hold: the source run, checkpoint step and weight set, the storage
                   dtype, the weights' size and SHA-256, the test-time augmentation and the figures
                   measured from these very files (`figures`, when built with data)
  MODEL_CARD.md    the model card

`load()` gives a `Restored` like `trained.restore(workdir)` does, so every command and the Python API
run it through the one inference path. `write` makes the first three files from a restored run;
`python -m fer_flax.bundle` (`fer_flax.inference.bundle`) adds the figures and the card. A copy of
fer_flax may ship no bundled model: `load` then raises `BundledModelMissing`, saying how to get one.
"""

from __future__ import annotations

import hashlib
import json
import os
from importlib import metadata
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import serialization

from fer_flax.base.atomic_files import write_json, write_with
from fer_flax.config import schema as config_schema
from fer_flax.core import parallel
from fer_flax.core.model import create_model, initial_variables
from fer_flax.run import trained
from fer_flax.run import workdir as workdir_lib
from fer_flax.run.trained import Restored

BUNDLED_DIR = Path(__file__).resolve().parents[1] / "bundled"
WEIGHTS_FILE, CONFIG_FILE, MANIFEST_FILE, CARD_FILE = (
    "weights.msgpack",
    workdir_lib.CONFIG_FILE,
    "bundle.json",
    "MODEL_CARD.md",
)
STORAGE_DTYPES: tuple[str, ...] = ("bfloat16", "float16", "float32")
FORMAT_VERSION = 1
BUILD_COMMAND = "python -m fer_flax.bundle --workdir WORKDIR --data FER2013_CSV"


class BundledModelMissing(FileNotFoundError):
    """This copy of fer_flax ships no bundled model; the message says how to get one."""


def folder_of(folder: str | os.PathLike | None = None) -> Path:
    """`folder`, or the package's own bundled-model folder."""
    return BUNDLED_DIR if folder is None else Path(folder)


def is_present(folder: str | os.PathLike | None = None) -> bool:
    """Whether `folder` (default: the package's) holds a bundled model."""
    folder = folder_of(folder)
    return all((folder / name).is_file() for name in (WEIGHTS_FILE, CONFIG_FILE, MANIFEST_FILE))


def read_manifest(folder: str | os.PathLike | None = None) -> dict:
    """bundle.json of `folder` (default: the package's); BundledModelMissing when there is no model."""
    folder = folder_of(folder)
    if not is_present(folder):
        where = (
            "this copy of fer_flax ships no bundled model" if folder == BUNDLED_DIR else "no bundled model"
        )
        raise BundledModelMissing(
            f"{where} ({folder} lacks {WEIGHTS_FILE}, {CONFIG_FILE} or {MANIFEST_FILE}): pass --workdir W "
            f"of a trained run, or build the bundled model from a finished run with `{BUILD_COMMAND}` "
            "(docs/predict.md, 'The bundled model')"
        )
    try:
        return json.loads((folder / MANIFEST_FILE).read_text())
    except ValueError as e:
        raise ValueError(f"{folder / MANIFEST_FILE} is damaged: not valid JSON ({e})") from e


def _check_digest(path: Path, blob: bytes, manifest: dict) -> None:
    digest = hashlib.sha256(blob).hexdigest()
    if digest != manifest.get("sha256"):
        raise ValueError(
            f"{path} is damaged: its SHA-256 is not the one bundle.json records; rebuild it with "
            f"`{BUILD_COMMAND}`"
        )


def load(folder: str | os.PathLike | None = None, *, mesh: jax.sharding.Mesh | None = None) -> Restored:
    """The bundled model (default: the package's) as a `Restored`, its variables in float32 and
    replicated over `mesh` (default: all devices). Its `workdir` is the bundle's folder, `bundled` is
    True, and `step` and `weights` name the source run's checkpoint."""
    folder = folder_of(folder).resolve()
    manifest = read_manifest(folder)
    config = workdir_lib.load_run_config(str(folder))
    config_schema.validate(config, for_training=False)
    spec = trained.run_spec(str(folder))
    model = create_model(config, spec)
    abstract = jax.eval_shape(lambda: initial_variables(model, jax.random.key(0), spec.image_shape))
    template = {"params": abstract["params"], "batch_stats": abstract.get("batch_stats", {})}
    path = folder / WEIGHTS_FILE
    blob = path.read_bytes()
    _check_digest(path, blob, manifest)
    stored = serialization.msgpack_restore(blob)
    stored.setdefault("batch_stats", {})
    if jax.tree.structure(stored) != jax.tree.structure(template) or any(
        np.shape(a) != t.shape
        for a, t in zip(jax.tree.leaves(stored), jax.tree.leaves(template), strict=True)
    ):
        raise ValueError(
            f"{path} does not fit the model {config.model_name}/{config.model.variant} of its "
            f"{folder / CONFIG_FILE}: rebuild the bundle with `{BUILD_COMMAND}`"
        )
    variables = jax.tree.map(lambda a, t: jnp.asarray(np.asarray(a).astype(t.dtype)), stored, template)
    mesh = parallel.make_mesh() if mesh is None else mesh
    variables = parallel.replicate(variables, mesh)
    source = manifest.get("source", {})
    return Restored(
        str(folder),
        model,
        variables,
        config,
        int(source.get("checkpoint_step", 0)),
        source.get("weights", "raw"),
        spec,
        bundled=True,
    )


def load_model(
    workdir: str | None,
    checkpoint: str | int = "best",
    *,
    mesh: jax.sharding.Mesh | None = None,
    weights: str = "raw",
) -> Restored:
    """A trained run's checkpoint (`trained.restore`), or the bundled model when `workdir` is None.
    The bundled model has one set of weights, so it takes no checkpoint or weight set."""
    if workdir is not None:
        return trained.restore(workdir, checkpoint, mesh=mesh, weights=weights)
    if str(checkpoint) != "best" or weights != "raw":
        raise ValueError(
            "--checkpoint and --weights pick among a run's checkpoints: give --workdir (the bundled "
            "model, used without --workdir, has one set of weights)"
        )
    return load(mesh=mesh)


# ------------------------------------------------------------------------------------------ writing


def portable(value: Any) -> Any:
    """`value` (a JSON tree) with every absolute path reduced to its last component: a bundle names
    the data and runs it was made from, not folders of the machine that made it."""
    if isinstance(value, dict):
        return {k: portable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [portable(v) for v in value]
    if isinstance(value, str) and os.path.isabs(value):
        return os.path.basename(value.rstrip("/")) or value
    return value


def stored_variables(variables: dict, dtype: str) -> dict:
    """Host copies of `variables` for storage: the params in `dtype`, the batch statistics in float32
    (a few numbers per channel, which rounding would shift for every input)."""
    config_schema.check_choice("--dtype", dtype, STORAGE_DTYPES)
    host = jax.device_get(variables)
    params = jax.tree.map(lambda a: np.asarray(a).astype(jnp.dtype(dtype)), host["params"])
    stats = jax.tree.map(lambda a: np.asarray(a, np.float32), host.get("batch_stats", {}))
    return {"params": params, "batch_stats": stats}


def versions() -> dict[str, str]:
    """The versions of fer_flax, jax and flax that wrote a bundle ("unknown" where not installed)."""
    out = {}
    for package in ("fer_flax", "jax", "flax"):
        try:
            out[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            out[package] = "unknown"
    return out


def write(restored: Restored, folder: str | os.PathLike, *, dtype: str = "bfloat16") -> dict:
    """Writes weights.msgpack, config.json and bundle.json of `restored` into `folder` (which must
    exist); returns the manifest (bundle.json), whose `figures` are None until the caller adds them."""
    folder = Path(folder)
    blob = serialization.msgpack_serialize(stored_variables(restored.variables, dtype))
    write_with(folder / WEIGHTS_FILE, lambda f: f.write(blob))
    info = workdir_lib.read_run_info(restored.workdir)
    write_json(str(folder / CONFIG_FILE), portable(info))
    config, derived = restored.config, info.get("derived", {})
    manifest = {
        "format": FORMAT_VERSION,
        "weights_file": WEIGHTS_FILE,
        "storage_dtype": dtype,
        "bytes": len(blob),
        "sha256": hashlib.sha256(blob).hexdigest(),
        "source": {
            "run": os.path.basename(os.path.normpath(restored.workdir)),
            "model_name": config.model_name,
            "variant": config.model.variant,
            "num_params": derived.get("num_params"),
            "checkpoint_step": restored.step,
            "weights": restored.weights,
            "data": portable(config.data.path) if config.data.path is not None else None,
        },
        "class_names": list(restored.spec.class_names),
        "tta": config.eval_tta,
        "crop_size": config.augment.crop_size if config.eval_tta == "tencrop" else None,
        "versions": versions(),
        "figures": None,
    }
    write_manifest(folder, manifest)
    for name in (WEIGHTS_FILE, CONFIG_FILE):
        _make_readable(folder / name)
    return manifest


def write_manifest(folder: str | os.PathLike, manifest: dict) -> None:
    path = Path(folder) / MANIFEST_FILE
    write_json(str(path), manifest)
    _make_readable(path)


def _make_readable(path: Path) -> None:
    """Package data is read by every user: the permissions of an ordinary file (atomic writes make
    private ones)."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)
