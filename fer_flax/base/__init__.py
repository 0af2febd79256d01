"""The bottom layer: the one wording of a bad value (`errors`: ConfigError, check_choice), atomic
file writes (`atomic_files`) and output paths checked before any work (`output_paths`). Imports
nothing from fer_flax, so every other package may import it."""
