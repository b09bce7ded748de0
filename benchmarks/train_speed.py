"""Time to score: wall clock from process start to a mean evaluation return, over several seeds.

For each seed this runs `python cli.py train` exactly as a user would (start-up included), which
saves `snapshot-<t>s.pt`, the last model that existed before t seconds. Training is stopped after
the last snapshot; then each snapshot is evaluated on 1024 episodes of sticky-action (p = 0.1)
Breakout capped at 10,000 steps, with the sampled policy. Run it on an otherwise idle machine:
the figures are wall-clock seconds.

On a GPU (`--device cuda`) each seed trains twice, on the captured CUDA graphs and on the eager
path (`--no-cuda-graphs`), one after the other, and the snapshots are evaluated on the GPU.

    python benchmarks/train_speed.py --seeds 1,2,3 --json /tmp/train_speed.json
    python benchmarks/train_speed.py --device cuda --snapshots 15,60 --targets 40,100 -- --preset gpu
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path


ROOT = Path(__file__).resolve().parent.parent

from bench_report import write_json
from breakout_ppo.checkpoint import load_agent, load_checkpoint
from breakout_ppo.evaluate import evaluate
from breakout_ppo.events import ELAPSED_SECONDS, EPISODIC_RETURN, read_scalars


PATHS = {"cpu": {"": []}, "cuda": {"graphs": ["--cuda-graphs"], "eager": ["--no-cuda-graphs"]}}


def train_with_snapshots(seed, snapshots, logdir, extra_args, device="cpu", path=""):
    run_name = f"seed{seed}" + (f"-{path}" if path else "")
    command = [sys.executable, "cli.py", "train", "--run-name", run_name, "--logdir", str(logdir),
               "--seed", str(seed), "--device", device, *PATHS[device][path],
               "--snapshot-at", ",".join(f"{t:g}" for t in snapshots), *extra_args]
    run_dir = Path(logdir) / run_name
    last = run_dir / f"snapshot-{max(snapshots):g}s.pt"
    if last.exists():
        return run_dir  # trained by an earlier invocation with this --logdir: evaluated, not rerun
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        while process.poll() is None and not last.exists():
            time.sleep(0.5)
        if process.poll() is None:
            process.send_signal(signal.SIGINT)  # saves a checkpoint and exits cleanly
        _, stderr = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    if not last.exists():
        raise SystemExit(f"training for seed {seed} ended before {max(snapshots):g}s:\n{stderr[-2000:]}")
    return run_dir


def evaluate_snapshots(run_dir, seed, snapshots, episodes, label="", device="cpu"):
    """One row per snapshot: the sampled policy's return over `episodes` episodes of sticky-action
    Breakout capped at 10,000 steps, with the snapshot's time and step count."""
    rows = []
    for t in snapshots:
        path = Path(run_dir) / f"snapshot-{t:g}s.pt"
        if not path.exists():
            continue
        payload = load_checkpoint(path)
        model, _ = load_agent(path, device=device)
        result = evaluate(model, episodes=episodes, device=device, sticky_action_prob=0.1, max_episode_steps=10_000,
                          seed=10_000 + seed)
        row = {"seed": seed, "path": label.strip(": ") or "eager", "deadline_s": t, "snapshot_s": payload["elapsed_seconds"],
               "steps": payload["global_step"], **result.summary()}
        row["sps"] = row["steps"] / row["snapshot_s"]
        rows.append(row)
        print(f"{label}seed {seed}  t<={t:5.0f}s  (model at {row['snapshot_s']:5.1f}s, {row['steps']:>10,} steps, "
              f"{row['sps']:>7,.0f} SPS)  return {row['mean']:6.2f} ± {row['ci95']:.2f}", flush=True)
    return rows


def time_to_targets(rows, targets):
    """{target: the first deadline whose snapshot's mean reached it, or None} for one run's rows."""
    reach = {}
    for x in targets:
        hit = [r["deadline_s"] for r in rows if r["mean"] >= x]
        reach[x] = min(hit) if hit else None
    return reach


def training_curve(run_dir):
    """(elapsed seconds, training episodic return) from a run's TensorBoard events."""
    scalars = read_scalars(run_dir)
    elapsed = dict(zip(*scalars[ELAPSED_SECONDS]))
    points = [(elapsed[step], value) for step, value in zip(*scalars[EPISODIC_RETURN]) if step in elapsed]
    return [float(p[0]) for p in points], [float(p[1]) for p in points]


def plot_curves(logdir, seeds, rows, targets, path, suffix=""):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=120)
    for i, seed in enumerate(seeds):
        colour = f"C{i}"
        x, y = training_curve(Path(logdir) / f"seed{seed}{suffix}")
        ax.plot(x, y, color=colour, alpha=0.35, lw=1, label=f"seed {seed}: training return")
        mine = [r for r in rows if r["seed"] == seed]
        ax.errorbar([r["snapshot_s"] for r in mine], [r["mean"] for r in mine], yerr=[r["ci95"] for r in mine],
                    color=colour, marker="o", ms=4, lw=1.5, capsize=3,
                    label=f"seed {seed}: evaluation (1024 episodes, 95% CI)")
    for target in targets:
        ax.axhline(target, color="grey", ls=":", lw=1)
    ax.set_xlabel("wall-clock seconds since process start (2-core CPU)")
    ax.set_ylabel("mean episodic return")
    ax.set_title("PPO on MinAtar Breakout (sticky actions p=0.1), default preset")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", default="1,2,3")
    parser.add_argument("--snapshots", default="30,60,90,120,150", help="seconds after process start")
    parser.add_argument("--targets", default="28,40", help="returns whose time-to-reach is reported")
    parser.add_argument("--episodes", type=int, default=1024)
    parser.add_argument("--logdir", default=None,
                        help="where the runs go (default: a temporary directory); runs already there are evaluated, "
                             "not rerun")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu",
                        help="cuda: each seed on the CUDA graphs and on the eager path")
    parser.add_argument("--eager-seeds", default=None,
                        help="cuda: train the eager path on these seeds only (default: every seed)")
    parser.add_argument("--json", dest="json_path", default=None)
    parser.add_argument("--plot", default=None, help="write learning curves (PNG) here")
    parser.add_argument("train_args", nargs="*", help="extra flags for `cli.py train`, after --")
    args = parser.parse_args()

    seeds = [int(s) for s in args.seeds.split(",")]
    snapshots = sorted(float(t) for t in args.snapshots.split(","))
    targets = [float(t) for t in args.targets.split(",")]
    logdir = Path(args.logdir or tempfile.mkdtemp(prefix="train_speed-"))

    eager_seeds = seeds if args.eager_seeds is None else [int(s) for s in args.eager_seeds.split(",")]
    rows = []
    for seed in seeds:
        for path in PATHS[args.device]:
            if path == "eager" and seed not in eager_seeds:
                continue
            run_dir = train_with_snapshots(seed, snapshots, logdir, args.train_args, args.device, path)
            rows += evaluate_snapshots(run_dir, seed, snapshots, args.episodes, f"{path}: " if path else "",
                                       args.device)

    print()
    header = f"{'seed':>4} {'path':>6} " + " ".join(f"{f't<={t:g}s':>12}" for t in snapshots) + "  " + \
        " ".join(f"{f'time to {x:g}':>12}" for x in targets) + f" {'SPS at last':>12}"
    print(header)
    summary = {}
    for seed in seeds:
        for path in PATHS[args.device]:
            mine = [r for r in rows if r["seed"] == seed and r["path"] == (path or "eager")]
            if not mine:
                continue
            cells = " ".join(f"{r['mean']:12.2f}" for r in mine)
            reach = time_to_targets(mine, targets)
            summary[f"{seed}{'-' + path if path else ''}"] = reach
            print(f"{seed:>4} {path or 'eager':>6} {cells}  " + " ".join(
                f"{(f'<={v:g}s' if v else 'not reached'):>12}" for v in reach.values()) +
                f" {mine[-1]['sps'] if mine else float('nan'):>12,.0f}")

    if args.plot:
        plot_curves(logdir, seeds, [r for r in rows if r["path"] != "eager" or args.device == "cpu"], targets,
                    args.plot, suffix="-graphs" if args.device == "cuda" else "")

    if args.json_path:
        write_json(args.json_path, "train_speed", args, episodes=args.episodes, rows=rows,
                   time_to_target={str(s): {f"{k:g}": v for k, v in r.items()} for s, r in summary.items()})


if __name__ == "__main__":
    main()
