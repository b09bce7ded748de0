"""An inspection directory read back: what `inspection.py` wrote, for the pages and the comparison.

The pages and `judge/compare.py` read an inspection from its files alone, so that a page can be
rebuilt, or two agents compared, without running anything again.
"""

from __future__ import annotations

import json
from pathlib import Path


class ReportError(Exception):
    """A directory a report cannot be made from; the message is one line meant for the user."""


def read_inspection(out_dir) -> tuple[dict, dict | None]:
    """(summary.json, diagnosis.json or None) of an inspect directory."""
    out_dir = Path(out_dir)
    summary_path = out_dir / "summary.json"
    if not summary_path.is_file():
        raise ReportError(f"{out_dir} holds no inspection (no summary.json): run `python cli.py inspect CHECKPOINT`")
    diagnosis_path = out_dir / "diagnosis.json"
    return read_json(summary_path), read_json(diagnosis_path) if diagnosis_path.is_file() else None


def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ReportError(f"{path} is not valid JSON ({type(error).__name__}): run inspect again") from None
