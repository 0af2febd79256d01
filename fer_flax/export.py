"""`python -m fer_flax.export`: the command of `fer_flax.inference.export`."""

from fer_flax import cli

if __name__ == "__main__":
    cli.main_of("fer_flax.inference.export")
