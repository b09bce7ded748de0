"""Pressing Ctrl-C from inside a test: a real SIGINT, so training's own handler is what is tested."""

import os
import signal


def interrupt_after(updates):
    """A progress callback that presses Ctrl-C once `updates` updates are done."""
    seen = 0

    def progress(step, sps, recent_return):
        nonlocal seen
        seen += 1
        if seen == updates:
            os.kill(os.getpid(), signal.SIGINT)

    return progress
