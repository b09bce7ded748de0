"""The one configuration of a training run: every hyperparameter, its default and why.

CLI flags map one to one onto these fields (`--learning-rate` -> `learning_rate`). A preset is a
named set of overrides of the defaults; the defaults themselves are the preset `default`.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass


ARCHS = ("mlp", "cnn")
PRECISIONS = ("float32", "bfloat16")


@dataclass(frozen=True)
class Config:
    # --- run ---
    seed: int = 1
    """Seeds the model init, the environments, action sampling and minibatch order."""
    total_steps: int = 14_000_000
    """Environment steps to train for, summed over all envs; the annealed schedules reach 0 here.
    The default takes a few minutes on a 2-core CPU (docs/results.md)."""
    checkpoint_every: int = 100
    """Updates between checkpoints (one is also saved at the end, on Ctrl-C and on SIGTERM)."""

    # --- environment ---
    num_envs: int = 1024
    """Games stepped in parallel (the rollout's width). Many games and short rollouts learned
    faster per second than the baselines' 64 x 128 (docs/studies/2026-11-24-tuning-log.md)."""
    sticky_action_prob: float = 0.1
    """Probability that the previous action is repeated instead of the chosen one (MinAtar's default)."""
    max_episode_steps: int | None = 10_000
    """Steps after which an episode is truncated and bootstrapped, not counted as lost; 'none': no cap."""
    partial_wall_starts: float = 0.5
    """Fraction of training episodes that start from a random partial wall instead of MinAtar's
    full one, so the end of a wall and its refill are seen from the first minute; agents stalled
    at 20-30 points without them. Logged training returns and evaluation leave them out
    (docs/studies/2026-11-25-partial-wall-starts.md)."""
    random_ball_starts: bool = True
    """Partial-wall episodes also start the ball in a random cell of rows 3-5, heading down, so a
    stuck agent sees the paths it loses on (docs/studies/2026-12-02-random-ball-starts.md)."""

    # --- model ---
    arch: str = "mlp"
    """Torso of both towers: "mlp" on the flattened frame or "cnn" (MinAtar's 16 3x3 filters)."""
    hidden: int = 128
    """Width of the torso layers (units or channels). With the torso shared, 128 learned more
    per step than 64 (docs/studies/2026-12-03-hidden-128.md)."""
    shared_layers: int = 2
    """Torso layers, counted from the input, that actor and critic share: 0 two separate towers,
    1 the first layer, 2 the whole torso (only the heads apart), which learned most per step
    (docs/studies/2026-12-03-shared-torso.md)."""
    precision: str = "float32"
    """Matrix products of the network in rollouts and updates: "float32", or "bfloat16" (autocast;
    weights, optimiser and losses stay float32). Evaluation and the instruments run in float32."""

    # --- PPO ---
    num_steps: int = 16
    """Rollout length per env between updates; a batch holds num_envs * num_steps transitions."""
    learning_rate: float = 5e-3
    """Adam step size at the first update."""
    anneal_lr: bool = True
    """Decay the learning rate linearly to 0 over `total_steps`."""
    gamma: float = 0.99
    """Discount factor per step."""
    gae_lambda: float = 0.95
    """GAE(lambda) trace decay."""
    num_minibatches: int = 8
    """Minibatches per epoch; each holds num_envs * num_steps / num_minibatches transitions."""
    update_epochs: int = 4
    """Passes over each batch."""
    clip_coef: float = 0.2
    """PPO ratio clip; also clips the value update when `clip_value` is on."""
    clip_value: bool = False
    """Clip the value loss as the policy's. Off: values jump at a new wall or a refill, and a
    critic held to `clip_coef` per update lags (docs/studies/2026-12-02-value-unclipped.md)."""
    ent_coef: float = 0.005
    """Weight of the entropy bonus in the optimised loss; 0.005 beat 0.01 on the wall clock
    (docs/studies/2026-11-24-entropy-sweep.md)."""
    anneal_ent: bool = False
    """Decay `ent_coef` linearly to 0 over `total_steps`, on the learning rate's schedule."""
    vf_coef: float = 0.5
    """Weight of the value loss."""
    max_grad_norm: float = 0.5
    """Global gradient-norm clip."""
    norm_adv: bool = True
    """Normalise advantages per minibatch (mean 0, std 1)."""

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
            (self.arch in ARCHS, f"arch must be one of {', '.join(ARCHS)}, got {self.arch!r}"),
            (self.precision in PRECISIONS, f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}"),
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
    # One GPU: 8x the envs, so a rollout fills the GPU, and about as many updates in ~60 s at the
    # target 2M steps/s as the default makes in its 14M steps. Provisional: chosen before any GPU
    # run; benchmarks/gpu_check.sh measures its time-to-score (docs/training.md).
    "gpu": dict(num_envs=8192, total_steps=120_000_000, checkpoint_every=200),
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
