"""The bottom layer: the one wording of a bad value (`errors`: ConfigError, check_choice) and atomic
file writes (`atomic_files`). Imports nothing from fer_flax, so every other package may import it."""
