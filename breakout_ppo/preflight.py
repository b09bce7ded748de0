"""Preflight: probe the code's real update step for a dead entropy term before training on it.

Computing the entropy bonus but optimising a loss without it is an easy bug to write and a hard one
to see: every entropy setting then "has no effect", and the agent can end far below its potential.
A checkpoint cannot reveal it; running the update can. `check_entropy_term` runs the update that
training runs (`ppo.ppo_update`) twice from the same small rollout, with entropy coefficients 0 and
0.1, and compares the parameters it produces.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch

from breakout_ppo import ppo
from breakout_ppo.config import Config, preset
from breakout_ppo.env import BatchedBreakout
from breakout_ppo.model import ActorCritic

PROBE_COEFFICIENTS = (0.0, 0.1)
MIN_PARAMETER_CHANGE = 1e-6
"""Largest absolute parameter difference below which the two updates count as identical."""


@dataclass(frozen=True)
class EntropyCheck:
    passed: bool
    max_parameter_difference: float
    threshold: float = MIN_PARAMETER_CHANGE
    non_finite: bool = False
    """One update made the parameters NaN or infinite (e.g. a huge learning rate): the probe cannot
    judge the entropy term then, and the config itself is what is wrong."""

    def __str__(self) -> str:
        if self.non_finite:
            return ("one update with this config makes the parameters non-finite (NaN or inf): check "
                    "learning_rate, vf_coef, ent_coef and max_grad_norm")
        if not self.passed:
            return (f"entropy term DEAD: ent_coef {PROBE_COEFFICIENTS[0]} vs {PROBE_COEFFICIENTS[1]} leaves the "
                    f"updated parameters within {self.max_parameter_difference:.3g} of each other (threshold "
                    f"{self.threshold:g}): the update does not optimise the entropy bonus")
        return (f"entropy term live: ent_coef {PROBE_COEFFICIENTS[0]} vs {PROBE_COEFFICIENTS[1]} "
                f"changes the updated parameters by up to {self.max_parameter_difference:.3g} "
                f"(threshold {self.threshold:g})")


def check_entropy_term(config: Config, seed: int = 0, device="cpu", cuda_graphs: bool = False) -> EntropyCheck:
    """Run the real update with ent_coef 0 and 0.1 from one state; the parameters must differ.

    Uses the config's model and PPO settings on a small rollout (about 0.1 s on the CPU), and leaves
    the global RNG as it found it. On CUDA it probes the update training will run there: with
    `cuda_graphs`, the captured graphs (breakout_ppo/cuda_graphs.py), else the eager update.
    """
    probe = preset("smoke").replace(arch=config.arch, hidden=config.hidden,
                                    shared_layers=config.shared_layers, clip_coef=config.clip_coef,
                                    vf_coef=config.vf_coef, max_grad_norm=config.max_grad_norm,
                                    norm_adv=config.norm_adv, learning_rate=config.learning_rate,
                                    # On CUDA the precision training runs; the CPU probe stays as it was.
                                    precision=config.precision if torch.device(device).type == "cuda" else "float32")
    with torch.random.fork_rng(devices=[]):
        if cuda_graphs:
            results = [_captured_update(probe, seed, coefficient, device) for coefficient in PROBE_COEFFICIENTS]
        else:
            results = _eager_updates(probe, seed, device)
    if not all(torch.isfinite(r).all() for r in results):
        return EntropyCheck(passed=False, max_parameter_difference=math.nan, non_finite=True)
    difference = float((results[0] - results[1]).abs().max())
    return EntropyCheck(passed=difference > MIN_PARAMETER_CHANGE, max_parameter_difference=difference)


def _eager_updates(probe: Config, seed: int, device) -> list[torch.Tensor]:
    """The parameters after `ppo.ppo_update` at each probe coefficient, from one rollout."""
    torch.manual_seed(seed)
    model = ActorCritic.from_config(probe).to(device)
    env = BatchedBreakout(probe.num_envs, device=device, sticky_action_prob=0.0, seed=seed)
    rollout, _, _ = ppo.collect_rollout(model, env, env.reset(), probe, torch.Generator(device).manual_seed(seed))
    results = []
    for coefficient in PROBE_COEFFICIENTS:
        updated = copy.deepcopy(model)
        optimizer = torch.optim.Adam(updated.parameters(), lr=probe.learning_rate, eps=1e-5)
        ppo.ppo_update(updated, optimizer, rollout, probe.replace(ent_coef=coefficient),
                       torch.Generator(device).manual_seed(seed + 1))
        results.append(torch.cat([p.detach().flatten() for p in updated.parameters()]).cpu())
    return results


def _captured_update(probe: Config, seed: int, coefficient: float, device) -> torch.Tensor:
    """The parameters after one replay of the captured rollout and update, from the same start for
    every coefficient (same seeds, same rollout): only the entropy coefficient differs."""
    from breakout_ppo.cuda_graphs import capturable_adam, capture_training

    torch.manual_seed(seed)
    model = ActorCritic.from_config(probe).to(device)
    env = BatchedBreakout(probe.num_envs, device=device, sticky_action_prob=0.0, seed=seed)
    env.reset()
    graphs = capture_training(model, capturable_adam(model, probe.learning_rate), env, probe,
                              torch.Generator(device).manual_seed(seed))
    graphs.collect()
    graphs.update(probe.replace(ent_coef=coefficient))
    return torch.cat([p.detach().flatten() for p in model.parameters()]).cpu()
