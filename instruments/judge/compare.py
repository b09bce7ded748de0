"""The story of a fix: the differences that matter between two inspected agents.

Two agents, each inspected (`inspection.py`) and evaluated on the same episode seed
(`breakout_ppo.evaluate`), and the differences worked out:

- the return: Welch's t interval on the difference of the means. The two samples are independent
  and their variances differ (a better agent's returns spread more), so neither a pooled t-test
  nor two overlapping per-agent CIs is the right call;
- the diagnosis: findings that fire on one agent only;
- where the balls are lost (the loss columns of the failure heatmap) and where the agent looks
  (its mean saliency by board region), when they moved.

`summary_lines` says it in the terminal; `comparison.py` runs it all and shows it (figure,
TensorBoard, `show/pages.py`'s compare page).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from breakout_ppo.evaluate import EvalResult
from breakout_ppo.stats import Welch, welch
from instruments.inspection_dir import SALIENCY_NPZ, read_inspection
from instruments.judge.diagnose import MIN_LOSSES, Diagnosis, Finding, format_number

SIGNIFICANT_MARK = "* significant: Welch's 95% t interval on the difference excludes 0"
LOSS_SHIFT = 0.25
"""The loss columns "moved" when the two distributions differ by at least this total variation
distance (half the summed absolute difference of the shares: 0 same, 1 disjoint)."""
SALIENCY_SHIFT = 0.10
"""A board region's share of the mean saliency "moved" when it changed by at least 10 points."""
SALIENCY_REGIONS = {  # rows of the 10x10 board
    "the brick rows (1-3)": slice(1, 4),
    "the open field (rows 4-8)": slice(4, 9),
    "the paddle row (9)": slice(9, 10),
}


# ---------------------------------------------------------------------------------------------
# Welch's t interval


def welch_difference(a, b, confidence: float = 0.95) -> Welch:
    """Welch's t interval on mean(b) - mean(a) for two independent samples of any variances."""
    if len(a) < 2 or len(b) < 2:
        raise ValueError("Welch's interval needs at least 2 values on each side")
    return welch(b, a, confidence)


def difference_sentence(returns: Welch) -> str:
    """"B scores 12.3 ± 2.1 more than A (95% Welch interval [10.2, 14.4]: significant)"."""
    direction = "more" if returns.difference >= 0 else "less"
    verdict = "significant" if returns.significant else "not significant, the interval holds 0"
    return (f"B scores {abs(returns.difference):.2f} ± {returns.half_width:.2f} {direction} than A "
            f"({returns.confidence:.0%} Welch interval [{returns.low:.2f}, {returns.high:.2f}]: {verdict})")


# ---------------------------------------------------------------------------------------------
# One side of the comparison


@dataclass
class Agent:
    """One compared agent: where it came from, its inspection and its evaluation."""

    label: str
    """"A" or "B"."""
    checkpoint: Path
    inspect_dir: Path
    global_step: int
    config: dict
    evaluation: EvalResult
    summary: dict
    """The inspection's summary.json."""
    diagnosis: Diagnosis | None
    saliency: np.ndarray
    """(10, 10): mean |saliency| of the chosen action over the replayed episode."""

    def findings(self) -> dict:
        return {} if self.diagnosis is None else {f.name: f for f in self.diagnosis.findings}

    def loss_columns(self) -> np.ndarray | None:
        """Lost balls per column (the ball's column on the losing frame), from the diagnosis."""
        hot_spots = self.findings().get("failure_hot_spots")
        counts = hot_spots.details.get("loss_column_counts") if hot_spots else None
        return None if counts is None else np.asarray(counts, dtype=np.float64)


def load_side(label: str, checkpoint: Path, inspect_dir: Path, evaluation: EvalResult) -> Agent:
    """An `Agent` from an inspect directory and an evaluation."""
    summary, diagnosis = read_inspection(inspect_dir)
    with np.load(inspect_dir / SALIENCY_NPZ) as saliency:
        action_saliency = np.abs(saliency["action"]).mean(axis=0)
    return Agent(label, Path(checkpoint), Path(inspect_dir), int(summary.get("global_step", 0)),
                 summary.get("config", {}), evaluation, summary,
                 None if diagnosis is None else Diagnosis.from_dict(diagnosis), action_saliency)


# ---------------------------------------------------------------------------------------------
# The differences that matter


def region_shares(saliency: np.ndarray) -> dict[str, float]:
    """Share of the total saliency in each of SALIENCY_REGIONS."""
    total = float(saliency.sum()) or 1.0
    return {name: float(saliency[rows].sum()) / total for name, rows in SALIENCY_REGIONS.items()}


def paired_findings(a: Agent, b: Agent) -> list[tuple[Finding | None, Finding | None]]:
    """(A's finding, B's finding) by name, in A's order; None where one diagnosis lacks it."""
    findings_a, findings_b = a.findings(), b.findings()
    names = list(findings_a) + [n for n in findings_b if n not in findings_a]
    return [(findings_a.get(n), findings_b.get(n)) for n in names]


def differences_that_matter(a: Agent, b: Agent, returns: Welch) -> list[str]:
    """Plain sentences, most important first: the return, the findings, the losses, the gaze."""
    lines = [difference_sentence(returns)]

    for fa, fb in paired_findings(a, b):
        if fa is None or fb is None:
            continue
        if fa.fired != fb.fired:
            lines.append(f"{fa.title} fires on {'A' if fa.fired else 'B'} only "
                         f"(A {format_number(fa.value)}, B {format_number(fb.value)}; "
                         f"fires {fa.comparison} {format_number(fa.threshold)})")
        elif fa.fired:  # not a difference, but a fix that left it standing is news
            lines.append(f"{fa.title} fires on both (A {format_number(fa.value)}, "
                         f"B {format_number(fb.value)})")
    if a.diagnosis is None or b.diagnosis is None:
        lines.append("no diagnosis for " + " and ".join(s.label for s in (a, b) if s.diagnosis is None))

    capped_a, capped_b = int(a.evaluation.truncated.sum()), int(b.evaluation.truncated.sum())
    if capped_a != capped_b:
        lines.append(f"episodes that reached the step cap without losing the ball: A {capped_a} of "
                     f"{len(a.evaluation.returns)}, B {capped_b} of {len(b.evaluation.returns)}")

    columns_a, columns_b = a.loss_columns(), b.loss_columns()
    if columns_a is not None and columns_b is not None:
        if min(columns_a.sum(), columns_b.sum()) < MIN_LOSSES:
            lines.append(f"where the balls are lost is not compared: too few losses (A {columns_a.sum():.0f}, "
                         f"B {columns_b.sum():.0f}; {MIN_LOSSES} each needed)")
        else:
            share_a, share_b = columns_a / columns_a.sum(), columns_b / columns_b.sum()
            distance = 0.5 * float(np.abs(share_a - share_b).sum())
            top_a, top_b = int(share_a.argmax()), int(share_b.argmax())
            if distance >= LOSS_SHIFT:
                lines.append(f"the loss hot spots moved: A loses most balls in column {top_a} "
                             f"({share_a[top_a]:.0%}), B in column {top_b} ({share_b[top_b]:.0%}); "
                             f"the loss columns differ by {distance:.2f} (total variation)")

    shares_a, shares_b = region_shares(a.saliency), region_shares(b.saliency)
    for region in SALIENCY_REGIONS:
        change = shares_b[region] - shares_a[region]
        if abs(change) >= SALIENCY_SHIFT:
            lines.append(f"B looks {'more' if change > 0 else 'less'} at {region}: {shares_b[region]:.0%} "
                         f"of its saliency, A {shares_a[region]:.0%}")
    return lines


# ---------------------------------------------------------------------------------------------
# The comparison


@dataclass
class Comparison:
    a: Agent
    b: Agent
    returns: Welch
    differences: list[str]
    out_dir: Path
    files: dict


def comparison_record(c: Comparison) -> dict:
    """The figures as plain JSON: each side's evaluation, the Welch interval, the sentences."""
    return {
        "A": {"checkpoint": str(c.a.checkpoint), "global_step": c.a.global_step, **c.a.evaluation.summary()},
        "B": {"checkpoint": str(c.b.checkpoint), "global_step": c.b.global_step, **c.b.evaluation.summary()},
        "difference": {"b_minus_a": c.returns.difference, "ci95": c.returns.half_width,
                       "df": c.returns.df if math.isfinite(c.returns.df) else None,
                       "significant": c.returns.significant},
        "differences_that_matter": c.differences,
    }


# ---------------------------------------------------------------------------------------------
# Terminal


def return_cell(result: EvalResult) -> str:
    return f"{result.mean:.2f} ± {result.ci95:.2f}"


def _finding_cell(f: Finding | None) -> str:
    return "-" if f is None else f"{format_number(f.value)} {f.verdict}"


def diagnosis_rows(c: Comparison) -> list[tuple[str, str, str, str]]:
    """(finding, A, B, fires when) per finding, as text; a verdict that differs is marked '<>'."""
    rows = []
    for fa, fb in paired_findings(c.a, c.b):
        some = fa or fb
        mark = " <>" if fa and fb and fa.fired != fb.fired else ""
        rows.append((some.title + mark, _finding_cell(fa), _finding_cell(fb),
                     f"{some.comparison} {format_number(some.threshold)}"))
    return rows


def evaluation_rows(c: Comparison) -> list[tuple[str, str, str, str]]:
    """(figure, A, B, B - A) rows of the evaluation; a significant difference is marked '*'."""
    a, b, r = c.a.evaluation, c.b.evaluation, c.returns
    return [
        ("mean return ± 95% CI", return_cell(a), return_cell(b),
         f"{r.difference:+.2f} ± {r.half_width:.2f}" + (" *" if r.significant else "")),
        ("std of the return", f"{a.std:.2f}", f"{b.std:.2f}", ""),
        ("lowest / highest return", f"{a.returns.min():g} / {a.returns.max():g}",
         f"{b.returns.min():g} / {b.returns.max():g}", ""),
        ("episodes", f"{len(a.returns)}", f"{len(b.returns)}", ""),
        ("mean length (steps)", f"{a.lengths.mean():.0f}", f"{b.lengths.mean():.0f}",
         f"{b.lengths.mean() - a.lengths.mean():+.0f}"),
        ("reached the step cap", f"{int(a.truncated.sum())}", f"{int(b.truncated.sum())}", ""),
    ]


def summary_lines(c: Comparison) -> list[str]:
    """The comparison as a terminal table, then the differences that matter."""
    r = c.returns
    lines = [f"A  {c.a.checkpoint} (step {c.a.global_step:,})", f"B  {c.b.checkpoint} (step {c.b.global_step:,})", ""]
    rows = evaluation_rows(c)
    width = max(len(row[0]) for row in rows + diagnosis_rows(c))
    lines.append(f"{'':{width}}  {'A':>18}  {'B':>18}  {'B - A':>18}")
    for name, va, vb, diff in rows:
        lines.append(f"{name:{width}}  {va:>18}  {vb:>18}  {diff:>18}")
    if c.a.diagnosis is not None or c.b.diagnosis is not None:
        lines.append(f"{'diagnosis':{width}}  {'A':>18}  {'B':>18}  {'fires when':>18}")
        for name, va, vb, when in diagnosis_rows(c):
            lines.append(f"{name:{width}}  {va:>18}  {vb:>18}  {when:>18}")
    if r.significant:
        lines += ["", SIGNIFICANT_MARK]
    lines += ["", "differences that matter:"]
    lines += [f"  - {line}" for line in c.differences]
    return lines


