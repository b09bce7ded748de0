"""The communication cost of data-parallel PPO, on paper: what each minibatch sends, how long the
all-reduces take on NVLink and on a 25 Gb/s network (the alpha-beta model of a ring all-reduce,
with the latencies and bandwidths stated below as assumptions), against the minibatch's compute,
giving the expected scaling efficiency. Nothing is timed; the model's size comes from the config.

    python benchmarks/distributed_comm_cost.py --json /tmp/distributed_comm_cost.json

Per minibatch a rank all-reduces its gradient (float32, one flat buffer) and three float64
scalars for the global advantage mean and std (count, sum, sum of squares;
`breakout_ppo/distributed.py`); per update four more scalars (NaN flag, losses, episode sums,
stop flag), negligible beside 32 minibatches.
"""

from __future__ import annotations

import argparse

from bench_report import write_json
from breakout_ppo.config import preset
from breakout_ppo.model import ActorCritic

LINKS = {
    # name: (latency per ring step in seconds, bandwidth per direction in bytes/s), both assumptions:
    # NVLink 4 on H100 SXM is 450 GB/s per direction, NCCL reaches about 360 GB/s of bus bandwidth
    # on large messages, and a few microseconds per step on small ones; 25 Gb/s Ethernet carries
    # 3.125 GB/s, and TCP through the kernel costs tens of microseconds per message.
    "NVLink (H100 SXM)": (5e-6, 360e9),
    "25 Gb/s Ethernet": (25e-6, 3.125e9),
}

SCENARIOS = [
    # (name, link, seconds of one minibatch step of the default model on one rank's hardware with the
    # whole global minibatch, whether that time shrinks with the rows a rank gets).
    # GPU: not measured. An eager step of two 3-layer towers (forward, backward, clip, fused Adam)
    # is some 60-100 kernel launches of 5-10 us whatever the rows up to tens of thousands: a GPU's
    # step does not shrink when its rows halve (the H100's env step at 1024 envs is 0.47 ms per
    # call for the same reason: docs/measurements/env_throughput_h100.json).
    ("H100s in one machine", "NVLink (H100 SXM)", 0.7e-3, False),
    ("H100s in machines on a 25 Gb/s network", "25 Gb/s Ethernet", 0.7e-3, False),
    # CPU: measured, 3.6 ms for 2048 rows on the 2-core CPU (docs/studies/2026-11-24-training-step-profile.md),
    # proportional to the rows; here each rank is such a 2-core machine.
    ("2-core CPU machines on a 25 Gb/s network", "25 Gb/s Ethernet", 3.6e-3, True),
]


def ring_all_reduce_seconds(nbytes: int, ranks: int, latency: float, bandwidth: float) -> float:
    """alpha-beta model: 2(K-1) steps, each sending nbytes/K."""
    if ranks == 1:
        return 0.0
    steps = 2 * (ranks - 1)
    return steps * latency + steps / ranks * nbytes / bandwidth


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="default")
    parser.add_argument("--ranks", default="2,4,8")
    parser.add_argument("--json", dest="json_path", default=None)
    args = parser.parse_args()
    config = preset(args.preset)
    parameters = sum(p.numel() for p in ActorCritic.from_config(config).parameters())
    gradient_bytes = 4 * parameters
    print(f"{args.preset}: {parameters:,} parameters, {gradient_bytes:,} gradient bytes per minibatch; "
          f"{config.update_epochs * config.num_minibatches} minibatches per update")
    rows = []
    for scenario, link, compute, scales_with_rows in SCENARIOS:
        latency, bandwidth = LINKS[link]
        for ranks in (int(k) for k in args.ranks.split(",")):
            gradient = ring_all_reduce_seconds(gradient_bytes, ranks, latency, bandwidth)
            scalars = ring_all_reduce_seconds(24, ranks, latency, bandwidth)
            communication = gradient + scalars
            # Strong scaling, what `torchrun cli.py train` does: the same global minibatch over K ranks.
            per_rank = compute / ranks if scales_with_rows else compute
            speedup = compute / (per_rank + communication)
            # Weak scaling: num_envs and the minibatch K times larger, each rank's share as before.
            weak = compute / (compute + communication)
            rows.append({"scenario": scenario, "link": link, "ranks": ranks,
                         "gradient_all_reduce_us": round(gradient * 1e6, 1),
                         "scalar_all_reduces_us": round(scalars * 1e6, 1),
                         "minibatch_compute_us_per_rank": round(per_rank * 1e6, 1),
                         "same_minibatch_update_speedup": round(speedup, 2),
                         "same_minibatch_efficiency": round(speedup / ranks, 2),
                         "k_times_larger_minibatch_efficiency": round(weak, 2)})
            print(f"{scenario:42s} K={ranks}: gradient {gradient * 1e6:6.1f} us + scalars {scalars * 1e6:5.1f} us"
                  f" vs compute {per_rank * 1e6:6.1f} us per rank: same minibatch x{speedup:.2f}"
                  f" ({speedup / ranks:.0%}); K x larger minibatch {weak:.0%} efficient")
    if args.json_path:
        write_json(args.json_path, "distributed_comm_cost", args, parameters=parameters,
                   gradient_bytes=gradient_bytes, links={k: {"latency_s": v[0], "bandwidth_bytes_per_s": v[1]}
                                                         for k, v in LINKS.items()},
                   scenarios=[dict(zip(("name", "link", "minibatch_compute_s", "scales_with_rows"), row))
                              for row in SCENARIOS], rows=rows)


if __name__ == "__main__":
    main()
