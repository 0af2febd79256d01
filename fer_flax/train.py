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
from fer_flax import input_pipeline, metrics, models, optim, parallel, tracking
from fer_flax.augment import augment_batch, preprocess
from fer_flax.data import NUM_CLASSES, ArraySplit, default_cache_dir, load_splits
from fer_flax.data.splits import IMAGE_SIZE

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


class TrainState(train_state.TrainState):
    batch_stats: Any = None


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
    model: nn.Module, tx: optax.GradientTransformation, rng: jax.Array, mesh: jax.sharding.Mesh
) -> TrainState:
    """Initialises directly into replicated device memory (no host round trip of the parameters)."""

    def init(rng):
        variables = initial_variables(model, rng)
        return TrainState.create(
            apply_fn=model.apply,
            params=variables["params"],
            batch_stats=variables.get("batch_stats", {}),
            tx=tx,
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
    logits: jax.Array, labels: jax.Array, *, num_classes: int, label_smoothing: float
) -> jax.Array:
    """Per-example softmax cross-entropy against (optionally smoothed) one-hot labels, in float32."""
    targets = optax.smooth_labels(jax.nn.one_hot(labels, num_classes), label_smoothing)
    return optax.softmax_cross_entropy(logits.astype(jnp.float32), targets)


def _loss_and_grads(state: TrainState, batch: dict, rng: jax.Array, config: ConfigDict):
    aug_rng, dropout_rng = jax.random.split(rng)
    images = augment_batch(aug_rng, preprocess(batch["image"]), config.augment)
    labels = batch["label"]

    def loss_fn(params):
        (logits, aux), updates = state.apply_fn(
            {"params": params, "batch_stats": state.batch_stats},
            images,
            train=True,
            rngs={"dropout": dropout_rng},
            mutable=["batch_stats"],
        )
        loss_of = functools.partial(
            classification_loss, num_classes=NUM_CLASSES, label_smoothing=config.label_smoothing
        )
        loss = loss_of(logits, labels).mean()
        # GoogLeNet-style auxiliary classifiers: present only in training, weighted from config.
        for aux_logits in aux.get("aux_logits", ()):
            loss = loss + config.aux_loss_weight * loss_of(aux_logits, labels).mean()
        return loss, (logits, updates.get("batch_stats", {}))

    (loss, (logits, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    return loss, logits, batch_stats, grads


def train_step(
    state: TrainState, batch: dict, rng: jax.Array, *, config: ConfigDict, schedule: optax.Schedule
) -> tuple[TrainState, dict]:
    """One optimizer step. Randomness is `fold_in(rng, step)`, so a resumed run draws the same numbers."""
    step_rng = jax.random.fold_in(rng, state.step)
    loss, logits, batch_stats, grads = _loss_and_grads(state, batch, step_rng, config)
    new_state = state.apply_gradients(grads=grads, batch_stats=batch_stats)
    step_metrics = {
        "loss": loss,
        "accuracy": jnp.mean(jnp.argmax(logits, -1) == batch["label"]),
        "grad_norm": optax.tree.norm(grads),
        "learning_rate": schedule(state.step),
    }
    return new_state, step_metrics


def gradients(state: TrainState, batch: dict, rng: jax.Array, *, config: ConfigDict):
    """The gradients `train_step` would apply at this step (for histograms; not on the hot path)."""
    return _loss_and_grads(state, batch, jax.random.fold_in(rng, state.step), config)[3]


def eval_step(state: TrainState, batch: dict) -> dict:
    """Sums over the valid (mask=True) examples of a padded batch: exact whatever the batch size."""
    logits, _ = state.apply_fn(
        {"params": state.params, "batch_stats": state.batch_stats},
        preprocess(batch["image"]),
        train=False,
    )
    mask = batch["mask"]
    losses = classification_loss(logits, batch["label"], num_classes=NUM_CLASSES, label_smoothing=0.0)
    return {
        "confusion": metrics.confusion_matrix(batch["label"], jnp.argmax(logits, -1), mask, NUM_CLASSES),
        "loss_sum": jnp.sum(jnp.where(mask, losses, 0.0)),
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
        raise PermissionError(f"workdir {workdir!r} is not writable: {e}") from e


def train_and_evaluate(config: ConfigDict, workdir: str) -> dict[str, Any]:
    """Trains `config` in `workdir`, resuming from its latest checkpoint if there is one.

    Returns the final summary (also written to `<workdir>/summary.json`).
    """
    workdir = os.path.abspath(workdir)
    _check_workdir(workdir)
    is_main = jax.process_index() == 0
    say = print if is_main else (lambda *a, **k: None)

    # Fail on configuration mistakes before any data is read or anything is compiled.
    model = create_model(config)
    mesh = parallel.make_mesh()
    parallel.check_batch_divisible(config.batch_size, mesh, name="batch_size")
    parallel.check_batch_divisible(config.eval_batch_size, mesh, name="eval_batch_size")

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
    state = create_train_state(model, tx, init_rng, mesh)
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
    start_step = 0
    if ckpt.latest_step() is not None:
        state = ckpt.restore_latest(state, train_iter)
        start_step = int(jax.device_get(state.step))
        say(f"Resumed from {workdir}/checkpoints/{start_step} (step {start_step} of {total_steps}).")

    if is_main:
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
    p_train_step = jax.jit(
        functools.partial(train_step, config=config, schedule=schedule), donate_argnums=(0,)
    )
    p_eval_step = jax.jit(eval_step)
    p_gradients = jax.jit(functools.partial(gradients, config=config))
    p_predict = jax.jit(predict_step)
    run_eval = functools.partial(
        evaluate, p_eval_step, split=val_split, batch_size=config.eval_batch_size, mesh=mesh
    )

    progress = tracking.ProgressBar(total_steps, config.batch_size, enabled=config.progress_bar)
    progress.start(start_step)
    pending: list[dict] = []
    window_start, window_steps = time.perf_counter(), 0
    train_seconds = 0.0
    val_metrics: dict[str, float] | None = None
    best = {"accuracy": -1.0, "step": None}
    for step in range(start_step + 1, total_steps + 1):
        local_batch = next(train_iter)
        batch = parallel.to_global_batch(local_batch, mesh)
        # The gradient pass is a collective, so every process runs it whenever wandb is on (process 0
        # logs); with wandb disabled nothing would receive the histograms, so skip the work.
        log_histograms = config.wandb.mode != "disabled" and config.wandb.histogram_every_steps
        if log_histograms and step % config.wandb.histogram_every_steps == 0:
            grads = p_gradients(state, batch, train_rng)
            writer.log_histograms(step, {"params": state.params, "grads": grads})
        state, step_metrics = p_train_step(state, batch, train_rng)
        pending.append(step_metrics)
        window_steps += 1

        if step % config.log_every_steps == 0 or step == total_steps:
            fetched = jax.device_get(pending)
            pending = []
            elapsed = time.perf_counter() - window_start
            train_seconds += elapsed
            summary = {k: float(np.mean([m[k] for m in fetched])) for k in fetched[0]}
            if not np.isfinite(summary["loss"]):
                raise FloatingPointError(
                    f"Non-finite training loss {summary['loss']} at step {step}; last checkpoint: "
                    f"{ckpt.latest_step()} in {workdir}/checkpoints"
                )
            summary["images_per_sec"] = window_steps * config.batch_size / max(elapsed, 1e-9)
            summary["epoch"] = step / plan["steps_per_epoch"]
            writer.write(step, {f"train/{k}": v for k, v in summary.items()})
            progress.update(step, f"loss {summary['loss']:.3f}")
            window_start, window_steps = time.perf_counter(), 0
        else:
            progress.update(step)

        if step % plan["eval_every_steps"] == 0 or step == total_steps:
            jax.block_until_ready(state)
            train_seconds += time.perf_counter() - window_start
            val_metrics = run_eval(state)
            if val_metrics["accuracy"] > best["accuracy"]:
                best = {"accuracy": val_metrics["accuracy"], "step": step}
            writer.write(step, {f"val/{k}": v for k, v in val_metrics.items()})
            if config.wandb.mode != "disabled":  # wandb: confusion matrix and sample predictions
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
            )
            ckpt.save(step, state, train_iter, val_metrics=val_metrics)
            window_start, window_steps = time.perf_counter(), 0

    ckpt.wait_until_finished()
    if val_metrics is None:  # resumed a finished run: report what its checkpoint gives
        val_metrics = run_eval(state)
    if ckpt.best_step() is not None and best["step"] is None:
        best = {"accuracy": None, "step": ckpt.best_step()}
    summary = {
        "model_name": config.model_name,
        "variant": config.model.variant,
        "num_params": num_params,
        "final_step": int(jax.device_get(state.step)),
        "final_val": val_metrics,
        "best_val_accuracy": best["accuracy"],
        "best_step": ckpt.best_step(),
        "train_seconds_this_run": train_seconds,
        "data_path": config.data.path,
    }
    if is_main:
        with open(os.path.join(workdir, "summary.json"), "w") as f:
            json.dump(summary, f, indent=2)
        _plot_curves(workdir, f"{config.model_name}/{config.model.variant}", say)
    say(
        f"Done. Final validation accuracy: {val_metrics['accuracy']:.4f} "
        f"(best checkpoint: step {summary['best_step']}). Workdir: {workdir}"
    )
    writer.close()
    ckpt.close()
    return summary


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
