"""`python cli.py ...` from a clone: the same commands as the installed `breakout-ppo` console script
(breakout_ppo/cli.py)."""

from breakout_ppo.cli import cli

if __name__ == "__main__":
    cli()
