"""A sweep's search space and the configs of its trials.

A space file is a small Python file that defines `SPACE`, a dict from dotted config keys to ranges
and choices made with the constructors below:

    from fer_flax.research.sweep.space import choice, loguniform, uniform

    SPACE = {
        "optim.lr": loguniform(0.02, 0.3),
        "label_smoothing": uniform(0.0, 0.2),
        "augment.rotate_degrees": choice(0, 5, 10, 15),
    }

`load_space(path, config)` reads it and checks every key against the config (it must exist and
take the range's values: each end of a range and every choice is applied to the config and
validated by `fer_flax.config.schema.validate`), naming the file and the key in every error.

A trial's config is the base config file (`path[:arg]`, as `--config` takes it), then the sweep's
command-line overrides, then the trial's values: `trial_config(base, overrides)`, which the
generated `trial_config.py` of each trial and the sweep's `best_config.py` call.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib.util
import math
import os
import runpy
from collections.abc import Mapping
from typing import Any

from ml_collections import ConfigDict

from fer_flax.config import schema as config_schema

Scalar = bool | int | float | str | None


@dataclasses.dataclass(frozen=True)
class Float:
    """A float in [low, high], uniform or (log=True) log-uniform."""

    low: float
    high: float
    log: bool = False

    def corners(self) -> tuple[Scalar, ...]:
        return (self.low, self.high)

    def suggest(self, trial: Any, key: str) -> Scalar:
        return trial.suggest_float(key, self.low, self.high, log=self.log)


@dataclasses.dataclass(frozen=True)
class Int:
    """An integer in [low, high] (both included), uniform or (log=True) log-uniform."""

    low: int
    high: int
    log: bool = False

    def corners(self) -> tuple[Scalar, ...]:
        return (self.low, self.high)

    def suggest(self, trial: Any, key: str) -> Scalar:
        return trial.suggest_int(key, self.low, self.high, log=self.log)


@dataclasses.dataclass(frozen=True)
class Choice:
    """One of a few values (numbers, strings, booleans or None)."""

    values: tuple[Scalar, ...]

    def corners(self) -> tuple[Scalar, ...]:
        return self.values

    def suggest(self, trial: Any, key: str) -> Scalar:
        return trial.suggest_categorical(key, self.values)


Param = Float | Int | Choice


def uniform(low: float, high: float) -> Float:
    return Float(float(low), float(high))


def loguniform(low: float, high: float) -> Float:
    return Float(float(low), float(high), log=True)


def intuniform(low: int, high: int, *, log: bool = False) -> Int:
    return Int(low, high, log)


def choice(*values: Scalar) -> Choice:
    return Choice(tuple(values))


def _range_problem(param: Param) -> str | None:
    """What is wrong with a range or choice as written, or None."""
    if isinstance(param, Choice):
        if not param.values:
            return "choice() needs at least one value"
        if len(set(map(repr, param.values))) != len(param.values):
            return f"choice{param.values!r} repeats a value"
        odd = [v for v in param.values if not isinstance(v, (bool, int, float, str, type(None)))]
        return f"choice values must be numbers, strings, booleans or None, not {odd[0]!r}" if odd else None
    kind = "intuniform" if isinstance(param, Int) else "loguniform" if param.log else "uniform"
    number = int if isinstance(param, Int) else (int, float)
    if not all(isinstance(v, number) and not isinstance(v, bool) for v in (param.low, param.high)):
        return f"{kind}({param.low!r}, {param.high!r}) needs {'integer' if number is int else 'number'} ends"
    if not (math.isfinite(param.low) and math.isfinite(param.high) and param.low < param.high):
        return f"{kind}({param.low!r}, {param.high!r}) needs finite ends with low < high"
    if param.log and param.low <= 0:
        return f"{kind}({param.low!r}, {param.high!r}) is on a log scale: low must be > 0"
    return None


def flat_keys(config: ConfigDict) -> list[str]:
    """Every dotted leaf key of a config ("optim.lr", "model.variant", ...)."""
    out = []
    for key, value in config.items():
        if isinstance(value, ConfigDict):
            out += [f"{key}.{sub}" for sub in flat_keys(value)]
        else:
            out.append(key)
    return out


def _has_key(config: ConfigDict, key: str) -> bool:
    node: Any = config
    for part in key.split("."):
        if not isinstance(node, ConfigDict) or part not in node:
            return False
        node = node[part]
    return not isinstance(node, ConfigDict)


def load_space(path: str, config: ConfigDict) -> dict[str, Param]:
    """The `SPACE` of the space file at `path`, checked against `config` (see the module docstring);
    raises ValueError naming the file and the key."""
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"--space {path}: no such file (a Python file defining SPACE, see docs/sweeps.md)"
        )
    try:
        namespace = runpy.run_path(path)
    except Exception as e:  # any error of the user's file, said with its file name
        raise ValueError(f"{path}: the space file failed to run ({type(e).__name__}: {e})") from e
    space = namespace.get("SPACE")
    if not isinstance(space, Mapping) or not space:
        raise ValueError(f"{path}: must define SPACE, a non-empty dict of config key -> range or choice")
    keys = flat_keys(config)
    for key, param in space.items():
        where = f"{path}: SPACE[{key!r}]"
        if not isinstance(key, str) or not _has_key(config, key):
            close = difflib.get_close_matches(str(key), keys, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ValueError(f"{where}: the config has no key {key!r}{hint}")
        if not isinstance(param, (Float, Int, Choice)):
            raise ValueError(
                f"{where} is {param!r}: use uniform(), loguniform(), intuniform() or choice() from "
                "fer_flax.research.sweep.space"
            )
        problem = _range_problem(param)
        if problem:
            raise ValueError(f"{where}: {problem}")
        for value in param.corners():
            try:
                config_schema.validate(with_overrides(config, {key: value}))
            except (ValueError, TypeError) as e:
                raise ValueError(f"{where}: the value {value!r} does not fit the config: {e}") from e
    return dict(space)


def describe(param: Param) -> str:
    """How the space file wrote it: "loguniform(0.02, 0.3)", "choice(0, 5, 10)"."""
    if isinstance(param, Choice):
        return f"choice({', '.join(map(repr, param.values))})"
    if isinstance(param, Int):
        return f"intuniform({param.low}, {param.high}{', log=True' if param.log else ''})"
    return f"{'loguniform' if param.log else 'uniform'}({param.low:g}, {param.high:g})"


def format_values(values: Mapping[str, Any]) -> str:
    """ "optim.lr=0.0734, augment.rotate_degrees=10" (floats to 4 significant digits)."""
    return ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in values.items())


def suggest(trial: Any, space: Mapping[str, Param]) -> dict[str, Scalar]:
    """The trial's values for every key of the space (an `optuna.trial.Trial`)."""
    return {key: param.suggest(trial, key) for key, param in space.items()}


# ---------------------------------------------------------------------------------- trial configs


def load_config_file(spec: str) -> ConfigDict:
    """`get_config(arg)` of a config file given as `path[:arg]` (what `--config` takes), the path
    relative to the working folder, as for every command."""
    path, _, arg = spec.partition(":")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"config file {path!r} not found (relative to {os.getcwd()})")
    module_spec = importlib.util.spec_from_file_location("fer_flax_sweep_base_config", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.get_config(arg) if arg else module.get_config()


def with_overrides(config: ConfigDict, overrides: Mapping[str, Any]) -> ConfigDict:
    """A copy of `config` with each dotted key set; a key the config lacks is a ValueError, a value of
    the wrong type ml_collections' TypeError."""
    config = config.copy_and_resolve_references()
    config.lock()  # no new keys: a misspelt one must not pass silently
    for key, value in overrides.items():
        if not _has_key(config, key):
            raise ValueError(
                f"the config has no key {key!r} (every key is declared in fer_flax/config/defaults.py)"
            )
        *parents, leaf = key.split(".")
        node = config
        for part in parents:
            node = node[part]
        node[leaf] = tuple(value) if isinstance(value, list) else value
    return config


def trial_config(base: str, overrides: Mapping[str, Any]) -> ConfigDict:
    """The config of a trial: the base config file, then `overrides` (the sweep's, then the trial's)."""
    return with_overrides(load_config_file(base), overrides)


def config_file_text(base: str, overrides: Mapping[str, Any], values: Mapping[str, Any], doc: str) -> str:
    """A ready-to-run config file: `get_config()` is `trial_config(base, {**overrides, **values})`."""

    def block(d: Mapping[str, Any]) -> str:
        return "".join(f"    {k!r}: {v!r},\n" for k, v in d.items())

    return (
        f'"""{doc.strip()}\n"""\n\n'
        "from fer_flax.research.sweep import space\n\n"
        f"BASE = {base!r}\n"
        f"OVERRIDES = {{  # the sweep's command-line overrides\n{block(overrides)}}}\n"
        f"VALUES = {{  # this trial's values of the search space\n{block(values)}}}\n\n\n"
        'def get_config(arg: str = ""):\n'
        "    del arg  # the trial's config has no variants\n"
        "    return space.trial_config(BASE, {**OVERRIDES, **VALUES})\n"
    )
