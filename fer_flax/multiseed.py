"""`python -m fer_flax.multiseed`: the command of `fer_flax.research.multiseed`."""

from fer_flax import cli

if __name__ == "__main__":
    cli.main_of("fer_flax.research.multiseed")
