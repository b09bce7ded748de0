"""Evaluate a policy: N episodes run side by side, one per env slot.

Each slot plays exactly one episode and then stops counting. Keeping the first N episodes to
finish instead would keep the short ones and understate a good agent.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from breakout_ppo.env import MINATAR_ACTIONS, BatchedBreakout
from breakout_ppo.ppo import sample_actions
from breakout_ppo.stats import mean_ci

SETTINGS = {
    # The setting targets are set on: MinAtar's sticky actions, a generous step cap.
    "default": dict(sticky_action_prob=0.1, max_episode_steps=10_000),
    # gymnax-blines' published PPO figure: no sticky actions, 1000-step episodes.
    "gymnax": dict(sticky_action_prob=0.0, max_episode_steps=1_000),
}


@dataclass
class EvalResult:
    returns: np.ndarray
    lengths: np.ndarray
    truncated: np.ndarray

    @property
    def mean(self) -> float:
        return float(self.returns.mean())

    @property
    def std(self) -> float:
        return float(self.returns.std(ddof=1)) if len(self.returns) > 1 else 0.0

    @property
    def ci95(self) -> float:
        """Half-width of the 95% Student-t confidence interval of the mean (0 from one episode)."""
        half_width = mean_ci(self.returns)[1]
        return 0.0 if math.isnan(half_width) else half_width

    def summary(self) -> dict:
        return {
            "episodes": int(len(self.returns)),
            "mean": self.mean,
            "std": self.std,
            "ci95": self.ci95,
            "min": float(self.returns.min()),
            "max": float(self.returns.max()),
            "mean_length": float(self.lengths.mean()),
            "truncated": int(self.truncated.sum()),
        }


def policy_actions(model, obs: torch.Tensor, greedy: bool, generator: torch.Generator) -> torch.Tensor:
    """The policy's actions on `obs`: the argmax when `greedy`, else sampled as in training."""
    logits, _ = model(obs)
    return logits.argmax(dim=-1) if greedy else sample_actions(logits, generator)


@torch.inference_mode()
def evaluate(model, episodes=1024, device="cpu", sticky_action_prob=0.1, max_episode_steps=10_000,
             greedy=False, seed=0, backend="torch") -> EvalResult:
    """Play `episodes` episodes with `model` and return their returns and lengths."""
    if backend == "minatar":
        return _evaluate_on_minatar(model, episodes, device, sticky_action_prob, max_episode_steps, greedy, seed)
    if backend != "torch":
        raise ValueError(f"unknown backend {backend!r}; choose torch or minatar")
    device = torch.device(device)
    env = BatchedBreakout(episodes, device=device, sticky_action_prob=sticky_action_prob,
                          max_episode_steps=max_episode_steps, seed=seed)
    generator = torch.Generator(device).manual_seed(seed + 1)
    obs = env.reset()
    finished = torch.zeros(episodes, dtype=torch.bool, device=device)
    returns = torch.zeros(episodes, device=device)
    lengths = torch.zeros(episodes, dtype=torch.int64, device=device)
    truncated = torch.zeros(episodes, dtype=torch.bool, device=device)
    step = 0
    while True:
        obs, _, _, trunc, info = env.step(policy_actions(model, obs, greedy, generator))
        first_end = info.done & ~finished
        returns = torch.where(first_end, info.episode_return, returns)
        lengths = torch.where(first_end, info.episode_length, lengths)
        truncated = truncated | (first_end & trunc)
        finished |= info.done
        step += 1
        # Checking costs a host sync on GPU: look every 64 steps only.
        if step % 64 == 0 and bool(finished.all()):
            break
    return EvalResult(returns.cpu().numpy(), lengths.cpu().numpy(), truncated.cpu().numpy())


def _evaluate_on_minatar(model, episodes, device, sticky_action_prob, max_episode_steps, greedy, seed):
    """The same evaluation on the original `minatar` package, one Python env per episode, so
    anyone can check that the batched env does not flatter the agent."""
    from minatar import Environment

    device = torch.device(device)
    envs = []
    for i in range(episodes):
        env = Environment("breakout", sticky_action_prob=sticky_action_prob)
        env.seed((seed * 1_000_003 + i) % 2**32)
        env.reset()
        envs.append(env)
    generator = torch.Generator(device).manual_seed(seed + 1)
    returns = np.zeros(episodes)
    lengths = np.zeros(episodes, dtype=np.int64)
    truncated = np.zeros(episodes, dtype=bool)
    active = list(range(episodes))
    while active:
        frames = np.stack([envs[i].state() for i in active]).transpose(0, 3, 1, 2)
        obs = torch.from_numpy(frames.astype(np.float32)).to(device)
        actions = policy_actions(model, obs, greedy, generator).cpu().tolist()
        still = []
        for i, action in zip(active, actions):
            reward, terminal = envs[i].act(MINATAR_ACTIONS[action])
            returns[i] += reward
            lengths[i] += 1
            if terminal:
                continue
            if max_episode_steps is not None and lengths[i] >= max_episode_steps:
                truncated[i] = True
                continue
            still.append(i)
        active = still
    return EvalResult(returns, lengths, truncated)
