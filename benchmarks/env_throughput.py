"""Environment steps per second: the `minatar` package against our `BatchedBreakout`.

Why: the batched env exists to make experience cheap, so its speed is a claim we must be able to
check. The reference is what a trainer on the original package pays per transition: one
`minatar.Environment("breakout")` doing `act` and `state` every step (sticky actions at the
default 0.1, reset on terminal, random actions from the minimal set {0, 1, 3} drawn in advance so
that only the env is timed). Ours is `BatchedBreakout(N).step` with random actions generated on
the device beforehand; one batched step counts as N env-steps.

On CUDA each batch size is also stepped as a captured CUDA graph (`--device cuda`): a block of
`STEPS_PER_GRAPH` steps recorded once and replayed, so the GPU no longer waits on Python launching
each step's kernels; those rows give the GPU memory the env and its graph hold.

Each measurement warms up first (allocations, caches, CUDA kernels), then times a fixed number of
steps chosen to last about `--seconds`; on CUDA the clock is read only after a synchronise. The
reference and every N are measured in interleaved rounds, so slow spells on a shared machine hit
all rows alike; the table reports the median over rounds (with min and max) and each row's ratio
of medians to minatar. The header names the torch thread count: large batches run some ops on
several threads, which on a small machine shared with other work can wait on a busy core, so
compare runs at the same `--threads`.

    python benchmarks/env_throughput.py [--device cpu|cuda|auto] [--seconds 1] [--repeats 5] [--threads N]
                                        [--json PATH]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from breakout_ppo.env import MINATAR_ACTIONS, BatchedBreakout

BATCH_SIZES = (1, 64, 1024, 4096, 16384)
CUDA_ONLY_BATCH_SIZES = (65536,)
CAPTURED_BATCH_SIZES = (4096, 16384, 65536, 262144)
STEPS_PER_GRAPH = 64
ACTION_POOL = 64  # distinct pre-drawn action rows, cycled: enough to avoid any pattern, small in memory


class MinatarRunner:
    """One `minatar` env stepped like a trainer would: act, read the frame, reset on terminal."""

    name = "minatar"
    envs_per_step = 1

    def __init__(self, seed=0):
        from minatar import Environment

        self.env = Environment("breakout")  # sticky_action_prob defaults to 0.1
        self.env.seed(seed)
        self.env.reset()
        rng = np.random.default_rng(seed)
        self.actions = [MINATAR_ACTIONS[i] for i in rng.integers(0, len(MINATAR_ACTIONS), 1 << 16)]

    def run(self, steps):
        env, actions, mask = self.env, self.actions, len(self.actions) - 1
        for t in range(steps):
            _, terminal = env.act(actions[t & mask])
            env.state()
            if terminal:
                env.reset()

    def sync(self):
        pass


class BatchedRunner:
    """`BatchedBreakout(n).step` on pre-drawn random actions; one call is n env-steps."""

    def __init__(self, n, device, seed=0):
        self.name = f"BatchedBreakout N={n}"
        self.envs_per_step = n
        self.device = device
        self.env = BatchedBreakout(n, device=device, seed=seed)
        self.env.reset()
        generator = torch.Generator(device).manual_seed(seed + 1)
        self.actions = torch.randint(0, 3, (ACTION_POOL, n), generator=generator, device=device)

    def run(self, steps):
        env, actions = self.env, self.actions
        for t in range(steps):
            env.step(actions[t % ACTION_POOL])

    def sync(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


class CapturedRunner(BatchedRunner):
    """`STEPS_PER_GRAPH` steps of `BatchedBreakout(n)` captured as one CUDA graph; one call replays it."""

    def __init__(self, n, device, seed=0):
        before = torch.cuda.memory_allocated(device)
        super().__init__(n, device, seed)
        self.name = f"N={n} CUDA graph"
        self.envs_per_step = n * STEPS_PER_GRAPH
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):  # warm up off the capture, as CUDA graphs ask
            BatchedRunner.run(self, 3)
        torch.cuda.current_stream(device).wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        self.graph.register_generator_state(self.env.generator)  # each replay draws new sticky actions
        with torch.cuda.graph(self.graph):
            BatchedRunner.run(self, STEPS_PER_GRAPH)
        torch.cuda.synchronize(device)
        self.gpu_mib = (torch.cuda.memory_allocated(device) - before) / 2**20

    def run(self, steps):
        for _ in range(steps):
            self.graph.replay()


def timed(runner, steps):
    """Seconds for `steps` calls, with any queued device work finished on both sides of the clock."""
    runner.sync()
    start = time.perf_counter()
    runner.run(steps)
    runner.sync()
    return time.perf_counter() - start


def calibrate(runner, seconds):
    """Warm up, then return how many steps take about `seconds`."""
    runner.run(3)
    steps, elapsed = 1, 0.0
    while elapsed < min(0.2, seconds / 2):  # doubling also serves as the warm-up
        steps *= 2
        elapsed = timed(runner, steps)
    return max(1, round(steps * seconds / elapsed))


def device_name(device):
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["cpu", "cuda", "auto"], default="auto")
    parser.add_argument("--seconds", type=float, default=1.0, help="length of one timed measurement")
    parser.add_argument("--repeats", type=int, default=5, help="interleaved rounds; the median is reported")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--json", dest="json_path", help="also write the results here")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda, but CUDA is not available")

    sizes = BATCH_SIZES + (CUDA_ONLY_BATCH_SIZES if device.type == "cuda" else ())
    runners = [MinatarRunner()] + [BatchedRunner(n, device) for n in sizes]
    if device.type == "cuda":
        runners += [CapturedRunner(n, device) for n in CAPTURED_BATCH_SIZES]
    steps = [calibrate(r, args.seconds) for r in runners]
    rates = [[] for _ in runners]  # env-steps per second, one entry per round
    for _ in range(args.repeats):
        for runner, n_steps, out in zip(runners, steps, rates):
            out.append(runner.envs_per_step * n_steps / timed(runner, n_steps))

    reference = statistics.median(rates[0])
    rows = []
    for runner, out in zip(runners, rates):
        median = statistics.median(out)
        rows.append(
            {
                "env": runner.name,
                "num_envs": runner.env.num_envs if isinstance(runner, BatchedRunner) else 1,
                "steps_per_call": runner.envs_per_step,
                "gpu_mib": getattr(runner, "gpu_mib", None),
                "steps_per_s_median": median,
                "steps_per_s_min": min(out),
                "steps_per_s_max": max(out),
                "us_per_step": 1e6 * runner.envs_per_step / median / (STEPS_PER_GRAPH if hasattr(runner, "graph") else 1),
                "ratio_to_minatar": median / reference,
            }
        )

    print(f"env steps/s on {device} ({device_name(device)}), torch {torch.__version__}, "
          f"{os.cpu_count()} CPUs, {torch.get_num_threads()} torch threads; "
          f"median of {args.repeats} x {args.seconds:g} s")
    header = (f"{'env':<25} {'median/s':>14} {'min/s':>14} {'max/s':>14} {'us/step':>10} {'x minatar':>10}"
              f" {'GPU MiB':>8}")
    print(header)
    print("-" * len(header))
    for row in rows:
        memory = "" if row["gpu_mib"] is None else f"{row['gpu_mib']:8,.0f}"
        print(f"{row['env']:<25} {row['steps_per_s_median']:>14,.0f} {row['steps_per_s_min']:>14,.0f} "
              f"{row['steps_per_s_max']:>14,.0f} {row['us_per_step']:>10,.1f} {row['ratio_to_minatar']:>10.1f} {memory}")

    if args.json_path:
        result = {
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "torch": torch.__version__,
            "python": platform.python_version(),
            "device": str(device),
            "device_name": device_name(device),
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "seconds": args.seconds,
            "repeats": args.repeats,
            "rows": rows,
        }
        Path(args.json_path).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
