"""The pages: an inspection, a whole training run, or two agents compared, each one self-contained
HTML file built from `html_kit`.

    write_inspection_report("runs/x/inspect")   # -> runs/x/inspect/report.html (inspect writes it too)
    write_run_report("runs/x")                  # -> runs/x/report.html: learning curves + latest inspection
    write_compare_report(comparison)            # -> DIR/compare.html (`cli.py compare` writes it)

The video is the inspection's own rollout.mp4 (H.264, yuv420p), which Debian's `chromium` plays, as
do Chrome, Firefox and Safari; tests/test_report.py loads it in headless Chromium.

An inspection page is built from the files in the inspect directory alone (summary.json,
diagnosis.json, the PNGs, the video), so it can be rebuilt later without the checkpoint. The
order is the order of a story: what is wrong (the diagnosis), the agent playing, where it loses
the ball, where it looks, what it expects, how well it scores, and what it was trained with.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from breakout_ppo.events import (
    ELAPSED_SECONDS,
    ENTROPY,
    EPISODIC_LENGTH,
    EPISODIC_RETURN,
    EVENT_FILE_GLOB,
    SPS,
    damaged_event_files,
    read_scalars,
)
from instruments.inspection_dir import (
    CONTACT_SHEET_PNG,
    HEATMAP_PNG,
    INSPECT_DIR_NAME,
    ROLLOUT_MP4,
    SALIENCY_PNG,
    SUMMARY_JSON,
    TRACE_CSV,
    TRACES_PNG,
    ReportError,
    read_inspection,
    read_json,
)
from instruments.judge.compare import SIGNIFICANT_MARK, Comparison, diagnosis_rows, evaluation_rows, paired_findings
from instruments.judge.diagnose import Diagnosis, evidence, format_number
from instruments.show.html_kit import Section, esc, image, matplotlib_png, page, png_figure, table, video

REPORT_NAME = "report.html"
COMPARE_REPORT_NAME = "compare.html"


def checkpoint_label(checkpoint) -> str:
    """"seed1" for runs/seed1/checkpoint.pt, "seed1-snapshot-90s" for a snapshot in it."""
    checkpoint = Path(checkpoint)
    run = checkpoint.resolve().parent.name
    return run if checkpoint.stem == "checkpoint" else f"{run}-{checkpoint.stem}"


def mean_with_ci(stats: dict) -> str:
    """"52.2 ± 1.8 [50.4, 54.0]" from an EvalResult summary (mean, ci95)."""
    mean, ci = stats["mean"], stats.get("ci95")
    if ci is None:
        return f"{mean:.2f} (no CI stored)"
    return f"{mean:.2f} ± {ci:.2f} [{mean - ci:.2f}, {mean + ci:.2f}]"


# ---------------------------------------------------------------------------------------------
# An inspection


def return_statistics(summary: dict) -> dict | None:
    """The heatmap episodes' return statistics; older inspections stored the mean only (no CI)."""
    if "returns" in summary:
        return summary["returns"]
    heatmap = summary.get("heatmap")
    return None if heatmap is None else {"mean": heatmap["mean_return"], "episodes": heatmap["episodes"]}


def verdict_badge(f) -> str:
    """A finding's verdict (FIRED, ok, not judged) as a coloured label."""
    kind = "fired" if f.fired else ("ok" if f.verdict == "ok" else "")
    return f'<span class="badge {kind}">{esc(f.verdict)}</span>'


FINDING_FIGURES = {
    "value_stuck": ("traces", "the value trace"), "entropy_collapse": ("traces", "the action probabilities"),
    "tunnel_vision": ("saliency", "the mean saliency"), "failure_hot_spots": ("failures", "the failure heatmap"),
    "first_wall_barrier": ("failures", "the failure heatmap (bricks left at each loss)"),
    "lane": ("failures", "the failure heatmap (the ball's last cells)"),
}
"""The section of the inspection page whose figure shows what a finding measured."""


def finding_html(f) -> str:
    """One finding of `instruments.judge.diagnose`: title, verdict, value against threshold, advice;
    a fired one also its evidence (the cells or figures that made it fire) and a link to its figure,
    one not judged why not."""
    details = ""
    if f.details:
        rows = [(esc(k), esc(json.dumps(v) if isinstance(v, (dict, list)) else format_number(v)))
                for k, v in f.details.items()]
        details = f"<details><summary>details</summary>{table(rows)}</details>"
    shown = ""
    if f.verdict == "not judged":
        shown = f'<p class="evidence">{esc(evidence(f))}</p>'
    if f.fired:
        shown = f'<p class="evidence">evidence: {esc(evidence(f))}'
        if f.name in FINDING_FIGURES:
            anchor, words = FINDING_FIGURES[f.name]
            shown += f' &middot; see <a href="#{anchor}">{esc(words)}</a>'
        shown += "</p>"
    return (f'<div class="finding{" fired" if f.fired else ""}"><h3>{esc(f.title)}'
            f"{verdict_badge(f)}</h3>"
            f"<div>value <b>{format_number(f.value)}</b> &middot; fires when {esc(f.comparison)} "
            f"{format_number(f.threshold)}</div>{shown}<p class=\"advice\">{esc(f.shown_advice)}</p>{details}</div>")


def diagnosis_section(diagnosis: dict | None) -> Section:
    if diagnosis is None:
        body = ('<p class="note">This inspection has no diagnosis.json (it was made before inspect diagnosed '
                "agents): run <code>python cli.py inspect</code> again.</p>")
        return Section("diagnosis", "Diagnosis", body)
    findings = Diagnosis.from_dict(diagnosis).findings
    fired = [f for f in findings if f.fired]
    headline = (f"<p class=\"headline\"><b>{len(fired)} of {len(findings)} findings fired</b>"
                + (": " + esc(", ".join(f.title for f in fired)) if fired else ": nothing looks wrong") + "</p>")
    ordered = sorted(findings, key=lambda f: not f.fired)  # fired first
    return Section("diagnosis", "Diagnosis", headline + "".join(finding_html(f) for f in ordered))


def evaluation_section(summary: dict) -> Section:
    stats = return_statistics(summary)
    heatmap = summary.get("heatmap", {})
    rows = []
    if stats is not None:
        rows.append(("mean return (95% CI)", esc(mean_with_ci(stats))))
        for key, label in (("std", "std of the return"), ("min", "lowest return"), ("max", "highest return")):
            if key in stats:
                rows.append((label, format_number(stats[key])))
    if heatmap:
        rows += [("episodes", format_number(heatmap["episodes"])),
                 ("mean length (steps)", format_number(heatmap["mean_length"])),
                 ("lost the ball", format_number(heatmap["losses"])),
                 ("reached the step cap", format_number(heatmap["truncated"]))]
    episode = summary.get("episode")
    if episode:
        rows.append(("the replayed episode", f"return {format_number(episode['return'])} in "
                                             f"{format_number(episode['length'])} steps"))
    if "entropy_term" in summary:
        rows.append(("update code", esc(summary["entropy_term"]["finding"])))
    body = (table(rows) + '<p class="note">Sampled policy, one episode per env slot, sticky actions as in '
            "training; the CI is the normal approximation 1.96 &middot; std / &radic;n.</p>")
    return Section("evaluation", "Evaluation", body)


def config_section(config: dict | None, title: str = "Config") -> Section:
    if not config:
        return Section("config", title, '<p class="note">The config is not stored with this inspection.</p>')
    rows = [(f"<code>{esc(k)}</code>", esc(format_number(v) if v is not None else "none")) for k, v in config.items()]
    return Section("config", title, table(rows, header=("field", "value")))


def inspection_sections(out_dir) -> list[Section]:
    """Every section of an inspection page, in reading order, read from `out_dir`'s files."""
    out_dir = Path(out_dir)
    summary, diagnosis = read_inspection(out_dir)
    config = summary.get("config")
    if config is None:
        config = _config_from_checkpoint(summary.get("checkpoint"))
    episode = summary.get("episode", {})
    return [
        diagnosis_section(diagnosis),
        Section("video", "The agent playing", video(
            out_dir / ROLLOUT_MP4,
            f"One sampled episode (return {format_number(episode.get('return'))}, "
            f"{format_number(episode.get('length'))} steps, 10 steps a second): the frame it acted on with the "
            "saliency of its chosen action in blue, its action probabilities and its value estimate.")
            + image(out_dir / CONTACT_SHEET_PNG, "Key frames of the same episode.")),
        Section("failures", "Where it loses the ball", image(
            out_dir / HEATMAP_PNG,
            f"Over {format_number(summary.get('heatmap', {}).get('episodes'))} episodes: where the ball and the "
            "paddle were in the frames before each lost ball, and when the losses happened.")),
        Section("saliency", "Where it looks", image(
            out_dir / SALIENCY_PNG, "Gradient saliency averaged over the replayed episode.")),
        Section("traces", "What it expects", image(
            out_dir / TRACES_PNG, f"Value estimate and action probabilities step by step ({TRACE_CSV} holds "
                                  "the numbers).")),
        evaluation_section(summary),
        config_section(config),
    ]


def _config_from_checkpoint(checkpoint) -> dict | None:
    """Inspections made before summary.json held the config: read it from the checkpoint, if still there."""
    if not checkpoint:
        return None
    from breakout_ppo.checkpoint import CheckpointError, load_checkpoint

    try:
        return load_checkpoint(checkpoint)["config"]
    except CheckpointError:
        return None


def inspection_subtitle(summary: dict, diagnosis: dict | None) -> list[str]:
    facts = [f"checkpoint <code>{esc(summary.get('checkpoint', '?'))}</code>",
             f"step {format_number(summary.get('global_step'))}"]
    stats = return_statistics(summary)
    if stats is not None:
        facts.append(f"mean return {esc(mean_with_ci(stats))} over {format_number(stats.get('episodes'))} episodes")
    if diagnosis is not None:
        fired = [f["title"] for f in diagnosis["findings"] if f["fired"]]
        listed = f" ({esc(', '.join(fired))})" if fired else ""
        facts.append(f"{len(fired)} finding{'s' * (len(fired) != 1)} fired{listed}")
    return [" &middot; ".join(facts)]


def write_inspection_report(out_dir, path=None) -> Path:
    """Write the inspection in `out_dir` as one self-contained page (default `out_dir/report.html`)."""
    out_dir = Path(out_dir)
    summary, diagnosis = read_inspection(out_dir)
    path = Path(path) if path else out_dir / REPORT_NAME
    title = f"Agent report: {checkpoint_label(summary['checkpoint']) if 'checkpoint' in summary else out_dir.name}"
    path.write_text(page(title, inspection_subtitle(summary, diagnosis), inspection_sections(out_dir)))
    return path


# ---------------------------------------------------------------------------------------------
# A training run


LEARNING_CURVES = (
    (EPISODIC_RETURN, "episodic return"),
    (EPISODIC_LENGTH, "episode length (steps)"),
    (SPS, "training steps per second"),
    ("losses/policy_loss", "policy loss"),
    ("losses/value_loss", "value loss"),
    (ENTROPY, "policy entropy (nats)"),
    ("losses/approx_kl", "approximate KL"),
    ("losses/clip_fraction", "clip fraction"),
    ("losses/explained_variance", "explained variance"),
)


def plot_learning_curves(scalars: dict) -> bytes:
    """The training curves of LEARNING_CURVES on a 3x3 grid, a running mean over noisy ones; PNG bytes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(3, 3, figsize=(13, 9.5), dpi=100)
    for ax, (tag, label) in zip(axes.ravel(), LEARNING_CURVES):
        ax.set_title(label, fontsize=11)
        ax.grid(alpha=0.3)
        if tag not in scalars:
            ax.text(0.5, 0.5, f"{tag}\nnot logged", ha="center", va="center", transform=ax.transAxes, color="#888")
            continue
        steps, values = scalars[tag]
        ax.plot(steps, values, color="#3b8bd9", lw=0.8, alpha=0.45 if len(values) > 20 else 1.0)
        if len(values) > 20:
            width = max(2, len(values) // 20)
            smooth = np.convolve(values, np.ones(width) / width, mode="valid")
            ax.plot(steps[width - 1:], smooth, color="#1a4f8f", lw=1.6, label=f"mean of {width}")
            ax.legend(fontsize=8, loc="best")
        ax.set_xlabel("environment steps", fontsize=9)
        ax.ticklabel_format(axis="x", style="sci", scilimits=(0, 3))
    fig.tight_layout()
    return matplotlib_png(fig)


def run_facts(run_dir: Path, scalars: dict) -> tuple[list[tuple[str, str]], int | None]:
    """Rows of what a run did (steps, updates, time, final return) and its last step."""
    rows, last_step = [("run directory", f"<code>{esc(run_dir)}</code>")], None
    if EPISODIC_RETURN in scalars:
        steps, values = scalars[EPISODIC_RETURN]
        last_step = int(steps[-1])
        tail = values[-max(1, len(values) // 10):]  # the last tenth of the updates
        rows.append(("episodic return, last tenth of training",
                     f"{tail.mean():.2f} (mean of {len(tail)} update{'s' * (len(tail) != 1)})"))
        rows.append(("best episodic return (an update's mean)", f"{values.max():.2f}"))
    per_update = next((scalars[t] for t in (SPS, ENTROPY) if t in scalars), None)
    if per_update is not None:  # logged once an update, episodes finished or not
        last_step = max(last_step or 0, int(per_update[0][-1]))
        rows.append(("updates logged", format_number(len(per_update[0]))))
    if last_step is not None:
        rows.append(("environment steps", format_number(last_step)))
    if ELAPSED_SECONDS in scalars:
        rows.append(("wall time since process start", f"{scalars[ELAPSED_SECONDS][1][-1]:.0f} s"))
    if SPS in scalars:
        rows.append(("training steps per second (last)", format_number(round(scalars[SPS][1][-1]))))
    return rows, last_step


def check_run_dir(run_dir) -> Path:
    """`run_dir` if it is a training run's directory (it holds TensorBoard events), else ReportError."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ReportError(f"run directory not found: {run_dir}")
    if not any(run_dir.glob(EVENT_FILE_GLOB)):
        raise ReportError(f"{run_dir} holds no TensorBoard events: is it a run directory (runs/<run>)?")
    return run_dir


def write_run_report(run_dir, path=None) -> Path:
    """Write `run_dir/report.html`: learning curves from the run's events, and its latest
    inspection (`run_dir/inspect/`) when there is one."""
    run_dir = check_run_dir(run_dir)
    scalars = read_scalars(run_dir)
    facts, last_step = run_facts(run_dir, scalars)
    for problem in damaged_event_files(run_dir):
        facts.append(("damaged event file", f'<span class="warn">{esc(problem)}: the curves may miss what '
                                            f'was logged after it</span>'))
    config = read_json(run_dir / "config.json") if (run_dir / "config.json").is_file() else None

    inspect_dir = run_dir / INSPECT_DIR_NAME
    sections = []
    subtitle = [f"training run <code>{esc(run_dir)}</code>"]
    if (inspect_dir / SUMMARY_JSON).is_file():
        summary, diagnosis = read_inspection(inspect_dir)
        inspection = inspection_sections(inspect_dir)
        subtitle += inspection_subtitle(summary, diagnosis)
        inspected_step = summary.get("global_step")
        if last_step is not None and inspected_step is not None and inspected_step < last_step:
            facts.append(("inspection", f"of step {format_number(inspected_step)}, older than the run: "
                                        f"<code>python cli.py report {esc(run_dir)} --inspect</code> renews it"))
        diagnosis_part, rest = inspection[0], [s for s in inspection[1:] if s.anchor != "config"]
    else:
        diagnosis_part = Section("diagnosis", "Diagnosis", (
            '<p class="note">This run has no inspection yet. Make one, and this page with it: '
            f"<code>python cli.py report {esc(run_dir)} --inspect</code> (or "
            f"<code>python cli.py inspect {esc(run_dir / 'checkpoint.pt')}</code>, then this command again).</p>"))
        rest = []
    sections.append(diagnosis_part)
    sections.append(Section("training", "Training", table(facts) + png_figure(
        plot_learning_curves(scalars), "Learning curves from the run's TensorBoard events; the dark line is a "
                                       "running mean.", "learning curves")))
    sections += rest
    sections.append(config_section(config, "Config"))
    path = Path(path) if path else run_dir / REPORT_NAME
    path.write_text(page(f"Training run: {run_dir.name}", subtitle, sections))
    return path


# ---------------------------------------------------------------------------------------------
# Two agents compared


def _pair_of(embed, c: Comparison, name: str) -> str:
    """A's and B's file `name` from their inspections, embedded side by side."""
    return (f'<div class="pair"><div><h3>A</h3>{embed(c.a.inspect_dir / name)}</div>'
            f'<div><h3>B</h3>{embed(c.b.inspect_dir / name)}</div></div>')


def write_compare_report(c: Comparison) -> Path:
    """DIR/compare.html: the differences first, then returns, diagnosis, failures, saliency, play, config."""
    r = c.returns
    sentences = "".join(f"<li>{esc(line)}</li>" for line in c.differences)
    returns_rows = [tuple(esc(cell) for cell in row) for row in evaluation_rows(c)]
    df = f"{r.df:.0f}" if math.isfinite(r.df) else "&infin;"
    returns_body = (table(returns_rows, header=("", "A", "B", "B &minus; A"), numeric_columns=(1, 2, 3))
                    + f'<p class="note">{esc(SIGNIFICANT_MARK) + "<br>" if r.significant else ""}'
                      "Sampled policy, sticky actions 0.1, 10,000-step cap, the same episode "
                      f"seed for both. Per agent: normal-approximation 95% CI. Difference: Welch's t interval "
                      f"({df} degrees of freedom).</p>"
                    + image(c.files["figure"], "Returns, where the balls are lost, and where B looks "
                                                      "differently from A."))
    if c.a.diagnosis is None and c.b.diagnosis is None:
        diagnosis_body = '<p class="note">Neither inspection holds a diagnosis.</p>'
    else:
        def cell(f):
            return "-" if f is None else f"{format_number(f.value)} {verdict_badge(f)}"

        rows = [(esc(title), cell(fa), cell(fb), esc(when))
                for (fa, fb), (title, _, _, when) in zip(paired_findings(c.a, c.b), diagnosis_rows(c))]
        diagnosis_body = (table(rows, header=("finding", "A", "B", "fires when"))
                          + '<p class="note">&lt;&gt; marks a finding that fires on one agent only. '
                            "Each agent's findings with their advice: its own report.html (A/, B/).</p>")
    config_rows = [(f"<code>{esc(k)}</code>", esc(c.a.config.get(k)), esc(c.b.config.get(k)))
                   for k in dict.fromkeys([*c.a.config, *c.b.config]) if c.a.config.get(k) != c.b.config.get(k)]
    config_body = (table(config_rows, header=("field", "A", "B")) if config_rows else "")
    config_body += '<p class="note">Every other field is the same.</p>' if config_rows else \
        '<p class="note">The two configs are identical.</p>'
    sections = [
        Section("differences", "Differences that matter", f'<ul class="callouts">{sentences}</ul>'),
        Section("returns", "Returns", returns_body),
        Section("diagnosis", "Diagnosis", diagnosis_body),
        Section("failures", "Where they lose the ball", _pair_of(image, c, HEATMAP_PNG)),
        Section("saliency", "Where they look", _pair_of(image, c, SALIENCY_PNG)),
        Section("play", "The agents playing", _pair_of(video, c, ROLLOUT_MP4)),
        Section("config", "Config", config_body),
    ]
    subtitle = [f"A <code>{esc(c.a.checkpoint)}</code> (step {c.a.global_step:,}) &middot; "
                f"B <code>{esc(c.b.checkpoint)}</code> (step {c.b.global_step:,})"]
    path = c.out_dir / COMPARE_REPORT_NAME
    path.write_text(page("Before and after: A vs B", subtitle, sections))
    return path
