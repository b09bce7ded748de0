"""The one configuration of a training run: every hyperparameter, its default and why.

CLI flags map one to one onto these fields (`--learning-rate` -> `learning_rate`). A preset is a
named set of overrides of the defaults; the defaults themselves are the preset `default`.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Config:
    # --- run ---
    seed: int = 1
    """Seeds the model init, the environments, action sampling and minibatch order."""
    total_steps: int = 14_000_000
    """Environment steps to train for (summed over all envs); the learning rate reaches 0 here.
    14M steps took 120-150 s on the 2-core CPU on 2026-11-25 and about 195 s on 2026-12-02: the
    machines of that kind differ by the day."""
    checkpoint_every: int = 100
    """Save a checkpoint every this many updates (and always at the end or on Ctrl-C)."""

    # --- environment ---
    num_envs: int = 1024
    """Games stepped in parallel: rollout width. Many games and short rollouts (1024 x 16) learned
    faster per second on a 2-core CPU than the baselines' 64 x 128: batched acting is cheaper per
    step, and each update sees more decorrelated games."""
    sticky_action_prob: float = 0.1
    """MinAtar's default: the previous action is repeated with this probability."""
    max_episode_steps: int | None = 10_000
    """Episodes reaching this length are truncated (and bootstrapped, not treated as lost)."""
    partial_wall_starts: float = 0.5
    """Fraction of training episodes that start from a random partial wall (each brick standing
    with a probability drawn per episode) rather than MinAtar's full one; 0 trains on MinAtar's
    game alone. Agents stall at 20-30 points, clearing most of the first wall and losing the ball
    with a few bricks left; these starts show the end of a wall and its refill from the first
    minute. Training return at 8M steps, seeds 15-18: 0 gave 25.9/26.3/28.3/21.6, 0.25 gave
    34.5/29.5/29.9/27.5, 0.5 gave 39.6/31.4/33.5/27.1; on the wall clock 0.5 held both time-to-score
    gates on 6 of 6 seeds, 0.25 on 5, 0 on 3 (2026-11-25, value loss clipped; docs/results.md). 0.75
    with the value unclipped: no better at 8M (2026-12-02). Logged training returns leave
    those episodes out; evaluation always plays MinAtar's game."""
    random_ball_starts: bool = True
    """Episodes that start from a partial wall also start the ball in a random cell of rows 3-5,
    heading down-left or down-right (MinAtar's starts in row 3 at a side wall); no effect with
    `partial_wall_starts` 0. A stuck agent loses the ball on a few paths it rarely saw: these
    starts show it many more. Training return at 8M steps, seeds 15-22: off
    41.0/44.0/31.5/23.5/38.9/26.6/53.2/55.8, on 43.6/40.4/39.0/33.7/42.9/47.8/41.5/32.1; over
    seeds 15-26 ahead on 8 of 12 at 4M and at 8M (mean at 8M 41.8 against 39.9, lowest 31.4
    against 23.5). On the wall clock, seeds 1-3 at 47,000-66,000 steps/s: on 36.7/37.9/46.3
    within 90 s and 45.2/45.7/63.2 within 150 s, off 25.5/28.9/37.6 and 30.8/42.8/46.2
    (2026-12-02, docs/results.md)."""

    # --- model ---
    arch: str = "mlp"
    """Torso of both towers: "mlp" on the flattened frame or "cnn" (MinAtar's 16 3x3 filters)."""
    hidden: int = 128
    """Width of the torso layers. With the torso shared, 128 learned more per step than 64:
    training return at 8M steps on seeds 3, 15-18, 20, 21, 23, mean 77.2 against 57.4 (ahead on
    6 of 8; 64's four weakest went from 49-51 to 82-89, seed 15 fell from 59.2 to 40.7). It runs
    at 0.72-0.80x the steps/s of 64, and on the wall clock held both time-to-score gates on seeds
    1-6 where 64 held them on five (2026-12-03, docs/results.md). With separate towers 128 was no
    better per step (2026-11-24)."""
    shared_layers: int = 2
    """Layers of the torso, counted from the input, that actor and critic share: 0 two separate
    towers (the MinAtar baselines' choice), 1 the first layer (the frame's product, most of the
    network's arithmetic), 2 the whole torso, only the heads apart. Sharing learned more per step:
    training return at 8M steps, seeds 15-26, mean 41.2 with separate towers, 55.6 with the first
    layer shared (ahead on 11 of 12), 71.0 with the whole torso (ahead of the first layer alone
    on 9 of 12; lowest seed 48.7 against 30.3 and 30.5; 2026-12-02/03, docs/results.md).
    A likely reason, not tested apart: the value loss's gradient, a denser signal than the
    policy's, then shapes the features the policy reads."""
    precision: str = "float32"
    """Matrix products of the network in rollouts and updates: "float32", or "bfloat16" (autocast;
    weights, optimiser and losses stay float32). Evaluation and the instruments run in float32."""

    # --- PPO ---
    num_steps: int = 16
    """Rollout length per env between updates; a batch holds num_envs * num_steps transitions."""
    learning_rate: float = 5e-3
    """Adam step size at the start."""
    anneal_lr: bool = True
    """Decay the learning rate linearly to 0 over `total_steps`."""
    gamma: float = 0.99
    """Discount factor."""
    gae_lambda: float = 0.95
    """GAE(lambda) trace decay."""
    num_minibatches: int = 8
    """Minibatches per epoch (2048 transitions each with the defaults)."""
    update_epochs: int = 4
    """Passes over each batch."""
    clip_coef: float = 0.2
    """PPO ratio clip; also clips the value update when `clip_value` is on."""
    clip_value: bool = False
    """Clip the value loss as the policy's: V may move at most `clip_coef` from its rollout-time
    estimate before the loss stops rewarding the move. Off by default: values run to 5-10 points
    and jump when the agent reaches a new wall or a refill, and a critic held to 0.2 per update
    lags behind. Training return at 8M steps, seeds 15-22: clipped
    33.2/34.1/36.3/46.6/41.5/22.7/29.0/38.2 (mean 35.2), unclipped
    50.6/30.6/44.7/48.0/37.7/35.3/49.3/38.9 (mean 41.9, lowest 30.6 against 22.7)."""
    ent_coef: float = 0.005
    """Weight of the entropy bonus in the optimised loss. 0.005 beat 0.01 within 90 s on all three
    seeds measured (the evaluation samples the policy, so a sharper policy scores higher)."""
    anneal_ent: bool = False
    """Decay `ent_coef` linearly to 0 over `total_steps`, on the learning rate's schedule: explore
    early, sharpen the (sampled) policy late."""
    vf_coef: float = 0.5
    """Weight of the value loss."""
    max_grad_norm: float = 0.5
    """Global gradient-norm clip."""
    norm_adv: bool = True
    """Normalise advantages per minibatch."""

    @property
    def batch_size(self) -> int:
        return self.num_envs * self.num_steps

    @property
    def minibatch_size(self) -> int:
        return self.batch_size // self.num_minibatches

    @property
    def num_updates(self) -> int:
        return max(1, self.total_steps // self.batch_size)

    def validate(self) -> "Config":
        """Raise ValueError with one clear line for values that make no sense."""
        checks = [
            (self.total_steps > 0, "total_steps must be positive"),
            (self.num_envs > 0, "num_envs must be positive"),
            (self.num_steps > 0, "num_steps must be positive"),
            (self.num_minibatches > 0, "num_minibatches must be positive"),
            (self.batch_size % self.num_minibatches == 0,
             f"num_envs * num_steps ({self.batch_size}) must be divisible by num_minibatches ({self.num_minibatches})"),
            # One sample has no standard deviation: its normalised advantage, and then the loss, is NaN.
            (self.minibatch_size >= 2, f"a minibatch needs at least 2 samples, got num_envs * num_steps / "
                                       f"num_minibatches = {self.minibatch_size}"),
            (self.update_epochs > 0, "update_epochs must be positive"),
            (self.learning_rate > 0, "learning_rate must be positive"),
            (0 <= self.gamma <= 1, "gamma must be in [0, 1]"),
            (0 <= self.gae_lambda <= 1, "gae_lambda must be in [0, 1]"),
            (self.clip_coef > 0, "clip_coef must be positive"),
            (self.ent_coef >= 0, "ent_coef must be non-negative"),
            (self.vf_coef >= 0, "vf_coef must be non-negative"),
            (self.max_grad_norm > 0, "max_grad_norm must be positive"),
            (0 <= self.partial_wall_starts <= 1, "partial_wall_starts must be in [0, 1]"),
            (0 <= self.sticky_action_prob <= 1, "sticky_action_prob must be in [0, 1]"),
            (self.max_episode_steps is None or self.max_episode_steps > 0, "max_episode_steps must be positive"),
            (self.arch in ("mlp", "cnn"), f"arch must be 'mlp' or 'cnn', got {self.arch!r}"),
            (self.precision in ("float32", "bfloat16"),
             f"precision must be 'float32' or 'bfloat16', got {self.precision!r}"),
            (self.hidden > 0, "hidden must be positive"),
            (self.shared_layers in (0, 1, 2), f"shared_layers must be 0, 1 or 2, got {self.shared_layers}"),
            (self.checkpoint_every > 0, "checkpoint_every must be positive"),
        ]
        for f in dataclasses.fields(self):  # before the range checks: inf passes "must be positive"
            value = getattr(self, f.name)
            if isinstance(value, float) and not math.isfinite(value):
                raise ValueError(f"{f.name} must be a finite number, got {value}")
        for ok, message in checks:
            if not ok:
                raise ValueError(message)
        return self

    def differences(self, other: "Config", ignore=()) -> list[str]:
        """`field: value here -> value there` for each field that differs, for error messages."""
        return [f"{f.name} {getattr(self, f.name)!r} -> {getattr(other, f.name)!r}"
                for f in dataclasses.fields(self)
                if f.name not in ignore and getattr(self, f.name) != getattr(other, f.name)]

    def replace(self, **changes) -> "Config":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_saved(cls, values: dict) -> "Config":
        """A config read back from a checkpoint or a run's config.json, of this version or an
        older one: a field the older version lacked gets the value those runs used."""
        values = dict(values)
        for old, (new, convert) in RENAMED_FIELDS.items():
            if old in values:
                values.setdefault(new, convert(values.pop(old)))
        return cls.from_dict({**FIELDS_BEFORE_THEY_EXISTED, **values})

    @classmethod
    def from_dict(cls, values: dict) -> "Config":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"unknown config fields: {', '.join(sorted(unknown))}")
        return cls(**values)


# Fields added after runs were saved without them, with the value those runs actually used (not
# today's default): a saved config must say how its agent was trained.
FIELDS_BEFORE_THEY_EXISTED = {"partial_wall_starts": 0.0, "clip_value": True, "anneal_ent": False,
                             "random_ball_starts": False, "shared_layers": 0}

# Fields renamed since runs were saved with them: old name -> how to read its value today.
RENAMED_FIELDS = {
    # 2026-12-03: the on/off switch for sharing the first layer became a count of shared layers.
    "shared_input_layer": ("shared_layers", int),
}

PRESETS = {
    "default": {},
    # Seconds on a laptop CPU: for tests and for checking an installation.
    "smoke": dict(total_steps=8 * 32 * 4, num_envs=8, num_steps=32, num_minibatches=2, update_epochs=2, checkpoint_every=2),
}


def preset(name: str, **overrides) -> Config:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    return Config(**{**PRESETS[name], **overrides}).validate()


def field_docs() -> dict[str, str]:
    """The docstring under each field of `Config`, read from the source: the CLI's help text."""
    import ast
    import inspect
    import textwrap

    tree = ast.parse(textwrap.dedent(inspect.getsource(Config)))
    body = tree.body[0].body
    docs = {}
    for node, following in zip(body, body[1:]):
        if (isinstance(node, ast.AnnAssign) and isinstance(following, ast.Expr)
                and isinstance(following.value, ast.Constant) and isinstance(following.value.value, str)):
            docs[node.target.id] = following.value.value.strip()
    return docs
