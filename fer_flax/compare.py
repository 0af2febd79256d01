"""`python -m fer_flax.compare`: the command of `fer_flax.research.compare`."""

from fer_flax import cli

if __name__ == "__main__":
    cli.main_of("fer_flax.research.compare")
