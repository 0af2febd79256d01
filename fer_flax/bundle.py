"""`python -m fer_flax.bundle`: the command of `fer_flax.inference.bundle`."""

from fer_flax import cli

if __name__ == "__main__":
    cli.main_of("fer_flax.inference.bundle")
