"""Helpers the per-family model tests share (not a test module)."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from fer_flax import model_state


def conv_bn_params(cin: int, cout: int, k: int) -> int:
    """Parameters of a bias-free k×k conv followed by BatchNorm (scale and shift)."""
    return k * k * cin * cout + 2 * cout


def count_params(tree) -> int:
    return sum(leaf.size for leaf in jax.tree.leaves(tree))


def init_variables(model, x):
    return model.init({"params": jax.random.key(0)}, x, train=False)


def compiled_init(model, x, rngs=None, *, train: bool = False) -> dict:
    """`model.init` as one program compiled with XLA's cheap settings. Run eagerly, every random draw
    is a program of its own compiled with full optimisation, which for a deep net's many parameter
    shapes costs minutes of CPU; the values are the same."""
    rngs = {"params": jax.random.key(0)} if rngs is None else rngs
    return model_state.run_once(jax.jit(lambda r, x: model.init(r, x, train=train)), rngs, x)


def compiled_initial_variables(model, rng) -> dict:
    """`model_state.initial_variables`, compiled like `compiled_init`."""
    return model_state.run_once(jax.jit(lambda r: model_state.initial_variables(model, r)), rng)


def init_shapes(model):
    """The variables' shapes and dtypes for a 48×48 input, without computing anything."""
    return jax.eval_shape(lambda x: init_variables(model, x), jnp.zeros((1, 48, 48, 1)))


def stand_in_variables(shapes, seed: int = 0):
    """Variables of the given shapes filled on the host: normal kernels and embeddings scaled by
    1/sqrt(fan-in), BatchNorm and LayerNorm at their identity, zero biases. A forward pass through them
    is as well-conditioned as through the model's initial variables, without compiling the model's
    initialisers (for a deep net the init program compiles ~10x longer than its forward)."""
    rng = np.random.default_rng(seed)

    def fill(path, leaf):
        name = str(getattr(path[-1], "key", path[-1]))
        if name in ("scale", "var"):
            return np.ones(leaf.shape, leaf.dtype)
        if name in ("bias", "mean"):
            return np.zeros(leaf.shape, leaf.dtype)
        fan_in = math.prod(leaf.shape[:-1]) or 1
        return (rng.standard_normal(leaf.shape) / math.sqrt(fan_in)).astype(leaf.dtype)

    return jax.tree_util.tree_map_with_path(fill, shapes)


def mlp_head_params(features: int, head_widths, num_classes: int) -> int:
    """Parameters of (bias-free Dense → BatchNorm) per hidden width, then the Dense classifier."""
    n = 0
    for h in head_widths:
        n += features * h + 2 * h
        features = h
    return n + features * num_classes + num_classes
