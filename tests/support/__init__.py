"""Helpers the tests share: a MinAtar reference to play in lockstep, headless Chromium, a Ctrl-C sender."""
