"""XLA:CPU kernels for the models' seam: a single-channel convolution and a non-overlapping max-pool.

Both compute what the stock ops compute (`lax.conv_general_dilated`, `flax.linen.max_pool`), written
in forms XLA:CPU runs faster; `fer_flax.cpu.model_ops()` hands them to the model families when the
backend is the CPU. Off the CPU the families use the stock ops. tests/cpu/test_performance_paths.py and
tests/cpu/test_cpu_corner.py check values and gradients against the stock ops; the measured speed-ups are
in benchmarks/RESULTS.md ("CPU speed").
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

_NHWC = ("NHWC", "HWIO", "NHWC")


def conv_general_dilated(
    lhs: jax.Array,
    rhs: jax.Array,
    window_strides: Sequence[int],
    padding: str | Sequence[tuple[int, int]],
    lhs_dilation: Sequence[int] | None = None,
    rhs_dilation: Sequence[int] | None = None,
    dimension_numbers: Any = None,
    feature_group_count: int = 1,
    precision: Any = None,
    **kwargs: Any,
) -> jax.Array:
    """`lax.conv_general_dilated` (for `nn.Conv(conv_general_dilated=...)`) with one fast path: a 2-D
    convolution of a single-channel NHWC input, i.e. the stem of every family on grayscale faces.

    Why: XLA:CPU runs such a convolution as an im2col matrix product with a contraction of only kh·kw
    (9) terms, mostly packing. Written as kh·kw shifted multiply-adds, XLA fuses it into one
    elementwise loop, several times faster. Autodiff of that form would make the kernel gradient kh·kw
    reductions over the whole output gradient, slower than XLA's, so the backward pass is
    `lax.conv_general_dilated`'s own (`_single_channel_conv`'s VJP). Values match
    `lax.conv_general_dilated` to float32 rounding. Every other convolution is
    `lax.conv_general_dilated` itself.
    """
    dims = lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
    if (
        lhs.ndim == 4
        and lhs.shape[-1] == 1
        and feature_group_count == 1
        and kwargs.get("batch_group_count", 1) == 1
        and kwargs.get("preferred_element_type") is None
        and all(d == 1 for d in (lhs_dilation or (1, 1)))
        and all(d == 1 for d in (rhs_dilation or (1, 1)))
        and dims == lax.conv_dimension_numbers(lhs.shape, rhs.shape, _NHWC)
    ):
        strides = tuple(int(s) for s in window_strides)
        if isinstance(padding, str):
            pads = lax.padtype_to_pads(lhs.shape[1:3], rhs.shape[:2], strides, padding)
        else:
            pads = [tuple(int(v) for v in pair) for pair in padding]
        if all(lo >= 0 and hi >= 0 for lo, hi in pads):
            return _single_channel_conv(lhs, rhs, strides, tuple(tuple(p) for p in pads))
    return lax.conv_general_dilated(
        lhs,
        rhs,
        window_strides,
        padding,
        lhs_dilation=lhs_dilation,
        rhs_dilation=rhs_dilation,
        dimension_numbers=dimension_numbers,
        feature_group_count=feature_group_count,
        precision=precision,
        **kwargs,
    )


def _single_channel_reference(x, kernel, strides, pads):
    return lax.conv_general_dilated(x, kernel, strides, pads, dimension_numbers=_NHWC)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _single_channel_conv(x, kernel, strides, pads):
    """x [N, H, W, 1] * kernel [kh, kw, 1, F] as kh·kw shifted multiply-adds (float32 sums)."""
    kh, kw = kernel.shape[:2]
    (sh, sw), ((top, bottom), (left, right)) = strides, pads
    xp = jnp.pad(x, ((0, 0), (top, bottom), (left, right), (0, 0))).astype(jnp.float32)
    out_h = (xp.shape[1] - kh) // sh + 1
    out_w = (xp.shape[2] - kw) // sw + 1
    taps = kernel.astype(jnp.float32)
    out = None
    for i in range(kh):
        for j in range(kw):
            window = xp[:, i : i + sh * (out_h - 1) + 1 : sh, j : j + sw * (out_w - 1) + 1 : sw, :]
            term = window * taps[i, j, 0]
            out = term if out is None else out + term
    return out.astype(jnp.result_type(x.dtype, kernel.dtype))


def _single_channel_conv_forward(x, kernel, strides, pads):
    return _single_channel_conv(x, kernel, strides, pads), (x, kernel)


def _single_channel_conv_backward(strides, pads, residuals, g):
    x, kernel = residuals
    _, vjp = jax.vjp(lambda x, k: _single_channel_reference(x, k, strides, pads), x, kernel)
    return vjp(g.astype(jnp.result_type(x.dtype, kernel.dtype)))


_single_channel_conv.defvjp(_single_channel_conv_forward, _single_channel_conv_backward)


def max_pool(
    x: jax.Array,
    window_shape: Sequence[int],
    strides: Sequence[int] | None = None,
    padding: str | Sequence[tuple[int, int]] = "VALID",
) -> jax.Array:
    """Max-pooling over NHWC input with the signature and semantics of `flax.linen.max_pool`.

    Non-overlapping windows without padding (the 2×2 pools of the CNN and BeefyModel families) are
    computed from the window's kh·kw slices of a reshape, keeping which position won, and the
    gradient goes to that position (`_window_max`'s hand-written backward pass). Why: `nn.max_pool`'s
    gradient is XLA's select-and-scatter, which XLA:CPU runs as a slow scalar loop; the saved position
    makes the backward pass a few elementwise selects. Values and gradients are
    those of `nn.max_pool`, ties included (the first maximum in row-major order takes the gradient).
    Overlapping or padded windows use `nn.max_pool`.

    Two faster forms were wrong and are kept out (tests/cpu/test_performance_paths.py checks both cases):
    a maximum over strided slices of the input, whose gradient XLA's SPMD partitioner got wrong for
    batch-sharded inputs; and autodiff of `reshape(...).max(axes)` (or any backward pass that finds
    the maximum by comparing the input with the pooled output), whose compiled gradient in a
    BatchNorm network was wrong or NaN because XLA recomputed the compared values differently.
    """
    window = tuple(window_shape)
    strides = window if strides is None else tuple(strides)
    no_padding = padding == "VALID" or (not isinstance(padding, str) and all(p == (0, 0) for p in padding))
    if x.ndim != 4 or len(window) != 2 or strides != window or not no_padding:
        return nn.max_pool(x, window, strides=strides, padding=padding)
    (kh, kw) = window
    h, w = x.shape[1:3]
    x = x[:, : h // kh * kh, : w // kw * kw, :]  # VALID drops the incomplete last row/column
    return _window_max(x, window)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def _window_max(x: jax.Array, window: tuple[int, int]) -> jax.Array:
    """Max over non-overlapping `window`s of NHWC `x` (its H and W multiples of the window)."""
    return _window_max_and_argmax(x, window)[0]


def _window_max_and_argmax(x: jax.Array, window: tuple[int, int]) -> tuple[jax.Array, jax.Array]:
    """Each window's maximum and the position (row-major, first on ties) it came from, both computed
    from the same elementwise passes over the kh·kw window slices, so they always agree."""
    (kh, kw) = window
    n, h, w, c = x.shape
    windows = x.reshape(n, h // kh, kh, w // kw, kw, c)
    best = windows[:, :, 0, :, 0, :]
    where = jnp.zeros(best.shape, jnp.int8)
    for position in range(1, kh * kw):
        candidate = windows[:, :, position // kw, :, position % kw, :]
        larger = candidate > best  # strict: the first maximum wins ties, as in nn.max_pool
        best = jnp.where(larger, candidate, best)
        where = jnp.where(larger, jnp.int8(position), where)
    return best, where


def _window_max_forward(x: jax.Array, window: tuple[int, int]) -> tuple[jax.Array, tuple]:
    y, where = _window_max_and_argmax(x, window)
    return y, (where, x.shape)


def _window_max_backward(window: tuple[int, int], residuals: tuple, g: jax.Array) -> tuple[jax.Array]:
    # The gradient goes to the saved position of each window's maximum. Deriving it instead by
    # comparing the input with the pooled maximum (what autodiff of `.max()` does) went wrong under
    # XLA:CPU: in a compiled training step the backward pass's comparison saw the BatchNorm/ReLU
    # output recomputed differently from the forward pass, and BatchNorm-net gradients came out wrong
    # (relative error ~1 against eager execution) or NaN (tests/cpu/test_performance_paths.py).
    where, shape = residuals
    (kh, kw) = window
    zero = jnp.zeros((), g.dtype)
    rows = [
        jnp.stack([jnp.where(where == i * kw + j, g, zero) for j in range(kw)], axis=3) for i in range(kh)
    ]
    return (jnp.stack(rows, axis=2).reshape(shape),)


_window_max.defvjp(_window_max_forward, _window_max_backward)


# What `fer_flax.cpu.model_ops()` hands to the families: module-level constants, so that two models
# built with them compare equal (jit's cache keys on the Linen module's fields).
Conv = functools.partial(nn.Conv, conv_general_dilated=conv_general_dilated)
