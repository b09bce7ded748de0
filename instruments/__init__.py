"""Instruments that watch a model through hooks; of `breakout_ppo` only its command line (`cli.py`)
imports this package, inside the commands that run instruments.

The flow, one folder a stage:

    measure/   what the agent computes and does: hooks (taps on layers), saliency, traces (one episode
               step by step), the failure heatmap (where the ball is lost), scripted players
    judge/     what that means: diagnose (named findings with thresholds), compare (two agents)
    show/      for people: video, figures, the TensorBoard sink, HTML pages (html_kit, pages)

and on top, what the CLI runs, each calling measure, then judge, then show:

    inspection.py   `cli.py inspect`: every instrument for one checkpoint, into one folder
    comparison.py   `cli.py compare`: two checkpoints inspected, evaluated and set side by side
    panel.py        `cli.py train --instrument-every K`: the panel logged while training runs
    inspection_dir.py  an inspection folder's file names, and reading it back

The entry points are importable from here: `from instruments import inspect_agent`.
"""

from importlib import import_module

_ENTRY_POINTS = {
    "inspect_agent": "instruments.inspection",
    "compare_agents": "instruments.comparison",
    "TrainingPanel": "instruments.panel",
    "write_inspection_report": "instruments.show.pages",
    "write_run_report": "instruments.show.pages",
}
__all__ = list(_ENTRY_POINTS)


def __getattr__(name):
    # Imported on first use, so that `import instruments.measure.hooks` does not pull in video,
    # matplotlib and the pages.
    if name in _ENTRY_POINTS:
        return getattr(import_module(_ENTRY_POINTS[name]), name)
    raise AttributeError(f"module 'instruments' has no attribute {name!r}")
