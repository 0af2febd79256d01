"""`python -m fer_flax.leaderboard`: the command of `fer_flax.research.leaderboard`."""

from fer_flax import cli

if __name__ == "__main__":
    cli.main_of("fer_flax.research.leaderboard")
