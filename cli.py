"""Command line for breakout-ppo: `python cli.py --help`."""

from __future__ import annotations

import click

from breakout_ppo import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="breakout-ppo")
def cli():
    """PPO on batched MinAtar Breakout, with instruments that show what the agent is thinking."""


if __name__ == "__main__":
    cli()
