"""`python -m fer_flax.predict`: the command of `fer_flax.inference.predict`."""

from fer_flax import cli

if __name__ == "__main__":
    cli.main_of("fer_flax.inference.predict")
