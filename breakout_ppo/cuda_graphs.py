"""Training on one GPU without waiting on Python: the rollout and the update as CUDA graphs.

Why: on a GPU one env step is ~45 small kernels and the policy's forward and sampling a dozen more,
each a few microseconds of GPU work but longer to launch from Python, so the GPU mostly waits.
`CapturedTraining` records the whole rollout (`num_steps` steps of policy forward, Gumbel sampling,
env step, writes into the rollout buffers) as one CUDA graph, and the whole update (GAE, then every
epoch's minibatch forward, loss, backward, gradient clip and Adam step) as another, and replays them:
one launch each per update.

What capture needs, and where the code provides it:
- Fixed memory. The env writes its state in place (breakout_ppo/env/batched.py); the rollout's
  buffers and the update's intermediates live in the graphs' memory pools, at the same addresses on
  every replay; Adam is `capturable` with its learning rate a device tensor.
- No host synchronisation. Truncated episodes are valued with fixed shapes
  (`ppo.truncation_values_static`), the non-finite flag and the episode statistics stay on the
  device until the training loop reads them between updates.
- Random numbers. The env's and the sampler's generators are registered with the graphs, so each
  replay draws what the eager code would have drawn next from them.
- Schedules. The learning rate and the entropy coefficient are device tensors written before each
  replay of the update (Adam's `lr`, and the `ent_coef` the captured update's config holds);
  autocast keeps no weight cache on CUDA (`ppo.forward`).

The eager code (`ppo.collect_rollout`, `ppo.ppo_update`) stays the reference: the graphs replay it
as captured, and tests/test_cuda_graphs.py compares the two on a GPU. Under torchrun training stays
eager.
"""

from __future__ import annotations

import torch

from breakout_ppo import ppo
from breakout_ppo.config import Config
from breakout_ppo.env import BatchedBreakout


def capturable_adam(model, learning_rate: float) -> torch.optim.Adam:
    """Adam as the graphs need it: its step count on the device and its learning rate a device
    tensor, written in place by `ppo.set_learning_rate`. (Not fused Adam: the two round differently.)"""
    device = next(model.parameters()).device
    return torch.optim.Adam(model.parameters(), lr=torch.tensor(float(learning_rate), device=device), eps=1e-5,
                            capturable=True, foreach=True)


def keep_capturable(optimizer: torch.optim.Adam) -> None:
    """After `load_state_dict` (which copies the saved run's options over the optimizer's own):
    capturable again, the learning rate a device tensor, every step count on its parameter's device."""
    for group in optimizer.param_groups:
        device = group["params"][0].device
        group.update(capturable=True, fused=None, foreach=True)
        if not isinstance(group["lr"], torch.Tensor) or group["lr"].device != device:
            group["lr"] = torch.tensor(float(group["lr"]), device=device)
        for p in group["params"]:
            state = optimizer.state.get(p)
            if state and "step" in state:
                state["step"] = state["step"].to(device=device, dtype=torch.float32)


class CaptureError(Exception):
    """Capturing the graphs failed (an op CUDA cannot capture, say); the message is one line."""


def capture_training(model, optimizer, env: BatchedBreakout, config: Config, sampler) -> "CapturedTraining":
    """`CapturedTraining(...)`, or a CaptureError that says what failed and how to train without graphs."""
    try:
        return CapturedTraining(model, optimizer, env, config, sampler)
    except RuntimeError as error:
        first_line = (str(error).strip().splitlines() or [type(error).__name__])[0][:200]
        raise CaptureError(f"capturing the rollout and update as CUDA graphs failed ({first_line}); "
                           f"--no-cuda-graphs trains without them") from None


class CapturedTraining:
    """The rollout and the update of one training process, captured once and replayed.

    Build it after the model, optimizer (`capturable_adam`), env and sampler hold the state training
    starts from (a resumed checkpoint included): capture runs one rollout and one update eagerly to
    warm up (cuBLAS workspaces, Adam's state) and then puts everything back as it was.

    `collect()` and `update(scheduled)` stand for `ppo.collect_rollout` and `ppo.ppo_update`. What
    they return lives in the graphs' memory, overwritten by the next replay: read it before then.
    """

    def __init__(self, model, optimizer, env: BatchedBreakout, config: Config, sampler: torch.Generator):
        if env.device.type != "cuda":
            raise ValueError(f"CUDA graphs need a CUDA env, got {env.device}")
        self.model, self.optimizer, self.env, self.config, self.sampler = model, optimizer, env, config, sampler
        self.ent_coef = torch.zeros((), device=env.device)
        generators = {id(g): g for g in (env.generator, sampler)}.values()

        def one_update():
            rollout, _, _ = ppo.collect_rollout(model, env, env.observe(), config, sampler, static_shapes=True)
            ppo.optimise(model, optimizer, rollout, config.replace(ent_coef=self.ent_coef), sampler)

        # CUDA's capture rules ask for a warm-up (cuBLAS workspaces, Adam's state) on a side stream.
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            run_and_undo(one_update, model, optimizer, env, sampler)
        torch.cuda.current_stream().wait_stream(side)

        self.rollout_graph = torch.cuda.CUDAGraph()
        self.update_graph = torch.cuda.CUDAGraph()
        for graph in (self.rollout_graph, self.update_graph):
            for generator in generators:
                graph.register_generator_state(generator)
        with torch.cuda.graph(self.rollout_graph):
            self.rollout, _, self.episodes = ppo.collect_rollout(model, env, env.observe(), config, sampler,
                                                                 static_shapes=True)
        with torch.cuda.graph(self.update_graph, pool=self.rollout_graph.pool()):
            # The config's ent_coef is read from device memory at each replay: `update` writes it.
            self.metrics = ppo.optimise(model, optimizer, self.rollout, config.replace(ent_coef=self.ent_coef), sampler)

    def collect(self):
        """`(rollout, next_obs, episode_stats)` as `ppo.collect_rollout` returns them."""
        self.rollout_graph.replay()
        return self.rollout, self.env.observe(), self.episodes

    def update(self, scheduled: Config) -> dict:
        """One update on the last rollout at `scheduled`'s learning rate and entropy coefficient."""
        ppo.set_learning_rate(self.optimizer, scheduled.learning_rate)
        self.ent_coef.fill_(scheduled.ent_coef)
        self.update_graph.replay()
        return dict(self.metrics)


def run_and_undo(work, model, optimizer, env: BatchedBreakout, sampler: torch.Generator) -> None:
    """Run `work()` (a rollout and an update, say) and then put every piece of training state back in
    place, into the same tensors: weights, Adam's state (created by `work` if it did not exist: then
    zeroed, which is what a fresh Adam's first step starts from), learning rates, the env's games and
    counters, and both random streams. Training then starts from exactly where it stood."""
    weights = {name: t.clone() for name, t in model.state_dict().items()}
    adam = {p: {k: v.clone() for k, v in s.items()} for p, s in optimizer.state.items()}
    learning_rates = [group["lr"].clone() if isinstance(group["lr"], torch.Tensor) else group["lr"]
                      for group in optimizer.param_groups]
    games, env_rng, sampler_rng = env.save_state(), env.generator.get_state(), sampler.get_state()
    work()
    with torch.no_grad():
        for name, t in model.state_dict().items():
            t.copy_(weights[name])
        for p, state in optimizer.state.items():
            for key, value in state.items():
                if p in adam:
                    value.copy_(adam[p][key])
                else:
                    value.zero_()  # a fresh Adam's moments and step count
        for group, lr in zip(optimizer.param_groups, learning_rates):
            if isinstance(lr, torch.Tensor):
                group["lr"].copy_(lr)
            else:
                group["lr"] = lr
    optimizer.zero_grad(set_to_none=True)
    env.load_state(games)
    env.generator.set_state(env_rng)
    sampler.set_state(sampler_rng)
