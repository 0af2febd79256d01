"""Fine-tuning: a new run that starts from another run's weights.

  config.init_from = "WORKDIR[:best|latest|STEP]"   the run to start from (default checkpoint: best)
  config.init_weights = "raw" | "ema"               which of its weight sets (EMA: a full checkpoint)
  config.init_skip = REGEX                          parameter paths NOT to load (kept as initialised)
  config.optim.freeze = REGEX                       parameters kept fixed in training (fer_flax.core.optim)

Paths are module names and the leaf name joined by "/" (`optim.param_path`): "Conv_0/kernel",
"BatchNorm_3/mean", "Dense_1/bias"; regexes match them with `re.search`. Parameters and BatchNorm
statistics (raw or EMA, as `init_weights` says) are loaded alike. When the class count differs (a FER2013
run fine-tuned on FER+), the leaves whose shapes differ only in that count (the classifier head) are
re-initialised; any other shape that differs, a parameter the source lacks, or a regex that matches
nothing fails before any data is read, with a message naming them. The optimizer starts afresh, as a
new run's does. `InitPlan.record()` is what the run records about where it started from (config.json's
`derived.init_from`, summary.json).

A run resumed from its own checkpoints ignores `init_from`: its checkpoint already holds what was loaded.
"""

from __future__ import annotations

import dataclasses
import os
import re
from typing import Any

import flax.linen as nn
import jax
import optax
from flax import traverse_util
from ml_collections import ConfigDict

from fer_flax.core import model as model_lib
from fer_flax.core import optim, parallel
from fer_flax.core import state as model_state
from fer_flax.data.spec import DataSpec
from fer_flax.run import trained

_CHECKPOINT = re.compile(r"best|latest|[0-9]+")
_SHOWN = 8  # paths listed in a message


class InitFromError(ValueError):
    """`config.init_from` / `init_skip` / `optim.freeze` cannot be applied to this model."""


@dataclasses.dataclass(frozen=True)
class InitPlan:
    """What `apply` loads into a new run, and from where."""

    source: trained.Restored
    checkpoint: str | int
    loaded: tuple[str, ...]
    reinitialised: tuple[str, ...]
    skipped: tuple[str, ...]
    unused: tuple[str, ...]

    def record(self) -> dict[str, Any]:
        return {
            "workdir": self.source.workdir,
            "checkpoint": self.checkpoint,
            "checkpoint_step": self.source.step,
            "weights": self.source.weights,
            "source_model": f"{self.source.config.model_name}/{self.source.config.model.variant}",
            "source_classes": list(self.source.spec.class_names),
            "loaded": len(self.loaded),
            "reinitialised": list(self.reinitialised),
            "skipped": list(self.skipped),
            "unused_source_leaves": list(self.unused),
        }

    def describe(self) -> str:
        text = (
            f"Initialised from {self.source.workdir} (checkpoint {self.checkpoint}, step {self.source.step}, "
            f"{self.source.weights} weights): {len(self.loaded)} leaves loaded"
        )
        if self.reinitialised:
            text += (
                f"; re-initialised for another class count (the source has {self.source.spec.num_classes}): "
            )
            text += ", ".join(self.reinitialised)
        if self.skipped:
            text += f"; {len(self.skipped)} skipped (init_skip)"
        return text + "."


def parse_init_from(text: str) -> tuple[str, str | int]:
    """("WORKDIR", "best" | "latest" | step) of "WORKDIR[:best|latest|STEP]"."""
    head, sep, tail = text.rpartition(":")
    if sep and head and _CHECKPOINT.fullmatch(tail):
        return os.path.abspath(os.path.expanduser(head)), int(tail) if tail.isdigit() else tail
    return os.path.abspath(os.path.expanduser(text)), "best"


def _flat(variables: dict) -> dict[str, Any]:
    """{path: leaf} over params and batch_stats (paths are unique across the two collections)."""
    out = {}
    for collection in ("params", "batch_stats"):
        for key, leaf in traverse_util.flatten_dict(dict(variables.get(collection, {}))).items():
            out[optim.param_path(key)] = leaf
    return out


def _no_match(key: str, pattern: str, paths: list[str]) -> InitFromError:
    return InitFromError(
        f"config.{key}={pattern!r} matches no parameter of this model; its paths look like: "
        + ", ".join(paths[:_SHOWN])
    )


def _abstract(model: nn.Module, spec: DataSpec) -> dict:
    return jax.eval_shape(lambda: model_lib.initial_variables(model, jax.random.key(0), spec.image_shape))


def check_freeze(config: ConfigDict, model: nn.Module, spec: DataSpec) -> tuple[str, ...]:
    """The parameter paths `config.optim.freeze` keeps fixed (InitFromError when it matches none)."""
    pattern = config.optim.freeze
    if not pattern:
        return ()
    paths = list(_flat({"params": _abstract(model, spec)["params"]}))
    frozen = tuple(p for p in paths if re.search(pattern, p))
    if not frozen:
        raise _no_match("optim.freeze", pattern, paths)
    return frozen


def _is_head(new: tuple[int, ...], old: tuple[int, ...], k_new: int, k_old: int) -> bool:
    """Whether two shapes differ only where the class count does (a classifier's kernel or bias)."""
    return (
        k_new != k_old
        and len(new) == len(old)
        and all(a == b or (a == k_new and b == k_old) for a, b in zip(new, old, strict=True))
    )


def prepare(config: ConfigDict, model: nn.Module, spec: DataSpec, mesh: jax.sharding.Mesh) -> InitPlan | None:
    """Reads `config.init_from`'s weights and checks them against `model`; None without init_from."""
    text = config.init_from
    if not text:
        return None
    workdir, which = parse_init_from(text)
    if not os.path.isfile(os.path.join(workdir, "config.json")):
        raise InitFromError(
            f"config.init_from={text!r}: {workdir} is not a fer_flax training workdir (no config.json)"
        )
    try:
        source = trained.restore(workdir, which, mesh=mesh, weights=config.init_weights)
    except (FileNotFoundError, ValueError) as e:
        raise InitFromError(f"config.init_from={text!r}: {e}") from e
    new, old = _flat(_abstract(model, spec)), _flat(source.variables)
    skip = config.init_skip
    loaded, head, skipped, missing, mismatched = [], [], [], [], []
    for path, leaf in new.items():
        if skip and re.search(skip, path):
            skipped.append(path)
        elif path not in old:
            missing.append(path)
        elif tuple(old[path].shape) == tuple(leaf.shape):
            loaded.append(path)
        elif _is_head(tuple(leaf.shape), tuple(old[path].shape), spec.num_classes, source.spec.num_classes):
            head.append(path)
        else:
            mismatched.append(f"{path} {tuple(old[path].shape)} in the source, {tuple(leaf.shape)} here")
    if skip and not skipped:
        raise _no_match("init_skip", skip, list(new))
    if missing or mismatched:
        problems = [f"missing from the source: {', '.join(missing[:_SHOWN])}"] if missing else []
        problems += [f"shapes differ: {'; '.join(mismatched[:_SHOWN])}"] if mismatched else []
        raise InitFromError(
            f"config.init_from={text!r} ({source.config.model_name}/{source.config.model.variant}) does not "
            f"fit {config.model_name}/{config.model.variant}: "
            + " | ".join(problems)
            + ". Re-initialise such parameters with config.init_skip (a regex of their paths)."
        )
    unused = tuple(p for p in old if p not in new)
    return InitPlan(source, which, tuple(loaded), tuple(head), tuple(skipped), unused)


def apply(
    state: model_state.TrainState, plan: InitPlan, tx: optax.GradientTransformation, mesh: jax.sharding.Mesh
) -> model_state.TrainState:
    """`state` with the plan's leaves loaded (the EMA, if any, starting from them) and a fresh optimizer
    state for the new parameters."""
    loaded = set(plan.loaded)
    source = {path: leaf for path, leaf in _flat(plan.source.variables).items() if path in loaded}
    replicated = parallel.replicated_sharding(mesh)

    def merge(collection: Any) -> Any:
        # On the devices, in one program: the state is replicated (over processes too, multi-host).
        def pick(new: Any, src: dict) -> Any:
            flat = traverse_util.flatten_dict(dict(new))
            return traverse_util.unflatten_dict(
                {key: src.get(optim.param_path(key), value) for key, value in flat.items()}
            )

        return jax.jit(pick, out_shardings=replicated)(collection, source)

    params, batch_stats = merge(state.params), merge(state.batch_stats)
    opt_state = jax.jit(tx.init, out_shardings=replicated)(params)
    state = state.replace(params=params, batch_stats=batch_stats, opt_state=opt_state)
    if model_state.has_ema(state):
        state = state.replace(
            ema_params=jax.tree.map(lambda x: x.copy(), params),
            ema_batch_stats=jax.tree.map(lambda x: x.copy(), batch_stats),
        )
    return state
