"""`python -m fer_flax.serve`: the command of `fer_flax.inference.serve.command`."""

from fer_flax import cli

if __name__ == "__main__":
    cli.main_of("fer_flax.inference.serve.command")
