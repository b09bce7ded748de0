"""Proximal Policy Optimization (Schulman et al. 2017) on `BatchedBreakout`, all in tensors.

The three phases of one update, in the order the paper gives them:
    collect_rollout  -> a `Rollout` of [T, N, ...] tensors (T steps of N envs)
    compute_gae      -> advantages and returns, GAE(lambda) (Schulman et al. 2016)
    ppo_update       -> epochs of minibatch steps on the clipped surrogate + value loss - entropy bonus
`annealed` gives the config of each update (learning rate and entropy coefficient on their
schedule); `train.py` runs the phases in a loop and does the logging and checkpointing.
Under torchrun, `ppo_update` is given the `Ranks` of the run (breakout_ppo/distributed.py): each rank
holds a slice of the envs, and the update averages gradients and normalises advantages over all ranks.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from breakout_ppo.config import Config
from breakout_ppo.distributed import Ranks
from breakout_ppo.env import BatchedBreakout, PackedGames, render, unpack


class Rollout(NamedTuple):
    """T steps of N envs: the single hand-off from acting to learning."""

    obs: torch.Tensor  # float32 [T, N, 4, 10, 10], the frame each action was chosen on
    actions: torch.Tensor  # int64 [T, N], requested actions (the policy's choice)
    logprobs: torch.Tensor  # float32 [T, N], log pi_old(action | obs)
    values: torch.Tensor  # float32 [T, N], V_old(obs)
    rewards: torch.Tensor  # float32 [T, N]
    terminated: torch.Tensor  # bool [T, N], the episode was lost at this step: no bootstrap
    truncated: torch.Tensor  # bool [T, N], the episode hit the step cap: bootstrap from V(final obs)
    truncation_values: torch.Tensor  # float32 [T, N], V(final obs) where truncated, else 0
    last_value: torch.Tensor  # float32 [N], V of the observation after the last step


class EpisodeStats(NamedTuple):
    """Sums over the episodes that finished during a rollout (device tensors: no sync needed)."""

    count: torch.Tensor
    return_sum: torch.Tensor
    length_sum: torch.Tensor


def forward(model, obs: torch.Tensor, config: Config):
    """`model(obs)` as training runs it: `(logits, value)` in float32, the matrix products in
    `config.precision`. On the 2-core AVX512-BF16 machine, bfloat16 autocast made a minibatch
    step about 1.7x faster and training 15-25% faster end to end (docs/results.md)."""
    # On CUDA autocast keeps no cache of cast weights: a captured graph would replay the cast
    # made at capture time, from weights the optimizer has moved since.
    with torch.autocast(obs.device.type, dtype=torch.bfloat16, enabled=config.precision == "bfloat16",
                        cache_enabled=obs.device.type != "cuda"):
        logits, value = model(obs)
    return logits.float(), value.float()


def sample_actions(logits: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Sample from Categorical(logits) with the Gumbel-max trick, drawing from `generator`.

    An explicit generator makes a resumed run draw exactly what the uninterrupted one drew.
    """
    u = torch.rand(logits.shape, generator=generator, device=logits.device)
    gumbel = -torch.log(-torch.log(u.clamp_min(1e-20)))
    return torch.argmax(logits + gumbel, dim=-1)


@torch.no_grad()
def collect_rollout(model, env: BatchedBreakout, obs: torch.Tensor, config: Config, generator,
                    static_shapes: bool | None = None):
    """Play `config.num_steps` steps in every env with the current policy.

    Returns `(rollout, next_obs, episode_stats)`; `next_obs` is the env's (in-place) buffer.
    `static_shapes` (the default on CUDA): value the truncated episodes' last frames without
    asking the device how many there are (`truncation_values_static`), so that nothing in the
    rollout waits on the GPU and the whole of it can be captured in a CUDA graph. On the CPU,
    where asking costs nothing, only the truncated frames are valued.
    """
    if static_shapes is None:
        static_shapes = obs.device.type == "cuda"
    T, N = config.num_steps, env.num_envs
    device = obs.device
    obs_buf = torch.empty((T, *obs.shape), device=device)
    actions = torch.empty((T, N), dtype=torch.int64, device=device)
    logprobs = torch.empty((T, N), device=device)
    values = torch.empty((T, N), device=device)
    rewards = torch.empty((T, N), device=device)
    terminated = torch.empty((T, N), dtype=torch.bool, device=device)
    truncated = torch.empty((T, N), dtype=torch.bool, device=device)
    final_games = []  # only kept when episodes can be truncated
    count = torch.zeros((), device=device)
    return_sum = torch.zeros((), device=device)
    length_sum = torch.zeros((), device=device)

    for t in range(T):
        obs_buf[t] = obs
        logits, value = forward(model, obs, config)
        action = sample_actions(logits, generator)
        actions[t] = action
        logprobs[t] = F.log_softmax(logits, dim=-1).gather(1, action[:, None]).squeeze(1)
        values[t] = value
        obs, rewards[t], terminated[t], truncated[t], info = env.step(action)
        if env.max_episode_steps is not None:
            final_games.append(info.final_games)
        # Training return is the game's: episodes started from a partial wall are left out.
        done = (info.done & ~info.partial_start).float()
        count += done.sum()
        return_sum += (info.episode_return * done).sum()
        length_sum += (info.episode_length * done).sum()

    truncation_values = torch.zeros((T, N), device=device)
    if final_games:
        stacked = PackedGames(*(torch.stack(field) for field in zip(*final_games)))
        if static_shapes:
            truncation_values = truncation_values_static(model, stacked, truncated, env.max_episode_steps, config)
        else:
            # One host sync per rollout, not per step: find the truncated steps, value their last frames.
            where = truncated.nonzero(as_tuple=True)
            if where[0].numel():
                cut = PackedGames(*(field[where] for field in stacked))
                truncation_values[where] = forward(model, render(unpack(cut)), config)[1]
    last_value = forward(model, obs, config)[1]
    rollout = Rollout(obs=obs_buf, actions=actions, logprobs=logprobs, values=values, rewards=rewards,
                      terminated=terminated, truncated=truncated, truncation_values=truncation_values,
                      last_value=last_value)
    return rollout, obs, EpisodeStats(count, return_sum, length_sum)


def truncation_values_static(model, final_games: PackedGames, truncated: torch.Tensor, max_episode_steps: int,
                             config: Config) -> torch.Tensor:
    """V(last frame) where `truncated` ([T, N]), 0 elsewhere, in shapes that depend on T and N only.

    An env truncates at most once every `max_episode_steps` steps, so at most ceil(T / cap) times
    in a rollout: the truncated (t, n) are packed, in order, into that many slots per env, by a
    running count, and the frames of all slots are valued in one forward (slots beyond the count
    value a frame that is then not read). With T below the cap, that is one forward of N frames
    per rollout. `final_games`: the games before auto-reset, fields [T, N].
    """
    T, N = truncated.shape
    capacity = N * min(T, -(-T // max_episode_steps))
    flat = truncated.reshape(-1)
    slot = torch.where(flat, flat.long().cumsum(0) - 1, capacity)  # non-truncated rows go to a spare slot
    rows = torch.zeros(capacity + 1, dtype=torch.int64, device=flat.device)
    rows.scatter_(0, slot, torch.arange(flat.numel(), device=flat.device))
    rows = rows[:capacity]
    games = PackedGames(*(field.reshape(-1).index_select(0, rows) for field in final_games))
    values = forward(model, render(unpack(games)), config)[1]
    values = torch.cat([values, values.new_zeros(1)])  # the spare slot is worth 0
    return values.index_select(0, slot).view(T, N)


def compute_gae(rollout: Rollout, gamma: float, gae_lambda: float):
    """GAE(lambda) advantages and the value targets (returns = advantages + values).

    At a terminated step the future is worth 0; at a truncated step it is worth V(final obs),
    the frame the cap cut off. Either way the lambda-trace stops there: the next row of the
    rollout belongs to a new episode.
    """
    T = rollout.rewards.shape[0]
    advantages = torch.zeros_like(rollout.rewards)
    next_advantage = torch.zeros_like(rollout.last_value)
    next_value = rollout.last_value
    for t in reversed(range(T)):
        episode_ended = rollout.terminated[t] | rollout.truncated[t]
        future_value = torch.where(
            episode_ended, torch.where(rollout.truncated[t], rollout.truncation_values[t], 0.0), next_value
        )
        delta = rollout.rewards[t] + gamma * future_value - rollout.values[t]
        next_advantage = delta + gamma * gae_lambda * (~episode_ended).float() * next_advantage
        advantages[t] = next_advantage
        next_value = rollout.values[t]
    return advantages, advantages + rollout.values


def ppo_loss(model, obs, actions, old_logprobs, old_values, advantages, returns, config: Config):
    """The clipped PPO objective on one minibatch. Returns `(loss, metrics)`; `loss` includes the
    entropy bonus, so `ent_coef` acts on the parameters. `advantages` as the update uses them
    (normalised by `ppo_update` when `config.norm_adv`)."""
    logits, values = forward(model, obs, config)
    logp_all = F.log_softmax(logits, dim=-1)
    logprobs = logp_all.gather(1, actions[:, None]).squeeze(1)
    entropy = -(logp_all.exp() * logp_all).sum(dim=-1).mean()

    log_ratio = logprobs - old_logprobs
    ratio = log_ratio.exp()
    policy_loss = torch.max(
        -advantages * ratio, -advantages * ratio.clamp(1 - config.clip_coef, 1 + config.clip_coef)
    ).mean()

    value_loss = 0.5 * (values - returns) ** 2
    if config.clip_value:
        # The value may move at most clip_coef from its rollout-time estimate before the update
        # stops rewarding the move.
        values_clipped = old_values + (values - old_values).clamp(-config.clip_coef, config.clip_coef)
        value_loss = torch.max(value_loss, 0.5 * (values_clipped - returns) ** 2)
    value_loss = value_loss.mean()

    loss = policy_loss + config.vf_coef * value_loss - config.ent_coef * entropy
    with torch.no_grad():
        metrics = {
            "policy_loss": policy_loss.detach(),
            "value_loss": value_loss.detach(),
            "entropy": entropy.detach(),
            # Schulman's low-variance KL estimator, (r - 1) - log r.
            "approx_kl": ((ratio - 1) - log_ratio).mean(),
            "clip_fraction": ((ratio - 1).abs() > config.clip_coef).float().mean(),
        }
    return loss, metrics


def annealed(config: Config, update: int) -> Config:
    """The config update `update` (0-based) runs with: with `anneal_lr` / `anneal_ent`, the learning
    rate / entropy coefficient fall linearly from their value at update 0 towards 0 at
    `num_updates`. Both reach the update the same way, as fields of the config it is given."""
    remaining = 1.0 - update / config.num_updates
    return config.replace(learning_rate=config.learning_rate * (remaining if config.anneal_lr else 1.0),
                          ent_coef=config.ent_coef * (remaining if config.anneal_ent else 1.0))


def normalized(advantages: torch.Tensor, ranks: Ranks) -> torch.Tensor:
    """Advantages of a minibatch to zero mean and unit std, the statistics taken over the global
    minibatch (every rank's rows)."""
    mean, std = ranks.mean_std(advantages)
    return (advantages - mean) / (std + 1e-8)


def set_learning_rate(optimizer, learning_rate: float) -> None:
    """A Python float where the optimizer holds one (the CPU: bit for bit as ever); written into
    the device tensor where it holds one (capturable Adam, read by a CUDA graph at each replay)."""
    for group in optimizer.param_groups:
        if isinstance(group["lr"], torch.Tensor):
            group["lr"].fill_(learning_rate)
        else:
            group["lr"] = learning_rate


def ppo_update(model, optimizer, rollout: Rollout, config: Config, generator, ranks: Ranks = Ranks()):
    """One PPO update: `update_epochs` passes of minibatch Adam steps over the rollout, at
    `config.learning_rate` with `config.ent_coef` (pass `annealed(config, update)` to schedule them).
    `generator` draws the minibatch order; `config.num_minibatches` minibatches per epoch.

    This is the step training runs; tests run it too. Returns metrics averaged over minibatches
    (of this rank: `train` averages them over ranks).
    """
    set_learning_rate(optimizer, config.learning_rate)
    return optimise(model, optimizer, rollout, config, generator, ranks)


def optimise(model, optimizer, rollout: Rollout, config: Config, generator, ranks: Ranks = Ranks()):
    """`ppo_update` after its learning rate is set. Nothing in it waits on the device, so a CUDA
    graph can capture it; the graph's config holds `ent_coef` as a device tensor, written before
    each replay (breakout_ppo/cuda_graphs.py)."""
    advantages, returns = compute_gae(rollout, config.gamma, config.gae_lambda)
    flat = lambda x: x.reshape(-1, *x.shape[2:])  # noqa: E731  [T, N, ...] -> [T*N, ...]
    obs, actions = flat(rollout.obs), flat(rollout.actions)
    old_logprobs, old_values = flat(rollout.logprobs), flat(rollout.values)
    advantages, returns = flat(advantages), flat(returns)

    sums = {}
    steps = 0
    non_finite = torch.zeros((), dtype=torch.bool, device=obs.device)
    for _ in range(config.update_epochs):
        order = torch.randperm(obs.shape[0], generator=generator, device=generator.device).to(obs.device)
        for idx in order.split(obs.shape[0] // config.num_minibatches):
            # index_select copies rows about twice as fast as obs[idx] on CPU.
            mb_obs, mb_actions, mb_logprobs, mb_values, mb_advantages, mb_returns = (
                x.index_select(0, idx) for x in (obs, actions, old_logprobs, old_values, advantages, returns))
            if config.norm_adv:
                mb_advantages = normalized(mb_advantages, ranks)
            loss, metrics = ppo_loss(model, mb_obs, mb_actions, mb_logprobs, mb_values, mb_advantages, mb_returns,
                                     config)
            optimizer.zero_grad(set_to_none=True)
            non_finite |= ~torch.isfinite(loss.detach())
            loss.backward()
            ranks.average_gradients(model)  # every rank then steps with the global minibatch's gradient
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.max_grad_norm)
            optimizer.step()
            for key, value in metrics.items():
                sums[key] = sums.get(key, 0.0) + value
            steps += 1
    metrics = {key: value / steps for key, value in sums.items()}
    metrics["explained_variance"] = explained_variance(old_values, returns)
    metrics["non_finite"] = non_finite  # checked once per update by the caller: no per-step sync
    return metrics


def explained_variance(predicted: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """1 - Var[target - predicted] / Var[target]: 1 is perfect, 0 is no better than a constant."""
    var = target.var()
    return torch.where(var > 0, 1 - (target - predicted).var() / var, torch.full_like(var, float("nan")))
