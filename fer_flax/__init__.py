"""fer_flax: facial-expression recognition on FER2013 with JAX, Flax (linen), Optax, Orbax and Grain."""

__version__ = "0.1.0"
