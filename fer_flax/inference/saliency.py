"""Saliency maps for every model family: Grad-CAM, attention rollout, gradient × input, SmoothGrad.

Each method maps a batch of preprocessed images [B, H, W, 1] (`augment.preprocess`, as inference feeds
them) and one target class per image to a non-negative map per image:

  gradcam     Grad-CAM (Selvaraju et al. 2017) on the feature map of the last convolutional stage:
              relu(sum_k alpha_k A_k) with alpha_k the spatial mean of d logit / d A_k. Resolution of
              that map (3x3 to 12x12 at 48x48 input, depending on the family).
  rollout     attention rollout (Abnar & Zuidema 2020) for the ViTs: per layer the head-averaged
              attention plus the identity (the residual path), rows renormalised, multiplied through
              the layers and read out the way the model pools (CLS row, mean of rows, or
              sequence-pooling weights). Class-agnostic; at the token-grid resolution.
  gradxinput  |d logit / d x * x| per pixel (x the normalised image, so mid-grey counts as 0).
  smoothgrad  SmoothGrad (Smilkov et al. 2017): |mean of d logit / d x over noisy copies of x|,
              Gaussian noise of `noise` times the image's value range.

Where Grad-CAM reads the feature map (`Tap`) is one named module per family (`feature_tap`): the last
residual block (ResNet, BeefyModel), the last inception module (GoogLeNet) or, for the plain CNNs whose
stages are not modules, the input of the head's first Dense layer (the last stage's pooled map,
flattened). The map and its gradient are taken with `flax.linen.intercept_methods`: a zero
perturbation is added where the tap is and differentiated, so the models need no changes.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from fer_flax.base.errors import check_choice
from fer_flax.core.augment import preprocess
from fer_flax.models import beefy, cnn, googlenet, resnet, vit

METHODS: tuple[str, ...] = ("gradcam", "rollout", "gradxinput", "smoothgrad")
SMOOTHGRAD_SAMPLES = 16
SMOOTHGRAD_NOISE = 0.15  # the noise level Smilkov et al. recommend (10-20% of the value range)


@dataclasses.dataclass(frozen=True)
class Tap:
    """Where a model's feature map is read: the output (or the input, `side="input"`) of the module at
    `path` (names from the model's root). An input that is a flattened map [B, h*w*C] is unflattened
    with `channels` = C into a square map."""

    path: tuple[str, ...]
    side: str = "output"
    channels: int | None = None


def feature_tap(model: nn.Module) -> Tap | None:
    """The last convolutional stage's output of a conv family; None for the ViTs (use rollout)."""
    if isinstance(model, cnn.PlainCNN):
        return Tap(("Dense_0",), side="input", channels=model.stage_widths[-1])
    if isinstance(model, resnet.ResNet):
        return Tap((f"stage{len(model.stage_sizes)}_block{model.stage_sizes[-1]}",))
    if isinstance(model, beefy.BeefyModel):
        blocks = model.blocks_per_stage
        last = blocks if isinstance(blocks, int) else blocks[-1]
        return Tap((f"stage{model.num_stages}_block{last}",))
    if isinstance(model, googlenet.GoogLeNet):
        return Tap((f"inception_{model.stages[-1][-1][0]}",))
    return None


def default_methods(model: nn.Module) -> tuple[str, ...]:
    """Grad-CAM and SmoothGrad for the conv families; rollout and SmoothGrad for the ViTs."""
    return (
        ("rollout", "smoothgrad") if isinstance(model, vit.VisionTransformer) else ("gradcam", "smoothgrad")
    )


def check_methods(model: nn.Module, methods: Sequence[str], tap: Tap | None = None) -> tuple[str, ...]:
    """`methods` if each is known and applies to `model`, else ValueError saying which does not."""
    for m in methods:
        check_choice("--methods", m, METHODS)
    name = type(model).__name__
    if "gradcam" in methods and (tap or feature_tap(model)) is None:
        raise ValueError(f"gradcam needs a convolutional feature map; {name} has none (use rollout)")
    if "rollout" in methods and not isinstance(model, vit.VisionTransformer):
        raise ValueError(f"rollout needs attention layers; {name} is not a ViT (use gradcam)")
    return tuple(methods)


# ------------------------------------------------------------------------------------ the pieces


def _apply_tapped(model, variables, x, tap: Tap, perturbation):
    """(logits, the feature map at `tap` with `perturbation` added, as the model saw it)."""
    found = {}

    def interceptor(next_fun, args, kwargs, context):
        if context.method_name != "__call__" or context.module.path != tap.path:
            return next_fun(*args, **kwargs)
        if tap.side == "input":
            value = args[0] if perturbation is None else args[0] + perturbation
            found["features"] = value
            return next_fun(value, *args[1:], **kwargs)
        value = next_fun(*args, **kwargs)
        value = value if perturbation is None else value + perturbation
        found["features"] = value
        return value

    with nn.intercept_methods(interceptor):
        logits, _ = model.apply(variables, x, train=False)
    if "features" not in found:
        raise ValueError(f"{type(model).__name__} has no module {'/'.join(tap.path)!r} to read features from")
    return logits, found["features"]


def _as_map(features: jax.Array, tap: Tap) -> jax.Array:
    """[B, h, w, C] float32; a flattened [B, h*w*C] map unflattened (row-major, as `reshape` made it)."""
    if features.ndim == 2:
        b, n = features.shape
        side = math.isqrt(n // tap.channels) if tap.channels else 0
        if not tap.channels or side * side * tap.channels != n:
            raise ValueError(
                f"cannot unflatten {n} features at {tap.path} into a square map of {tap.channels}"
            )
        features = features.reshape(b, side, side, tap.channels)
    return features.astype(jnp.float32)


def _selected(logits: jax.Array, classes: jax.Array) -> jax.Array:
    """The sum over the batch of each example's logit of its class. In inference mode examples do not
    interact, so its gradient holds each example's own gradient."""
    return jnp.take_along_axis(logits, classes[:, None], axis=1).sum()


def gradcam(model: nn.Module, variables: dict, x: jax.Array, classes: jax.Array, tap: Tap) -> jax.Array:
    """Grad-CAM maps [B, h, w] at the tap's resolution (not normalised)."""
    shape = jax.eval_shape(lambda: _apply_tapped(model, variables, x, tap, None)[1])

    def target(perturbation):
        logits, features = _apply_tapped(model, variables, x, tap, perturbation)
        return _selected(logits, classes), features

    grads, features = jax.grad(target, has_aux=True)(jnp.zeros(shape.shape, shape.dtype))
    features, grads = _as_map(features, tap), _as_map(grads, tap)
    weights = grads.mean(axis=(1, 2))  # [B, C]: each channel's importance for the class
    return jax.nn.relu(jnp.einsum("bhwc,bc->bhw", features, weights))


def input_gradients(model: nn.Module, variables: dict, x: jax.Array, classes: jax.Array) -> jax.Array:
    """d logit_class / d x, [B, H, W, C]."""
    return jax.grad(lambda x: _selected(model.apply(variables, x, train=False)[0], classes))(x)


def gradient_x_input(model: nn.Module, variables: dict, x: jax.Array, classes: jax.Array) -> jax.Array:
    """|gradient * input| summed over channels, [B, H, W]."""
    return jnp.abs((input_gradients(model, variables, x, classes) * x).sum(axis=-1))


def smoothgrad(
    model: nn.Module,
    variables: dict,
    x: jax.Array,
    classes: jax.Array,
    key: jax.Array,
    *,
    samples: int = SMOOTHGRAD_SAMPLES,
    noise: float = SMOOTHGRAD_NOISE,
) -> jax.Array:
    """|mean gradient over `samples` noisy copies| summed over channels, [B, H, W]. The noise's
    standard deviation is `noise` times each image's value range."""
    spread = noise * (x.max(axis=(1, 2, 3)) - x.min(axis=(1, 2, 3)))  # [B]
    eps = jax.random.normal(key, (samples, *x.shape), x.dtype) * spread[None, :, None, None, None]
    noisy = (x[None] + eps).reshape(samples * x.shape[0], *x.shape[1:])
    grads = input_gradients(model, variables, noisy, jnp.tile(classes, samples))
    return jnp.abs(grads.reshape(samples, *x.shape).mean(axis=0).sum(axis=-1))


def rollout_matrix(attentions: Sequence[jax.Array]) -> jax.Array:
    """Attention rollout [B, N, N] of per-layer weights [B, heads, N, N] (first layer first)."""
    rolled = None
    for weights in attentions:
        a = weights.astype(jnp.float32).mean(axis=1)
        a = 0.5 * a + 0.5 * jnp.eye(a.shape[-1], dtype=a.dtype)
        a = a / a.sum(axis=-1, keepdims=True)
        rolled = a if rolled is None else a @ rolled
    return rolled


def attention_rollout(model: vit.VisionTransformer, variables: dict, x: jax.Array) -> jax.Array:
    """Rollout maps [B, h, w] over the token grid, read out as `model.pool` pools the tokens."""
    (_, _), state = model.apply(variables, x, train=False, mutable=["intermediates"])
    inter = state["intermediates"]
    rolled = rollout_matrix([inter[f"block{i}"]["attn"]["attention_weights"][0] for i in range(model.depth)])
    if model.pool == "cls":
        scores = rolled[:, 0, 1:]
    elif model.pool == "gap":
        scores = rolled.mean(axis=1)
    else:  # "seq": the tokens' pooling weights
        scores = jnp.einsum("bn,bnm->bm", inter["seq_pool_weights"][0], rolled)
    side = math.isqrt(scores.shape[1])
    return scores.reshape(-1, side, side)


# ---------------------------------------------------------------------------- a batch, all methods


def to_image_size(maps: jax.Array, size: int) -> jax.Array:
    """Maps [B, h, w] bilinearly resized to [B, size, size], each scaled to [0, 1] by its maximum
    (an all-zero map stays zero)."""
    maps = jax.image.resize(maps, (maps.shape[0], size, size), "bilinear") if maps.shape[1] != size else maps
    peak = maps.max(axis=(1, 2), keepdims=True)
    return jnp.where(peak > 0, maps / jnp.where(peak > 0, peak, 1.0), 0.0)


@functools.partial(jax.jit, static_argnames=("model", "methods", "tap", "samples", "noise"))
def explain_batch(
    model: nn.Module,
    variables: dict,
    images: jax.Array,
    key: jax.Array,
    *,
    methods: tuple[str, ...],
    tap: Tap | None = None,
    samples: int = SMOOTHGRAD_SAMPLES,
    noise: float = SMOOTHGRAD_NOISE,
) -> dict[str, jax.Array]:
    """uint8 images [B, H, W] -> {"probabilities": [B, K], "predicted": [B], method: maps [B, H, W] in
    [0, 1]}. Each map explains the predicted class of the image itself (one view, no test-time
    augmentation). `tap` defaults to `feature_tap(model)`."""
    x = preprocess(images)
    logits = model.apply(variables, x, train=False)[0]
    predicted = jnp.argmax(logits, axis=-1)
    out = {"probabilities": jax.nn.softmax(logits, axis=-1), "predicted": predicted}
    size = x.shape[1]
    for method in methods:
        if method == "gradcam":
            maps = gradcam(model, variables, x, predicted, tap or feature_tap(model))
        elif method == "rollout":
            maps = attention_rollout(model, variables, x)
        elif method == "gradxinput":
            maps = gradient_x_input(model, variables, x, predicted)
        else:
            maps = smoothgrad(model, variables, x, predicted, key, samples=samples, noise=noise)
        out[method] = to_image_size(maps, size)
    return out
