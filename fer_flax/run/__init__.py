"""A run on disk: the workdir and its lock (and a training start that leaves it as found when it
fails), checkpoints and their integrity, metrics tracking and plots, interrupts, staged command
outputs, and the model bundled with the package (`bundled`). Imports `base`, `config`, `core` and
`data`."""
