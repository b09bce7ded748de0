"""The figures of an inspection and of a comparison, drawn with matplotlib into PNG files.

    plot_traces(trace, "traces.png")              # value and action probabilities over one episode
    plot_mean_saliency(action, value, n, "saliency_mean.png")
    save_difference_figure(comparison, "compare.png")

The failure heatmap draws its own picture (`measure/heatmap.py`'s `save_heatmap_png`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from breakout_ppo.env import ACTION_NAMES, GRID
from instruments.judge.compare import Comparison, return_cell
from instruments.measure.traces import Trace


def plot_traces(trace: Trace, path: Path) -> Path:
    """Value estimate and action probabilities over the episode, rewards marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = np.arange(len(trace))
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(10, 5), dpi=110, sharex=True,
                                      gridspec_kw={"height_ratios": [1.2, 1]})
    top.plot(steps, trace.values, color="#3b8bd9", lw=1.2, label="value estimate V(s)")
    rewarded = np.flatnonzero(trace.rewards > 0)
    top.scatter(rewarded, trace.values[rewarded], color="#2ca02c", s=12, zorder=3, label="brick broken (+1)")
    top.set_ylabel("V(s)")
    top.grid(alpha=0.3)
    top.legend(loc="upper right", fontsize=8)
    top.set_title(f"One episode: return {trace.rewards.sum():g} in {len(trace)} steps")
    colours = ["#9e9e9e", "#e4572e", "#17becf"]
    bottom.stackplot(steps, trace.probs.T, labels=[f"P({name})" for name in ACTION_NAMES], colors=colours,
                     alpha=0.85)
    bottom.set_ylim(0, 1)
    bottom.set_ylabel("action probability")
    bottom.set_xlabel("step")
    bottom.legend(loc="upper right", fontsize=8, ncol=3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_mean_saliency(action_map: np.ndarray, value_map: np.ndarray, frames: int, path: Path) -> Path:
    """Mean |gradient| per cell, of the chosen action's logit and of the value, side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 4.2), dpi=110)
    for ax, data, title in ((axes[0], action_map, "chosen action's logit"), (axes[1], value_map, "value V(s)")):
        image = ax.imshow(data, cmap="Blues", vmin=0)
        ax.set_title(f"Mean saliency of the {title}")
        ax.set_xticks(range(10))
        ax.set_yticks(range(10))
        ax.set_yticklabels([f"{r}" + (" brick" if 1 <= r <= 3 else " paddle" if r == 9 else "") for r in range(10)],
                           fontsize=7)
        ax.set_xlabel("column")
        fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="mean max|d output / d cell|")
    fig.suptitle(f"Where the agent looks: gradient saliency averaged over {frames} frames", fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


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
                    label=f"{side.label}: {return_cell(e)}")
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
