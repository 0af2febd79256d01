"""The training loop and what feeds it: the train step, input feed, multi-step calls, validation,
fine-tuning initialisation and distillation. May import every lower layer and `inference` (validation and
distillation use the one inference path); nothing below imports it."""
