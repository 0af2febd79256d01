"""The model of a config and its state: building it, initial variables, the train state, and the
variables of a trained run restored for inference.

Training and every inference entry point build models here, so a model is the same function
whichever command built it. On a CPU backend the families get fer_flax.cpu's kernels through their
`conv` / `max_pool` seam (chosen once, here); elsewhere they run stock Flax ops.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax.training import train_state
from ml_collections import ConfigDict

from fer_flax import cpu, models
from fer_flax.config import choices as config_choices
from fer_flax.config import schema as config_schema
from fer_flax.core import parallel
from fer_flax.data.spec import FER2013, DataSpec
from fer_flax.run import checkpoint as checkpoint_lib
from fer_flax.run import workdir as workdir_lib

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


class TrainState(train_state.TrainState):
    batch_stats: Any = None


class EmaTrainState(TrainState):
    """The train state of a run with config.ema.decay > 0: plus the EMA of params and batch_stats
    (fer_flax/core/ema.py). A separate class rather than None-valued fields on TrainState: Orbax records
    None fields in the checkpoint's tree structure, so checkpoints of runs without EMA would no
    longer restore into a TrainState."""

    ema_params: Any = None
    ema_batch_stats: Any = None

    def ema_weights(self) -> EmaTrainState:
        """This state with the EMA weights and statistics in place of the raw ones (for evaluation)."""
        return self.replace(params=self.ema_params, batch_stats=self.ema_batch_stats)


def has_ema(state: TrainState) -> bool:
    return isinstance(state, EmaTrainState)


def ema_enabled(config: ConfigDict) -> bool:
    """Whether the run keeps an EMA (a config.json without an `ema` section: no EMA)."""
    return "ema" in config and config.ema.decay > 0


def create_model(config: ConfigDict, spec: DataSpec = FER2013) -> nn.Module:
    """`config.model_name`'s `config.model.variant` for `spec`'s class count, with `config.model`'s
    other keys as overrides."""
    overrides = {k: v for k, v in config.model.to_dict().items() if k != "variant"}
    return models.create_model(
        config.model_name,
        variant=config.model.variant,
        num_classes=spec.num_classes,
        dtype=DTYPES[config.dtype],
        **cpu.model_ops(),
        **overrides,
    )


def initial_variables(
    model: nn.Module, rng: jax.Array, image_shape: tuple[int, int, int] = FER2013.image_shape
) -> dict:
    """The model's variables for inputs of `image_shape` (height, width, channels)."""
    dummy = jnp.zeros((1, *image_shape), jnp.float32)
    params_rng, dropout_rng = jax.random.split(rng)
    return model.init({"params": params_rng, "dropout": dropout_rng}, dummy, train=False)


def create_train_state(
    model: nn.Module,
    tx: optax.GradientTransformation,
    rng: jax.Array,
    mesh: jax.sharding.Mesh,
    *,
    ema: bool = False,
    image_shape: tuple[int, int, int] = FER2013.image_shape,
) -> TrainState:
    """Initialises directly into replicated device memory (no host round trip of the parameters).
    With `ema`, the EMA weights and statistics start as copies of the initial ones."""

    def init(rng):
        variables = initial_variables(model, rng, image_shape)
        params, batch_stats = variables["params"], variables.get("batch_stats", {})
        if not ema:
            return TrainState.create(apply_fn=model.apply, params=params, batch_stats=batch_stats, tx=tx)
        return EmaTrainState.create(
            apply_fn=model.apply,
            params=params,
            batch_stats=batch_stats,
            tx=tx,
            ema_params=jax.tree.map(jnp.copy, params),
            ema_batch_stats=jax.tree.map(jnp.copy, batch_stats),
        )

    return run_once(jax.jit(init, out_shardings=parallel.replicated_sharding(mesh)), rng)


# Options for programs that run once (initialisation): XLA's expensive backend passes make a deep net's
# init, with one random draw per parameter, slow to compile and gain nothing at run time.
_RUN_ONCE_COMPILER_OPTIONS = {
    "xla_backend_optimization_level": 0,
    "xla_llvm_disable_expensive_passes": True,
}


def compile_once(lowered: jax.stages.Lowered) -> jax.stages.Compiled:
    """Compiles a program that runs once with cheap compiler settings (plain settings if refused)."""
    try:
        return lowered.compile(compiler_options=_RUN_ONCE_COMPILER_OPTIONS)
    except Exception:  # an XLA build that does not know an option: fall back to the defaults
        return lowered.compile()


def run_once(jitted: Any, *args: Any) -> Any:
    """Calls a `jax.jit`-wrapped function compiled by `compile_once`: for a program run once."""
    return compile_once(jitted.lower(*args))(*args)


def variables(state: TrainState) -> dict:
    """The inference variables of a train state (its raw weights)."""
    return {"params": state.params, "batch_stats": state.batch_stats}


# ------------------------------------------------------------------------- restoring a trained run


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

    def describe(self) -> dict:
        return {
            "workdir": self.workdir,
            "model_name": self.config.model_name,
            "variant": self.config.model.variant,
            "checkpoint_step": self.step,
            "weights": self.weights,
            "class_names": list(self.spec.class_names),
        }


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
    config_schema.check_choice("--weights", weights, config_choices.WEIGHT_SETS)
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
