"""`python -m fer_flax.sweep`: the command of `fer_flax.research.sweep.study`."""

from fer_flax import cli

if __name__ == "__main__":
    cli.main_of("fer_flax.research.sweep.study")
