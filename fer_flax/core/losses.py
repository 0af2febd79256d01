"""Training losses: soft-target cross-entropy, label smoothing, class weights and logit adjustment, and
FER+'s multi-target loss.

Everything here is computed in float32 whatever the model's compute dtype. Targets are soft, [B, K]
rows that sum to one (one-hot labels, FER+ vote distributions, or the interpolated targets of
mixup/cutmix), so one loss covers plain, crowd-labelled and mixed batches. FER+'s `multi_target` mode
instead gives 0/1 rows marking every acceptable class (`multi_target_loss`).

The class weights and the prior are numbers of the TRAINING split (its label counts), computed once in
numpy and baked into the jitted train step as constants; evaluation never uses them.

Class weighting (`config.loss.class_weighting`):
  none          every example weighs 1.
  inverse       w_c ∝ 1 / n_c (each class contributes equally in expectation).
  sqrt_inverse  w_c ∝ 1 / sqrt(n_c) (half-way: FER2013's 1.5% "disgust" is not blown up 60-fold).
  explicit      w_c ∝ `config.loss.class_weights[c]` (7 non-negative numbers, one positive).
  Whatever the mode, the weights are normalised so that their mean over the training distribution is
  one, sum_c (n_c / N) w_c = 1: under natural sampling the expected per-example weight is 1, so the loss
  keeps its scale and a learning rate tuned without weighting still fits.
  An example's weight is sum_c target_c * w_c, so a mixup of a "disgust" and a "happy" face weighs
  lam * w_disgust + (1 - lam) * w_happy. The weight is taken from the targets before label smoothing:
  smoothing is a regulariser, not a statement about which class the example belongs to.

Logit adjustment (Menon et al., "Long-tail learning via logit adjustment", ICLR 2021, the
"logit-adjusted loss"): the training loss is the cross-entropy of `logits + tau * log(prior)`, with
prior_c = n_c / N, while predictions use the raw logits. Rare classes then need a larger margin during
training, which shifts the raw logits in their favour at test time; tau = 1 is the paper's
Fisher-consistent choice for balanced error, 0 disables it.

Knowledge distillation (Hinton, Vinyals & Dean, "Distilling the knowledge in a neural network", 2015;
`training.distill`): with teacher probabilities p = softmax(z_teacher / T) (averaged over teachers) and
the student's q = softmax(z_student / T), the per-example loss is

  alpha * CE(labels) + (1 - alpha) * T^2 * KL(p || q),   KL(p || q) = sum_c p_c (log p_c - log q_c),

where CE is the loss above (smoothing, class weights, logit adjustment included). The gradient of the
second term with respect to the student's logits is (1 - alpha) * T * (q - p): it vanishes exactly when
the student's softened distribution matches the teacher's, and the factor T^2 keeps its size roughly
independent of T (the soft gradients scale as 1/T^2), as the paper prescribes.

`fer_flax.config.schema.validate` checks `config.loss` (the mode, the explicit weights, tau) and
`config.distill` before any data is read; here only what needs the training counts is checked.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.scipy.special import xlogy

from fer_flax.config.choices import CLASS_WEIGHTINGS
from fer_flax.config.schema import check_choice, check_class_weights


class LossTerms(NamedTuple):
    """The training-split constants of the loss: per-class weights [K] and the logit offset
    tau * log(prior) [K]; None where the feature is off (then it is not traced at all)."""

    class_weights: np.ndarray | None
    logit_offset: np.ndarray | None


NO_TERMS = LossTerms(class_weights=None, logit_offset=None)


def soft_cross_entropy(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """Per-example -sum_c targets_c * log_softmax(logits)_c in float32: logits [..., K], targets [..., K]."""
    log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    return -jnp.sum(targets.astype(jnp.float32) * log_probs, axis=-1)


# FERPlus's reference code blends the 0/1 targets with this much of an all-ones vector, so that no
# class's probability is multiplied by exactly 0.
MULTI_TARGET_EPSILON = 1e-3


def multi_target_loss(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """Per-example -log max_c (y_c * softmax(logits)_c) with y = (1 - eps) * targets + eps, for 0/1
    `targets` [..., K] marking the acceptable classes (Barsoum et al. 2016's multi-label learning): the
    model is rewarded for putting its mass on any one of them."""
    probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
    y = (1.0 - MULTI_TARGET_EPSILON) * targets.astype(jnp.float32) + MULTI_TARGET_EPSILON
    return -jnp.log(jnp.max(y * probs, axis=-1))


def class_weights(
    counts: Sequence[int] | np.ndarray, weighting: str, explicit: Sequence[float] | None = None
) -> np.ndarray | None:
    """Per-class loss weights [K] from the training label counts, or None for "none".

    Normalised so that sum_c (n_c / N) * w_c = 1, the mean weight over the training distribution. An
    absent class (n_c = 0) counts as one example for "inverse"/"sqrt_inverse", keeping its weight
    finite (it only ever meets label-smoothing mass)."""
    counts = np.asarray(counts, np.float64)
    check_choice("weighting", weighting, CLASS_WEIGHTINGS)
    if weighting == "none":
        return None
    if counts.ndim != 1 or counts.sum() <= 0 or (counts < 0).any():
        raise ValueError(f"class weighting needs non-negative training class counts, got {counts.tolist()}")
    if weighting == "inverse":
        raw = 1.0 / np.maximum(counts, 1.0)
    elif weighting == "sqrt_inverse":
        raw = 1.0 / np.sqrt(np.maximum(counts, 1.0))
    else:
        check_class_weights("explicit", explicit, len(counts))
        raw = np.asarray(explicit, np.float64)
    prior = counts / counts.sum()
    mean = float(np.sum(prior * raw))
    if mean <= 0:
        raise ValueError(
            f"config.loss.class_weights {tuple(raw.tolist())} give every training class weight 0 "
            f"(training class counts {counts.astype(int).tolist()})"
        )
    return (raw / mean).astype(np.float32)


def log_prior(counts: Sequence[int] | np.ndarray) -> np.ndarray:
    """log(n_c / N) [K] in float32; an absent class counts as one example, so the log stays finite."""
    counts = np.maximum(np.asarray(counts, np.float64), 1.0)
    return np.log(counts / counts.sum()).astype(np.float32)


def needs_class_counts(loss_cfg: Any) -> bool:
    """Whether `config.loss` needs the training split's class counts (weighting or logit adjustment)."""
    return loss_cfg.class_weighting != "none" or float(loss_cfg.logit_adjustment_tau) > 0


def training_loss_terms(loss_cfg: Any, counts: Sequence[int] | np.ndarray | None) -> LossTerms:
    """The constants `config.loss` asks for, from the training split's label counts [K].

    Raises ValueError when counts are needed but not given."""
    if not needs_class_counts(loss_cfg):
        return NO_TERMS
    if counts is None:
        raise ValueError(
            f"config.loss.class_weighting={loss_cfg.class_weighting!r} / logit_adjustment_tau="
            f"{loss_cfg.logit_adjustment_tau} need the training split's class counts (class_counts=...)"
        )
    tau = float(loss_cfg.logit_adjustment_tau)
    return LossTerms(
        class_weights=class_weights(counts, loss_cfg.class_weighting, loss_cfg.class_weights),
        logit_offset=(tau * log_prior(counts)).astype(np.float32) if tau > 0 else None,
    )


def training_loss(
    logits: jax.Array,
    targets: jax.Array,
    *,
    label_smoothing: float = 0.0,
    terms: LossTerms = NO_TERMS,
    multi_target: bool = False,
) -> jax.Array:
    """Per-example training loss [B] for logits [B, K] and soft targets [B, K] (rows summing to one):
    cross-entropy of the (logit-adjusted) logits against the (smoothed) targets, times the example's
    class weight sum_c targets_c * w_c. With `multi_target`, `targets` are 0/1 sets of acceptable
    classes, the loss is `multi_target_loss` (no smoothing) and the class weight is the mean over the
    set. Take `.mean()` for the batch loss."""
    targets = targets.astype(jnp.float32)
    logits = logits.astype(jnp.float32)
    if terms.logit_offset is not None:
        logits = logits + jnp.asarray(terms.logit_offset)
    if multi_target:
        loss = multi_target_loss(logits, targets)
        targets = targets / jnp.maximum(targets.sum(axis=-1, keepdims=True), 1.0)
    else:
        smoothed = optax.smooth_labels(targets, label_smoothing) if label_smoothing else targets
        loss = soft_cross_entropy(logits, smoothed)
    if terms.class_weights is not None:
        loss = loss * (targets @ jnp.asarray(terms.class_weights))
    return loss


def tempered_softmax(logits: jax.Array, temperature: float) -> jax.Array:
    """softmax(logits / T) in float32 over the last axis: the temperature-softened probabilities."""
    return jax.nn.softmax(logits.astype(jnp.float32) / temperature, axis=-1)


def distillation_kl(student_logits: jax.Array, teacher_probs: jax.Array, temperature: float) -> jax.Array:
    """Per-example T^2 * KL(p || softmax(student_logits / T)) [B] for teacher probabilities p [B, K]
    already softened at T (0 * log 0 = 0). Zero when the student's softened distribution is p."""
    p = teacher_probs.astype(jnp.float32)
    log_q = jax.nn.log_softmax(student_logits.astype(jnp.float32) / temperature, axis=-1)
    return temperature**2 * jnp.sum(xlogy(p, p) - p * log_q, axis=-1)


def distilled_loss(
    hard_loss: jax.Array,
    student_logits: jax.Array,
    teacher_probs: jax.Array,
    *,
    alpha: float,
    temperature: float,
) -> jax.Array:
    """Per-example alpha * hard_loss + (1 - alpha) * `distillation_kl`: `hard_loss` [B] is the
    true-label loss (`training_loss`), `teacher_probs` [B, K] the teachers' probabilities at T."""
    soft = distillation_kl(student_logits, teacher_probs, temperature)
    return alpha * hard_loss + (1.0 - alpha) * soft
