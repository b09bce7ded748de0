"""breakout-ppo: PPO on batched MinAtar Breakout in pure PyTorch."""

__version__ = "0.1.0"
