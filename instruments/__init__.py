"""Instruments that watch a model through hooks; `breakout_ppo` never imports this package."""
