"""A run on disk: the workdir and its lock (and a training start that leaves it as found when it
fails), checkpoints and their integrity, metrics tracking and plots, interrupts, and staged command
outputs. Imports `base`, `config`, `core` and `data`."""
