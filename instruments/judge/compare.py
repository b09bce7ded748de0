"""`python cli.py compare A.pt B.pt`: the story of a fix, two agents side by side.

`compare_agents` inspects both agents (`inspect_agent`, into DIR/A and DIR/B), evaluates both on
the same episode seed (`breakout_ppo.evaluate`), and works out the differences that matter:

- the return: Welch's t interval on the difference of the means. The two samples are independent
  and their variances differ (a better agent's returns spread more), so neither a pooled t-test
  nor two overlapping per-agent CIs is the right call;
- the diagnosis: findings that fire on one agent only;
- where the balls are lost (the loss columns of the failure heatmap) and where the agent looks
  (its mean saliency by board region), when they moved.

Then it shows them three ways: `summary_lines` for the terminal, TensorBoard under DIR (tags
`compare/...`) and DIR/compare.html, a self-contained page built from `instruments.report`'s parts.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from breakout_ppo.checkpoint import load_agent
from breakout_ppo.env import GRID
from breakout_ppo.evaluate import SETTINGS, EvalResult, evaluate
from breakout_ppo.stats import Welch, welch
from instruments import report
from instruments.judge.diagnose import Diagnosis, Finding
from instruments.inspection import inspect_agent

REPORT_NAME = "compare.html"
SIGNIFICANT_MARK = "* significant: Welch's 95% t interval on the difference excludes 0"
FIGURE_NAME = "compare.png"

MIN_LOSSES = 20
"""Fewer lost balls than this on either side: where they were lost is not compared (too few to say)."""
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
    summary, diagnosis = report.read_inspection(inspect_dir)
    with np.load(inspect_dir / "saliency.npz") as saliency:
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
                         f"(A {report.format_number(fa.value)}, B {report.format_number(fb.value)}; "
                         f"fires {fa.comparison} {report.format_number(fa.threshold)})")
        elif fa.fired:  # not a difference, but a fix that left it standing is news
            lines.append(f"{fa.title} fires on both (A {report.format_number(fa.value)}, "
                         f"B {report.format_number(fb.value)})")
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


def _return_cell(result: EvalResult) -> str:
    return f"{result.mean:.2f} ± {result.ci95:.2f}"


def _finding_cell(f: Finding | None) -> str:
    return "-" if f is None else f"{report.format_number(f.value)} {f.verdict}"


def diagnosis_rows(c: Comparison) -> list[tuple[str, str, str, str]]:
    """(finding, A, B, fires when) per finding, as text; a verdict that differs is marked '<>'."""
    rows = []
    for fa, fb in paired_findings(c.a, c.b):
        some = fa or fb
        mark = " <>" if fa and fb and fa.fired != fb.fired else ""
        rows.append((some.title + mark, _finding_cell(fa), _finding_cell(fb),
                     f"{some.comparison} {report.format_number(some.threshold)}"))
    return rows


def evaluation_rows(c: Comparison) -> list[tuple[str, str, str, str]]:
    """(figure, A, B, B - A) rows of the evaluation; a significant difference is marked '*'."""
    a, b, r = c.a.evaluation, c.b.evaluation, c.returns
    return [
        ("mean return ± 95% CI", _return_cell(a), _return_cell(b),
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


# ---------------------------------------------------------------------------------------------
# Figure, TensorBoard, page


def save_difference_figure(c: Comparison, path: Path) -> Path:
    """Three panels: return distributions with their means and CIs, lost balls per column, and
    where B looks more or less than A (difference of the normalised mean saliency maps)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours = {"A": "#e4572e", "B": "#3b8bd9"}
    fig, (ret_ax, loss_ax, sal_ax) = plt.subplots(1, 3, figsize=(16, 4.6), dpi=100,
                                                  gridspec_kw={"width_ratios": [1.3, 1.1, 1]})
    both = np.concatenate([c.a.evaluation.returns, c.b.evaluation.returns])
    bins = np.histogram_bin_edges(both, bins=min(40, max(5, len(np.unique(both)))))
    for side in (c.a, c.b):
        e = side.evaluation
        ret_ax.hist(e.returns, bins=bins, alpha=0.5, color=colours[side.label],
                    label=f"{side.label}: {_return_cell(e)}")
        ret_ax.axvspan(e.mean - e.ci95, e.mean + e.ci95, color=colours[side.label], alpha=0.25)
        ret_ax.axvline(e.mean, color=colours[side.label], lw=2)
    ret_ax.set_title(f"Returns over {len(c.a.evaluation.returns)} episodes each\n"
                     f"B - A = {c.returns.difference:+.2f} ± {c.returns.half_width:.2f} "
                     f"({'significant' if c.returns.significant else 'not significant'})", fontsize=10)
    ret_ax.set_xlabel("episode return")
    ret_ax.set_ylabel("episodes")
    ret_ax.legend(fontsize=8)

    columns_a, columns_b = c.a.loss_columns(), c.b.loss_columns()
    if columns_a is not None and columns_b is not None:
        x = np.arange(GRID)
        for offset, side, counts in ((-0.2, c.a, columns_a), (0.2, c.b, columns_b)):
            share = counts / max(counts.sum(), 1)
            loss_ax.bar(x + offset, share, width=0.4, color=colours[side.label],
                        label=f"{side.label}: {counts.sum():.0f} lost balls")
        loss_ax.set_xticks(x)
        loss_ax.legend(fontsize=8)
    else:
        loss_ax.text(0.5, 0.5, "no diagnosis: loss columns unknown", ha="center", transform=loss_ax.transAxes)
    loss_ax.set_title("Where the ball is lost\n(the ball's column on the losing frame)", fontsize=10)
    loss_ax.set_xlabel("column")
    loss_ax.set_ylabel("share of lost balls")

    shift = c.b.saliency / max(c.b.saliency.sum(), 1e-12) - c.a.saliency / max(c.a.saliency.sum(), 1e-12)
    limit = float(np.abs(shift).max()) or 1.0
    image = sal_ax.imshow(shift, cmap="RdBu_r", vmin=-limit, vmax=limit)
    sal_ax.set_title("Where B looks more (red) or less (blue) than A\n"
                     "(share of mean saliency of the chosen action)", fontsize=10)
    sal_ax.set_xticks(range(GRID))
    sal_ax.set_yticks(range(GRID))
    sal_ax.set_xlabel("column")
    sal_ax.set_ylabel("row (1-3 bricks, 9 paddle)")
    fig.colorbar(image, ax=sal_ax, fraction=0.046, pad=0.04)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def side_by_side(left: Path, right: Path) -> np.ndarray:
    """Two PNGs as one RGB image, tops aligned, padded white (for TensorBoard's Images tab)."""
    import cv2

    images = [cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB) for p in (left, right)]
    height = max(i.shape[0] for i in images)
    padded = [np.pad(i, ((0, height - i.shape[0]), (0, 0), (0, 0)), constant_values=255) for i in images]
    gap = np.full((height, 16, 3), 255, dtype=np.uint8)
    return np.concatenate([padded[0], gap, padded[1]], axis=1)


def log_to_tensorboard(c: Comparison) -> None:
    """Everything under `compare/` in `c.out_dir`'s event file, at step 0."""
    import cv2

    from instruments.show.tensorboard_sink import TensorBoardSink

    with TensorBoardSink(c.out_dir) as sink:
        for side in (c.a, c.b):
            e = side.evaluation
            sink.scalar(f"compare/{side.label}/mean_return", e.mean, 0)
            sink.scalar(f"compare/{side.label}/ci95", e.ci95, 0)
            sink.histogram(f"compare/{side.label}/returns", e.returns, 0)
        sink.scalar("compare/difference", c.returns.difference, 0)
        sink.scalar("compare/difference_ci95", c.returns.half_width, 0)
        sink.scalar("compare/significant", float(c.returns.significant), 0)
        figure = cv2.cvtColor(cv2.imread(str(c.files["figure"])), cv2.COLOR_BGR2RGB)
        sink.image("compare/differences", figure, 0)
        sink.image("compare/failure_heatmaps", side_by_side(c.a.inspect_dir / "failure_heatmap.png",
                                                            c.b.inspect_dir / "failure_heatmap.png"), 0)
        sink.image("compare/saliency", side_by_side(c.a.inspect_dir / "saliency_mean.png",
                                                    c.b.inspect_dir / "saliency_mean.png"), 0)
        sink.text("compare/summary", "\n".join(f"- {line}" for line in c.differences)
                  + "\n\n```\n" + "\n".join(summary_lines(c)) + "\n```", 0)


def _pair_of(embed, c: Comparison, name: str) -> str:
    """A's and B's file `name` from their inspections, embedded side by side."""
    return (f'<div class="pair"><div><h3>A</h3>{embed(c.a.inspect_dir / name)}</div>'
            f'<div><h3>B</h3>{embed(c.b.inspect_dir / name)}</div></div>')


def write_compare_report(c: Comparison) -> Path:
    """DIR/compare.html: the differences first, then returns, diagnosis, failures, saliency, play, config."""
    esc, r = report.esc, c.returns
    sentences = "".join(f"<li>{esc(line)}</li>" for line in c.differences)
    returns_rows = [tuple(esc(cell) for cell in row) for row in evaluation_rows(c)]
    df = f"{r.df:.0f}" if math.isfinite(r.df) else "&infin;"
    returns_body = (report.table(returns_rows, header=("", "A", "B", "B &minus; A"), numeric_columns=(1, 2, 3))
                    + f'<p class="note">{esc(SIGNIFICANT_MARK) + "<br>" if r.significant else ""}'
                      "Sampled policy, sticky actions 0.1, 10,000-step cap, the same episode "
                      f"seed for both. Per agent: normal-approximation 95% CI. Difference: Welch's t interval "
                      f"({df} degrees of freedom).</p>"
                    + report.image(c.files["figure"], "Returns, where the balls are lost, and where B looks "
                                                      "differently from A."))
    if c.a.diagnosis is None and c.b.diagnosis is None:
        diagnosis_body = '<p class="note">Neither inspection holds a diagnosis.</p>'
    else:
        def cell(f):
            return "-" if f is None else f"{report.format_number(f.value)} {report.verdict_badge(f)}"

        rows = [(esc(title), cell(fa), cell(fb), esc(when))
                for (fa, fb), (title, _, _, when) in zip(paired_findings(c.a, c.b), diagnosis_rows(c))]
        diagnosis_body = (report.table(rows, header=("finding", "A", "B", "fires when"))
                          + '<p class="note">&lt;&gt; marks a finding that fires on one agent only. '
                            "Each agent's findings with their advice: its own report.html (A/, B/).</p>")
    config_rows = [(f"<code>{esc(k)}</code>", esc(c.a.config.get(k)), esc(c.b.config.get(k)))
                   for k in dict.fromkeys([*c.a.config, *c.b.config]) if c.a.config.get(k) != c.b.config.get(k)]
    config_body = (report.table(config_rows, header=("field", "A", "B")) if config_rows else "")
    config_body += '<p class="note">Every other field is the same.</p>' if config_rows else \
        '<p class="note">The two configs are identical.</p>'
    sections = [
        report.Section("differences", "Differences that matter", f'<ul class="callouts">{sentences}</ul>'),
        report.Section("returns", "Returns", returns_body),
        report.Section("diagnosis", "Diagnosis", diagnosis_body),
        report.Section("failures", "Where they lose the ball", _pair_of(report.image, c, "failure_heatmap.png")),
        report.Section("saliency", "Where they look", _pair_of(report.image, c, "saliency_mean.png")),
        report.Section("play", "The agents playing", _pair_of(report.video, c, "rollout.mp4")),
        report.Section("config", "Config", config_body),
    ]
    subtitle = [f"A <code>{esc(c.a.checkpoint)}</code> (step {c.a.global_step:,}) &middot; "
                f"B <code>{esc(c.b.checkpoint)}</code> (step {c.b.global_step:,})"]
    path = c.out_dir / REPORT_NAME
    path.write_text(report.page("Before and after: A vs B", subtitle, sections))
    return path
