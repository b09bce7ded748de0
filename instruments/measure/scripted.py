"""Players without a model: scripted policies and a synthetic trace, for tests, previews and benchmarks.

    failure_heatmap(follow_ball_policy(noise=0.02), episodes=1000)  # survives thousands of steps
    failure_heatmap(random_policy(), episodes=1000)                 # loses the ball within dozens
    trace = synthetic_trace(300)   # a Trace to render without a trained agent

Where the ball will come down is read from the frame in one place, `landing_column`, for all of them.
"""

from __future__ import annotations

import numpy as np
import torch

from breakout_ppo.env import GRID, LEFT, NOOP, NUM_ACTIONS, PADDLE_ROW, RIGHT, BatchedBreakout
from instruments.measure.heatmap import Policy
from instruments.measure.traces import Trace

# ---------------------------------------------------------------------------------------------
# Where the ball will land


def _column(plane: torch.Tensor) -> torch.Tensor:
    """(n,) int64: the column of the one lit cell of each (n, 10, 10) plane (0 if none is lit)."""
    return (plane.amax(dim=1) * torch.arange(GRID, device=plane.device)).sum(dim=1).long()


def _row(plane: torch.Tensor) -> torch.Tensor:
    """(n,) int64: the row of the one lit cell of each (n, 10, 10) plane (0 if none is lit)."""
    return (plane.amax(dim=2) * torch.arange(GRID, device=plane.device)).sum(dim=1).long()


def landing_column(obs: torch.Tensor) -> torch.Tensor:
    """(n,) int64: the column where each frame's ball will reach row 8, just above the paddle, if no
    brick is in its way. Its direction is read from the trail (the ball's last cell); side walls
    reflect it.

    A rising ball is assumed to turn down at once (off a brick, it stays in its row for that step),
    which keeps a paddle that follows this column ahead of the ball.
    """
    ball, trail = obs[:, 1], obs[:, 2]
    ball_column, ball_row = _column(ball), _row(ball)
    trail_column, trail_row = _column(trail), _row(trail)
    # Steps until the ball reaches row 8.
    rising = ball_row < trail_row
    steps = PADDLE_ROW - 1 - ball_row + rising.long()
    # Side walls reflect: unfold the column onto a line of period 20 and fold it back.
    dx = (ball_column - trail_column).sign()
    # A ball that just hit a side wall stayed in its column: it now moves away from it.
    dx = torch.where(dx != 0, dx, (ball_column == 0).long() - (ball_column == GRID - 1).long())
    unfolded = (ball_column + dx * steps) % (2 * GRID)
    return torch.where(unfolded < GRID, unfolded, 2 * GRID - 1 - unfolded)


# ---------------------------------------------------------------------------------------------
# Scripted policies


def random_policy(seed: int = 0) -> Policy:
    """Uniformly random actions: loses the ball within a few dozen steps."""
    generator = torch.Generator().manual_seed(seed)

    def policy(obs: torch.Tensor) -> torch.Tensor:
        return torch.randint(NUM_ACTIONS, (obs.shape[0],), generator=generator).to(obs.device)

    return policy


def follow_ball_policy(noise: float = 0.0, seed: int = 0, intercept: bool = True) -> Policy:
    """Move the paddle towards the ball, read from the frame; with probability `noise` play a
    uniformly random action instead.

    With `intercept` it aims at `landing_column` and survives thousands of steps; without, it
    chases the ball's current column and loses it within a hundred or so.
    """
    generator = torch.Generator().manual_seed(seed)

    def policy(obs: torch.Tensor) -> torch.Tensor:
        target = landing_column(obs) if intercept else _column(obs[:, 1])
        paddle_column = obs[:, 0, PADDLE_ROW].argmax(dim=1)
        action = torch.where(target < paddle_column, LEFT, torch.where(target > paddle_column, RIGHT, NOOP))
        if noise > 0:
            u = torch.rand(obs.shape[0], generator=generator).to(obs.device)
            random = torch.randint(NUM_ACTIONS, (obs.shape[0],), generator=generator).to(obs.device)
            action = torch.where(u < noise, random, action)
        return action

    return policy


# ---------------------------------------------------------------------------------------------
# A trace without a model


def synthetic_trace(max_steps: int = 300, seed: int = 0, skill: float = 0.98) -> Trace:
    """One episode of the real game played by a noisy ball-follower, with made-up probabilities,
    values and saliency (a blob on the ball and the paddle). `skill` is the chance of moving
    towards where the ball will land (`landing_column`); the rest are random actions. Ends at the
    loss or after `max_steps`."""
    rng = np.random.default_rng(seed)
    env = BatchedBreakout(1, sticky_action_prob=0.0, seed=seed)
    obs = env.reset()
    frames, actions, rewards = [], [], []
    for _ in range(max_steps):
        frame = obs[0].numpy().copy()
        paddle_x = int(np.argwhere(frame[0, PADDLE_ROW] > 0.5)[0, 0])
        target = int(landing_column(obs)[0])
        if rng.random() < skill:
            action = NOOP if target == paddle_x else (LEFT if target < paddle_x else RIGHT)
        else:
            action = int(rng.integers(NUM_ACTIONS))
        obs, reward, _, _, info = env.step(torch.tensor([action]))
        frames.append(frame)
        actions.append(action)
        rewards.append(float(reward[0]))
        if bool(info.done[0]):
            break
    n = len(actions)
    actions = np.array(actions, dtype=np.int64)
    logits = rng.normal(0.0, 0.6, (n, 3)) + 2.0 * np.eye(3)[actions]
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    rewards = np.array(rewards, dtype=np.float32)
    discounted = np.zeros(n, dtype=np.float32)  # the critic's target, roughly: discounted return to go
    running = 0.0
    for t in range(n - 1, -1, -1):
        running = rewards[t] + 0.97 * running
        discounted[t] = running
    values = discounted + rng.normal(0.0, 0.15, n).astype(np.float32)
    frames = np.stack(frames).astype(np.float32)
    yy, xx = np.mgrid[:GRID, :GRID]
    saliency = np.zeros((n, GRID, GRID), dtype=np.float32)
    for t in range(n):
        for channel, weight in ((1, 1.0), (0, 0.5)):
            cells = np.argwhere(frames[t, channel] > 0.5)
            for y, x in cells:
                saliency[t] += weight * np.exp(-((yy - y) ** 2 + (xx - x) ** 2) / 3.0)
    saliency += rng.random((n, GRID, GRID)).astype(np.float32) * 0.1
    return Trace(frames, actions, probs.astype(np.float32), values, rewards, saliency)
