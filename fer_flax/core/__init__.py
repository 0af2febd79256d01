"""The pure computations of a model: building it and its train state, losses, augmentation, mixing,
test-time views, EMA, the optimizer, metrics, the forward pass, the device mesh and the batch streams;
and joining a multi-process job (with its coordination service and the watch over lost processes).
Imports `base`, `config`, `data`, `models` and `cpu`; nothing here reads or writes a workdir."""
