"""The training loop: `train_and_evaluate(config, workdir)` is the whole job as a library call.

It runs as named phases: `_prepare` (validate the config, read the data, build or resume the state),
`_compile` (jit the pure steps of `fer_flax.training.steps`), `_loop` (train; evaluate, checkpoint and log on
exact step boundaries; stop cleanly on SIGTERM/SIGINT) and `_finish` (the summary). Each host call runs
one or `steps_per_call` steps (`training.multi_step`), fed by `training.feed` from either input
pipeline (Grain on the host, or the split on the devices). Device-side results are fetched only at log
and evaluation steps. Evaluations go through `inference.engine`, the same path as `inference.evaluate`."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
import optax
from ml_collections import ConfigDict

from fer_flax.config import schema as config_schema
from fer_flax.core import model as model_lib
from fer_flax.core import optim, parallel
from fer_flax.core import state as model_state
from fer_flax.data import ArraySplit, DataSpec, default_cache_dir, load_splits, resolve_spec
from fer_flax.run import checkpoint as checkpoint_lib
from fer_flax.run import start as run_start
from fer_flax.run import tracking
from fer_flax.run import workdir as workdir_lib
from fer_flax.run.interrupts import NonFiniteError, StopRequest, TrainingInterrupted
from fer_flax.training import distill, init_from, multi_step, steps, validation
from fer_flax.training import feed as train_feed
from fer_flax.training.metric_window import MetricWindow
from fer_flax.training.step_plan import start_state
from fer_flax.training.validation import Evaluation


@dataclasses.dataclass
class _Run:
    """Everything a run holds between its phases (set up once by `_prepare`)."""

    config: ConfigDict
    workdir: str
    say: Callable[..., None]
    mesh: jax.sharding.Mesh
    model: Any
    train_split: ArraySplit
    val_split: ArraySplit
    plan: dict[str, int]
    schedule: optax.Schedule
    state: model_state.TrainState
    train_rng: jax.Array
    train_iter: Any
    feed: Any  # train_feed.GrainFeed | DeviceFeed; train_iter is its iterator
    ckpt: checkpoint_lib.Checkpointer
    start_step: int
    num_params: int
    spec: DataSpec
    init_record: dict[str, Any] | None  # where the run started from (config.init_from)
    distillation: distill.Distillation | None  # the teachers (config.distill)

    @property
    def is_main(self) -> bool:
        return jax.process_index() == 0

    @property
    def use_ema(self) -> bool:
        return model_state.has_ema(self.state)

    @property
    def use_plateau(self) -> bool:
        return optim.get_plateau(self.state.opt_state) is not None

    @property
    def checkpoint_dir(self) -> str:
        return os.path.join(self.workdir, "checkpoints")

    def last_good(self) -> str:
        step = self.ckpt.latest_step()
        return "none (no checkpoint was written)" if step is None else f"{self.checkpoint_dir}/{step}"


@dataclasses.dataclass(frozen=True)
class CompiledSteps:
    """The jitted steps of a run (`compile_steps`)."""

    train: Callable
    gradients: Callable
    state_is_finite: Callable
    plateau: Callable


# ------------------------------------------------------------------------------------- phases


def _prepare(config: ConfigDict, workdir: str, opened: contextlib.ExitStack) -> _Run:
    """Checks what else can be checked before data is read (the data spec, init_from, the distillation
    teachers; the config and the workdir are checked and locked by the caller), then reads the data,
    builds the state (from init_from's weights in a new run) and resumes it from the workdir's latest
    checkpoint if there is one. The checkpoint managers are opened only once the data is read, and
    they and the input pipeline are closed by `opened` however the run ends."""
    is_main = jax.process_index() == 0
    say = print if is_main else (lambda *a, **k: None)
    spec = resolve_spec(config.data)
    model = model_lib.create_model(config, spec)
    mesh = parallel.make_mesh()
    parallel.check_batch_divisible(config.batch_size, mesh, name="batch_size")
    parallel.check_batch_divisible(config.eval_batch_size, mesh, name="eval_batch_size")
    changes = workdir_lib.config_changes(workdir, config)
    resuming = workdir_lib.has_checkpoint(workdir)
    init_from.check_freeze(config, model, spec)
    init_plan = None if resuming else init_from.prepare(config, model, spec, mesh)
    record = workdir_lib.derived_value(workdir, "distill") if resuming else None
    teachers = distill.load_teachers(config, spec, mesh, workdir, record)  # before any data is read

    cache_dir = config.data.cache_dir or default_cache_dir(workdir)
    data = load_splits(config.data, ("train", "val"), cache_dir=cache_dir, announce=say)
    if teachers:  # cached mode: the teachers' probabilities of every training image, made or read once
        data["train"], teachers = distill.with_targets(teachers, data["train"], config, mesh, cache_dir, say)
    plan, schedule, tx, state, train_rng = start_state(config, model, spec, mesh, len(data["train"]))
    if init_plan is not None:
        state = init_from.apply(state, init_plan, tx, mesh)
        say(init_plan.describe())
    feed = train_feed.make_feed(config, data["train"], mesh)
    train_iter = feed.iterator
    opened.callback(train_iter.close)  # stops Grain's worker processes, if any
    # Opened last, so that what can fail before (data, sizes, the state) fails with no Orbax manager
    # open: a manager starts a background clean-up of its folder that races a quick exit.
    ckpt = checkpoint_lib.Checkpointer(
        workdir, keep=config.checkpoint_keep, keep_best=config.checkpoint_keep_best
    )
    opened.callback(ckpt.close)
    run = _Run(
        config=config,
        workdir=workdir,
        say=say,
        mesh=mesh,
        model=model,
        train_split=data["train"],
        val_split=data["val"],
        plan=plan,
        schedule=schedule,
        state=state,
        train_rng=train_rng,
        train_iter=train_iter,
        feed=feed,
        ckpt=ckpt,
        start_step=0,
        num_params=int(sum(x.size for x in jax.tree.leaves(state.params))),
        spec=spec,
        # A resumed run keeps the record of the run that started it.
        init_record=init_plan.record() if init_plan else workdir_lib.derived_value(workdir, "init_from"),
        distillation=teachers,
    )
    if resuming:
        run.state = ckpt.restore_latest(state, train_iter)
        run.start_step = int(jax.device_get(run.state.step))
        total = plan["total_steps"]
        say(f"Resumed from {run.checkpoint_dir}/{run.start_step} (step {run.start_step} of {total}).")
    if is_main:
        _record_run(run, changes)
    say(
        f"Model {config.model_name}/{config.model.variant}: {run.num_params / 1e6:.2f}M parameters; "
        f"{len(run.train_split)} train / {len(run.val_split)} val images ({spec.describe()}); "
        f"{plan['total_steps']} steps of {config.batch_size} on {jax.device_count()} device(s)."
    )
    return run


def _record_run(run: _Run, changes: dict[str, tuple[Any, Any]]) -> None:
    """Process 0: the run's files at start (`workdir.record_start`) with what it derived."""
    derived = {
        **run.plan,
        "num_devices": jax.device_count(),
        "num_processes": jax.process_count(),
        "num_params": run.num_params,
        "num_train": len(run.train_split),
        "num_val": len(run.val_split),
        "data_spec": run.spec.to_dict(),
        "init_from": run.init_record,
        "distill": run.distillation.record() if run.distillation else None,
    }
    workdir_lib.record_start(run.workdir, run.config, derived, changes, run.start_step, run.say)


def compile_steps(
    config: ConfigDict,
    schedule: optax.Schedule,
    class_counts: np.ndarray,
    mesh: jax.sharding.Mesh,
    distillation: distill.Distillation | None = None,
) -> CompiledSteps:
    """The run's steps under jax.jit. `class_counts` are the training split's label counts, baked into
    the step as constants: the loss's class weights and logit-adjustment prior (config.loss), never
    the val split's. On-the-fly distillation's teachers are bound into the train and gradient steps."""
    teachers, variables = distillation.step_arguments() if distillation else (None, ())
    counts = {"class_counts": class_counts, "num_classes": len(class_counts), "teachers": teachers}
    gradients = jax.jit(functools.partial(steps.gradients, config=config, **counts))
    return CompiledSteps(
        train=train_feed.compile_train(config, schedule, class_counts, mesh, teachers, variables),
        gradients=lambda state, batch, rng: gradients(state, batch, rng, variables),
        state_is_finite=jax.jit(steps.state_is_finite),
        # Replicated like the rest of the state, so the train step sees the shardings it was compiled for.
        plateau=jax.jit(
            functools.partial(optim.plateau_update, optim=config.optim),
            out_shardings=parallel.replicated_sharding(mesh),
        ),
    )


def _evaluation_step(
    run: _Run,
    compiled: CompiledSteps,
    writer: tracking.MetricWriter,
    state: model_state.TrainState,
    step: int,
) -> tuple[model_state.TrainState, Evaluation]:
    """Evaluates at `step`, updates the reduce-on-plateau scale and logs; returns the state (its
    plateau updated before the checkpoint of this step, which then holds what a resume needs)."""
    config, total = run.config, run.plan["total_steps"]
    evaluation = validation.evaluate(run.model, state, run.val_split, run.config, run.mesh)
    record = evaluation.record()
    if run.use_plateau:
        # Driven by the raw weights' validation accuracy: those are what the learning rate moves.
        plateau = compiled.plateau(optim.get_plateau(state.opt_state), evaluation.val["accuracy"])
        state = state.replace(opt_state=optim.set_plateau(state.opt_state, plateau))
        record.update({f"plateau/{k}": v for k, v in plateau._asdict().items()})
    writer.write(step, record)
    if config.wandb.mode != "disabled":  # wandb: confusion matrix and sample predictions
        validation.log_media(writer, step, evaluation, run.model, state, run.val_split, config, run.mesh)
    run.say(
        f"step {step}/{total} (epoch {step / run.plan['steps_per_epoch']:.2f}): {evaluation.describe()}"
        + (f"; lr scale {float(record['plateau/scale']):.4g}" if run.use_plateau else "")
    )
    return state, evaluation


def _save(
    run: _Run,
    compiled: CompiledSteps,
    step: int,
    state: model_state.TrainState,
    evaluation: Evaluation | None,
) -> None:
    """Checkpoints `step` (a best-model candidate too when it was evaluated); never a non-finite state."""
    if not bool(compiled.state_is_finite(state)):
        raise NonFiniteError(
            f"Refusing to checkpoint a non-finite state at step {step}. Last good checkpoint: "
            f"{run.last_good()}."
        )
    run.ckpt.save(
        step,
        state,
        run.train_iter,
        val_metrics=evaluation.selected if evaluation else None,
        best_weights=evaluation.best_weights if evaluation else "raw",
    )


def _loop(
    run: _Run, compiled: CompiledSteps, writer: tracking.MetricWriter, window: MetricWindow
) -> tuple[model_state.TrainState, Evaluation | None]:
    """Trains from the resumed step to the end; returns the final state and its last evaluation."""
    config, plan, state = run.config, run.plan, run.state
    total, every = plan["total_steps"], config.checkpoint_every_steps
    # The gradient pass is a collective, so every process runs it whenever wandb is on (process 0
    # logs); with wandb disabled nothing would receive the histograms.
    histogram_every = config.wandb.histogram_every_steps if config.wandb.mode != "disabled" else 0
    last_evaluation = None

    def must_end(s: int) -> bool:  # a call ends where the host acts: log, evaluate, save, histogram next
        at = any(c > 0 and s % c == 0 for c in (config.log_every_steps, plan["eval_every_steps"], every))
        return at or (histogram_every > 0 and (s + 1) % histogram_every == 0)

    with StopRequest() as stop:
        for step, n in multi_step.call_plan(run.start_step, total, config.steps_per_call, must_end):
            inputs = run.feed.inputs(step - n + 1, n)  # one call runs steps step - n + 1 .. step
            if histogram_every and (step - n + 1) % histogram_every == 0:
                grads = compiled.gradients(state, run.feed.batch(inputs, state), run.train_rng)
                writer.log_histograms(step - n + 1, {"params": state.params, "grads": grads})
            state, step_metrics = compiled.train(state, inputs, run.train_rng)
            window.add(step, step_metrics, n)

            is_eval = step % plan["eval_every_steps"] == 0 or step == total
            is_checkpoint = is_eval or (every > 0 and step % every == 0)
            stopping = stop.signum is not None
            # A record at every checkpoint too: the metric windows then depend on the step alone, so
            # a run resumed from any checkpoint logs exactly what an uninterrupted one does.
            if step % config.log_every_steps == 0 or step == total or is_checkpoint or stopping:
                window.flush(step)
            else:
                window.progress.update(step)
            if is_eval:
                jax.block_until_ready(state)
                window.close_timing()
                window.progress.pause()
                state, last_evaluation = _evaluation_step(run, compiled, writer, state, step)
            if is_checkpoint or stopping:
                _save(run, compiled, step, state, last_evaluation if is_eval else None)
                window.restart()
            if stopping:
                interrupted = TrainingInterrupted(stop.signum, step, run.checkpoint_dir)
                window.progress.pause()
                run.say(str(interrupted))
                raise interrupted
    return state, last_evaluation


def _finish(
    run: _Run, state: model_state.TrainState, evaluation: Evaluation | None, window: MetricWindow
) -> dict[str, Any]:
    """The run's summary (written to summary.json by process 0), curves.png and the closing line."""
    config = run.config
    if evaluation is None:  # resumed a finished run: report what its checkpoint gives
        evaluation = validation.evaluate(run.model, state, run.val_split, run.config, run.mesh)
    best_step = run.ckpt.best_step()
    summary = {
        "model_name": config.model_name,
        "variant": config.model.variant,
        "num_params": run.num_params,
        "final_step": int(jax.device_get(state.step)),
        "final_val": evaluation.val,
        "best_val_accuracy": workdir_lib.best_accuracy(run.workdir, best_step) if run.is_main else None,
        "best_step": best_step,
        "skipped_updates_this_run": window.skipped_updates,
        "train_seconds_this_run": window.train_seconds,
        "data_path": config.data.path,
        "init_from": run.init_record,
        "distill": run.distillation.record() if run.distillation else None,
    }
    if run.use_ema:
        summary["final_val_ema"] = evaluation.val_ema
        selection = run.ckpt.best_selection(best_step) if best_step is not None else None
        summary["best_weights"] = selection["weights"] if selection else None
    if run.use_plateau:
        summary["final_lr_scale"] = float(jax.device_get(optim.get_plateau(state.opt_state).scale))
    if run.is_main:
        workdir_lib.write_json(workdir_lib.path(run.workdir, workdir_lib.SUMMARY_FILE), summary)
        if config.curves_png:
            workdir_lib.plot_curves(run.workdir, f"{config.model_name}/{config.model.variant}", run.say)
    final = f"{evaluation.val['accuracy']:.4f}"
    best = f"step {summary['best_step']}"
    if run.use_ema:
        # Both weight sets, and which one best/ kept: the figure to quote is the best checkpoint's.
        final = f"{final} (EMA weights {evaluation.val_ema['accuracy']:.4f})"
        if summary["best_weights"] and summary["best_val_accuracy"] is not None:
            best += f", {summary['best_weights']} weights, {summary['best_val_accuracy']:.4f}"
    run.say(f"Done. Final validation accuracy: {final} (best checkpoint: {best}). Workdir: {run.workdir}")
    return summary


def train_and_evaluate(config: ConfigDict, workdir: str) -> dict[str, Any]:
    """Trains `config` in `workdir`, resuming from its latest checkpoint if there is one.

    Returns the final summary (also written to `<workdir>/summary.json`). Raises `TrainingInterrupted`
    after SIGTERM/SIGINT (once the last finished step is checkpointed), `NonFiniteError` (non-finite
    loss or gradient, `config.nonfinite == "stop"`), `CheckpointSaveError` and `WorkdirLockedError`
    (process 0 locks the workdir for the whole run, before any data is read). A start that fails
    before the run has recorded itself (a bad data row, say) leaves the workdir as it found it
    (`fer_flax.run.start`).
    """
    workdir = os.path.abspath(workdir)
    config_schema.validate(config)
    # Exits in reverse: what _prepare opened (the checkpoint managers, the input pipeline) is closed
    # before a failed start takes back the folders it made.
    with run_start.begin(workdir, jax.process_index()) as started, contextlib.ExitStack() as opened:
        run = _prepare(config, workdir, opened)
        started.recorded()
        return _train(run)


def _train(run: _Run) -> dict[str, Any]:
    """The run itself, from `_compile` to `_finish`, with the workdir locked."""
    config = run.config
    compiled = compile_steps(config, run.schedule, run.train_split.class_counts(), run.mesh, run.distillation)
    writer = tracking.MetricWriter(run.workdir, config)
    progress = tracking.ProgressBar(run.plan["total_steps"], config.batch_size, enabled=config.progress_bar)
    progress.start(run.start_step)
    window = MetricWindow(config, run.plan["steps_per_epoch"], writer, progress, run.last_good)
    try:
        # Checkpointer.save returns once its save is finished: nothing is left under way whatever
        # ends the loop.
        state, evaluation = _loop(run, compiled, writer, window)
        return _finish(run, state, evaluation, window)
    finally:
        writer.close()
