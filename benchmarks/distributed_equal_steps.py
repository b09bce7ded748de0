"""Does training on K processes learn what one process learns, step for step? Training return at
equal steps, K = 1 against K = 2 (`torchrun --nproc_per_node=2 cli.py train`), paired by seed.

With the same global batch and minibatch the K = 2 update is the one-process update on the union
of the ranks' rows (tests/test_distributed.py), so the runs differ only in their random streams:
the expected difference is zero, and this checks it. The equivalence margin, stated before the
runs: the 90% Student-t interval of the mean paired difference (K=2 - K=1) must lie within +-10%
of the K = 1 mean. Every run has one torch thread per process; the K = 1 runs go two at a time, the
K = 2 runs one at a time, so the machine's two cores are always busy and never oversubscribed.

    python benchmarks/distributed_equal_steps.py --seeds 1,2,3,4,5 --stop-at 2000000 --mark 2 \\
        --logdir runs/distributed-equal-steps --json /tmp/distributed_equal_steps.json
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

from bench_report import write_json
from breakout_ppo.stats import mean_ci
from equal_steps import returns_at

MARGIN = 0.10
"""The equivalence margin, fixed before any run: +-10% of the K = 1 mean."""


def command(processes: int, seed: int, name: str, logdir: Path, stop_at: int) -> list[str]:
    launcher = [sys.executable] if processes == 1 else \
        [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"]
    return [*launcher, "cli.py", "train", "--device", "cpu", "--seed", str(seed), "--run-name", name,
            "--logdir", str(logdir), "--stop-at-step", str(stop_at)]


def run_all(jobs, logdir: Path, stop_at: int, cores: int):
    """Run (processes, seed, name) jobs, as many at a time as `cores` one-thread processes allow."""
    pending = [job for job in jobs if not (logdir / job[2] / "checkpoint.pt").exists()]
    running = []
    while pending or running:
        busy = sum(processes for processes, *_ in running)
        while any(busy + job[0] <= cores for job in pending):  # the first job that fits the free cores
            processes, seed, name = pending.pop(next(i for i, job in enumerate(pending) if busy + job[0] <= cores))
            log = open(logdir / f"{name}.log", "w")
            process = subprocess.Popen(command(processes, seed, name, logdir, stop_at), cwd=ROOT, stdout=log,
                                       stderr=log, env={**os.environ, "OMP_NUM_THREADS": "1"})
            running.append((processes, name, process, log))
            busy += processes
            print(f"started {name}", flush=True)
        time.sleep(1)
        for item in list(running):
            processes, name, process, log = item
            if process.poll() is None:
                continue
            running.remove(item)
            log.close()
            if process.returncode != 0:
                raise SystemExit(f"{name} failed:\n{(logdir / f'{name}.log').read_text()[-1500:]}")
            print(f"finished {name}", flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", default="1,2,3,4,5")
    parser.add_argument("--stop-at", type=int, default=2_000_000)
    parser.add_argument("--mark", type=float, default=2.0, help="millions of steps at which returns are read")
    parser.add_argument("--window", type=float, default=0.3e6, help="steps either side of the mark")
    parser.add_argument("--cores", type=int, default=os.cpu_count())
    parser.add_argument("--logdir", required=True)
    parser.add_argument("--json", dest="json_path", default=None)
    args = parser.parse_args()
    logdir = Path(args.logdir)
    logdir.mkdir(parents=True, exist_ok=True)
    seeds = [int(s) for s in args.seeds.split(",")]
    jobs = [job for seed in seeds for job in ((2, seed, f"k2-seed{seed}"), (1, seed, f"k1-seed{seed}"))]
    start = time.time()
    run_all(jobs, logdir, args.stop_at, args.cores)
    mark = args.mark * 1e6
    returns = {name: returns_at(logdir / name, [mark], args.window)[0] for _, _, name in jobs}
    k1 = [returns[f"k1-seed{s}"] for s in seeds]
    k2 = [returns[f"k2-seed{s}"] for s in seeds]
    differences = [b - a for a, b in zip(k1, k2)]
    mean_k1 = statistics.mean(k1)
    mean_difference, half = mean_ci(differences, confidence=0.90)
    interval = (mean_difference - half, mean_difference + half)
    relative = (interval[0] / mean_k1, interval[1] / mean_k1)
    equivalent = -MARGIN < relative[0] and relative[1] < MARGIN
    print(f"training return at {args.mark:g}M steps (mean over updates within {args.window / 1e6:g}M):")
    for seed, a, b in zip(seeds, k1, k2):
        print(f"  seed {seed}: K=1 {a:6.2f}  K=2 {b:6.2f}  difference {b - a:+6.2f}")
    print(f"K=1 mean {mean_k1:.2f}, K=2 mean {statistics.mean(k2):.2f}; paired difference {mean_difference:+.2f}, "
          f"90% interval [{interval[0]:+.2f}, {interval[1]:+.2f}] = [{relative[0]:+.1%}, {relative[1]:+.1%}] of the "
          f"K=1 mean: {'equivalent' if equivalent else 'NOT shown equivalent'} within +-{MARGIN:.0%}")
    if args.json_path:
        write_json(args.json_path, "distributed_equal_steps", args, margin=MARGIN,
                   rows=[{"seed": s, "k1": a, "k2": b} for s, a, b in zip(seeds, k1, k2)],
                   mean_k1=mean_k1, mean_k2=statistics.mean(k2), mean_difference=mean_difference,
                   interval_90=interval, interval_90_relative=relative, equivalent=equivalent,
                   wall_seconds=round(time.time() - start))


if __name__ == "__main__":
    main()
