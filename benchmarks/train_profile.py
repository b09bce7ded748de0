"""Where a training step's time goes: environment, acting forward, update forward, backward, optimizer.

Times each phase of PPO with the default preset's shapes (or any preset/overrides) over a few
updates, after warm-up, and prints microseconds per environment step for each phase plus the
end-to-end steps per second.

    python benchmarks/train_profile.py [--updates 5] [--threads N] [--set num_envs=256 ...] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from breakout_ppo.config import preset
from breakout_ppo.env import BatchedBreakout
from breakout_ppo.model import ActorCritic
from breakout_ppo.ppo import compute_gae, ppo_loss, sample_actions


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
    model = ActorCritic.from_config(config)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.learning_rate, eps=1e-5, fused=True)  # as train.py
    env = BatchedBreakout(config.num_envs, max_episode_steps=config.max_episode_steps,
                          partial_wall_prob=config.partial_wall_starts, random_ball_starts=config.random_ball_starts)
    generator = torch.Generator().manual_seed(0)
    obs = env.reset()
    phases = dict.fromkeys(["env step", "acting forward", "update forward+loss", "backward", "optimizer"], 0.0)

    def timed(name, fn):
        start = time.perf_counter()
        out = fn()
        phases[name] += time.perf_counter() - start
        return out

    for update in range(args.updates + 1):
        if update == 1:  # the first update is warm-up
            phases = dict.fromkeys(phases, 0.0)
            wall = time.perf_counter()
        frames, actions, logps, values, rewards, terms, truncs = [], [], [], [], [], [], []
        for _ in range(config.num_steps):
            with torch.no_grad():
                logits, value = timed("acting forward", lambda: model(obs))
                action = sample_actions(logits, generator)
            frames.append(obs.clone())
            actions.append(action)
            logps.append(F.log_softmax(logits, -1).gather(1, action[:, None]).squeeze(1))
            values.append(value)
            obs, reward, term, trunc, _ = timed("env step", lambda: env.step(action))
            rewards.append(reward)
            terms.append(term)
            truncs.append(trunc)
        from breakout_ppo.ppo import Rollout

        with torch.no_grad():
            last = model(obs)[1]
        rollout = Rollout(torch.stack(frames), torch.stack(actions), torch.stack(logps), torch.stack(values),
                          torch.stack(rewards), torch.stack(terms), torch.stack(truncs),
                          torch.zeros(config.num_steps, config.num_envs), last)
        adv, ret = compute_gae(rollout, config.gamma, config.gae_lambda)
        flat = lambda x: x.reshape(-1, *x.shape[2:])  # noqa: E731
        data = [flat(x) for x in (rollout.obs, rollout.actions, rollout.logprobs, rollout.values, adv, ret)]
        for _ in range(config.update_epochs):
            for idx in torch.randperm(config.batch_size, generator=generator).split(config.minibatch_size):
                batch = [x.index_select(0, idx) for x in data]
                loss, _ = timed("update forward+loss", lambda: ppo_loss(model, *batch, config))
                optimizer.zero_grad(set_to_none=True)
                timed("backward", loss.backward)

                def step():
                    torch.nn.utils.clip_grad_norm_(model.parameters(), config.max_grad_norm)
                    optimizer.step()
                timed("optimizer", step)
    wall = time.perf_counter() - wall
    steps = args.updates * config.batch_size
    print(f"{config.num_envs} envs x {config.num_steps} steps, minibatch {config.minibatch_size}, "
          f"{config.update_epochs} epochs, {config.arch} {config.hidden}, {torch.get_num_threads()} threads")
    print(f"{'phase':24} {'us/step':>9} {'share':>7}")
    rows = {}
    for name, seconds in phases.items():
        rows[name] = seconds / steps * 1e6
        print(f"{name:24} {rows[name]:9.2f} {seconds / wall:7.1%}")
    other = wall - sum(phases.values())
    rows["other (GAE, copies, sampling)"] = other / steps * 1e6
    print(f"{'other (GAE, copies, ...)':24} {rows['other (GAE, copies, sampling)']:9.2f} {other / wall:7.1%}")
    print(f"{'end to end':24} {wall / steps * 1e6:9.2f}   -> {steps / wall:,.0f} steps/s")
    if args.json_path:
        Path(args.json_path).write_text(json.dumps({"config": config.to_dict(), "threads": torch.get_num_threads(),
                                                     "us_per_step": rows, "sps": steps / wall}, indent=2) + "\n")


if __name__ == "__main__":
    main()
