"""The pure train-step functions: one optimizer step, the gradients it would apply, and the
distillation targets of a batch (the inference forward is `fer_flax.core.forward`). Each is a
function of its arguments only (randomness from `fold_in(rng, step)`), so the loop compiles it once
with `jax.jit` and a resumed run draws the same numbers.

Knowledge distillation (`fer_flax.training.distill`) enters the train step in one of two ways: a batch with
"teacher_probs" (cached mode: the teachers' probabilities of the clean image, carried through ten-crop
and mixing like the labels), or `teachers` (on-the-fly mode: the teachers' static half, their apply
functions and TTA views) with `teacher_variables`, an argument of the step, run on the augmented batch.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from ml_collections import ConfigDict

from fer_flax.core import ema as ema_lib
from fer_flax.core import losses, mixing, optim, tta
from fer_flax.core import state as model_state
from fer_flax.core.augment import augment_batch, preprocess, ten_crop_batch, ten_crop_size
from fer_flax.core.forward import view_logits
from fer_flax.data import NUM_CLASSES


def classification_loss(
    logits: jax.Array,
    labels: jax.Array,
    *,
    num_classes: int,
    label_smoothing: float,
    terms: losses.LossTerms = losses.NO_TERMS,
    multi_target: bool = False,
) -> jax.Array:
    """Per-example softmax cross-entropy in float32 against integer labels [B] (one-hot) or soft targets
    [B, K] (FER+ vote distributions, mixup/cutmix), optionally smoothed; FER+'s multi-target loss with
    `multi_target`. `terms` adds the training split's class weights and logit adjustment
    (`losses.training_loss_terms`); evaluation passes none and scores raw logits."""
    targets = jax.nn.one_hot(labels, num_classes) if labels.ndim == logits.ndim - 1 else labels
    return losses.training_loss(
        logits, targets, label_smoothing=label_smoothing, terms=terms, multi_target=multi_target
    )


class TeacherModels(NamedTuple):
    """The static half of on-the-fly distillation's teachers: each one's `apply` and test-time views
    (`fer_flax.core.tta` mode and ten-crop side). Their variables are an argument of the step."""

    apply_fns: tuple[Callable, ...]
    tta_modes: tuple[str, ...]
    crop_sizes: tuple[int, ...]


def distill_settings(config: ConfigDict) -> tuple[float, float] | None:
    """(alpha, temperature) of `config.distill`, or None when the run distils from no teacher."""
    distill = config.distill
    if not distill.teachers:
        return None
    return float(distill.alpha), float(distill.temperature)


def training_targets(batch: dict, mode: str, num_classes: int, rng: jax.Array) -> jax.Array:
    """float32 [B, K] targets of a training batch: one-hot labels, or for a batch with FER+ soft
    targets in label mode "crossentropy"/"multi_target" those targets, and in "probability" a one-hot
    label drawn from each image's vote distribution (Barsoum et al.'s probabilistic label drawing)."""
    if "target" not in batch or mode == "majority":
        return jax.nn.one_hot(batch["label"], num_classes)
    target = batch["target"].astype(jnp.float32)
    if mode == "probability":
        return jax.nn.one_hot(jax.random.categorical(rng, jnp.log(target)), num_classes)
    return target


def _loss_and_grads(
    state: model_state.TrainState,
    batch: dict,
    rng: jax.Array,
    config: ConfigDict,
    class_counts: np.ndarray | None = None,
    num_classes: int = NUM_CLASSES,
    teachers: TeacherModels | None = None,
    teacher_variables: Any = (),
):
    distill = distill_settings(config)
    aug_rng, dropout_rng = jax.random.split(rng)
    # Class weights and prior are constants of the training split, computed here at trace time.
    terms = losses.training_loss_terms(config.loss, class_counts)
    images = preprocess(batch["image"])
    mode = config.data.label_mode
    # The label draw has its own key folded out of the augmentation's (mixing uses 1), so the other
    # draws are those of a run without it.
    labels = training_targets(batch, mode, num_classes, jax.random.fold_in(aug_rng, 2))
    # Cached teacher probabilities travel beside the labels (ten-crop repeats them, mixing mixes them
    # with the same lambda), then are split off again.
    if "teacher_probs" in batch:
        labels = jnp.concatenate([labels, batch["teacher_probs"].astype(jnp.float32)], axis=-1)
    crop_size = ten_crop_size(config.augment)
    if crop_size is not None:
        # Each image becomes its ten crops (labels repeated), augmented one by one below; the mean
        # loss then averages over every crop.
        images, labels = ten_crop_batch(images, labels, crop_size)
    images = augment_batch(aug_rng, images, config.augment)
    # Mixing draws from a key folded out of the augmentation's, so turning it on changes no other
    # draw (and with mixing off nothing is traced: runs without it are exactly what they were).
    images, labels = mixing.mix_batch(jax.random.fold_in(aug_rng, 1), images, labels, config.mix)
    soft = None
    if "teacher_probs" in batch:
        labels, soft = labels[:, :num_classes], labels[:, num_classes:]
    elif teachers is not None and distill is not None:  # on the fly: the teachers see what the student sees
        soft = teacher_probabilities(teachers, teacher_variables, images, distill[1])

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
            num_classes=num_classes,
            label_smoothing=config.label_smoothing,
            terms=terms,
            multi_target=mode == "multi_target",
        )

        def total(out: jax.Array) -> jax.Array:  # the batch loss of one head's logits
            hard = loss_of(out, labels)
            if soft is None:
                return hard.mean()
            alpha, temperature = distill
            return losses.distilled_loss(hard, out, soft, alpha=alpha, temperature=temperature).mean()

        loss = total(logits)
        # GoogLeNet-style auxiliary classifiers: present only in training, weighted from config.
        for aux_logits in aux.get("aux_logits", ()):
            loss = loss + config.aux_loss_weight * total(aux_logits)
        extra = (
            {} if soft is None else {"distill_kl": losses.distillation_kl(logits, soft, distill[1]).mean()}
        )
        return loss, (logits, updates.get("batch_stats", {}), extra)

    (loss, (logits, batch_stats, extra)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    if crop_size is not None:
        # One prediction per image, its crops' mean logits (as ten-crop TTA), for the training accuracy.
        views = tta.num_views("tencrop")
        logits = logits.astype(jnp.float32).reshape(-1, views, logits.shape[-1]).mean(axis=1)
    return loss, logits, batch_stats, grads, extra


def train_step(
    state: model_state.TrainState,
    batch: dict,
    rng: jax.Array,
    teacher_variables: Any = (),
    *,
    config: ConfigDict,
    schedule: optax.Schedule,
    class_counts: np.ndarray | None = None,
    num_classes: int = NUM_CLASSES,
    teachers: TeacherModels | None = None,
) -> tuple[model_state.TrainState, dict]:
    """One optimizer step. Randomness is `fold_in(rng, step)`, so a resumed run draws the same numbers.
    `class_counts` [K] (the training split's label counts) feeds `config.loss`'s class weights and prior.
    BatchNorm statistics of layers matching `config.optim.freeze` stay fixed, like their parameters.

    The metrics include `finite` (loss and gradient norm both finite). With
    `config.nonfinite == "skip"` a non-finite step keeps the previous parameters, optimizer state,
    BatchNorm statistics and EMA (the step counter still advances, so the data and RNG stay aligned).
    The logged `learning_rate` is the one applied: the schedule's times the reduce-on-plateau scale.
    With distillation the metrics add `distill_kl`, the batch mean of T^2 * KL(teachers || student).
    `teachers` / `teacher_variables`: on-the-fly distillation (the module docstring)."""
    step_rng = jax.random.fold_in(rng, state.step)
    loss, logits, batch_stats, grads, extra = _loss_and_grads(
        state,
        batch,
        step_rng,
        config,
        class_counts=class_counts,
        num_classes=num_classes,
        teachers=teachers,
        teacher_variables=teacher_variables,
    )
    grad_norm = optax.tree.norm(grads)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    batch_stats = optim.keep_frozen(batch_stats, state.batch_stats, config.optim.freeze)
    new_state = state.apply_gradients(grads=grads, batch_stats=batch_stats)
    if model_state.has_ema(state):
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
        if model_state.has_ema(state):
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
        **extra,
    }
    return new_state, step_metrics


def state_is_finite(state: model_state.TrainState) -> jax.Array:
    """Whether every floating-point leaf of the state (parameters, statistics, optimizer) is finite."""
    leaves = [x for x in jax.tree.leaves(state) if jnp.issubdtype(x.dtype, jnp.floating)]
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves]))


def gradients(
    state: model_state.TrainState,
    batch: dict,
    rng: jax.Array,
    teacher_variables: Any = (),
    *,
    config: ConfigDict,
    class_counts: np.ndarray | None = None,
    num_classes: int = NUM_CLASSES,
    teachers: TeacherModels | None = None,
):
    """The gradients `train_step` would apply at this step (for histograms; not on the hot path)."""
    step_rng = jax.random.fold_in(rng, state.step)
    kwargs = dict(class_counts=class_counts, num_classes=num_classes, teachers=teachers)
    return _loss_and_grads(state, batch, step_rng, config, teacher_variables=teacher_variables, **kwargs)[3]


def teacher_probabilities(
    teachers: TeacherModels, variables: Any, images: jax.Array, temperature: float
) -> jax.Array:
    """The distillation targets float32 [B, K] of preprocessed images [B, H, W, C]: each teacher's
    logits averaged over its TTA views (`view_logits`, what its evaluation scores), softened as
    softmax(logits / T), then averaged over the teachers (`fer_flax.training.distill` says why). Inference
    mode, no gradient: the teachers are constants of the student's loss."""
    probs = [
        losses.tempered_softmax(view_logits(f, v, images, tta_mode=m, crop_size=c), temperature)
        for f, v, m, c in zip(
            teachers.apply_fns, variables, teachers.tta_modes, teachers.crop_sizes, strict=True
        )
    ]
    return jax.lax.stop_gradient(jnp.mean(jnp.stack(probs), axis=0))
