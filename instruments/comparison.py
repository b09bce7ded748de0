"""`python cli.py compare A.pt B.pt`: the story of a fix, two agents side by side.

`compare_agents` inspects both agents (`inspect_agent`, into DIR/A and DIR/B), evaluates both on
the same episode seed (`breakout_ppo.evaluate`), works out the differences that matter
(`judge/compare.py`), and shows them three ways: `summary_lines` for the terminal, TensorBoard
under DIR (tags `compare/...`) and DIR/compare.html (`show/pages.py`).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from breakout_ppo.checkpoint import load_agent
from breakout_ppo.evaluate import SETTINGS, evaluate
from instruments.inspection import inspect_agent
from instruments.inspection_dir import HEATMAP_PNG, SALIENCY_PNG
from instruments.judge.compare import (
    Comparison,
    comparison_record,
    differences_that_matter,
    load_side,
    summary_lines,
    welch_difference,
)
from instruments.show.figures import save_difference_figure
from instruments.show.pages import write_compare_report
from instruments.show.tensorboard_sink import TensorBoardSink, read_png

FIGURE_NAME = "compare.png"


def compare_agents(checkpoint_a, checkpoint_b, out_dir, episodes: int = 1000, device="cpu", seed: int = 12345,
                   tensorboard: bool = True) -> Comparison:
    """Inspect and evaluate both agents, and write the comparison (page, figure, TensorBoard) to `out_dir`."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    sides = []
    for label, checkpoint in (("A", Path(checkpoint_a)), ("B", Path(checkpoint_b))):
        inspection = inspect_agent(checkpoint, out_dir / label, episodes=episodes, device=device)
        model, _ = load_agent(checkpoint, device=device)
        # Sampled policy, default setting, the same episode seed for both: as `cli.py evaluate`.
        evaluation = evaluate(model, episodes=episodes, device=device, seed=seed, **SETTINGS["default"])
        sides.append(load_side(label, checkpoint, inspection.out_dir, evaluation))
    a, b = sides
    returns = welch_difference(a.evaluation.returns, b.evaluation.returns)
    comparison = Comparison(a, b, returns, differences_that_matter(a, b, returns), out_dir, {})
    comparison.files["figure"] = save_difference_figure(comparison, out_dir / FIGURE_NAME)
    (out_dir / "compare.json").write_text(json.dumps(comparison_record(comparison), indent=2) + "\n")
    comparison.files["json"] = out_dir / "compare.json"
    if tensorboard:
        log_to_tensorboard(comparison)
        comparison.files["tensorboard"] = out_dir
    comparison.files["report"] = write_compare_report(comparison)
    return comparison


def side_by_side(left: Path, right: Path) -> np.ndarray:
    """Two PNGs as one RGB image, tops aligned, padded white (for TensorBoard's Images tab)."""
    images = [read_png(p) for p in (left, right)]
    height = max(i.shape[0] for i in images)
    padded = [np.pad(i, ((0, height - i.shape[0]), (0, 0), (0, 0)), constant_values=255) for i in images]
    gap = np.full((height, 16, 3), 255, dtype=np.uint8)
    return np.concatenate([padded[0], gap, padded[1]], axis=1)


def log_to_tensorboard(c: Comparison) -> None:
    """Everything under `compare/` in `c.out_dir`'s event file, at step 0."""
    with TensorBoardSink(c.out_dir) as sink:
        for side in (c.a, c.b):
            e = side.evaluation
            sink.scalar(f"compare/{side.label}/mean_return", e.mean, 0)
            sink.scalar(f"compare/{side.label}/ci95", e.ci95, 0)
            sink.histogram(f"compare/{side.label}/returns", e.returns, 0)
        sink.scalar("compare/difference", c.returns.difference, 0)
        sink.scalar("compare/difference_ci95", c.returns.half_width, 0)
        sink.scalar("compare/significant", float(c.returns.significant), 0)
        sink.image("compare/differences", read_png(c.files["figure"]), 0)
        sink.image("compare/failure_heatmaps",
                   side_by_side(c.a.inspect_dir / HEATMAP_PNG, c.b.inspect_dir / HEATMAP_PNG), 0)
        sink.image("compare/saliency", side_by_side(c.a.inspect_dir / SALIENCY_PNG, c.b.inspect_dir / SALIENCY_PNG), 0)
        sink.text("compare/summary", "\n".join(f"- {line}" for line in c.differences)
                  + "\n\n```\n" + "\n".join(summary_lines(c)) + "\n```", 0)
