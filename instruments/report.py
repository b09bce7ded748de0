"""One page to share: an inspection, or a whole training run, as a self-contained HTML file.

    write_inspection_report("runs/x/inspect")   # -> runs/x/inspect/report.html (inspect writes it too)
    write_run_report("runs/x")                  # -> runs/x/report.html: learning curves + latest inspection

The page needs no network: images and the video are base64 data URIs and the style sheet is
inline, so it can be mailed, attached to an issue or opened offline. The video is the
inspection's own rollout.mp4 (H.264, yuv420p), which Debian's `chromium` plays, as do Chrome,
Firefox and Safari; tests/test_report.py loads it in headless Chromium.

An inspection page is built from the files in the inspect directory alone (summary.json,
diagnosis.json, the PNGs, the video), so it can be rebuilt later without the checkpoint. The
order is the order of a story: what is wrong (the diagnosis), the agent playing, where it loses
the ball, where it looks, what it expects, how well it scores, and what it was trained with.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from breakout_ppo.events import EVENT_FILE_GLOB, damaged_event_files, read_scalars

REPORT_NAME = "report.html"


class ReportError(Exception):
    """A directory a report cannot be made from; the message is one line meant for the user."""


# ---------------------------------------------------------------------------------------------
# Building blocks (compare.py builds its page from these too)


@dataclass
class Section:
    """One titled part of a page; `anchor` is its id for the page's table of contents."""

    anchor: str
    title: str
    body: str


STYLE = """
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0; color: #1d2330;
       background: #f4f5f8; }
main { max-width: 1180px; margin: 0 auto; padding: 20px 28px 60px; }
header h1 { margin: 8px 0 2px; font-size: 26px; }
header p { margin: 2px 0; color: #555d70; }
nav { margin: 12px 0 8px; font-size: 13px; }
nav a { margin-right: 14px; color: #2d5fa8; text-decoration: none; }
section { background: #fff; border-radius: 8px; padding: 14px 20px 18px; margin: 16px 0;
          box-shadow: 0 1px 3px rgba(0,0,0,.08); }
h2 { font-size: 19px; margin: 4px 0 10px; }
h3 { font-size: 15px; margin: 0 0 4px; }
img, video { max-width: 100%; height: auto; display: block; }
figure { margin: 8px 0 14px; }
figcaption { font-size: 13px; color: #555d70; margin-top: 4px; }
table { border-collapse: collapse; font-size: 13.5px; margin: 6px 0; }
th, td { text-align: left; padding: 3px 12px 3px 0; border-bottom: 1px solid #e4e6ec; vertical-align: top; }
th { color: #555d70; font-weight: 600; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
code { background: #eef0f5; padding: 1px 5px; border-radius: 3px; }
.headline { font-size: 16px; color: #1d2330; }
.finding { border-left: 5px solid #c6cad4; padding: 6px 12px; margin: 8px 0; background: #fafbfc; }
.finding.fired { border-color: #d1343a; background: #fff1f1; }
.badge { font-size: 12px; font-weight: 700; padding: 1px 7px; border-radius: 9px; margin-left: 6px;
         background: #e4e6ec; color: #555d70; }
.fired .badge, .badge.fired { background: #d1343a; color: #fff; }
.badge.ok { background: #dcefe0; color: #24663a; }
.advice { margin: 4px 0 0; }
.note { color: #555d70; font-size: 13.5px; }
.warn { color: #b3261e; font-weight: 600; }
.pair { display: grid; grid-template-columns: 1fr 1fr; gap: 18px; }
.callouts li { margin: 4px 0; }
details summary { cursor: pointer; color: #555d70; font-size: 13px; }
"""


def esc(value) -> str:
    return html.escape(str(value), quote=True)


def data_uri(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def image(path, caption: str = "", alt: str = "") -> str:
    """A PNG file embedded as a figure, or a note saying it is missing."""
    path = Path(path)
    if not path.is_file():
        return f'<p class="note">{esc(path.name)} is missing from this inspection.</p>'
    return png_figure(path.read_bytes(), caption, alt or path.stem)


def png_figure(png: bytes, caption: str = "", alt: str = "") -> str:
    caption_html = f"<figcaption>{caption}</figcaption>" if caption else ""
    return f'<figure><img alt="{esc(alt)}" src="{data_uri(png, "image/png")}">{caption_html}</figure>'


def matplotlib_png(fig) -> bytes:
    """A matplotlib figure as PNG bytes (the figure is closed)."""
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return buffer.getvalue()


def video(path, caption: str = "") -> str:
    """An MP4 file embedded in a <video> element with controls."""
    path = Path(path)
    if not path.is_file():
        return f'<p class="note">{esc(path.name)} is missing from this inspection.</p>'
    caption_html = f"<figcaption>{caption}</figcaption>" if caption else ""
    return (f'<figure><video controls loop preload="auto" width="800" height="450" '
            f'src="{data_uri(path.read_bytes(), "video/mp4")}"></video>{caption_html}</figure>')


def table(rows, header=None, numeric_columns=()) -> str:
    """Rows of cells (already HTML) as a table; `numeric_columns` are right-aligned."""
    parts = ["<table>"]
    if header:
        parts.append("<tr>" + "".join(f"<th>{h}</th>" for h in header) + "</tr>")
    for row in rows:
        cells = "".join(f'<td class="num">{c}</td>' if i in numeric_columns else f"<td>{c}</td>"
                        for i, c in enumerate(row))
        parts.append(f"<tr>{cells}</tr>")
    parts.append("</table>")
    return "".join(parts)


def page(title: str, subtitle_lines: list[str], sections: list[Section]) -> str:
    """A whole HTML document: header, a table of contents, the sections."""
    nav = "".join(f'<a href="#{s.anchor}">{esc(s.title)}</a>' for s in sections)
    subtitle = "".join(f"<p>{line}</p>" for line in subtitle_lines)
    body = "".join(f'<section id="{s.anchor}"><h2>{esc(s.title)}</h2>{s.body}</section>' for s in sections)
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{esc(title)}</title><style>{STYLE}</style></head>"
            f"<body><main><header><h1>{esc(title)}</h1>{subtitle}</header><nav>{nav}</nav>{body}</main>"
            "</body></html>\n")


def format_number(x, digits: int = 3) -> str:
    """Figures for people: NaN/None as n/a, integers without decimals, others to `digits` significant."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    if isinstance(x, bool):
        return str(x)
    if isinstance(x, int) or (isinstance(x, float) and x.is_integer() and abs(x) < 1e15):
        return f"{int(x):,}"
    if isinstance(x, float):
        return f"{x:.{digits}g}"
    return str(x)


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


def read_inspection(out_dir) -> tuple[dict, dict | None]:
    """(summary.json, diagnosis.json or None) of an inspect directory."""
    out_dir = Path(out_dir)
    summary_path = out_dir / "summary.json"
    if not summary_path.is_file():
        raise ReportError(f"{out_dir} holds no inspection (no summary.json): run `python cli.py inspect CHECKPOINT`")
    diagnosis_path = out_dir / "diagnosis.json"
    return _read_json(summary_path), _read_json(diagnosis_path) if diagnosis_path.is_file() else None


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ReportError(f"{path} is not valid JSON ({type(error).__name__}): run inspect again") from None


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


def finding_html(f) -> str:
    """One finding of `instruments.judge.diagnose`: title, verdict, value against threshold, advice."""
    details = ""
    if f.details:
        rows = [(esc(k), esc(json.dumps(v) if isinstance(v, (dict, list)) else format_number(v)))
                for k, v in f.details.items()]
        details = f"<details><summary>details</summary>{table(rows)}</details>"
    return (f'<div class="finding{" fired" if f.fired else ""}"><h3>{esc(f.title)}'
            f"{verdict_badge(f)}</h3>"
            f"<div>value <b>{format_number(f.value)}</b> &middot; fires when {esc(f.comparison)} "
            f"{format_number(f.threshold)}</div><p class=\"advice\">{esc(f.shown_advice)}</p>{details}</div>")


def diagnosis_section(diagnosis: dict | None) -> Section:
    if diagnosis is None:
        body = ('<p class="note">This inspection has no diagnosis.json (it was made before inspect diagnosed '
                "agents): run <code>python cli.py inspect</code> again.</p>")
        return Section("diagnosis", "Diagnosis", body)
    from instruments.judge.diagnose import Diagnosis

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
            out_dir / "rollout.mp4",
            f"One sampled episode (return {format_number(episode.get('return'))}, "
            f"{format_number(episode.get('length'))} steps, 10 steps a second): the frame it acted on with the "
            "saliency of its chosen action in blue, its action probabilities and its value estimate.")
            + image(out_dir / "contact_sheet.png", "Key frames of the same episode.")),
        Section("failures", "Where it loses the ball", image(
            out_dir / "failure_heatmap.png",
            f"Over {format_number(summary.get('heatmap', {}).get('episodes'))} episodes: where the ball and the "
            "paddle were in the frames before each lost ball, and when the losses happened.")),
        Section("saliency", "Where it looks", image(
            out_dir / "saliency_mean.png", "Gradient saliency averaged over the replayed episode.")),
        Section("traces", "What it expects", image(
            out_dir / "traces.png", "Value estimate and action probabilities step by step (trace.csv holds "
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
    ("charts/episodic_return", "episodic return"),
    ("charts/episodic_length", "episode length (steps)"),
    ("charts/SPS", "training steps per second"),
    ("losses/policy_loss", "policy loss"),
    ("losses/value_loss", "value loss"),
    ("losses/entropy", "policy entropy (nats)"),
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
    if "charts/episodic_return" in scalars:
        steps, values = scalars["charts/episodic_return"]
        last_step = int(steps[-1])
        tail = values[-max(1, len(values) // 10):]  # the last tenth of the updates
        rows.append(("episodic return, last tenth of training",
                     f"{tail.mean():.2f} (mean of {len(tail)} update{'s' * (len(tail) != 1)})"))
        rows.append(("best episodic return (an update's mean)", f"{values.max():.2f}"))
    per_update = next((scalars[t] for t in ("charts/SPS", "losses/entropy") if t in scalars), None)
    if per_update is not None:  # logged once an update, episodes finished or not
        last_step = max(last_step or 0, int(per_update[0][-1]))
        rows.append(("updates logged", format_number(len(per_update[0]))))
    if last_step is not None:
        rows.append(("environment steps", format_number(last_step)))
    if "charts/elapsed_seconds" in scalars:
        rows.append(("wall time since process start", f"{scalars['charts/elapsed_seconds'][1][-1]:.0f} s"))
    if "charts/SPS" in scalars:
        rows.append(("training steps per second (last)", format_number(round(scalars["charts/SPS"][1][-1]))))
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
    config = _read_json(run_dir / "config.json") if (run_dir / "config.json").is_file() else None

    inspect_dir = run_dir / "inspect"
    sections = []
    subtitle = [f"training run <code>{esc(run_dir)}</code>"]
    if (inspect_dir / "summary.json").is_file():
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
