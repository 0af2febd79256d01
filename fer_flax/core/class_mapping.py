"""Evaluating a model on data with another class set, through an explicit class mapping.

A mapping pairs data classes with model classes, one to one: `"neutral=neutral,happiness=happy,..."`
(data class = model class), or `"by_name"`, which pairs classes whose names mean the same expression
(`SYNONYMS`: FER+'s "happiness" is FER2013's "happy"). Data classes without a partner are excluded from
the evaluation (FER+'s contempt for a FER2013 model) and model classes without one cannot be predicted:
the model's probabilities are restricted to the mapped classes and renormalised before the arg-max. The
report is then in the data's class names, and says which mapping it used and what it excluded.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from fer_flax.base.errors import ConfigError

BY_NAME = "by_name"
# Names that mean the same expression across the common FER data sets (lower case).
SYNONYMS: tuple[frozenset[str], ...] = (
    frozenset({"angry", "anger"}),
    frozenset({"disgust", "disgusted"}),
    frozenset({"fear", "fearful", "afraid"}),
    frozenset({"happy", "happiness", "joy"}),
    frozenset({"sad", "sadness"}),
    frozenset({"surprise", "surprised"}),
    frozenset({"neutral"}),
    frozenset({"contempt"}),
)


@dataclasses.dataclass(frozen=True)
class ClassMapping:
    """(data class, model class) pairs, in the data's class order."""

    pairs: tuple[tuple[str, str], ...]
    data_classes: tuple[str, ...]
    model_classes: tuple[str, ...]

    @property
    def excluded_data_classes(self) -> tuple[str, ...]:
        mapped = {d for d, _ in self.pairs}
        return tuple(c for c in self.data_classes if c not in mapped)

    @property
    def unmapped_model_classes(self) -> tuple[str, ...]:
        mapped = {m for _, m in self.pairs}
        return tuple(c for c in self.model_classes if c not in mapped)

    def describe(self) -> str:
        text = ", ".join(f"{d}={m}" for d, m in self.pairs)
        if self.excluded_data_classes:
            text += f"; data classes excluded: {', '.join(self.excluded_data_classes)}"
        if self.unmapped_model_classes:
            text += f"; model classes masked out: {', '.join(self.unmapped_model_classes)}"
        return text

    def apply(self, probs: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, dict[str, int]]:
        """(probabilities [M, P] over the mapped model classes, renormalised; labels [M] in 0..P-1 in
        the pairs' order; {excluded data class: examples}) for probs [N, K_model] and data labels [N]."""
        data_index = {c: i for i, c in enumerate(self.data_classes)}
        model_index = [self.model_classes.index(m) for _, m in self.pairs]
        relabel = np.full(len(self.data_classes), -1, np.int64)
        for j, (d, _) in enumerate(self.pairs):
            relabel[data_index[d]] = j
        labels = np.asarray(labels, np.int64)
        new_labels = relabel[labels]
        keep = new_labels >= 0
        restricted = np.asarray(probs, np.float64)[keep][:, model_index]
        restricted /= np.maximum(restricted.sum(axis=1, keepdims=True), np.finfo(np.float64).tiny)
        excluded = {c: int(np.sum(labels == data_index[c])) for c in self.excluded_data_classes}
        return restricted, new_labels[keep], excluded

    def record(self) -> dict:
        return {
            "pairs": {d: m for d, m in self.pairs},
            "excluded_data_classes": list(self.excluded_data_classes),
            "unmapped_model_classes": list(self.unmapped_model_classes),
        }


def _canonical(name: str) -> str:
    low = name.strip().lower()
    for group in SYNONYMS:
        if low in group:
            return min(group)
    return low


def parse(text: str, data_classes: Sequence[str], model_classes: Sequence[str]) -> ClassMapping:
    """The mapping `text` describes ("by_name" or "data=model,..."); ConfigError naming a bad entry."""
    data_classes, model_classes = tuple(data_classes), tuple(model_classes)
    if text.strip() == BY_NAME:
        by_canon = {_canonical(m): m for m in model_classes}
        pairs = [(d, by_canon[_canonical(d)]) for d in data_classes if _canonical(d) in by_canon]
    else:
        pairs = []
        for entry in (e for e in text.split(",") if e.strip()):
            data, sep, model = (p.strip() for p in entry.partition("="))
            if not sep or data not in data_classes or model not in model_classes:
                raise ConfigError(
                    f"--class_map entry {entry.strip()!r} must be DATA_CLASS=MODEL_CLASS, a data class of "
                    f"{', '.join(data_classes)} and a model class of {', '.join(model_classes)} "
                    f"(or --class_map {BY_NAME})"
                )
            pairs.append((data, model))
        pairs.sort(key=lambda p: data_classes.index(p[0]))
    for side, names in (("data", [d for d, _ in pairs]), ("model", [m for _, m in pairs])):
        if len(set(names)) != len(names):
            raise ConfigError(f"--class_map={text!r} maps a {side} class twice; a mapping is one to one")
    if not pairs:
        raise ConfigError(
            f"--class_map={text!r} pairs no class of the data ({', '.join(data_classes)}) with one of the "
            f"model ({', '.join(model_classes)})"
        )
    return ClassMapping(tuple(pairs), data_classes, model_classes)
