"""Per-step records of one replayed episode: what the agent saw, did, expected and looked at."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


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
