"""Time to score side by side with the naive baseline, on one machine, in one run.

The time gates of the training issue (a mean evaluation return of 28 within 90 s and 40 within
150 s) were set at half the times a naive baseline took on the machine of that day. Machines of
this kind differ from day to day by up to 4x in speed (95,000-118,000 training steps/s in
November, 25,000 on 2026-12-02), so a time in seconds means little without the baseline's time
beside it. This runs both, seed by seed, each seed's baseline then its default, so that both see
the same hour of the machine, and reports each one's time to each target and their ratio.

The baseline is the naive one the issue describes: purejaxrl's MinAtar settings (64 envs x 128
steps, 8 minibatches, 4 epochs, learning rate 5e-3 annealed over 20M steps, entropy 0.01, clipped
value loss, MinAtar's own starts), run by this project's code and environment. Our batched
environment is faster than a straightforward one, so this baseline is, if anything, faster than the
issue's. Both are timed as `train_speed.py` times the default: `python cli.py train` from process
start, snapshots every `--every` seconds, each evaluated on 1024 episodes of sticky-action (p = 0.1)
Breakout capped at 10,000 steps with the sampled policy. Run it on an otherwise idle machine.

    python benchmarks/vs_baseline.py --seeds 1,2,3 --json vs_baseline.json --plot vs_baseline.png
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from bench_report import write_json
from train_speed import evaluate_snapshots, time_to_targets, train_with_snapshots, training_curve

BASELINE_FLAGS = ["--num-envs", "64", "--num-steps", "128", "--num-minibatches", "8", "--update-epochs", "4",
                  "--learning-rate", "5e-3", "--total-steps", "20000000", "--ent-coef", "0.01",
                  "--clip-value", "--partial-wall-starts", "0"]
CONFIGS = {"baseline": BASELINE_FLAGS, "default": []}


def grid(every: float, until: float) -> list[float]:
    return [every * i for i in range(1, int(until // every) + 1)]


def ratio(baseline_s, default_s, until):
    """(the baseline's time over the default's, how to read it): "=" when both reached the target,
    ">" (a lower bound) when only the default did, "<" when only the baseline did."""
    if baseline_s and default_s:
        return baseline_s / default_s, "="
    if default_s:
        return until["baseline"] / default_s, ">"
    if baseline_s:
        return baseline_s / until["default"], "<"
    return None, "-"


def plot(logdir, seeds, rows, targets, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4.8), dpi=120)
    for i, seed in enumerate(seeds):
        for name, style in (("default", "-"), ("baseline", "--")):
            x, y = training_curve(Path(logdir) / name / f"seed{seed}")
            ax.plot(x, y, color=f"C{i}", ls=style, alpha=0.25, lw=1)
            mine = [r for r in rows if r["seed"] == seed and r["config"] == name]
            ax.plot([r["snapshot_s"] for r in mine], [r["mean"] for r in mine], color=f"C{i}", ls=style,
                    marker="o" if name == "default" else "s", ms=3.5, lw=1.6, label=f"{name}, seed {seed}")
    for target in targets:
        ax.axhline(target, color="grey", ls=":", lw=1)
    ax.set_xlabel("wall-clock seconds since process start (same machine, same hour)")
    ax.set_ylabel("mean episodic return")
    ax.set_title("Default preset (solid) against the naive baseline (dashed): evaluation of snapshots\n"
                 "(points, 1024 episodes each) and training return (faint)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", ncol=2)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", default="1,2,3")
    parser.add_argument("--every", type=float, default=30, help="seconds between snapshots")
    parser.add_argument("--default-until", type=float, default=300, help="seconds the default trains")
    parser.add_argument("--baseline-until", type=float, default=900, help="seconds the baseline trains")
    parser.add_argument("--targets", default="28,40", help="returns whose time-to-reach is compared")
    parser.add_argument("--episodes", type=int, default=1024)
    parser.add_argument("--logdir", default=None,
                        help="where the runs go (default: a temporary directory); runs already there are evaluated, "
                             "not rerun")
    parser.add_argument("--json", dest="json_path", default=None)
    parser.add_argument("--plot", default=None, help="write the learning curves (PNG) here")
    args = parser.parse_args()
    for name in ("every", "default_until", "baseline_until"):
        if getattr(args, name) <= 0:
            parser.error(f"--{name.replace('_', '-')} must be positive")

    seeds = [int(s) for s in args.seeds.split(",")]
    targets = [float(t) for t in args.targets.split(",")]
    until = {"baseline": args.baseline_until, "default": args.default_until}
    logdir = Path(args.logdir or tempfile.mkdtemp(prefix="vs_baseline-"))

    rows, reach = [], {}
    for seed in seeds:
        for name, flags in CONFIGS.items():
            snapshots = grid(args.every, until[name])
            run_dir = train_with_snapshots(seed, snapshots, logdir / name, flags)
            mine = evaluate_snapshots(run_dir, seed, snapshots, args.episodes, label=f"{name:>8}  ")
            rows += [{"config": name, **r} for r in mine]
            reach[name, seed] = time_to_targets(mine, targets)

    print()
    print(f"{'seed':>4} " + " ".join(f"{f'{n} to {x:g}':>16}" for x in targets for n in CONFIGS) +
          " " + " ".join(f"{f'ratio at {x:g}':>12}" for x in targets))
    ratios = {}
    for seed in seeds:
        cells = []
        for x in targets:
            for name in CONFIGS:
                t = reach[name, seed][x]
                cells.append(f"{(f'<={t:g}s' if t else f'>{until[name]:g}s'):>16}")
        seed_ratios = {x: ratio(reach["baseline", seed][x], reach["default", seed][x], until) for x in targets}
        ratios[seed] = seed_ratios
        shown = [f"{'-' if r is None else (f'{r:.2f}x' if how == '=' else f'{how}{r:.2f}x'):>12}"
                 for r, how in seed_ratios.values()]
        print(f"{seed:>4} " + " ".join(cells) + " " + " ".join(shown))
    print("\n(times are the first snapshot deadline whose evaluation reached the target; "
          f"snapshots every {args.every:g} s)")

    if args.plot:
        plot(logdir, seeds, rows, targets, args.plot)
    if args.json_path:
        write_json(args.json_path, "vs_baseline", args, baseline_flags=BASELINE_FLAGS, rows=rows,
                   time_to_target={f"{name}/{seed}": {f"{k:g}": v for k, v in r.items()}
                                   for (name, seed), r in reach.items()},
                   ratio={str(seed): {f"{k:g}": {"ratio": v, "bound": how} for k, (v, how) in r.items()}
                          for seed, r in ratios.items()})


if __name__ == "__main__":
    main()
