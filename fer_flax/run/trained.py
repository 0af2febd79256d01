"""A trained run restored for inference: its model rebuilt from `<workdir>/config.json` and its
weights from a checkpoint (best, latest or a step; raw or EMA), with no optimizer state, loss or
training code involved."""

from __future__ import annotations

import dataclasses
import os

import flax.linen as nn
import jax
from ml_collections import ConfigDict

from fer_flax.base.errors import check_choice
from fer_flax.config import schema as config_schema
from fer_flax.config.choices import WEIGHT_SETS
from fer_flax.core import parallel
from fer_flax.core.ema import ema_enabled
from fer_flax.core.model import create_model, initial_variables
from fer_flax.data.spec import FER2013, DataSpec
from fer_flax.run import checkpoint as checkpoint_lib
from fer_flax.run import workdir as workdir_lib


@dataclasses.dataclass(frozen=True)
class Restored:
    """A trained run's model and inference variables, as one member of an evaluation."""

    workdir: str
    model: nn.Module
    variables: dict
    config: ConfigDict
    step: int
    weights: str = "raw"  # "raw" or "ema": which weights of the run these are
    spec: DataSpec = FER2013  # the classes, image size and channels the model was trained on
    bundled: bool = False  # the model shipped with the package (`run.bundled`), `workdir` its folder

    def describe(self) -> dict:
        return {
            "workdir": self.workdir,
            "model_name": self.config.model_name,
            "variant": self.config.model.variant,
            "checkpoint_step": self.step,
            "weights": self.weights,
            "class_names": list(self.spec.class_names),
            "bundled": self.bundled,
        }


def checkpoint_used(model: dict, which: str | int) -> str:
    """How a command names what it used, from a member's `Restored.describe()` and the checkpoint
    asked for: "checkpoint 'best': step 4, raw weights" (or "checkpoint step 4, ema weights"). The
    step said, since 'best' and 'latest' fall back past damaged checkpoints to another one."""
    asked = f"checkpoint {which!r}:" if isinstance(which, str) else "checkpoint"
    return f"{asked} step {model['checkpoint_step']}, {model.get('weights', 'raw')} weights"


def run_spec(workdir: str) -> DataSpec:
    """The data spec a run recorded in its config.json (FER2013's for runs that predate the record)."""
    recorded = workdir_lib.read_run_info(workdir).get("derived", {}).get("data_spec")
    return DataSpec.from_dict(recorded) if recorded else FER2013


def parse_checkpoint(which: str | int) -> str | int:
    """'best', 'latest' or a step number (int or digit string)."""
    if isinstance(which, int) or (isinstance(which, str) and which.isdigit()):
        return int(which)
    if which in ("best", "latest"):
        return which
    raise ValueError(f"--checkpoint must be 'best', 'latest' or a step number, got {which!r}")


def _check_weights_request(workdir: str, config: ConfigDict, which: str | int, weights: str) -> None:
    check_choice("--weights", weights, WEIGHT_SETS)
    if weights == "ema" and not ema_enabled(config):
        raise ValueError(
            f"the run in {workdir} kept no EMA of its weights (config.ema.decay is 0 or absent); "
            "--weights ema needs a run trained with --config.ema.decay > 0 (e.g. 0.999)"
        )
    if weights == "ema" and which == "best":
        raise ValueError(
            "--weights ema needs --checkpoint latest or a step: best/ holds only the weights "
            f"selected in training (config.ema.select={config.ema.select!r})"
        )


def restore(
    workdir: str,
    checkpoint: str | int = "best",
    *,
    mesh: jax.sharding.Mesh | None = None,
    weights: str = "raw",
) -> Restored:
    """The model rebuilt from `<workdir>/config.json` and its params + batch statistics from checkpoint
    'best', 'latest' or a step, replicated over `mesh` (no optimizer state is read).

    `weights="ema"` takes the EMA weights of a full checkpoint ('latest' or a step) of a run trained
    with `config.ema.decay > 0`. 'best' holds the one set selected in training (`config.ema.select`);
    the result's `weights` says which (for a best checkpoint, what its selection record says).

    A damaged checkpoint is skipped for the best intact one ('best') or the newest intact one
    ('latest') with a `CorruptCheckpointWarning`; `NoRestorableCheckpointError` when none is usable
    (`Checkpointer.restore_model`)."""
    workdir = os.path.abspath(workdir)
    config = workdir_lib.load_run_config(workdir)
    config_schema.validate(config, for_training=False)
    which = parse_checkpoint(checkpoint)
    _check_weights_request(workdir, config, which, weights)
    spec = run_spec(workdir)
    model = create_model(config, spec)
    mesh = parallel.make_mesh() if mesh is None else mesh
    abstract = jax.eval_shape(lambda: initial_variables(model, jax.random.key(0), spec.image_shape))
    replicated = parallel.replicated_sharding(mesh)
    template = jax.tree.map(
        lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=replicated),
        {"params": abstract["params"], "batch_stats": abstract.get("batch_stats", {})},
    )
    ckpt = checkpoint_lib.Checkpointer(workdir, read_only=True)
    target = f"the model {config.model_name}/{config.model.variant} rebuilt from its config.json"
    try:
        # The fallback past damaged checkpoints is the one training's resume uses.
        restored_variables, step = ckpt.restore_model(template, which, weights=weights, target=target)
        restored_weights = weights
        if weights == "raw" and (which == "best" or step not in ckpt.latest.all_steps()):
            selection = ckpt.best_selection(step)
            restored_weights = selection["weights"] if selection else "raw"
    finally:
        ckpt.close()
    return Restored(workdir, model, restored_variables, config, int(step), restored_weights, spec)
