"""What Taps cost the model they watch: attached, and after the with-block has exited.

The same ActorCritic weights in five copies, timed on one batch of real game frames (4096 by
default, a rollout's worth) for two workloads: the forward pass under `torch.inference_mode` (how
the agent acts) and forward + backward of a PPO-shaped loss (how it learns). The copies:

    none       a model that never had taps
    control    another copy that never had taps: its "cost" is the A/A noise floor of the method
    detached   a model that had taps on every layer, run and then exited: must cost <= 2%
    attached   inside a Taps block on every layer (all 10 leaf modules): activations, output gradients,
               policy and value, keep="last" (a copy of every output: 2 x 4096 x 400 for the Flatten layers)
    stats      the same with keep="stats" (running per-unit moments instead of tensors)

Rounds are interleaved down to single calls: a round makes `--calls` passes, each calling every
copy once in a shuffled order, so bursts of load on a shared machine hit all copies alike. A
copy's time in a round is the median of its calls there (a call that another process preempted is
an outlier, not a cost of the taps), and its cost in that round is that time divided by the same
round's "none" time. The table gives the mean of those ratios minus 1 with a 95%
confidence interval (Student t over rounds). Detached passes when the interval's upper end is
<= 2%; the script then exits 0, else 1. Compare with the control row: on a busy machine (or with
the slower CNN and few rounds) the noise floor itself can reach 2%.

    python benchmarks/hook_overhead.py
    python benchmarks/hook_overhead.py --arch cnn --rounds 50 --json /tmp/hook_overhead.json
"""

from __future__ import annotations

import argparse
import copy
import math
import random
import statistics
import sys
import time
from contextlib import ExitStack

import torch

from bench_report import write_json
from breakout_ppo.env import BatchedBreakout
from breakout_ppo.model import ActorCritic
from instruments.measure.hooks import Taps, layer_names

DETACHED_BUDGET = 0.02
COPIES = ("none", "control", "detached", "attached", "stats")


def t_quantile_975(df: int) -> float:
    """Student t 97.5% quantile by the Cornish-Fisher expansion (within 0.002 of the tables for
    df >= 3; scipy is not a dependency)."""
    z = 1.959963984540054
    return (z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)
            + (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / (384 * df**3))


def mean_ci(values: list[float]) -> tuple[float, float, float]:
    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, math.nan, math.nan
    half = t_quantile_975(len(values) - 1) * statistics.stdev(values) / math.sqrt(len(values))
    return mean, mean - half, mean + half


def game_frames(n: int, device, seed: int) -> torch.Tensor:
    """n frames from games some random steps in: paddle, ball, trail and a few broken bricks."""
    env = BatchedBreakout(n, device=device, seed=seed)
    generator = torch.Generator(device).manual_seed(seed)
    with torch.inference_mode():
        env.reset()
        for _ in range(20):
            obs, *_ = env.step(torch.randint(3, (n,), generator=generator, device=device))
    return obs.clone()  # outside inference mode: an ordinary tensor that backward can save


def tap_everything(model):
    """Every layer (leaf module: a container's output is its last layer's), both ways, and the
    policy and value: the most a user can ask for."""
    modules = dict(model.named_modules())
    names = [name for name in layer_names(model) if next(modules[name].children(), None) is None]
    return dict(activations=names, gradients=names, policy_and_value=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=4096, help="frames per forward pass")
    parser.add_argument("--arch", default="mlp", choices=["mlp", "cnn"])
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=30, help="interleaved rounds (pairs for the interval)")
    parser.add_argument("--calls", type=int, default=11, help="calls per copy per round (median taken)")
    parser.add_argument("--workload", default="both", choices=["forward", "backward", "both"],
                        help="time the inference forward, forward + backward, or both")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (the machine is shared)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", dest="json_path", default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    torch.manual_seed(args.seed)
    plain = ActorCritic(args.arch, args.hidden).to(device)
    models = {name: copy.deepcopy(plain) for name in COPIES}
    frames = game_frames(args.batch, device, args.seed)
    generator = torch.Generator(device).manual_seed(args.seed + 1)
    actions = torch.randint(3, (args.batch,), generator=generator, device=device)
    returns = torch.randn(args.batch, generator=generator, device=device)
    rows = torch.arange(args.batch, device=device)

    def forward(model):
        with torch.inference_mode():
            model(frames)

    def forward_backward(model):
        model.zero_grad(set_to_none=True)
        logits, value = model(frames)
        loss = -torch.log_softmax(logits, -1)[rows, actions].mean() + 0.5 * ((value - returns) ** 2).mean()
        loss.backward()

    workloads = {"forward (inference)": forward, "forward + backward": forward_backward}
    if args.workload != "both":
        workloads = {k: v for k, v in workloads.items() if (args.workload == "forward") == (v is forward)}

    # "detached": taps on every layer, used for both workloads, then exited.
    with Taps(models["detached"], **tap_everything(plain)):
        forward(models["detached"])
        forward_backward(models["detached"])
    assert not any(m._forward_hooks or m._backward_hooks for m in models["detached"].modules())

    order = random.Random(args.seed)
    results = {}
    with ExitStack() as stack:
        stack.enter_context(Taps(models["attached"], **tap_everything(plain)))
        stack.enter_context(Taps(models["stats"], **tap_everything(plain), keep="stats"))
        for workload, run in workloads.items():
            for name in COPIES:  # warm-up
                for _ in range(3):
                    run(models[name])
            sync()
            seconds = {name: [] for name in COPIES}
            for _ in range(args.rounds):
                calls = {name: [] for name in COPIES}
                for _ in range(args.calls):
                    names = list(COPIES)
                    order.shuffle(names)
                    for name in names:  # one call each, in turn: a burst of load hits all copies alike
                        start = time.perf_counter()
                        run(models[name])
                        sync()
                        calls[name].append(time.perf_counter() - start)
                for name in COPIES:
                    seconds[name].append(statistics.median(calls[name]))
            results[workload] = seconds

    rows_out = []
    for workload, seconds in results.items():
        for name in COPIES:
            ratios = [s / base - 1 for s, base in zip(seconds[name], seconds["none"])]
            mean, low, high = mean_ci(ratios)
            rows_out.append({"workload": workload, "taps": name, "ms_per_call": 1e3 * statistics.median(seconds[name]),
                             "cost": mean, "ci95": [low, high], "per_round_seconds": seconds[name]})

    print(f"hook overhead: {args.arch}-{args.hidden}, batch {args.batch}, {args.rounds} rounds x {args.calls} calls, "
          f"{torch.get_num_threads()} torch thread(s), {device}")
    header = f"{'workload':<22} {'taps':<9} {'ms/call':>8} {'cost vs none':>13} {'95% CI':>20}"
    print(header)
    print("-" * len(header))
    for r in rows_out:
        if r["taps"] == "none":
            print(f"{r['workload']:<22} {r['taps']:<9} {r['ms_per_call']:>8.3f} {'-':>13} {'':>20}")
        else:
            low, high = r["ci95"]
            print(f"{r['workload']:<22} {r['taps']:<9} {r['ms_per_call']:>8.3f} {r['cost']:>+12.1%} "
                  f"{f'[{low:+.1%}, {high:+.1%}]':>20}")
    verdicts = {}
    for r in rows_out:
        if r["taps"] == "detached":
            verdicts[r["workload"]] = r["ci95"][1] <= DETACHED_BUDGET
    print(f"detached taps, upper end of the 95% CI <= {DETACHED_BUDGET:.0%}: "
          + ", ".join(f"{w}: {'PASS' if ok else 'FAIL'}" for w, ok in verdicts.items()))

    if args.json_path:
        write_json(args.json_path, "hook_overhead", args, device=str(device), detached_budget=DETACHED_BUDGET,
                   detached_pass=verdicts, rows=rows_out)
    return 0 if all(verdicts.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
