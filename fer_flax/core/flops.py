"""Matrix FLOPs counted from a traced function's jaxpr: a whole train step, or one image's forward pass.

Counted from the program JAX traces (its convolutions and dot products), not from a compiled
executable, so the count is the same on every backend and needs no compilation. Benchmarks report
model FLOP utilisation with it (`benchmarks/device_peaks.py`); `fer_flax.research.compare` reports
each run's GFLOPs per image.
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.extend
import jax.numpy as jnp

from fer_flax.core.model import initial_variables


def step_flops(traced: Any) -> float:
    """The matrix FLOPs of a traced jitted function (`jax.jit(f).trace(*args)`): its convolutions and
    dot products, counted from the jaxpr, so the count is the same on every backend.

    XLA's own cost analysis cannot serve here: jax's GPU backend gives none before compilation, and
    the compiled executable's count leaves out the convolutions that run as cuDNN calls (nearly all
    of a CNN's work). Elementwise work (activations, normalisation, the optimizer) is not counted, as
    is usual for model FLOP utilisation. A scan's body counts once per iteration, a cond's costliest
    branch once, a while loop's body once (its trip count is not known when tracing).
    """
    return _matrix_flops(traced.jaxpr.jaxpr)


def forward_flops(model: nn.Module, image_shape: tuple[int, int, int]) -> float:
    """The matrix FLOPs (`step_flops`) of `model`'s inference forward pass on one image of
    `image_shape` (height, width, channels), traced on abstract variables: nothing is computed.

    Build `model` with the stock ops (`core.model.create_model(..., cpu_kernels=False)`): the CPU
    kernels compute the single-channel stem as shifted multiply-adds, which this count does not see."""
    abstract = jax.eval_shape(lambda: initial_variables(model, jax.random.key(0), image_shape))
    image = jax.ShapeDtypeStruct((1, *image_shape), jnp.float32)
    traced = jax.jit(lambda variables, x: model.apply(variables, x, train=False)).trace(abstract, image)
    return step_flops(traced)


def _matrix_flops(jaxpr: Any) -> float:
    total = 0.0
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        if name == "dot_general":
            (contracting, _), _ = eqn.params["dimension_numbers"]
            lhs = eqn.invars[0].aval.shape
            total += 2.0 * math.prod(eqn.outvars[0].aval.shape) * math.prod(lhs[d] for d in contracting)
        elif name == "conv_general_dilated":
            # Each output element is a dot product over the kernel's input features and window.
            rhs = eqn.invars[1].aval.shape
            out_features = rhs[eqn.params["dimension_numbers"].rhs_spec[0]]
            total += 2.0 * math.prod(eqn.outvars[0].aval.shape) * math.prod(rhs) / out_features
        else:
            inner = [_matrix_flops(j) for j in _sub_jaxprs(eqn.params)]
            if name == "cond":  # one branch runs
                total += max(inner, default=0.0)
            else:  # a scan runs its body `length` times; a call, remat or while loop once
                total += sum(inner) * (eqn.params["length"] if name == "scan" else 1)
    return total


def _sub_jaxprs(params: dict[str, Any]) -> list[Any]:
    found = []
    for value in params.values():
        for v in value if isinstance(value, (tuple, list)) else (value,):
            if isinstance(v, jax.extend.core.ClosedJaxpr):
                found.append(v.jaxpr)
            elif isinstance(v, jax.extend.core.Jaxpr):
                found.append(v)
    return found
