"""Steps per second of one training on this machine's cores: 1 process x T threads against
K processes x T/K threads (`torchrun --nproc_per_node=K cli.py train`), alternated in one run;
by default also 1 process x 1 thread, the yardstick of what one core does.

Each layout trains the same config (the default preset unless flags say otherwise) to
`--stop-at-step` steps, `--repeats` times, the layouts alternating so that a change in the
machine's load that hour falls on both. The figure is the run's own `charts/SPS` at its last
update: global steps over seconds since training started (start-up excluded). The load average
before and after is recorded: on a shared machine it says how far the figures can be trusted.

    python benchmarks/distributed_speed.py --layouts 1x2,2x1,1x1 --repeats 3 --stop-at-step 131072 \
        --json /tmp/distributed_speed.json
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

from bench_report import write_json
from breakout_ppo.events import SPS, read_scalars


def train_once(processes: int, threads: int, stop_at_step: int, logdir: Path, name: str, extra: list[str]) -> dict:
    launcher = [sys.executable] if processes == 1 else \
        [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"]
    command = [*launcher, "cli.py", "train", "--device", "cpu", "--logdir", str(logdir), "--run-name", name,
               "--stop-at-step", str(stop_at_step), *extra]
    start = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": str(threads)})
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr[-2000:]}")
    steps, sps = read_scalars(logdir / name)[SPS]
    return {"sps": float(sps[-1]), "steps": int(steps[-1]), "wall_seconds_with_startup": round(wall, 2)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layouts", default=f"1x{os.cpu_count()},2x{max(1, os.cpu_count() // 2)},1x1",
                        help="PROCESSESxTHREADS_EACH, comma-separated; the first is the baseline of the ratios.")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--stop-at-step", type=int, default=262_144)
    parser.add_argument("--train-flags", default="", help="Extra flags for cli.py train, e.g. '--num-envs 512'.")
    parser.add_argument("--json", dest="json_path", default=None)
    args = parser.parse_args()
    layouts = {name: tuple(int(n) for n in name.split("x")) for name in args.layouts.split(",")}
    results = {name: [] for name in layouts}
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as logdir:
        for repeat in range(args.repeats):
            for name, (processes, threads) in layouts.items():
                row = train_once(processes, threads, args.stop_at_step, Path(logdir), f"{name}-{repeat}",
                                 args.train_flags.split())
                results[name].append(row)
                print(f"{name} (processes x threads) repeat {repeat}: {row['sps']:,.0f} SPS", flush=True)
    load_after = os.getloadavg()
    summary = {name: statistics.median(row["sps"] for row in rows) for name, rows in results.items()}
    baseline = next(iter(layouts))
    ratios = {name: round(sps / summary[baseline], 3) for name, sps in summary.items()}
    print("median SPS: " + ", ".join(f"{name} {sps:,.0f} (x{ratios[name]:.2f})" for name, sps in summary.items()))
    print(f"load average (1 min) before {load_before[0]:.1f}, after {load_after[0]:.1f} on {os.cpu_count()} CPUs")
    if args.json_path:
        write_json(args.json_path, "distributed_speed", args, runs=results, median_sps=summary,
                   ratio_to_first_layout=ratios, load_average_before=load_before, load_average_after=load_after)


if __name__ == "__main__":
    main()
