"""`python -m breakout_ppo ...`: the command line, as `breakout-ppo ...`."""

from breakout_ppo.cli import cli

cli()
