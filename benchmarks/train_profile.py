"""Where a training step's time goes: environment, acting, update forward, backward, optimizer.

Runs the real `collect_rollout` and `ppo_update` that training runs, with the default preset's
shapes (or any preset/overrides), over a few updates after warm-up. Each phase is timed by wrapping
the function that does it (the env's `step`, `ppo_loss`, `Tensor.backward`, the optimizer's
`step`); the rest of each call is reported as its own line. Prints microseconds per environment
step for each phase plus the end-to-end steps per second.

    python benchmarks/train_profile.py [--updates 5] [--threads N] [--set num_envs=256 ...] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from breakout_ppo import ppo
from breakout_ppo.config import preset
from breakout_ppo.env import BatchedBreakout
from breakout_ppo.model import ActorCritic


def parse_overrides(pairs):
    out = {}
    for pair in pairs:
        key, value = pair.split("=", 1)
        if value.lower() in ("true", "false"):  # else "False" would pass on as a truthy string
            out[key] = value.lower() == "true"
            continue
        for cast in (int, float):
            try:
                value = cast(value)
                break
            except ValueError:
                continue
        out[key] = value
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="default")
    parser.add_argument("--set", nargs="*", default=[], metavar="FIELD=VALUE")
    parser.add_argument("--updates", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--json", dest="json_path")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    config = preset(args.preset, **parse_overrides(args.set))
    # Built as train.py builds them.
    model = ActorCritic.from_config(config)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.learning_rate, eps=1e-5, fused=True)
    env = BatchedBreakout(config.num_envs, sticky_action_prob=config.sticky_action_prob,
                          max_episode_steps=config.max_episode_steps, seed=config.seed,
                          partial_wall_prob=config.partial_wall_starts, random_ball_starts=config.random_ball_starts)
    sampler = torch.Generator().manual_seed(config.seed + 1)
    obs = env.reset()

    seconds = {}

    def timed(name, fn):
        def wrapper(*args, **kwargs):
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                seconds[name] = seconds.get(name, 0.0) + time.perf_counter() - start
        return wrapper

    env.step = timed("env step", env.step)
    optimizer.step = timed("optimizer step", optimizer.step)
    real_loss, real_backward = ppo.ppo_loss, torch.Tensor.backward
    ppo.ppo_loss = timed("update forward+loss", real_loss)
    torch.Tensor.backward = timed("backward", real_backward)
    try:
        for update in range(args.updates + 1):
            if update == 1:  # the first update is warm-up
                seconds.clear()
                wall = time.perf_counter()
            rollout, obs, _ = timed("rollout", ppo.collect_rollout)(model, env, obs, config, sampler)
            timed("update", ppo.ppo_update)(model, optimizer, rollout, ppo.annealed(config, update), sampler)
        wall = time.perf_counter() - wall
    finally:
        ppo.ppo_loss, torch.Tensor.backward = real_loss, real_backward

    phases = {
        "env step": seconds["env step"],
        "acting (forward, sampling, buffers)": seconds["rollout"] - seconds["env step"],
        "update forward+loss": seconds["update forward+loss"],
        "backward": seconds["backward"],
        "optimizer step": seconds["optimizer step"],
        "update other (GAE, copies, clipping)": seconds["update"] - seconds["update forward+loss"]
        - seconds["backward"] - seconds["optimizer step"],
        "outside rollout and update": wall - seconds["rollout"] - seconds["update"],
    }
    steps = args.updates * config.batch_size
    print(f"{config.num_envs} envs x {config.num_steps} steps, minibatch {config.minibatch_size}, "
          f"{config.update_epochs} epochs, {config.arch} {config.hidden}, shared_layers {config.shared_layers}, "
          f"{config.precision}, {torch.get_num_threads()} threads")
    print(f"{'phase':38} {'us/step':>9} {'share':>7}")
    rows = {}
    for name, phase_seconds in phases.items():
        rows[name] = phase_seconds / steps * 1e6
        print(f"{name:38} {rows[name]:9.2f} {phase_seconds / wall:7.1%}")
    print(f"{'end to end':38} {wall / steps * 1e6:9.2f}   -> {steps / wall:,.0f} steps/s")
    if args.json_path:
        Path(args.json_path).write_text(json.dumps({"config": config.to_dict(), "threads": torch.get_num_threads(),
                                                     "us_per_step": rows, "sps": steps / wall}, indent=2) + "\n")


if __name__ == "__main__":
    main()
