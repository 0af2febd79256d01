"""A config's model: building it (the family, variant and options the config names, with the CPU
kernels on a CPU backend), its initial variables, and compiling programs that run once.

Training and every inference entry point build models here, so a model is the same function
whichever command built it. On a CPU backend the families get fer_flax.cpu's kernels through their
`conv` / `max_pool` seam (chosen once, here); elsewhere they run stock Flax ops.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from ml_collections import ConfigDict

from fer_flax import cpu, models
from fer_flax.data.spec import FER2013, DataSpec

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def create_model(config: ConfigDict, spec: DataSpec = FER2013, *, cpu_kernels: bool = True) -> nn.Module:
    """`config.model_name`'s `config.model.variant` for `spec`'s class count, with `config.model`'s
    other keys as overrides. `cpu_kernels=False` builds it with the stock ops on every backend (the
    same function; what `core.flops.forward_flops` counts)."""
    overrides = {k: v for k, v in config.model.to_dict().items() if k != "variant"}
    return models.create_model(
        config.model_name,
        variant=config.model.variant,
        num_classes=spec.num_classes,
        dtype=DTYPES[config.dtype],
        **(cpu.model_ops() if cpu_kernels else {}),
        **overrides,
    )


def initial_variables(
    model: nn.Module, rng: jax.Array, image_shape: tuple[int, int, int] = FER2013.image_shape
) -> dict:
    """The model's variables for inputs of `image_shape` (height, width, channels)."""
    dummy = jnp.zeros((1, *image_shape), jnp.float32)
    params_rng, dropout_rng = jax.random.split(rng)
    return model.init({"params": params_rng, "dropout": dropout_rng}, dummy, train=False)


# Options for programs that run once (initialisation): XLA's expensive backend passes make a deep net's
# init, with one random draw per parameter, slow to compile and gain nothing at run time.
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


def run_once(jitted: Any, *args: Any) -> Any:
    """Calls a `jax.jit`-wrapped function compiled by `compile_once`: for a program run once."""
    return compile_once(jitted.lower(*args))(*args)
