"""Actor-critic networks for 10x10x4 MinAtar frames.

Two towers, each a torso and a linear head: the actor's gives the logits of the 3 actions, the
critic's the state value. The MinAtar PPO baselines share nothing between them; here the towers
may share the torso's first layer or all of it (`Config.shared_layers`; the default shares all,
which learned more per step). A shared layer keeps both names, so layer names are stable
(`actor.torso.1`, `critic.torso.1`, `actor.head`, `critic.head`, ...): the instruments attach to
layers by name.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from breakout_ppo.config import Config
from breakout_ppo.env import GRID, LIVE_FRAME_CELLS, NUM_ACTIONS, NUM_CHANNELS

ARCHITECTURES = ("mlp", "cnn")


class FrameLinear(nn.Linear):
    """`nn.Linear` on the flattened frame that multiplies only the cells a Breakout frame can light.

    The 150 inputs outside `LIVE_FRAME_CELLS` are 0 in every frame, so their weights never get a
    gradient and multiplying by them is wasted work: 37% of this layer's arithmetic, which is most of
    the network's. The live cells are one contiguous run, so the product reads a strided view of the
    input and of the weight, no copy. The weight keeps its (out, 400) shape and initialisation: the
    same function as the plain layer, the same checkpoints, the same hooks for the instruments.
    """

    def __init__(self, out_features: int):
        super().__init__(NUM_CHANNELS * GRID * GRID, out_features)

    def forward(self, x):
        return F.linear(x[:, LIVE_FRAME_CELLS], self.weight[:, LIVE_FRAME_CELLS], self.bias)


def make_torso(arch: str, hidden: int) -> nn.Sequential:
    """Frame (N, 4, 10, 10) -> features (N, hidden)."""
    if arch == "mlp":
        # The flattened frame, as the gymnax and purejaxrl baselines feed it.
        return nn.Sequential(
            nn.Flatten(),
            FrameLinear(hidden),
            nn.ReLU(),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
        )
    if arch == "cnn":
        # MinAtar's own network: 16 3x3 filters without padding, then one dense layer.
        conv_out = 16 * (GRID - 2) * (GRID - 2)
        return nn.Sequential(
            nn.Conv2d(NUM_CHANNELS, 16, kernel_size=3),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(conv_out, hidden),
            nn.ReLU(),
        )
    raise ValueError(f"unknown architecture {arch!r}; choose one of {', '.join(ARCHITECTURES)}")


class Tower(nn.Module):
    def __init__(self, arch: str, hidden: int, outputs: int, head_gain: float):
        super().__init__()
        self.torso = make_torso(arch, hidden)
        self.head = nn.Linear(hidden, outputs)
        # Orthogonal init as in the PPO implementation-details literature: a small gain on the
        # policy head starts the policy near uniform, gain 1 on the value head.
        for layer in self.torso:
            if isinstance(layer, (nn.Linear, nn.Conv2d)):
                nn.init.orthogonal_(layer.weight, math.sqrt(2))
                nn.init.zeros_(layer.bias)
        nn.init.orthogonal_(self.head.weight, head_gain)
        nn.init.zeros_(self.head.bias)

    def forward(self, obs):
        return self.head(self.torso(obs))


class ActorCritic(nn.Module):
    """`forward(obs) -> (logits (N, 3), value (N,))` on float frames (N, 4, 10, 10).

    `shared_layers` of the torso's layers, counted from the input, are shared by the two towers:
    one module under both towers' names (`Taps` answers to either; `named_modules()` lists it once,
    as the actor's), run once per forward. 0 gives two separate towers, 1 shares the first layer
    (the network's costliest product), 2 the whole torso, so that only the heads stay apart.
    """

    def __init__(self, arch: str = Config.arch, hidden: int = Config.hidden, shared_layers: int = Config.shared_layers):
        super().__init__()
        if shared_layers not in (0, 1, 2):
            raise ValueError(f"shared_layers must be 0, 1 or 2 (the torso has two layers), got {shared_layers!r}")
        self.arch, self.hidden, self.shared_layers = arch, hidden, shared_layers
        self.actor = Tower(arch, hidden, NUM_ACTIONS, head_gain=0.01)
        self.critic = Tower(arch, hidden, 1, head_gain=1.0)
        # How many of the torso's modules (a layer with its ReLU, and the Flatten) make up the
        # first k layers.
        self.shared_depth = {"mlp": (0, 3, 5), "cnn": (0, 2, 5)}[arch][shared_layers]
        for i in range(self.shared_depth):
            self.critic.torso[i] = self.actor.torso[i]

    @classmethod
    def from_config(cls, config) -> "ActorCritic":
        return cls(config.arch, config.hidden, config.shared_layers)

    def forward(self, obs: torch.Tensor):
        if not self.shared_depth:
            return self.actor(obs), self.critic(obs).squeeze(-1)
        features = obs
        for layer in self.actor.torso[:self.shared_depth]:
            features = layer(features)
        actor, critic = features, features
        for layer in self.actor.torso[self.shared_depth:]:
            actor = layer(actor)
        for layer in self.critic.torso[self.shared_depth:]:
            critic = layer(critic)
        return self.actor.head(actor), self.critic.head(critic).squeeze(-1)
