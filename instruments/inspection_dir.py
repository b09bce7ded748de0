"""An inspection directory: its files by name, and reading it back.

`inspection.py` writes these files; the pages (`show/pages.py`), the comparison (`comparison.py`,
`judge/compare.py`) read an inspection from them alone, so that a page can be rebuilt, or two
agents compared, without running anything again. Each name is written here once.
"""

from __future__ import annotations

import json
from pathlib import Path

INSPECT_DIR_NAME = "inspect"
"""A run's inspection: runs/<run>/inspect, beside its checkpoint, where the run page looks for it."""
SUMMARY_JSON = "summary.json"
"""What was inspected and the headline figures: checkpoint, step, returns, heatmap counts, config."""
DIAGNOSIS_JSON = "diagnosis.json"
ROLLOUT_MP4 = "rollout.mp4"
CONTACT_SHEET_PNG = "contact_sheet.png"
TRACE_CSV = "trace.csv"
TRACE_JSON = "trace.json"
TRACES_PNG = "traces.png"
SALIENCY_NPZ = "saliency.npz"
"""(T, 10, 10) maps of the replayed episode: `action` (the chosen action's) and `value`."""
SALIENCY_PNG = "saliency_mean.png"
HEATMAP_PNG = "failure_heatmap.png"


class ReportError(Exception):
    """A directory a report cannot be made from; the message is one line meant for the user."""


def read_inspection(out_dir) -> tuple[dict, dict | None]:
    """(summary.json, diagnosis.json or None) of an inspect directory."""
    out_dir = Path(out_dir)
    summary_path = out_dir / SUMMARY_JSON
    if not summary_path.is_file():
        raise ReportError(f"{out_dir} holds no inspection (no {SUMMARY_JSON}): run `python cli.py inspect CHECKPOINT`")
    diagnosis_path = out_dir / DIAGNOSIS_JSON
    return read_json(summary_path), read_json(diagnosis_path) if diagnosis_path.is_file() else None


def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ReportError(f"{path} is not valid JSON ({type(error).__name__}): run inspect again") from None
