"""Helpers the per-family model tests share (not a test module)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from fer_flax.core import model as model_lib


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
    return model_lib.run_once(jax.jit(lambda r, x: model.init(r, x, train=train)), rngs, x)


def compiled_initial_variables(model, rng) -> dict:
    """`model_lib.initial_variables`, compiled like `compiled_init`."""
    return model_lib.run_once(jax.jit(lambda r: model_lib.initial_variables(model, r)), rng)


def init_shapes(model):
    """The variables' shapes and dtypes for a 48×48 input, without computing anything."""
    return jax.eval_shape(lambda x: init_variables(model, x), jnp.zeros((1, 48, 48, 1)))


def mlp_head_params(features: int, head_widths, num_classes: int) -> int:
    """Parameters of (bias-free Dense → BatchNorm) per hidden width, then the Dense classifier."""
    n = 0
    for h in head_widths:
        n += features * h + 2 * h
        features = h
    return n + features * num_classes + num_classes
