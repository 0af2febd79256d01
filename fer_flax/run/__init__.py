"""A run on disk: the workdir and its lock, checkpoints and their integrity, metrics tracking and
plots, interrupts, and staged command outputs. Imports `base`, `config`, `core` and `data`."""
