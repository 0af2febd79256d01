"""The one wording of a bad choice, "<key>=<value> is not one of: a, b, c", for every module.

A leaf module (it imports nothing from fer_flax), so the model families, the data readers and
`fer_flax.config.schema` (which re-exports these names) can all use it without an import circle.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any


class ConfigError(ValueError):
    """A configuration value (a config key, a model option or a command-line flag) is not allowed."""


def _show(choice: Any) -> str:
    return choice if isinstance(choice, str) and choice else repr(choice)


def choice_problem(key: str, value: Any, choices: Iterable[Any]) -> str | None:
    """The message for `value` not in `choices` (None when it is one)."""
    choices = tuple(choices)
    if value in choices:
        return None
    return f"{key}={value!r} is not one of: {', '.join(_show(c) for c in choices)}"


def check_choice(key: str, value: Any, choices: Iterable[Any]) -> None:
    """Raises ConfigError unless `value` is one of `choices`. `key` is how the user set the value: a
    dotted config path ("config.optim.name"), a model option or a flag ("--split")."""
    problem = choice_problem(key, value, choices)
    if problem:
        raise ConfigError(problem)
