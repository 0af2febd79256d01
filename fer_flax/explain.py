"""`python -m fer_flax.explain`: the command of `fer_flax.inference.explain`."""

from fer_flax import cli

if __name__ == "__main__":
    cli.main_of("fer_flax.inference.explain")
