"""Per-step records of one replayed episode: what the agent saw, did, expected and looked at.

    trace = record_episode(model, seed=0)   # one episode, sampled actions, with saliency
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from breakout_ppo.env import NUM_ACTIONS, BatchedBreakout
from breakout_ppo.ppo import sample_actions
from instruments.measure.saliency import gradient_saliency, reduce_channels


@dataclass
class Trace:
    """One episode (or a prefix of one), step by step. Row t describes the decision at step t.

    frames:   float32 (T, 4, 10, 10), the observation the agent acted on (MinAtar channels)
    actions:  int64 (T,), the executed action (0 no-op, 1 left, 2 right)
    probs:    float32 (T, 3), the policy's action probabilities
    values:   float32 (T,), the critic's value estimate
    rewards:  float32 (T,), reward received after the action
    saliency: float32 (T, 10, 10) or None, saliency of the chosen action per cell
    """

    frames: np.ndarray
    actions: np.ndarray
    probs: np.ndarray
    values: np.ndarray
    rewards: np.ndarray
    saliency: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.actions)

    @property
    def returns_so_far(self) -> np.ndarray:
        """Running undiscounted return after each step."""
        return np.cumsum(self.rewards)


def record_episode(model, seed: int = 0, max_steps: int = 10_000, *, env: BatchedBreakout | None = None,
                   greedy: bool = False, saliency: bool = True, sticky_action_prob: float = 0.1,
                   device=None, check_every: int = 64) -> Trace:
    """Play one episode with `model` and record it step by step as a `Trace`.

    The episode is the first game of `env` (reset first), or, without `env`, of a fresh
    `BatchedBreakout(1, device, sticky_action_prob, seed=seed)`. It ends when that game's
    episode ends or after `max_steps` steps (the trace is then a prefix). Actions are sampled from
    the policy by the Gumbel-max trick, as `breakout_ppo.evaluate` plays, from a generator seeded
    with `seed` (or the argmax when `greedy`): same model, same seed, same trace.

    Acting runs under `torch.inference_mode`. Each step keeps a copy of the frame acted on (the
    env updates its observation buffer in place), the executed action (`info.executed_action`,
    which a sticky action can make differ from the policy's choice), the action probabilities, the
    value and the reward. Whether the game is over is read every `check_every` steps, not every
    step; the steps played past its end are dropped.

    With `saliency`, the vanilla-gradient saliency (`instruments.measure.saliency.gradient_saliency`) of the
    logit of the action the policy *chose* (its decision, before any sticky repeat) is computed
    after the episode in one batched backward pass over the copied frames, reduced over channels
    by max |gradient| to (T, 10, 10).
    """
    if max_steps < 1:
        raise ValueError(f"max_steps must be positive, got {max_steps}")
    if device is None:
        device = env.device if env is not None else next(model.parameters()).device
    device = torch.device(device)
    if env is None:
        env = BatchedBreakout(1, device=device, sticky_action_prob=sticky_action_prob, seed=seed)
    generator = torch.Generator(device).manual_seed(seed)

    with torch.inference_mode():
        frames = torch.empty(max_steps, *env.observe().shape[1:], device=device)
        chosen = torch.empty(max_steps, dtype=torch.int64, device=device)
        executed = torch.empty_like(chosen)
        probs = torch.empty(max_steps, NUM_ACTIONS, device=device)
        values = torch.empty(max_steps, device=device)
        rewards = torch.empty(max_steps, device=device)
        done = torch.zeros(max_steps, dtype=torch.bool, device=device)
        obs = env.reset()
        steps = max_steps
        for t in range(max_steps):
            frames[t] = obs[0]  # a copy: `obs` is the env's buffer
            logits, value = model(obs)
            action = logits.argmax(dim=-1) if greedy else sample_actions(logits, generator)
            obs, reward, _, _, info = env.step(action)
            chosen[t], executed[t], values[t], rewards[t] = action[0], info.executed_action[0], value[0], reward[0]
            probs[t] = torch.softmax(logits[0], dim=-1)
            done[t] = info.done[0]
            if (t + 1) % check_every == 0 and done[: t + 1].any():
                break
        ended = done.nonzero()
        if len(ended):
            steps = int(ended[0, 0]) + 1

    saliency_map = None
    if saliency:
        grads = gradient_saliency(model, frames[:steps], action=chosen[:steps])
        saliency_map = reduce_channels(grads, "abs_max").cpu().numpy()

    def numpy(t):
        return t[:steps].cpu().numpy()

    return Trace(frames=numpy(frames), actions=numpy(executed), probs=numpy(probs), values=numpy(values),
                 rewards=numpy(rewards), saliency=saliency_map)
