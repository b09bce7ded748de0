"""Time to build the failure heatmap: 1000 episodes, one per env slot, capped at 10,000 steps.

The target is 15 s on a 2-core CPU for the trained agent, whose episodes are long. Without a
checkpoint, the policies timed are a heuristic that survives long (it aims the paddle at where
the ball will come down; sticky actions make it miss now and then: mean length ~1,400 steps, a few
episodes reach the cap), and the same heuristic paying for a network: an untrained ActorCritic
(the default config's architecture unless --arch says otherwise) is run on every frame the
heuristic acts on, so that the time includes the forward pass a trained agent would cost.

    python benchmarks/heatmap_speed.py                                   # the heuristic policies
    python benchmarks/heatmap_speed.py --checkpoint runs/<run>/checkpoint.pt --json /tmp/heatmap_speed.json
"""

from __future__ import annotations

import argparse
import time

import torch

from bench_report import write_json
from breakout_ppo.config import Config
from breakout_ppo.model import ActorCritic
from instruments.measure.heatmap import failure_heatmap, policy_from_model, save_heatmap_png
from instruments.measure.scripted import follow_ball_policy


def load_checkpoint_policy(path, greedy, seed):
    try:
        from breakout_ppo.checkpoint import load_agent
    except ImportError as error:
        raise SystemExit(f"--checkpoint needs breakout_ppo.checkpoint.load_agent, which is missing ({error})")
    model, config = load_agent(path)
    return policy_from_model(model, greedy=greedy, seed=seed), f"{config.arch}-{config.hidden}"


def heuristic_with_network_cost(noise, seed, arch, hidden):
    """The heuristic's actions, after a forward pass of an untrained network on the same frames."""
    torch.manual_seed(seed)
    model = ActorCritic(arch, hidden).eval()
    network = policy_from_model(model, seed=seed)
    heuristic = follow_ball_policy(noise=noise, seed=seed)

    def policy(obs):
        network(obs)
        return heuristic(obs)

    return policy


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--episodes", type=int, default=1000)
    parser.add_argument("--max-episode-steps", type=int, default=10_000)
    parser.add_argument("--last-k", type=int, default=8)
    parser.add_argument("--noise", type=float, default=0.0, help="the heuristic's chance of a random action")
    parser.add_argument("--arch", default=None, help="the stand-in network's architecture (default: config's)")
    parser.add_argument("--hidden", type=int, default=None, help="its hidden width (default: config's)")
    parser.add_argument("--checkpoint", default=None, help="time this trained agent instead of the heuristics")
    parser.add_argument("--greedy", action="store_true", help="with --checkpoint: argmax actions, not sampled")
    parser.add_argument("--compact-every", type=int, default=64, help="steps between batch compactions; 0: never")
    parser.add_argument("--repeats", type=int, default=1, help="runs per policy; the table shows the fastest")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--png", default=None, help="also save the last policy's heatmap here")
    parser.add_argument("--json", dest="json_path", default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    defaults = Config()
    arch, hidden = args.arch or defaults.arch, args.hidden or defaults.hidden
    if args.checkpoint:
        policy, name = load_checkpoint_policy(args.checkpoint, args.greedy, args.seed)
        policies = {f"checkpoint ({name}, {'greedy' if args.greedy else 'sampled'})": lambda: policy}
    else:
        policies = {
            f"heuristic (noise {args.noise:g})": lambda: follow_ball_policy(noise=args.noise, seed=args.seed),
            f"heuristic + {arch}-{hidden} forward": lambda: heuristic_with_network_cost(
                args.noise, args.seed, arch, hidden),
        }

    rows = []
    for name, make_policy in policies.items():
        times = []
        for _ in range(args.repeats):
            policy = make_policy()  # fresh random streams: every repeat plays the same episodes
            start = time.perf_counter()
            heatmap = failure_heatmap(policy, episodes=args.episodes, last_k=args.last_k,
                                      max_episode_steps=args.max_episode_steps, seed=args.seed,
                                      compact_every=args.compact_every or None)
            times.append(time.perf_counter() - start)
        rows.append({"policy": name, "seconds": min(times), "all_seconds": times, **heatmap.summary(),
                     "max_length": int(heatmap.lengths.max())})
        if args.png:
            save_heatmap_png(heatmap, args.png)

    header = f"{'policy':<34} {'episodes':>8} {'lost':>6} {'capped':>6} {'return':>7} {'mean len':>8} " \
             f"{'max len':>7} {'frames':>10} {'seconds':>8} {'frames/s':>10}"
    print(f"failure heatmap: {args.episodes} episodes, cap {args.max_episode_steps:,} steps, K = {args.last_k}, "
          f"compaction every {args.compact_every or 'never'}, {torch.get_num_threads()} torch threads")
    print(header)
    print("-" * len(header))
    for r in rows:
        print(f"{r['policy']:<34} {r['episodes']:>8} {r['losses']:>6} {r['truncated']:>6} {r['mean_return']:>7.1f} "
              f"{r['mean_length']:>8.0f} {r['max_length']:>7} {r['frames']:>10,} {r['seconds']:>8.2f} "
              f"{r['frames'] / r['seconds']:>10,.0f}")

    if args.json_path:
        write_json(args.json_path, "heatmap_speed", args, target_seconds=15.0, rows=rows)


if __name__ == "__main__":
    main()
