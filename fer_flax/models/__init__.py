"""Model families. `config.model_name` names a module here, `config.model.variant` a row of its VARIANTS.

Every family module defines:
  VARIANTS: dict[str, dict]   variant name -> constructor keyword arguments
  MODEL: the flax.linen Module class the variants configure

and every model has the one signature `__call__(x, *, train) -> (logits, aux)`: `x` is float [B, 48, 48, 1]
(normalised), `logits` float32 [B, num_classes], `aux` a dict of extras (GoogLeNet's auxiliary logits under
"aux_logits" while training, empty otherwise). Dropout and stochastic depth draw from the "dropout" rng.

Every MODEL also has the seam fields `conv` (default `nn.Conv`) and `max_pool` (default `nn.max_pool`),
through which the caller that builds the model may pass platform kernels computing the same function
(models/layers.py). They are arguments of `create_model`, not model options a config can set.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable
from typing import Any

import flax.linen as nn

from fer_flax.base.errors import ConfigError, check_choice

FAMILIES: tuple[str, ...] = ("cnn", "beefy", "resnet", "googlenet", "vit")
# Fields of every MODEL that select kernels, not the architecture: never config options.
SEAM_FIELDS: tuple[str, ...] = ("conv", "max_pool")


def _family_module(model_name: str):
    check_choice("model_name", model_name, FAMILIES)
    try:
        return importlib.import_module(f"fer_flax.models.{model_name}")
    except ModuleNotFoundError as e:
        if e.name == f"fer_flax.models.{model_name}":
            raise ValueError(f"Model family {model_name!r} is not available in this version") from e
        raise


def variants(model_name: str) -> tuple[str, ...]:
    """The variant names of one family, in the order its file lists them."""
    return tuple(_family_module(model_name).VARIANTS)


def option_fields(model_name: str) -> frozenset[str]:
    """The model options `config.model.*` may set for a family (constructor fields less the seam)."""
    module = _family_module(model_name)
    return frozenset(f.name for f in dataclasses.fields(module.MODEL)) - {"parent", "name", *SEAM_FIELDS}


def create_model(
    model_name: str,
    *,
    variant: str,
    num_classes: int = 7,
    dtype: Any = "float32",
    conv: Any = None,
    max_pool: Callable | None = None,
    **overrides: Any,
) -> nn.Module:
    """Builds `model_name`'s `variant`; `overrides` replace individual constructor arguments (model
    options, as `config.model.*` gives them). `conv` / `max_pool`: the seam's kernels (None: the stock
    `nn.Conv` / `nn.max_pool`)."""
    module = _family_module(model_name)
    check_choice(f"{model_name} variant", variant, module.VARIANTS)
    fields = option_fields(model_name)
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise ConfigError(
            f"model option(s) {unknown} are not options of {model_name!r}; valid options: "
            f"{', '.join(sorted(fields))}"
        )
    kwargs = {**module.VARIANTS[variant], **overrides, "num_classes": num_classes}
    if "dtype" in fields:
        kwargs["dtype"] = dtype
    seam = {"conv": conv, "max_pool": max_pool}
    kwargs.update({name: value for name, value in seam.items() if value is not None})
    return module.MODEL(**kwargs)
