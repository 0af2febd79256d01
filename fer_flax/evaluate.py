"""`python -m fer_flax.evaluate`: the command of `fer_flax.inference.evaluate`."""

from fer_flax import cli

if __name__ == "__main__":
    cli.main_of("fer_flax.inference.evaluate")
