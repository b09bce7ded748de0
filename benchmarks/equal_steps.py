"""Learning at equal steps: training return at given step counts, for config variants x seeds.

`train_speed.py` measures the wall clock, which mixes learning with the machine's speed that
hour. This compares configs by what they learn per environment step: it runs

    python cli.py train --device cpu --seed S --stop-at-step STOP [variant flags]

for every variant and seed, a few processes at a time with one torch thread each (timing does not
change the result on CPU), then reads each run's training return (`charts/episodic_return`, the
mean over the episodes that ended in an update) averaged over the updates within `--window` steps
of each mark, and prints one variant x seed table per mark. Runs already finished in `--logdir`
are read, not rerun, so a study can be extended seed by seed.

    python benchmarks/equal_steps.py --seeds 19,20,21,22 --stop-at 8000000 --marks 4,8 \\
        --variant "full=--partial-wall-starts 0" --variant "partial=--partial-wall-starts 0.25" \\
        --logdir runs/equal-steps --json equal_steps.json
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

from bench_report import write_json
from breakout_ppo.events import EPISODIC_RETURN, read_scalars


def parse_variant(text: str) -> tuple[str, list[str]]:
    name, _, flags = text.partition("=")
    if not name.strip():
        raise SystemExit(f"--variant wants NAME=FLAGS, got {text!r}")
    return name.strip(), shlex.split(flags)


def run_name(variant: str, seed: int) -> str:
    return f"{re.sub(r'[^A-Za-z0-9_.-]+', '_', variant)}-seed{seed}"


def finished(logdir: Path, variant: str, flags, seed: int, stop_at: int) -> bool:
    """Whether this run is already in `logdir`; one made with other flags or steps is an error."""
    name = run_name(variant, seed)
    if not (logdir / name / "checkpoint.pt").exists():
        return False
    recorded = (logdir / f"{name}.flags").read_text().split("\n") if (logdir / f"{name}.flags").exists() else None
    if recorded != [str(stop_at), *flags]:
        raise SystemExit(f"{logdir / name} was trained with other flags or --stop-at ({recorded}); "
                         f"use another --logdir")
    return True


def run_all(jobs, logdir: Path, stop_at: int, workers: int):
    """Train every (variant, flags, seed) not yet finished, `workers` at a time."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    pending = [job for job in jobs if not finished(logdir, *job, stop_at)]
    running = []
    while pending or running:
        while pending and len(running) < workers:
            variant, flags, seed = pending.pop(0)
            name = run_name(variant, seed)
            (logdir / f"{name}.flags").write_text("\n".join([str(stop_at), *flags]))
            log = open(logdir / f"{name}.log", "w")
            command = [sys.executable, "cli.py", "train", "--device", "cpu", "--seed", str(seed),
                       "--run-name", name, "--logdir", str(logdir), "--stop-at-step", str(stop_at), *flags]
            running.append((name, subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=log), log))
            print(f"started {name}", flush=True)
        time.sleep(1)
        for item in list(running):
            name, process, log = item
            if process.poll() is None:
                continue
            running.remove(item)
            log.close()
            if process.returncode != 0:
                tail = (logdir / f"{name}.log").read_text()[-1500:]
                raise SystemExit(f"training {name} failed (exit {process.returncode}):\n{tail}")
            print(f"finished {name}", flush=True)


def returns_at(run_dir: Path, marks, window: float):
    """Mean training return over the updates within `window` steps of each mark (None if none)."""
    points = [(int(step), float(value)) for step, value in zip(*read_scalars(run_dir)[EPISODIC_RETURN])]
    out = []
    for mark in marks:
        near = [value for step, value in points if abs(step - mark) <= window]
        out.append(sum(near) / len(near) if near else None)
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", default="1,2,3,4")
    parser.add_argument("--variant", action="append", default=[], metavar="NAME=FLAGS",
                        help="a config to compare: a name, '=', then `cli.py train` flags (repeatable; "
                             "default: the default preset alone)")
    parser.add_argument("--stop-at", type=float, default=8e6, help="steps each run trains (of the full schedule)")
    parser.add_argument("--marks", default="4,8", help="millions of steps at which returns are read")
    parser.add_argument("--window", type=float, default=0.3e6, help="steps either side of a mark")
    parser.add_argument("--workers", type=int, default=2, help="runs at a time (one torch thread each)")
    parser.add_argument("--logdir", default=None, help="where the runs go (default: a temporary directory)")
    parser.add_argument("--json", dest="json_path", default=None)
    args = parser.parse_args()

    seeds = [int(s) for s in args.seeds.split(",")]
    variants = [parse_variant(v) for v in args.variant] or [("default", [])]
    marks = [float(m) * 1e6 for m in args.marks.split(",")]
    if max(marks) - args.window > args.stop_at:
        raise SystemExit(f"the last mark ({max(marks) / 1e6:g}M) lies past --stop-at ({args.stop_at:g})")
    logdir = Path(args.logdir or tempfile.mkdtemp(prefix="equal_steps-"))
    logdir.mkdir(parents=True, exist_ok=True)

    jobs = [(name, flags, seed) for seed in seeds for name, flags in variants]
    run_all(jobs, logdir, int(args.stop_at), args.workers)

    rows = []
    for name, flags, seed in jobs:
        values = returns_at(logdir / run_name(name, seed), marks, args.window)
        rows.append({"variant": name, "flags": flags, "seed": seed,
                     "returns": {f"{m / 1e6:g}M": v for m, v in zip(marks, values)}})

    width = max(len(name) for name, _ in variants)
    for mark in marks:
        key = f"{mark / 1e6:g}M"
        print(f"\ntraining return at {key} steps (mean over updates within {args.window / 1e6:g}M)")
        print(f"{'variant':<{width}} " + " ".join(f"{f'seed {s}':>8}" for s in seeds) + f" {'mean':>8}")
        for name, _ in variants:
            values = [r["returns"][key] for r in rows if r["variant"] == name]
            cells = " ".join(f"{v:8.1f}" if v is not None else f"{'-':>8}" for v in values)
            known = [v for v in values if v is not None]
            mean = f"{sum(known) / len(known):8.1f}" if known else f"{'-':>8}"
            print(f"{name:<{width}} {cells} {mean}")
    if args.json_path:
        write_json(args.json_path, "equal_steps", args, logdir=str(logdir), rows=rows)


if __name__ == "__main__":
    main()
