"""The report of a sweep: final return per grid point with its confidence over seeds, learning and
entropy curves, and a Markdown summary that names the best point and says how sure that is.

Everything is read from the study's storage (each COMPLETE trial holds its evaluation and its
curves), so a report can be written on any machine that reaches the storage, for a sweep that is
still running or was interrupted: it covers the trials complete so far and says which are missing.

Statistics are over seeds: a run's score is the mean return of its final evaluation, and a grid
point's confidence interval is Student t over those per-seed scores. (The episodes within one
evaluation vary far less than training does from seed to seed; their interval would flatter.)
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from breakout_ppo.events import ENTROPY as ENTROPY_TAG, EPISODIC_RETURN as RETURN_TAG
from breakout_ppo.stats import mean_ci, welch
from breakout_ppo.sweep import SweepPlan, point_label, prune_episodes

SIGNIFICANCE = 0.05


# --- reading the trials back -------------------------------------------------------------------

@dataclass
class PointResult:
    point: tuple
    seeds: list = field(default_factory=list)
    """Seeds whose run is complete."""
    returns: list = field(default_factory=list)
    """Final evaluation mean return of each complete seed."""
    curves: dict = field(default_factory=dict)
    """tag -> [(steps, values) of each complete seed]."""
    failed: list = field(default_factory=list)
    """Seeds whose trial failed and will not be tried again, with why: [(seed, why)]."""

    @property
    def label(self) -> str:
        return point_label(self.point)

    @property
    def mean_ci(self) -> tuple[float, float]:
        return mean_ci(self.returns)


def collect_results(study) -> tuple[SweepPlan, list[PointResult], list[str]]:
    """The plan, one PointResult per grid point (in grid order), and the names of incomplete runs."""
    from optuna.trial import TrialState

    plan = SweepPlan.from_dict(study.user_attrs["sweep"])
    results = {point: PointResult(point) for point in plan.points()}
    trials = {}
    for trial in study.get_trials(deepcopy=False):
        trials.setdefault(trial.user_attrs.get("run"), []).append(trial)
    missing = []
    for run in plan.runs():
        result = results[run.point]
        done = [t for t in trials.get(run.name, []) if t.state == TrialState.COMPLETE]
        if not done:  # its curves too are left out: a curve cut short would skew the mean
            missing.append(run.name)
            tried = sorted(trials.get(run.name, []), key=lambda t: t.number)
            if tried and all(t.state == TrialState.FAIL for t in tried):
                result.failed.append((run.config.seed, tried[-1].user_attrs.get("stopped", "stale heartbeat")))
            continue
        trial = min(done, key=lambda t: t.number)
        result.seeds.append(run.config.seed)
        result.returns.append(trial.value)
        for tag, (steps, values) in trial.user_attrs.get("curves", {}).items():
            if steps:
                result.curves.setdefault(tag, []).append((np.array(steps), np.array(values)))
    return plan, list(results.values()), missing


# --- figures -----------------------------------------------------------------------------------

def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _colours(n: int):
    from matplotlib import colormaps

    return [colormaps["viridis"](x) for x in np.linspace(0.0, 0.9, max(n, 1))]


def plot_final_returns(results: list[PointResult], title: str, path: Path) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=120)
    x = np.arange(len(results))
    for i, result in enumerate(results):
        ax.scatter(np.full(len(result.returns), i), result.returns, color="grey", s=14, zorder=2,
                   label="one seed" if i == 0 else None)
        mean, ci = result.mean_ci
        if result.returns:
            ax.errorbar(i, mean, yerr=0 if math.isnan(ci) else ci, color="C3", marker="o", ms=6, capsize=5,
                        lw=2, zorder=3, label="mean ± 95% CI over seeds" if i == 0 else None)
    fields = {name for r in results for name, _ in r.point}
    if len(fields) == 1:  # one swept field: its values on the axis, its name below
        ax.set_xticks(x, [str(r.point[0][1]) for r in results])
        ax.set_xlabel(fields.pop())
    else:
        ax.set_xticks(x, [r.label for r in results], rotation=20 if len(results) > 5 else 0, fontsize=8)
    ax.set_ylabel("final evaluation return")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def mean_curve(curves: list) -> tuple[np.ndarray, np.ndarray]:
    """Mean over seeds at the steps every seed logged."""
    common = set(curves[0][0].tolist())
    for steps, _ in curves[1:]:
        common &= set(steps.tolist())
    steps = np.array(sorted(common))
    values = [np.array([dict(zip(s.tolist(), v))[step] for step in steps]) for s, v in curves]
    return steps, np.mean(values, axis=0)


def moving_average(values: np.ndarray, window: int) -> np.ndarray:
    if window <= 1 or len(values) < window:
        return values
    kernel = np.ones(window) / window
    # Shorter windows at the ends instead of zero padding.
    return np.convolve(values, kernel, mode="same") / np.convolve(np.ones(len(values)), kernel, mode="same")


def plot_curves(results: list[PointResult], tag: str, ylabel: str, title: str, subtitle: str, path: Path) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=120)
    window = 1
    for result, colour in zip(results, _colours(len(results))):
        curves = result.curves.get(tag)
        if not curves:
            continue
        steps, values = mean_curve(curves)
        window = max(1, len(steps) // 40)
        seeds = f"{len(curves)} seed" + ("s" if len(curves) > 1 else "")
        ax.plot(steps, moving_average(values, window), color=colour, lw=1.5, label=f"{result.label} ({seeds})")
    ax.set_xlabel("environment steps")
    ax.set_ylabel(ylabel)
    smoothing = f", moving average over {window} updates" if window > 1 else ""
    ax.set_title(f"{title}, mean over seeds{smoothing}\n{subtitle}", fontsize=10)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


# --- the Markdown ------------------------------------------------------------------------------

def _format(mean: float, ci: float) -> str:
    if math.isnan(mean):
        return "-"
    return f"{mean:.2f}" if math.isnan(ci) else f"{mean:.2f} ± {ci:.2f}"


def ranking(results: list[PointResult]) -> list[PointResult]:
    """Grid points with at least one complete run, best mean first."""
    return sorted((r for r in results if r.returns), key=lambda r: r.mean_ci[0], reverse=True)


def verdict(results: list[PointResult]) -> list[str]:
    """Sentences naming the best point and how sure that is, in plain words."""
    ranked = ranking(results)
    if not ranked:
        return ["No run is complete yet."]
    best = ranked[0]
    mean, ci = best.mean_ci
    spread = "one seed" if math.isnan(ci) else f"mean ± 95% CI over {len(best.returns)} seeds"
    lines = [f"**Best: {best.label}**, final return {_format(mean, ci)} ({spread})."]
    if len(ranked) == 1:
        return lines
    runner_up = ranked[1]
    test = welch(best.returns, runner_up.returns)
    lines.append(f"Runner-up: {runner_up.label}, {_format(*runner_up.mean_ci)}; the best leads by "
                 f"{test.difference:.2f}.")
    if math.isnan(test.p):
        lines.append("Whether that lead is real cannot be tested: it needs at least 2 seeds per point, "
                     "with some spread.")
        return lines
    level = f"{SIGNIFICANCE:.0%} level"
    judgement = (f"is significant at the {level}." if test.p < SIGNIFICANCE else
                 f"is **not** significant at the {level}: with {len(best.returns)} seeds these two "
                 "cannot be told apart.")
    lines.append(f"Welch's t test over seeds: t = {test.t:.2f}, df = {test.df:.1f}, p = {test.p:.3f}; "
                 f"the lead {judgement}")
    p_values = {r.label: welch(best.returns, r.returns).p for r in ranked[1:]}
    groups = [
        (f"Not distinguishable from the best at the {level}", [k for k, p in p_values.items() if p >= SIGNIFICANCE]),
        (f"Worse than the best at the {level} (one test per point, no correction for multiple comparisons)",
         [k for k, p in p_values.items() if p < SIGNIFICANCE]),
        ("Not testable against the best (fewer than 2 seeds, or no spread)",
         [k for k, p in p_values.items() if math.isnan(p)]),
    ]
    lines += [f"{heading}: {', '.join(labels)}." for heading, labels in groups if labels]
    return lines


def final_value(curves: list | None) -> float:
    """Mean over seeds of a curve's last logged value."""
    return float(np.mean([values[-1] for _, values in curves])) if curves else math.nan


@dataclass
class SweepReport:
    markdown: Path
    figures: dict
    best: str | None
    headline: str
    missing: list
    """Runs with no complete trial."""
    failed: list
    """`run: why` for runs whose trials failed and will not be tried again."""
    runs: int
    """Runs the sweep trains in all."""


def write_report(study, out_dir) -> SweepReport:
    """Write report.md and its PNGs (sweep_final_return, sweep_learning_curves, sweep_entropy, and
    for a search sweep_search) of the sweep `study` (an Optuna study made by `cli.py sweep`) into
    `out_dir`."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    plan = SweepPlan.from_dict(study.user_attrs["sweep"])
    name = study.study_name
    budget = plan.config_for({}, plan.seeds[0]).total_steps
    subtitle = f"{name}: {budget:,} steps per run"
    scoring = (f"Final return: the final model's mean return over {plan.eval_episodes} evaluation episodes (sampled "
               "policy, sticky actions 0.1, 10,000-step cap), one score per seed; ± is the 95% Student-t "
               "confidence interval over seeds. Final training return and entropy: the last update's, mean over seeds.")
    figures = {}
    if plan.kind == "grid":
        plan, results, missing = collect_results(study)
        seeds, runs = list(plan.seeds), len(plan.runs())
        intro = [f"# Sweep `{name}`", "", "    " + plan.command_line(name), "",
                 f"Preset `{plan.preset}`, {budget:,} environment steps per run, seeds {', '.join(map(str, seeds))}. "
                 + scoring, ""]
    else:
        search = collect_search(study, plan)
        results, missing, runs, seeds = search.confirmed, search.missing, search.runs, list(plan.seeds[1:])
        figures["search"] = out_dir / "sweep_search.png"
        plot_search(search, plan, f"Search trials on seed {plan.seeds[0]}\n{subtitle}", figures["search"])
        intro = [f"# Search `{name}`", "", "    " + plan.command_line(name), "",
                 f"Preset `{plan.preset}`, {budget:,} environment steps per run. " + search_summary(search, plan),
                 "", *search_table(search, plan), ""]
        if plan.confirm:
            intro += [f"## The best {plan.confirm} again on fresh seeds {', '.join(map(str, seeds))}", "",
                      "Their intervals come from the fresh seeds alone: the search seed's score is biased upwards "
                      "by the selection. " + scoring, ""]

    unconfirmed = plan.kind == "search" and not plan.confirm  # nothing beyond the search trials to show
    if not unconfirmed:
        figures.update({
            "final_return": out_dir / "sweep_final_return.png",
            "learning_curves": out_dir / "sweep_learning_curves.png",
            "entropy": out_dir / "sweep_entropy.png",
        })
        plot_final_returns(results, f"Final evaluation return ({plan.eval_episodes} episodes per run)\n{subtitle}",
                           figures["final_return"])
        plot_curves(results, RETURN_TAG, "training episodic return", "Learning curves", subtitle,
                    figures["learning_curves"])
        plot_curves(results, ENTROPY_TAG, "policy entropy (nats)", "Entropy over training", subtitle,
                    figures["entropy"])

    header = ["grid point" if plan.kind == "grid" else "search point", "final return (mean ± 95% CI)",
              *[f"seed {s}" for s in seeds], "final training return", "final entropy"]
    rows = []
    for result in results:
        per_seed = dict(zip(result.seeds, result.returns))
        rows.append([result.label, _format(*result.mean_ci),
                     *[f"{per_seed[s]:.2f}" if s in per_seed else "-" for s in seeds],
                     _format(final_value(result.curves.get(RETURN_TAG)), math.nan),
                     _format(final_value(result.curves.get(ENTROPY_TAG)), math.nan)])
    table = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    table += ["| " + " | ".join(row) + " |" for row in rows]

    lines = [unconfirmed_verdict(search)] if unconfirmed else verdict(results)
    best = ranking(results)[0].label if ranking(results) else None
    text = intro
    if missing:
        text += [f"**Incomplete:** {len(missing)} of {runs} runs have no final evaluation yet "
                 f"({', '.join(missing)}).", ""]
    failed = [f"{r.label},seed={seed}: {why}" for r in results for seed, why in r.failed]
    if failed:
        text += [f"**Failed** (not tried again): {'; '.join(failed)}.", ""]
    text += ([" ".join(lines), ""] if unconfirmed else [*table, "", " ".join(lines), ""])
    text += [f"![{key.replace('_', ' ')}]({path.name})" for key, path in figures.items()]
    markdown = out_dir / "report.md"
    markdown.write_text("\n".join(text) + "\n")
    return SweepReport(markdown, figures, best, lines[0].replace("**", ""), missing, failed, runs)


# --- searches ----------------------------------------------------------------------------------

@dataclass
class SearchResults:
    trials: list
    """The search's own trials (one per proposal: the last attempt of each run), by number."""
    confirmed: list
    """PointResult of each confirmed point, best search score first."""
    missing: list
    runs: int
    """Runs the search and its confirmation train in all."""


def search_point(trial, plan: SweepPlan) -> tuple:
    """(("trial", N), (field, value to 3 significant digits), ...): the label of a searched point."""
    number = trial.user_attrs["run"].split(",")[0].split("=")[1]
    return (("trial", number), *((field, f"{trial.params[field]:.3g}") for field, *_ in plan.search))


def collect_search(study, plan: SweepPlan) -> SearchResults:
    from optuna.trial import TrialState

    by_run = {}
    for trial in study.get_trials(deepcopy=False):
        if "run" in trial.user_attrs and not trial.user_attrs.get("stopped", "").startswith("duplicate"):
            by_run.setdefault(trial.user_attrs["run"], []).append(trial)
    final = {run: max(trials, key=lambda t: (t.state == TrialState.COMPLETE, t.number))
             for run, trials in by_run.items()}
    search = sorted((t for t in final.values() if t.user_attrs.get("phase") == "search"), key=lambda t: t.number)
    confirm = [t for t in final.values() if t.user_attrs.get("phase") == "confirm"]
    points = {}
    for trial in sorted(search, key=lambda t: -(t.value or -math.inf) if t.state == TrialState.COMPLETE else math.inf):
        if any(c.user_attrs["confirms"] == trial.number for c in confirm):
            points[trial.number] = PointResult(search_point(trial, plan))
    missing = []
    for trial in sorted(confirm, key=lambda t: t.user_attrs["order"]):
        result = points.setdefault(trial.user_attrs["confirms"], PointResult(search_point(trial, plan)))
        if trial.state != TrialState.COMPLETE:
            missing.append(trial.user_attrs["run"])
            if trial.state == TrialState.FAIL:
                result.failed.append((trial.user_attrs["seed"], trial.user_attrs.get("stopped", "stale heartbeat")))
            continue
        result.seeds.append(trial.user_attrs["seed"])
        result.returns.append(trial.value)
        for tag, (steps, values) in trial.user_attrs.get("curves", {}).items():
            if steps:
                result.curves.setdefault(tag, []).append((np.array(steps), np.array(values)))
    missing += [t.user_attrs["run"] for t in search if not t.state.is_finished()]
    return SearchResults(search, list(points.values()), missing, plan.trials + plan.confirm * (len(plan.seeds) - 1))


def unconfirmed_verdict(search: SearchResults) -> str:
    """The headline of a search run with `--confirm 0`: its best trial, on its one seed."""
    from optuna.trial import TrialState

    complete = [t for t in search.trials if t.state == TrialState.COMPLETE]
    if not complete:
        return "No search trial is complete yet."
    best = max(complete, key=lambda t: t.value)
    values = ", ".join(f"{field} {value:.3g}" for field, value in best.params.items())
    return (f"**Best search trial: {best.user_attrs['run']}** ({values}), {best.value:.2f} on its one seed; "
            f"not trained again on fresh seeds (`--confirm 0`), so how sure that is is not measured.")


def search_summary(search: SearchResults, plan: SweepPlan) -> str:
    from optuna.trial import TrialState

    counts = {state: sum(t.state == state for t in search.trials)
              for state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)}
    fields = ", ".join(f"{field} ({dist} {low:g} to {high:g})" for field, dist, low, high in plan.search)
    text = (f"TPE searched {fields} over {plan.trials} trials, each trained on seed {plan.seeds[0]} alone "
            f"({counts[TrialState.COMPLETE]} complete, {counts[TrialState.PRUNED]} pruned, "
            f"{counts[TrialState.FAIL]} failed).")
    if plan.prune:
        budget = plan.config_for({}, plan.seeds[0]).total_steps
        trained = sum(t.user_attrs.get("pruned_at_step", budget) for t in search.trials
                      if t.state in (TrialState.COMPLETE, TrialState.PRUNED))
        finished = counts[TrialState.COMPLETE] + counts[TrialState.PRUNED]
        if finished:
            text += (f" Pruning (median rule at 1/4, 1/2 and 3/4 of the steps) trained {trained:,} of "
                     f"{finished * budget:,} steps: {1 - trained / (finished * budget):.0%} saved.")
    return text


def search_table(search: SearchResults, plan: SweepPlan, rows: int = 10) -> list[str]:
    """The best search trials on their one seed."""
    from optuna.trial import TrialState

    complete = sorted((t for t in search.trials if t.state == TrialState.COMPLETE), key=lambda t: -t.value)
    fields = [field for field, *_ in plan.search]
    lines = [f"Best {min(rows, len(complete))} of {len(complete)} complete search trials (seed {plan.seeds[0]}):", "",
             "| trial | " + " | ".join(fields) + f" | final return (seed {plan.seeds[0]}) |",
             "|" + "---|" * (len(fields) + 2)]
    for trial in complete[:rows]:
        point = dict(search_point(trial, plan))
        lines.append(f"| {point['trial']} | " + " | ".join(point[f] for f in fields) + f" | {trial.value:.2f} |")
    return lines


def log_ticks(low: float, high: float, most: int = 5) -> list[float]:
    """A few round values (1, 2 or 5 times a power of ten) between `low` and `high` for a log axis:
    the powers of ten when at least three fall in the range, else 1-2-5 steps; thinned to `most`."""
    decades = range(math.floor(math.log10(low)) - 1, math.ceil(math.log10(high)) + 1)
    powers = [10.0 ** k for k in decades if low <= 10.0 ** k <= high]
    round_values = sorted(m * 10.0 ** k for k in decades for m in (1, 2, 5) if low <= m * 10.0 ** k <= high)
    ticks = powers if len(powers) >= 3 else round_values or [low, high]
    return ticks[::math.ceil(len(ticks) / most)]


def plot_search(search: SearchResults, plan: SweepPlan, title: str, path: Path) -> None:
    plt = _pyplot()
    fig = search_figure(search, plan, title)
    fig.savefig(path)
    plt.close(fig)


def search_figure(search: SearchResults, plan: SweepPlan, title: str):
    """One panel per searched field: each trial's value of it against its return. A complete
    trial's is its final evaluation; a pruned trial has none, so it is drawn apart, at its last
    intermediate evaluation (a quarter of the episodes), in a marker of its own for each step
    trials were pruned at."""
    from matplotlib.ticker import NullFormatter
    from optuna.trial import TrialState

    plt = _pyplot()
    complete = [t for t in search.trials if t.state == TrialState.COMPLETE]
    pruned = {}
    for trial in search.trials:
        if trial.state == TrialState.PRUNED and trial.intermediate_values:
            pruned.setdefault(max(trial.intermediate_values), []).append(trial)
    series = [(complete, [t.value for t in complete], dict(marker="o", color="C0"),
               f"complete: final return ({plan.eval_episodes} episodes)")]
    styles = zip(itertools.cycle(("C1", "C3", "C4", "C5", "C6")), itertools.cycle(("v", "<", "^", ">", "s", "D")))
    for (step, trials), (colour, marker) in zip(sorted(pruned.items()), styles):
        series.append((trials, [t.intermediate_values[step] for t in trials],
                       dict(marker=marker, color=colour, facecolors="none"),
                       f"pruned at step {step:,}: its last intermediate return "
                       f"({prune_episodes(plan.eval_episodes)} episodes)"))
    fig, axes = plt.subplots(1, len(plan.search), figsize=(4 * len(plan.search), 3.9), dpi=120, squeeze=False)
    for ax, (field, dist, low, high) in zip(axes[0], plan.search):
        for trials, values, style, label in series:
            ax.scatter([t.params[field] for t in trials if field in t.params],
                       [v for t, v in zip(trials, values) if field in t.params], s=22, label=label, **style)
        if dist in ("log", "logint"):
            # A few round values, labelled plainly: matplotlib labels the minor ticks too when the
            # range spans few decades, and those labels overlap.
            ax.set_xscale("log")
            ax.set_xlim(low / (high / low) ** 0.04, high * (high / low) ** 0.04)
            ticks = log_ticks(low, high)
            ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
            ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel(f"{field} ({dist} {low:g} to {high:g})", fontsize=9)
        ax.tick_params(labelsize=8)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("evaluation return")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.suptitle(title, fontsize=10)
    fig.legend(handles, labels, loc="lower center", ncol=min(2, len(labels)), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.06 * math.ceil(len(labels) / 2) + 0.02, 1, 1))
    return fig
