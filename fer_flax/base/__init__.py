"""The bottom layer: the one wording of a bad value (`errors`: ConfigError, check_choice), atomic
file writes (`atomic_files`), output paths checked before any work (`output_paths`) and the one
wording of how to install an optional extra (`extras`). Imports nothing from fer_flax, so every other
package may import it."""
