"""Training and evaluation loop: `train_and_evaluate(config, workdir)` is the whole job as a library call.

The step functions are pure and module-level; the loop around them owns I/O (data, checkpoints, logging).
Device-side results are fetched only at log and eval steps, so the host never waits on the device
between those.
"""

from __future__ import annotations

import functools
import json
import math
import os
import signal
import threading
import time
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax.training import train_state
from ml_collections import ConfigDict

from fer_flax import checkpoint as checkpoint_lib
from fer_flax import ema as ema_lib
from fer_flax import input_pipeline, losses, metrics, mixing, models, optim, parallel, tracking, tta, xla_cpu
from fer_flax.augment import augment_batch, preprocess, ten_crop_batch, ten_crop_size
from fer_flax.data import NUM_CLASSES, ArraySplit, default_cache_dir, load_splits
from fer_flax.data.splits import IMAGE_SIZE

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


class TrainState(train_state.TrainState):
    batch_stats: Any = None


class EmaTrainState(TrainState):
    """The train state of a run with config.ema.decay > 0: plus the EMA of params and batch_stats
    (fer_flax/ema.py). A separate class rather than None-valued fields on TrainState: Orbax records
    None fields in the checkpoint's tree structure, so checkpoints written before EMA existed would
    no longer restore into a run without EMA."""

    ema_params: Any = None
    ema_batch_stats: Any = None

    def ema_weights(self) -> EmaTrainState:
        """This state with the EMA weights and statistics in place of the raw ones (for evaluation)."""
        return self.replace(params=self.ema_params, batch_stats=self.ema_batch_stats)


def has_ema(state: TrainState) -> bool:
    return isinstance(state, EmaTrainState)


# ----------------------------------------------------------------------------------------- set-up


def create_model(config: ConfigDict) -> nn.Module:
    if config.dtype not in DTYPES:
        raise ValueError(f"Unknown config.dtype {config.dtype!r}; valid choices: {', '.join(DTYPES)}")
    overrides = {k: v for k, v in config.model.to_dict().items() if k != "variant"}
    return models.create_model(
        config.model_name,
        variant=config.model.variant,
        num_classes=NUM_CLASSES,
        dtype=DTYPES[config.dtype],
        **overrides,
    )


def initial_variables(model: nn.Module, rng: jax.Array) -> dict:
    dummy = jnp.zeros((1, IMAGE_SIZE, IMAGE_SIZE, 1), jnp.float32)
    params_rng, dropout_rng = jax.random.split(rng)
    return model.init({"params": params_rng, "dropout": dropout_rng}, dummy, train=False)


def create_train_state(
    model: nn.Module,
    tx: optax.GradientTransformation,
    rng: jax.Array,
    mesh: jax.sharding.Mesh,
    *,
    ema: bool = False,
) -> TrainState:
    """Initialises directly into replicated device memory (no host round trip of the parameters).
    With `ema`, the EMA weights and statistics start as copies of the initial ones."""

    def init(rng):
        variables = initial_variables(model, rng)
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

    lowered = jax.jit(init, out_shardings=parallel.replicated_sharding(mesh)).lower(rng)
    return compile_once(lowered)(rng)


# Options for programs that run once (initialisation): XLA's expensive backend passes make a deep net's
# init, with one threefry draw per parameter, take 20+ s to compile on a CPU and gain nothing at run
# time; without them it compiles about 3x faster.
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


# ------------------------------------------------------------------------------------------- steps


def classification_loss(
    logits: jax.Array,
    labels: jax.Array,
    *,
    num_classes: int,
    label_smoothing: float,
    terms: losses.LossTerms = losses.NO_TERMS,
) -> jax.Array:
    """Per-example softmax cross-entropy in float32 against integer labels [B] (one-hot) or soft targets
    [B, K] (mixup/cutmix), optionally smoothed. `terms` adds the training split's class weights and
    logit adjustment (`losses.training_loss_terms`); evaluation passes none and scores raw logits."""
    targets = jax.nn.one_hot(labels, num_classes) if labels.ndim == logits.ndim - 1 else labels
    return losses.training_loss(logits, targets, label_smoothing=label_smoothing, terms=terms)


def _loss_and_grads(
    state: TrainState,
    batch: dict,
    rng: jax.Array,
    config: ConfigDict,
    class_counts: np.ndarray | None = None,
):
    aug_rng, dropout_rng = jax.random.split(rng)
    # Class weights and prior are constants of the training split, computed here at trace time.
    terms = losses.training_loss_terms(config.loss, class_counts)
    images = preprocess(batch["image"])
    labels = jax.nn.one_hot(batch["label"], NUM_CLASSES)
    crop_size = ten_crop_size(config.augment)
    if crop_size is not None:
        # Each image becomes its ten crops (labels repeated), augmented one by one below; the mean
        # loss then averages over every crop.
        images, labels = ten_crop_batch(images, labels, crop_size)
    images = augment_batch(aug_rng, images, config.augment)
    # Mixing draws from a key folded out of the augmentation's, so turning it on changes no other
    # draw (and with mixing off nothing is traced: runs without it are exactly what they were).
    images, labels = mixing.mix_batch(jax.random.fold_in(aug_rng, 1), images, labels, config.mix)

    def loss_fn(params):
        (logits, aux), updates = state.apply_fn(
            {"params": params, "batch_stats": state.batch_stats},
            images,
            train=True,
            rngs={"dropout": dropout_rng},
            mutable=["batch_stats"],
        )
        loss_of = functools.partial(
            classification_loss,
            num_classes=NUM_CLASSES,
            label_smoothing=config.label_smoothing,
            terms=terms,
        )
        loss = loss_of(logits, labels).mean()
        # GoogLeNet-style auxiliary classifiers: present only in training, weighted from config.
        for aux_logits in aux.get("aux_logits", ()):
            loss = loss + config.aux_loss_weight * loss_of(aux_logits, labels).mean()
        return loss, (logits, updates.get("batch_stats", {}))

    (loss, (logits, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    if crop_size is not None:
        # One prediction per image, its crops' mean logits (as ten-crop TTA), for the training accuracy.
        views = tta.num_views("tencrop")
        logits = logits.astype(jnp.float32).reshape(-1, views, logits.shape[-1]).mean(axis=1)
    return loss, logits, batch_stats, grads


def train_step(
    state: TrainState,
    batch: dict,
    rng: jax.Array,
    *,
    config: ConfigDict,
    schedule: optax.Schedule,
    class_counts: np.ndarray | None = None,
) -> tuple[TrainState, dict]:
    """One optimizer step. Randomness is `fold_in(rng, step)`, so a resumed run draws the same numbers.
    `class_counts` [K] (the training split's label counts) feeds `config.loss`'s class weights and prior.

    The metrics include `finite` (loss and gradient norm both finite). With
    `config.nonfinite == "skip"` a non-finite step keeps the previous parameters, optimizer state,
    BatchNorm statistics and EMA (the step counter still advances, so the data and RNG stay aligned).
    The logged `learning_rate` is the one applied: the schedule's times the reduce-on-plateau scale."""
    step_rng = jax.random.fold_in(rng, state.step)
    loss, logits, batch_stats, grads = _loss_and_grads(
        state, batch, step_rng, config, class_counts=class_counts
    )
    grad_norm = optax.tree.norm(grads)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    new_state = state.apply_gradients(grads=grads, batch_stats=batch_stats)
    if has_ema(state):
        # Averages what this step produced: the updated weights and the statistics of this batch.
        decay = ema_lib.decay_at(config.ema.decay, state.step, warmup=config.ema.warmup)
        new_state = new_state.replace(
            ema_params=ema_lib.update(state.ema_params, new_state.params, decay),
            ema_batch_stats=ema_lib.update(state.ema_batch_stats, new_state.batch_stats, decay),
        )
    if config.nonfinite == "skip":

        def keep_if_bad(new, old):
            return jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)

        new_state = new_state.replace(
            params=keep_if_bad(new_state.params, state.params),
            opt_state=keep_if_bad(new_state.opt_state, state.opt_state),
            batch_stats=keep_if_bad(new_state.batch_stats, state.batch_stats),
        )
        if has_ema(state):
            new_state = new_state.replace(
                ema_params=keep_if_bad(new_state.ema_params, state.ema_params),
                ema_batch_stats=keep_if_bad(new_state.ema_batch_stats, state.ema_batch_stats),
            )
    step_metrics = {
        "loss": loss,
        "accuracy": jnp.mean(jnp.argmax(logits, -1) == batch["label"]),
        "grad_norm": grad_norm,
        "learning_rate": schedule(state.step) * optim.plateau_scale(state.opt_state),
        "finite": finite,
    }
    return new_state, step_metrics


def state_is_finite(state: TrainState) -> jax.Array:
    """Whether every floating-point leaf of the state (parameters, statistics, optimizer) is finite."""
    leaves = [x for x in jax.tree.leaves(state) if jnp.issubdtype(x.dtype, jnp.floating)]
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves]))


def gradients(
    state: TrainState,
    batch: dict,
    rng: jax.Array,
    *,
    config: ConfigDict,
    class_counts: np.ndarray | None = None,
):
    """The gradients `train_step` would apply at this step (for histograms; not on the hot path)."""
    step_rng = jax.random.fold_in(rng, state.step)
    return _loss_and_grads(state, batch, step_rng, config, class_counts=class_counts)[3]


def eval_step(
    state: TrainState, batch: dict, *, tta_mode: str = "none", crop_size: int = tta.DEFAULT_CROP_SIZE
) -> dict:
    """Sums over the valid (mask=True) examples of a padded batch: exact whatever the batch size.

    `tta_mode` (config.eval_tta: none | flip | tencrop, ten-crop of side `crop_size`) averages the
    logits over `fer_flax.tta`'s views, so a model trained on crops is selected on what it will be
    tested with. The loss is the plain cross-entropy of those logits: no smoothing, no class weights,
    no logit adjustment (those shape training only)."""
    if tta_mode not in tta.TTA_MODES:
        raise ValueError(f"Unknown config.eval_tta {tta_mode!r}; valid choices: {', '.join(tta.TTA_MODES)}")

    def logits_of(images: jax.Array) -> jax.Array:
        variables = {"params": state.params, "batch_stats": state.batch_stats}
        return state.apply_fn(variables, images, train=False)[0]

    logits = tta.apply_with_tta(logits_of, preprocess(batch["image"]), tta_mode, crop_size)
    mask = batch["mask"]
    per_example = classification_loss(logits, batch["label"], num_classes=NUM_CLASSES, label_smoothing=0.0)
    return {
        "confusion": metrics.confusion_matrix(batch["label"], jnp.argmax(logits, -1), mask, NUM_CLASSES),
        "loss_sum": jnp.sum(jnp.where(mask, per_example, 0.0)),
        "count": jnp.sum(mask.astype(jnp.int32)),
    }


def predict_step(state: TrainState, images: jax.Array) -> jax.Array:
    """Predicted classes of uint8 images (for the sample grid logged at evaluations)."""
    logits, _ = state.apply_fn(
        {"params": state.params, "batch_stats": state.batch_stats}, preprocess(images), train=False
    )
    return jnp.argmax(logits, -1)


def evaluate(
    eval_step_fn, state: TrainState, split: ArraySplit, *, batch_size: int, mesh: jax.sharding.Mesh
) -> dict[str, Any]:
    """Every example of `split` exactly once (the last batch padded and masked). The metrics of
    `metrics.summarize` plus "confusion": the confusion matrix as nested lists (rows true class)."""
    state = parallel.replicate(state, mesh)  # a no-op for the training state, which already is
    totals = None
    for local_batch in input_pipeline.eval_batches(
        split,
        global_batch_size=batch_size,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
    ):
        out = eval_step_fn(state, parallel.to_global_batch(local_batch, mesh))
        totals = out if totals is None else jax.tree.map(jnp.add, totals, out)
    totals = jax.device_get(totals)
    out = metrics.summarize(totals["confusion"], totals["loss_sum"], int(totals["count"]))
    out["confusion"] = np.asarray(totals["confusion"]).tolist()
    return out


# -------------------------------------------------------------------------------------- the loop


NONFINITE_MODES = ("stop", "skip")
EMA_SELECT = ("raw", "ema", "best")

# The settings that define a run: resuming a workdir with any of them changed is refused. Everything
# else (num_epochs, optim.lr and the schedule, augmentation, cadence, ...) may change on a resume:
# the change is recorded in `<workdir>/config_history.jsonl`.
RUN_IDENTITY_KEYS = (
    "model_name",
    "model",
    "seed",
    "batch_size",
    "optim.name",
    "data.path",
    "data.synthetic_train",
    "data.synthetic_val",
    "data.synthetic_seed",
    "data.sampling",
    "data.class_weights",
)


class TrainingInterrupted(Exception):
    """SIGTERM/SIGINT stopped training after a checkpoint was written; rerun the command to resume."""

    def __init__(self, signum: int, step: int, checkpoint_dir: str):
        self.signum, self.step, self.checkpoint_dir = signum, step, checkpoint_dir
        name = signal.Signals(signum).name
        super().__init__(
            f"Interrupted by {name} at step {step}; checkpoint written to {checkpoint_dir}/{step}. "
            "Rerun the same command to resume."
        )

    @property
    def exit_code(self) -> int:
        return 128 + self.signum  # the shell's convention: 143 for SIGTERM, 130 for SIGINT


class NonFiniteError(FloatingPointError):
    """A non-finite loss or gradient (config.nonfinite == "stop"), or a non-finite state to be saved."""


class IncompatibleWorkdirError(ValueError):
    """The workdir holds a run whose defining settings differ from this config's."""


def step_plan(config: ConfigDict, num_train: int) -> dict[str, int]:
    """All epoch <-> step arithmetic in one place."""
    steps_per_epoch = max(1, math.ceil(num_train / config.batch_size))
    total_steps = max(1, math.ceil(config.num_epochs * steps_per_epoch))
    eval_every = max(1, round(config.eval_every_epochs * steps_per_epoch))
    return {
        "steps_per_epoch": steps_per_epoch,
        "total_steps": total_steps,
        "eval_every_steps": eval_every,
    }


def _check_workdir(workdir: str) -> None:
    try:
        os.makedirs(workdir, exist_ok=True)
        # One probe per process: processes sharing a workdir would delete each other's file.
        probe = os.path.join(workdir, f".write_test.{jax.process_index()}")
        with open(probe, "w") as f:
            f.write("ok")
        os.remove(probe)
    except OSError as e:
        raise PermissionError(
            f"workdir {workdir!r} is not writable ({type(e).__name__}: {e}); choose a --workdir in a "
            "folder you can write to."
        ) from e


def _check_run_settings(config: ConfigDict) -> None:
    if config.nonfinite not in NONFINITE_MODES:
        raise ValueError(
            f"Unknown config.nonfinite {config.nonfinite!r}; valid choices: {', '.join(NONFINITE_MODES)}"
        )
    if config.checkpoint_every_steps < 0:
        raise ValueError(
            f"config.checkpoint_every_steps={config.checkpoint_every_steps} must be >= 0 "
            "(0: checkpoint at each evaluation only)"
        )
    if config.checkpoint_keep < 1:
        raise ValueError(f"config.checkpoint_keep={config.checkpoint_keep} must be >= 1 (2 recommended)")
    if not 0.0 <= config.ema.decay < 1.0:
        raise ValueError(f"config.ema.decay={config.ema.decay} must be in [0, 1) (0 disables EMA)")
    if config.ema.select not in EMA_SELECT:
        raise ValueError(
            f"Unknown config.ema.select {config.ema.select!r}; valid choices: {', '.join(EMA_SELECT)}"
        )
    optim.check_plateau_settings(config.optim)
    # The loss, mixing, ten-crop and TTA settings are otherwise read only when the first step compiles
    # or at the first evaluation: check them before any data is read.
    losses.check_loss_config(config.loss)
    mixing.read_mix_config(config.mix)
    ten_crop_size(config.augment)
    if config.eval_tta not in tta.TTA_MODES:
        raise ValueError(
            f"Unknown config.eval_tta {config.eval_tta!r}; valid choices: {', '.join(tta.TTA_MODES)}"
        )


def ema_enabled(config: ConfigDict) -> bool:
    """Whether the run keeps an EMA (a config.json from before EMA existed has no `ema`: no EMA)."""
    return "ema" in config and config.ema.decay > 0


def _state_layout(flat_config: dict[str, Any]) -> dict[str, bool]:
    """The settings that decide which leaves the train state has (so a checkpoint can be restored
    only with the same answers), as {description: value} of a flattened config."""
    return {
        "EMA (ema.decay > 0)": (flat_config.get("ema.decay") or 0) > 0,
        "reduce-on-plateau (optim.schedule == 'plateau')": flat_config.get("optim.schedule") == "plateau",
    }


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(tree, dict):
        return {prefix: tree}
    out: dict[str, Any] = {}
    for k, v in tree.items():
        out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def _json_config(config: ConfigDict) -> dict[str, Any]:
    """The config as config.json stores it (tuples become lists), so the two compare equal."""
    return json.loads(json.dumps(config.to_dict(), default=str))


def config_changes(workdir: str, config: ConfigDict) -> dict[str, tuple[Any, Any]]:
    """{dotted key: (value in the workdir's config.json, value now)} for every differing key; raises
    `IncompatibleWorkdirError` when a key of `RUN_IDENTITY_KEYS` differs. Empty for a new workdir."""
    path = os.path.join(workdir, "config.json")
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        old = _flatten(json.load(f).get("config", {}))
    new = _flatten(_json_config(config))
    missing = object()
    changes = {
        k: (old.get(k, missing), new.get(k, missing))
        for k in sorted(set(old) | set(new))
        if old.get(k, missing) != new.get(k, missing)
    }

    def show(v):
        return "(absent)" if v is missing else repr(v)

    def defines_run(key):
        return any(key == p or key.startswith(p + ".") for p in RUN_IDENTITY_KEYS)

    refused = {k: v for k, v in changes.items() if defines_run(k)}
    # Switching EMA or reduce-on-plateau on or off adds or removes train-state leaves: refused too,
    # with this message rather than the restore's shape mismatch.
    old_layout, new_layout = _state_layout(old), _state_layout(new)
    refused.update({k: (old_layout[k], new_layout[k]) for k in old_layout if old_layout[k] != new_layout[k]})
    if refused:
        lines = "\n".join(
            f"  {k}: {show(a)} in the workdir -> {show(b)} now" for k, (a, b) in refused.items()
        )
        raise IncompatibleWorkdirError(
            f"Workdir {workdir} holds a run with a different configuration; refusing to resume it:\n"
            f"{lines}\nThese settings define a run ({', '.join(RUN_IDENTITY_KEYS)}) and cannot change "
            "on resume; others (num_epochs, optim.lr, the schedule, augmentation, cadence, ...) can. "
            "Use a new --workdir, or rerun with the workdir's values."
        )
    return {k: (None if a is missing else a, None if b is missing else b) for k, (a, b) in changes.items()}


class _StopRequest:
    """SIGTERM/SIGINT handlers that ask the loop to stop at the end of the current step.

    A second signal of either kind restores the previous handlers and re-delivers itself, so a
    second Ctrl-C aborts at once. Installed only in the main thread of a single-process run:
    multi-process, JAX's distributed runtime handles SIGTERM (pre-emption) itself."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> _StopRequest:
        if jax.process_count() == 1 and threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        del frame
        if self.signum is None:
            # Only a flag: printing here could re-enter a print the main thread is in the middle of.
            self.signum = signum
            return
        self._restore()
        signal.raise_signal(signum)

    def _restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}

    def __exit__(self, *exc) -> None:
        self._restore()


def train_and_evaluate(config: ConfigDict, workdir: str) -> dict[str, Any]:
    """Trains `config` in `workdir`, resuming from its latest checkpoint if there is one.

    Returns the final summary (also written to `<workdir>/summary.json`). Raises
    `TrainingInterrupted` after SIGTERM/SIGINT (a checkpoint of the last finished step is written
    first) and `NonFiniteError` on a non-finite loss or gradient with `config.nonfinite == "stop"`.
    """
    workdir = os.path.abspath(workdir)
    _check_workdir(workdir)
    is_main = jax.process_index() == 0
    say = print if is_main else (lambda *a, **k: None)

    # Fail on configuration mistakes before any data is read or anything is compiled.
    _check_run_settings(config)
    model = create_model(config)
    mesh = parallel.make_mesh()
    parallel.check_batch_divisible(config.batch_size, mesh, name="batch_size")
    parallel.check_batch_divisible(config.eval_batch_size, mesh, name="eval_batch_size")
    changes = config_changes(workdir, config)

    cache_dir = config.data.cache_dir or default_cache_dir(workdir)
    data = load_splits(config.data, ("train", "val"), cache_dir=cache_dir, announce=say)
    train_split, val_split = data["train"], data["val"]
    plan = step_plan(config, len(train_split))
    total_steps = plan["total_steps"]

    schedule = optim.create_learning_rate_schedule(
        config.optim, steps_per_epoch=plan["steps_per_epoch"], total_steps=total_steps
    )
    tx = optim.create_optimizer(config.optim, schedule)
    init_rng, train_rng = jax.random.split(jax.random.key(config.seed))
    use_ema = ema_enabled(config)
    state = create_train_state(model, tx, init_rng, mesh, ema=use_ema)
    use_plateau = optim.get_plateau(state.opt_state) is not None
    num_params = int(sum(x.size for x in jax.tree.leaves(state.params)))

    train_iter = input_pipeline.make_train_iterator(
        train_split,
        global_batch_size=config.batch_size,
        seed=config.seed,
        sampling=config.data.sampling,
        class_weights=config.data.class_weights,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
        num_workers=config.data.num_workers,
    )

    ckpt = checkpoint_lib.Checkpointer(
        workdir, keep=config.checkpoint_keep, keep_best=config.checkpoint_keep_best
    )
    checkpoint_dir = os.path.join(workdir, "checkpoints")
    start_step = 0
    if ckpt.latest_step() is not None:
        state = ckpt.restore_latest(state, train_iter)
        start_step = int(jax.device_get(state.step))
        say(f"Resumed from {checkpoint_dir}/{start_step} (step {start_step} of {total_steps}).")
    if is_main:
        _truncate_metrics(os.path.join(workdir, "metrics.jsonl"), start_step)

    if is_main:
        if changes:
            say(
                "Settings changed since this workdir's last run (recorded in config_history.jsonl): "
                + "; ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in changes.items())
            )
            with open(os.path.join(workdir, "config_history.jsonl"), "a") as f:
                record = {"time": time.time(), "resumed_at_step": start_step, "changes": changes}
                f.write(json.dumps(record, default=str) + "\n")
        with open(os.path.join(workdir, "config.json"), "w") as f:
            resolved = {
                "config": config.to_dict(),
                "derived": {
                    **plan,
                    "num_devices": jax.device_count(),
                    "num_processes": jax.process_count(),
                    "num_params": num_params,
                    "num_train": len(train_split),
                    "num_val": len(val_split),
                },
            }
            json.dump(resolved, f, indent=2, default=str)
    say(
        f"Model {config.model_name}/{config.model.variant}: {num_params / 1e6:.2f}M parameters; "
        f"{len(train_split)} train / {len(val_split)} val images; {total_steps} steps of "
        f"{config.batch_size} on {jax.device_count()} device(s)."
    )

    writer = tracking.MetricWriter(workdir, config)
    # The training split's label counts, baked into the step as constants: the loss's class weights and
    # logit-adjustment prior (config.loss). Never the validation split's.
    train_counts = train_split.class_counts()
    p_train_step = xla_cpu.jit(
        functools.partial(train_step, config=config, schedule=schedule, class_counts=train_counts),
        donate_argnums=(0,),
    )
    p_eval_step = xla_cpu.jit(
        functools.partial(eval_step, tta_mode=config.eval_tta, crop_size=config.augment.crop_size)
    )
    p_gradients = xla_cpu.jit(functools.partial(gradients, config=config, class_counts=train_counts))
    p_predict = xla_cpu.jit(predict_step)
    p_state_is_finite = xla_cpu.jit(state_is_finite)
    # Replicated like the rest of the state, so the train step sees the shardings it was compiled for.
    p_plateau = xla_cpu.jit(
        functools.partial(optim.plateau_update, optim=config.optim),
        out_shardings=parallel.replicated_sharding(mesh),
    )
    step = start_step

    def eval_step_with_test_hook(state, batch):
        out = p_eval_step(state, batch)
        checkpoint_lib.maybe_kill_for_test("eval", step)
        return out

    run_eval = functools.partial(
        evaluate, eval_step_with_test_hook, split=val_split, batch_size=config.eval_batch_size, mesh=mesh
    )

    progress = tracking.ProgressBar(total_steps, config.batch_size, enabled=config.progress_bar)
    progress.start(start_step)
    pending: list[tuple[int, dict]] = []
    window_start, window_steps = time.perf_counter(), 0
    train_seconds = 0.0
    skipped_updates = 0
    val_metrics: dict[str, float] | None = None
    val_ema_metrics: dict[str, float] | None = None
    best_weights = "raw"  # which weights the evaluation of this step selects for best/
    every = config.checkpoint_every_steps

    def flush_train_metrics(step: int) -> None:
        """Fetches the metrics of the steps since the last record, stops on a non-finite step
        (nonfinite == "stop") and writes one record: means over the finite steps."""
        nonlocal pending, window_start, window_steps, train_seconds, skipped_updates
        fetched = jax.device_get([m for _, m in pending])
        steps = [s for s, _ in pending]
        pending = []
        bad = [i for i, m in enumerate(fetched) if not m["finite"]]
        if bad and config.nonfinite == "stop":
            first = fetched[bad[0]]
            raise NonFiniteError(
                f"Non-finite training loss ({float(first['loss'])}) or gradient norm "
                f"({float(first['grad_norm'])}) at step {steps[bad[0]]}. Last good checkpoint: "
                f"{_last_good(ckpt, checkpoint_dir)} (nothing later was saved). Lower the learning "
                "rate or set --config.nonfinite=skip to skip such updates."
            )
        skipped_updates += len(bad)
        elapsed = time.perf_counter() - window_start
        train_seconds += elapsed
        good = [m for m in fetched if m["finite"]] or fetched
        summary = {k: float(np.mean([m[k] for m in good])) for k in fetched[0] if k != "finite"}
        summary["skipped_updates"] = len(bad)
        summary["images_per_sec"] = window_steps * config.batch_size / max(elapsed, 1e-9)
        summary["epoch"] = step / plan["steps_per_epoch"]
        writer.write(step, {f"train/{k}": v for k, v in summary.items()})
        progress.update(step, f"loss {summary['loss']:.3f}")
        window_start, window_steps = time.perf_counter(), 0

    def save(step: int, state: TrainState, val_metrics: dict | None, best_weights: str = "raw") -> None:
        if not bool(p_state_is_finite(state)):
            raise NonFiniteError(
                f"Refusing to checkpoint a non-finite state at step {step}. Last good checkpoint: "
                f"{_last_good(ckpt, checkpoint_dir)}."
            )
        ckpt.save(step, state, train_iter, val_metrics=val_metrics, best_weights=best_weights)

    try:
        with _StopRequest() as stop:
            for step in range(start_step + 1, total_steps + 1):
                local_batch = next(train_iter)
                batch = parallel.to_global_batch(local_batch, mesh)
                # The gradient pass is a collective, so every process runs it whenever wandb is on
                # (process 0 logs); with wandb disabled nothing would receive the histograms.
                log_histograms = config.wandb.mode != "disabled" and config.wandb.histogram_every_steps
                if log_histograms and step % config.wandb.histogram_every_steps == 0:
                    grads = p_gradients(state, batch, train_rng)
                    writer.log_histograms(step, {"params": state.params, "grads": grads})
                state, step_metrics = p_train_step(state, batch, train_rng)
                pending.append((step, step_metrics))
                window_steps += 1
                checkpoint_lib.maybe_kill_for_test("step", step)

                is_eval = step % plan["eval_every_steps"] == 0 or step == total_steps
                is_checkpoint = is_eval or (every > 0 and step % every == 0)
                stopping = stop.signum is not None
                # A record at every checkpoint too: the metric windows then depend on the step
                # alone, so a run resumed from any checkpoint logs exactly what an uninterrupted
                # one does.
                if step % config.log_every_steps == 0 or step == total_steps or is_checkpoint or stopping:
                    flush_train_metrics(step)
                else:
                    progress.update(step)

                if is_eval:
                    jax.block_until_ready(state)
                    train_seconds += time.perf_counter() - window_start
                    val_metrics = run_eval(state)
                    record = {f"val/{k}": v for k, v in val_metrics.items()}
                    best_weights, selected_metrics = "raw", val_metrics
                    if use_ema:
                        val_ema_metrics = run_eval(state.ema_weights())
                        record.update({f"val_ema/{k}": v for k, v in val_ema_metrics.items()})
                        best_weights = select_weights(config.ema.select, val_metrics, val_ema_metrics)
                        selected_metrics = val_ema_metrics if best_weights == "ema" else val_metrics
                        record["selected/weights"] = best_weights
                        record["selected/accuracy"] = selected_metrics["accuracy"]
                    if use_plateau:
                        # Driven by the raw weights' validation accuracy: those are what the learning
                        # rate moves. Updated before the checkpoint of this step, which therefore
                        # holds the state a resumed run needs.
                        plateau = p_plateau(optim.get_plateau(state.opt_state), val_metrics["accuracy"])
                        state = state.replace(opt_state=optim.set_plateau(state.opt_state, plateau))
                        record.update({f"plateau/{k}": v for k, v in plateau._asdict().items()})
                    writer.write(step, record)
                    if config.wandb.mode != "disabled":  # wandb: confusion matrix, sample predictions
                        samples = val_split.images[:16, :, :, None]
                        # Every process runs the (collective) prediction; only process 0 logs.
                        predictions = np.asarray(p_predict(state, samples))
                        writer.log_evaluation_media(
                            step,
                            confusion=val_metrics["confusion"],
                            images=samples,
                            labels=val_split.labels[:16],
                            predictions=predictions,
                        )
                    progress.pause()
                    say(
                        f"step {step}/{total_steps} (epoch {step / plan['steps_per_epoch']:.2f}): "
                        f"val accuracy {val_metrics['accuracy']:.4f}, "
                        f"balanced {val_metrics['balanced_accuracy']:.4f}, "
                        f"macro-F1 {val_metrics['macro_f1']:.4f}, loss {val_metrics['loss']:.4f}"
                        + (f"; EMA accuracy {val_ema_metrics['accuracy']:.4f}" if use_ema else "")
                        + (f"; lr scale {float(record['plateau/scale']):.4g}" if use_plateau else "")
                    )
                if is_checkpoint or stopping:
                    save(step, state, selected_metrics if is_eval else None, best_weights)
                    window_start, window_steps = time.perf_counter(), 0
                if stopping:
                    ckpt.wait_until_finished()
                    interrupted = TrainingInterrupted(stop.signum, step, checkpoint_dir)
                    progress.pause()
                    say(str(interrupted))
                    raise interrupted
    finally:
        # Whatever ends the loop, a save already under way (of a good state) is completed.
        ckpt.wait_until_finished()

    if val_metrics is None:  # resumed a finished run: report what its checkpoint gives
        val_metrics = run_eval(state)
        val_ema_metrics = run_eval(state.ema_weights()) if use_ema else None
    best_step = ckpt.best_step()
    summary = {
        "model_name": config.model_name,
        "variant": config.model.variant,
        "num_params": num_params,
        "final_step": int(jax.device_get(state.step)),
        "final_val": val_metrics,
        "best_val_accuracy": _best_accuracy(workdir, best_step) if is_main else None,
        "best_step": best_step,
        "skipped_updates_this_run": skipped_updates,
        "train_seconds_this_run": train_seconds,
        "data_path": config.data.path,
    }
    if use_ema:
        summary["final_val_ema"] = val_ema_metrics
        selection = ckpt.best_selection(best_step) if best_step is not None else None
        summary["best_weights"] = selection["weights"] if selection else None
    if use_plateau:
        summary["final_lr_scale"] = float(jax.device_get(optim.get_plateau(state.opt_state).scale))
    if is_main:
        with open(os.path.join(workdir, "summary.json"), "w") as f:
            json.dump(summary, f, indent=2)
        _plot_curves(workdir, f"{config.model_name}/{config.model.variant}", say)
    final = f"{val_metrics['accuracy']:.4f}"
    best = f"step {summary['best_step']}"
    if use_ema:
        # Both weight sets, and which one best/ kept: the figure to quote is the best checkpoint's.
        final = f"{final} (EMA weights {val_ema_metrics['accuracy']:.4f})"
        if summary["best_weights"] and summary["best_val_accuracy"] is not None:
            best += f", {summary['best_weights']} weights, {summary['best_val_accuracy']:.4f}"
    say(f"Done. Final validation accuracy: {final} (best checkpoint: {best}). Workdir: {workdir}")
    train_iter.close()  # stops Grain's worker processes, if any
    writer.close()
    ckpt.close()
    return summary


def select_weights(select: str, val: dict[str, Any], val_ema: dict[str, Any]) -> str:
    """Which weights `config.ema.select` picks at an evaluation, "raw" or "ema" ("best": the higher
    validation accuracy, raw on a tie)."""
    if select not in EMA_SELECT:
        raise ValueError(f"Unknown config.ema.select {select!r}; valid choices: {', '.join(EMA_SELECT)}")
    if select == "best":
        return "ema" if val_ema["accuracy"] > val["accuracy"] else "raw"
    return select


def _truncate_metrics(path: str, last_step: int) -> None:
    """Drops the records a killed run wrote after its last checkpoint (they are about to be recomputed)
    and any line a kill cut short, so metrics.jsonl reads as if the run had never stopped."""
    if not os.path.exists(path):
        return
    kept = []
    with open(path) as f:
        lines = f.readlines()
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if line.endswith("\n") and isinstance(record, dict) and record.get("step", 0) <= last_step:
            kept.append(line)
    if len(kept) != len(lines):
        tmp = f"{path}.tmp"
        with open(tmp, "w") as f:
            f.writelines(kept)
        os.replace(tmp, path)


def _last_good(ckpt: checkpoint_lib.Checkpointer, checkpoint_dir: str) -> str:
    step = ckpt.latest_step()
    return "none (no checkpoint was written)" if step is None else f"{checkpoint_dir}/{step}"


def _best_accuracy(workdir: str, best_step: int | None) -> float | None:
    """The validation accuracy logged for the best checkpoint (the last record of that step)."""
    path = os.path.join(workdir, "metrics.jsonl")
    if best_step is None or not os.path.exists(path):
        return None
    for record in tracking.read_metrics(path):
        if record["step"] == best_step and "val/accuracy" in record:
            # With EMA, the accuracy of the weights best/ holds (the selection metric).
            return record.get("selected/accuracy", record["val/accuracy"])
    return None


def _plot_curves(workdir: str, title: str, say) -> None:
    """`<workdir>/curves.png`: train and val loss/accuracy against step, from metrics.jsonl."""
    try:
        from fer_flax import plots
    except ImportError as e:  # a trained model matters more than its picture
        say(f"Skipping curves.png: {e}")
        return
    plots.plot_training_curves(
        os.path.join(workdir, "metrics.jsonl"), os.path.join(workdir, "curves.png"), title
    )
