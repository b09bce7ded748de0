"""Does training on K processes learn what one process learns, step for step? Training return at
equal steps, K = 1 against K = 2 (`torchrun --nproc_per_node=2 cli.py train`), paired by seed.

With the same global batch and minibatch the K = 2 update is the one-process update on the union
of the ranks' rows (tests/test_distributed.py), so the runs differ only in their random streams:
the expected difference is zero, and this checks it. The equivalence margin, stated before the
runs: the 90% Student-t interval of the mean paired difference (K=2 - K=1) must lie within +-10%
of the K = 1 mean. Every run has one torch thread per process; the K = 1 runs go two at a time, the
K = 2 runs one at a time, so the machine's two cores are always busy and never oversubscribed.
Runs start strictly in seed order, in blocks of `--cores` seeds (their K = 1 runs together, then
their K = 2 runs), so a study cut short by the clock has whole pairs for its first seeds.

An endpoint is the training return averaged over the updates within WINDOW steps of MARK; with
`--endpoints` several are tested in the order given (a fixed sequence: an endpoint counts only if
every one before it was shown equivalent), which keeps the error rate of the whole at that of one
test. Runs already finished in `--logdir` are read, not rerun; an unfinished one is started over.

    python benchmarks/distributed_equal_steps.py --seeds 1,2,3,4,5 --stop-at 2000000 --mark 2 \\
        --logdir runs/distributed-equal-steps --json /tmp/distributed_equal_steps.json
    python benchmarks/distributed_equal_steps.py --seeds 6,7 --stop-at 2000000 --endpoints 1:0.3,1:1,2:0.3 \\
        --logdir runs/distributed-equal-steps --json /tmp/distributed_equal_steps.json
"""

from __future__ import annotations

import argparse
import os
import shutil
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


def finished(logdir: Path, name: str) -> bool:
    """A run that reached --stop-at-step (or the end): its log says so. A checkpoint alone does not
    tell, since one is also written every `checkpoint_every` updates."""
    log = logdir / f"{name}.log"
    return log.exists() and any(line.startswith(("stopped at ", "done: ")) for line in log.read_text().splitlines())


def job_order(seeds, cores: int):
    """(processes, seed, name) in blocks of `cores` seeds: the block's K = 1 runs, then its K = 2 runs."""
    jobs = []
    for start in range(0, len(seeds), max(1, cores)):
        block = seeds[start:start + max(1, cores)]
        jobs += [(1, seed, f"k1-seed{seed}") for seed in block] + [(2, seed, f"k2-seed{seed}") for seed in block]
    return jobs


def run_all(jobs, logdir: Path, stop_at: int, cores: int) -> dict:
    """Run (processes, seed, name) jobs in their order, each as soon as the one-thread processes
    running leave it room on `cores`; no job overtakes an earlier one. Returns each run's seconds."""
    pending = [job for job in jobs if not finished(logdir, job[2])]
    running, seconds = [], {}
    for _, _, name in jobs:
        if (logdir / f"{name}.seconds").exists() and finished(logdir, name):
            seconds[name] = int((logdir / f"{name}.seconds").read_text())
    while pending or running:
        busy = sum(processes for processes, *_ in running)
        while pending and (busy + pending[0][0] <= cores or not running):
            processes, seed, name = pending.pop(0)
            shutil.rmtree(logdir / name, ignore_errors=True)  # an unfinished run starts over
            log = open(logdir / f"{name}.log", "w")
            process = subprocess.Popen(command(processes, seed, name, logdir, stop_at), cwd=ROOT, stdout=log,
                                       stderr=log, env={**os.environ, "OMP_NUM_THREADS": "1"})
            running.append((processes, name, process, log, time.time()))
            busy += processes
            print(f"{time.strftime('%H:%M:%S')} started {name}", flush=True)
        time.sleep(1)
        for item in list(running):
            processes, name, process, log, started = item
            if process.poll() is None:
                continue
            running.remove(item)
            log.close()
            if process.returncode != 0:
                raise SystemExit(f"{name} failed:\n{(logdir / f'{name}.log').read_text()[-1500:]}")
            seconds[name] = round(time.time() - started)
            (logdir / f"{name}.seconds").write_text(f"{seconds[name]}\n")  # for a later call that reads it
            print(f"{time.strftime('%H:%M:%S')} finished {name} in {seconds[name]} s", flush=True)
    return seconds


def compare(seeds, k1, k2) -> dict:
    """The paired difference K=2 - K=1, its 90% interval, absolute and relative to the K = 1 mean."""
    differences = [b - a for a, b in zip(k1, k2)]
    mean_k1 = statistics.mean(k1)
    mean_difference, half = mean_ci(differences, confidence=0.90)
    interval = (mean_difference - half, mean_difference + half)
    relative = (interval[0] / mean_k1, interval[1] / mean_k1)
    return {"rows": [{"seed": s, "k1": a, "k2": b} for s, a, b in zip(seeds, k1, k2)],
            "mean_k1": mean_k1, "mean_k2": statistics.mean(k2), "mean_difference": mean_difference,
            "sd_difference": statistics.stdev(differences) if len(differences) > 1 else None,
            "interval_90": interval, "interval_90_relative": relative,
            "equivalent": -MARGIN < relative[0] and relative[1] < MARGIN}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", default="1,2,3,4,5")
    parser.add_argument("--stop-at", type=int, default=2_000_000)
    parser.add_argument("--mark", type=float, default=2.0, help="millions of steps at which returns are read")
    parser.add_argument("--window", type=float, default=0.3e6, help="steps either side of the mark")
    parser.add_argument("--endpoints", default=None,
                        help="MARK:WINDOW,... in millions of steps, tested in this order (replaces --mark/--window)")
    parser.add_argument("--cores", type=int, default=os.cpu_count())
    parser.add_argument("--logdir", required=True)
    parser.add_argument("--json", dest="json_path", default=None)
    args = parser.parse_args()
    logdir = Path(args.logdir)
    logdir.mkdir(parents=True, exist_ok=True)
    seeds = [int(s) for s in args.seeds.split(",")]
    if args.endpoints:
        endpoints = [tuple(float(x) * 1e6 for x in item.split(":")) for item in args.endpoints.split(",")]
    else:
        endpoints = [(args.mark * 1e6, args.window)]
    jobs = job_order(seeds, args.cores)
    start = time.time()
    seconds = run_all(jobs, logdir, args.stop_at, args.cores)
    results, sequence_holds = [], True
    for mark, window in endpoints:
        returns = {name: returns_at(logdir / name, [mark], window)[0] for _, _, name in jobs}
        k1 = [returns[f"k1-seed{s}"] for s in seeds]
        k2 = [returns[f"k2-seed{s}"] for s in seeds]
        result = {"mark": mark, "window": window, **compare(seeds, k1, k2)}
        result["counts"] = sequence_holds and result["equivalent"]  # shown, and every endpoint before it too
        sequence_holds = result["counts"]
        results.append(result)
        low, high = result["interval_90"]
        rel_low, rel_high = result["interval_90_relative"]
        print(f"training return, mean over the updates within {window / 1e6:g}M of {mark / 1e6:g}M steps:")
        for row in result["rows"]:
            print(f"  seed {row['seed']}: K=1 {row['k1']:6.2f}  K=2 {row['k2']:6.2f}  difference {row['k2'] - row['k1']:+6.2f}")
        verdict = "equivalent" if result["equivalent"] else "NOT shown equivalent"
        if len(endpoints) > 1 and result["equivalent"] and not result["counts"]:
            verdict += " (does not count: an endpoint before it was not shown)"
        print(f"K=1 mean {result['mean_k1']:.2f}, K=2 mean {result['mean_k2']:.2f}; paired difference "
              f"{result['mean_difference']:+.2f} (SD {result['sd_difference'] or float('nan'):.2f}), 90% interval "
              f"[{low:+.2f}, {high:+.2f}] = [{rel_low:+.1%}, {rel_high:+.1%}] of the K=1 mean: {verdict} "
              f"within +-{MARGIN:.0%}")
    if args.json_path:
        extra = {"endpoints": results} if args.endpoints else {k: v for k, v in results[0].items()
                                                               if k not in ("mark", "window", "counts")}
        write_json(args.json_path, "distributed_equal_steps", args, margin=MARGIN, **extra,
                   run_seconds=seconds, wall_seconds=round(time.time() - start))


if __name__ == "__main__":
    main()
