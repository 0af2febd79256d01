"""A tiny search space for the tests: two keys every config has."""

from fer_flax.research.sweep.space import loguniform, uniform

SPACE = {
    "optim.lr": loguniform(0.05, 0.2),
    "label_smoothing": uniform(0.0, 0.1),
}
