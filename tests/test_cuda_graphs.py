"""Training on a GPU as captured CUDA graphs (breakout_ppo/cuda_graphs.py) against the eager reference.

On the CPU: what capture rests on and can be checked without a GPU (fixed-shape truncation values
against the data-dependent ones; a checkpoint refused on another device). On a GPU: no host
synchronisation inside a rollout or an update, eager or captured; a captured env step replays the
eager one; captured updates follow the eager ones; training runs end to end on the graphs.
"""

from __future__ import annotations

import copy

import pytest
import torch

from breakout_ppo.checkpoint import load_checkpoint, saved_device_type
from breakout_ppo.config import preset
from breakout_ppo.env import BatchedBreakout
from breakout_ppo.model import ActorCritic
from breakout_ppo.ppo import annealed, collect_rollout, ppo_update
from breakout_ppo.train import TrainingError, train

skip_without_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU")


def _rollout(static_shapes: bool, device="cpu", num_envs=32, num_steps=24, cap=10, seed=4):
    """A rollout in which every env truncates (cap 10 in 24 steps: up to 3 times each)."""
    config = preset("smoke", num_envs=num_envs, num_steps=num_steps, max_episode_steps=cap)
    torch.manual_seed(seed)
    model = ActorCritic.from_config(config).to(device)
    env = BatchedBreakout(num_envs, device=device, max_episode_steps=cap, seed=seed, partial_wall_prob=0.5)
    generator = torch.Generator(device).manual_seed(seed)
    rollout, _, _ = collect_rollout(model, env, env.reset(), config, generator, static_shapes=static_shapes)
    return rollout


def test_fixed_shape_truncation_values_equal_the_data_dependent_ones():
    dynamic, static = _rollout(static_shapes=False), _rollout(static_shapes=True)
    truncated = dynamic.truncated
    assert int(truncated.sum(0).max()) >= 2  # some env truncated more than once: more than N slots in use
    for name in dynamic._fields:
        if name != "truncation_values":
            assert torch.equal(getattr(dynamic, name), getattr(static, name)), name
    # The same frames valued in a batch of another size: equal up to float rounding, and 0 elsewhere.
    assert torch.allclose(static.truncation_values, dynamic.truncation_values, rtol=1e-5, atol=1e-6)
    assert (static.truncation_values[~truncated] == 0).all()
    assert (static.truncation_values[truncated] != 0).all()


def test_a_checkpoint_from_another_device_is_refused_in_one_line(tmp_path):
    config = preset("smoke")
    train(config, tmp_path / "run")
    checkpoint = tmp_path / "run" / "checkpoint.pt"
    payload = load_checkpoint(checkpoint)
    assert saved_device_type(payload) == "cpu"
    # A CUDA generator's state is a seed and an offset, 16 bytes: what a GPU run saves.
    payload["rng"]["sampler"] = torch.zeros(16, dtype=torch.uint8)
    payload["rng"]["env"] = torch.zeros(16, dtype=torch.uint8)
    moved = tmp_path / "gpu-run" / "checkpoint.pt"
    moved.parent.mkdir()
    torch.save(payload, moved)
    with pytest.raises(TrainingError, match="trained on cuda and this run is on cpu.*--device cuda") as error:
        train(config.replace(total_steps=2 * config.total_steps), moved.parent, resume=moved)
    assert "\n" not in str(error.value)
    assert sorted(p.name for p in moved.parent.iterdir()) == ["checkpoint.pt"]  # nothing written


def _training_state(updates_before: int, seed=2):
    """Model, fused Adam, env and sampler of a smoke run after `updates_before` updates."""
    config = preset("smoke", max_episode_steps=20)
    torch.manual_seed(seed)
    model = ActorCritic.from_config(config)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.learning_rate, eps=1e-5, fused=True)
    env = BatchedBreakout(config.num_envs, max_episode_steps=20, seed=seed, partial_wall_prob=0.5)
    env.reset()
    sampler = torch.Generator().manual_seed(seed + 1)
    for _ in range(updates_before):
        _one_update(config, model, optimizer, env, sampler)
    return config, model, optimizer, env, sampler


def _one_update(config, model, optimizer, env, sampler):
    rollout, _, _ = collect_rollout(model, env, env.observe(), config, sampler)
    ppo_update(model, optimizer, rollout, config, sampler)


@pytest.mark.parametrize("updates_before", [0, 2], ids=["fresh Adam", "Adam with state"])
def test_the_warm_up_before_capture_leaves_training_exactly_where_it_stood(updates_before):
    from breakout_ppo.cuda_graphs import run_and_undo

    config, model, optimizer, env, sampler = _training_state(updates_before)
    _, twin_model, twin_optimizer, twin_env, twin_sampler = _training_state(updates_before)
    run_and_undo(lambda: [_one_update(config, model, optimizer, env, sampler) for _ in range(2)],
                 model, optimizer, env, sampler)
    assert all(state for state in optimizer.state.values())  # the warm-up made Adam's state
    for _ in range(2):  # from here the two train alike, bit for bit
        _one_update(config, model, optimizer, env, sampler)
        _one_update(config, twin_model, twin_optimizer, twin_env, twin_sampler)
    for p, q in zip(model.parameters(), twin_model.parameters()):
        assert torch.equal(p, q)
    assert torch.equal(env.observe(), twin_env.observe())
    assert torch.equal(sampler.get_state(), twin_sampler.get_state())


def test_a_failed_capture_is_one_line_that_names_the_way_around_it(monkeypatch):
    import breakout_ppo.cuda_graphs as cuda_graphs

    def fails(self, *args):
        raise RuntimeError("operation not permitted when stream is capturing\nCUDA kernel errors might be ...")

    monkeypatch.setattr(cuda_graphs.CapturedTraining, "__init__", fails)
    with pytest.raises(cuda_graphs.CaptureError) as error:
        cuda_graphs.capture_training(None, None, None, None, None)
    message = str(error.value)
    assert "\n" not in message and "operation not permitted when stream is capturing" in message
    assert "--no-cuda-graphs" in message


# --- On a GPU -----------------------------------------------------------------------------------


def _cuda_config(**overrides):
    # Annealed schedules on, so the captured update must read them from device memory each replay.
    return preset("smoke", num_envs=64, num_steps=16, max_episode_steps=12, anneal_lr=True, anneal_ent=True,
                  ent_coef=0.01, total_steps=64 * 16 * 4, **overrides)


def _cuda_setup(config, seed=3):
    from breakout_ppo.cuda_graphs import capturable_adam

    torch.manual_seed(seed)
    model = ActorCritic.from_config(config).cuda()
    env = BatchedBreakout(config.num_envs, device="cuda", max_episode_steps=config.max_episode_steps, seed=seed,
                          partial_wall_prob=config.partial_wall_starts, random_ball_starts=config.random_ball_starts)
    env.reset()
    sampler = torch.Generator("cuda").manual_seed(seed + 1)
    return model, env, sampler, capturable_adam


@pytest.mark.cuda
@skip_without_cuda
def test_no_host_synchronisation_inside_a_rollout_or_an_update_eager_or_captured():
    from breakout_ppo.cuda_graphs import CapturedTraining

    config = _cuda_config()
    model, env, sampler, capturable_adam = _cuda_setup(config)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.learning_rate, eps=1e-5, fused=True)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for update in range(2):  # the cap of 12 steps truncates episodes inside these rollouts
            rollout, _, _ = collect_rollout(model, env, env.observe(), config, sampler)
            ppo_update(model, optimizer, rollout, annealed(config, update), sampler)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert bool(rollout.truncated.any())

    graphs = CapturedTraining(model, capturable_adam(model, config.learning_rate), env, config, sampler)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for update in range(2):
            rollout, _, _ = graphs.collect()
            graphs.update(annealed(config, update))
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert bool(rollout.truncated.any())


@pytest.mark.cuda
@skip_without_cuda
def test_a_captured_env_step_replays_the_eager_step():
    n = 4096
    eager = BatchedBreakout(n, device="cuda", max_episode_steps=20, seed=7, partial_wall_prob=0.5,
                            random_ball_starts=True)
    eager.reset()
    for _ in range(30):  # mid-episode, some games already reset
        eager.step(torch.randint(0, 3, (n,), device="cuda"))
    captured = BatchedBreakout(n, device="cuda", max_episode_steps=20, seed=0, partial_wall_prob=0.5,
                               random_ball_starts=True)
    captured.load_state(eager.save_state())
    captured.generator.set_state(eager.generator.get_state())
    actions = torch.zeros(n, dtype=torch.int64, device="cuda")

    # Warm up on a side stream, as capture asks, from a copy of the state, then put it back.
    saved, rng = captured.save_state(), captured.generator.get_state()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        captured.step(actions)
    torch.cuda.current_stream().wait_stream(side)
    captured.load_state(saved)
    captured.generator.set_state(rng)

    graph = torch.cuda.CUDAGraph()
    graph.register_generator_state(captured.generator)
    with torch.cuda.graph(graph):
        obs, reward, terminated, truncated, _ = captured.step(actions)
    for step in range(4):  # consecutive replays: each one steps on from the state the last one left
        actions.copy_(torch.randint(0, 3, (n,), device="cuda"))
        graph.replay()
        expected = eager.step(actions)
        for name, got, want in zip(("obs", "reward", "terminated", "truncated"), (obs, reward, terminated, truncated),
                                   expected[:4]):
            assert torch.equal(got, want), (step, name)
        for name in ("episode_return", "episode_length", "partial_start"):
            assert torch.equal(getattr(captured, name), getattr(eager, name)), (step, name)


@pytest.mark.cuda
@skip_without_cuda
def test_captured_updates_follow_the_eager_updates():
    from breakout_ppo.cuda_graphs import CapturedTraining

    config = _cuda_config()
    model, env, sampler, capturable_adam = _cuda_setup(config)
    eager_model, eager_env = copy.deepcopy(model), BatchedBreakout(
        config.num_envs, device="cuda", max_episode_steps=config.max_episode_steps, seed=0,
        partial_wall_prob=config.partial_wall_starts, random_ball_starts=config.random_ball_starts)
    eager_env.load_state(env.save_state())
    eager_env.generator.set_state(env.generator.get_state())
    eager_sampler = torch.Generator("cuda")
    eager_sampler.set_state(sampler.get_state())
    eager_optimizer = torch.optim.Adam(eager_model.parameters(), lr=config.learning_rate, eps=1e-5, fused=True)

    start = [p.detach().clone() for p in model.parameters()]
    graphs = CapturedTraining(model, capturable_adam(model, config.learning_rate), env, config, sampler)
    for update in range(2):
        scheduled = annealed(config, update)
        eager_rollout, _, _ = collect_rollout(eager_model, eager_env, eager_env.observe(), config, eager_sampler)
        eager_metrics = ppo_update(eager_model, eager_optimizer, eager_rollout, scheduled, eager_sampler)
        rollout, _, _ = graphs.collect()
        metrics = graphs.update(scheduled)
        if update == 0:  # same weights, same streams: the same rollout
            assert torch.equal(rollout.obs, eager_rollout.obs) and torch.equal(rollout.actions, eager_rollout.actions)
        assert abs(float(metrics["entropy"]) - float(eager_metrics["entropy"])) < 1e-4
    # Capturable Adam (foreach, step count on the device) is not fused Adam: they round differently.
    for (name, p), q in zip(model.named_parameters(), eager_model.parameters()):
        assert torch.allclose(p, q, rtol=1e-4, atol=1e-5), name
    moved = max(float((p - p0).abs().max()) for p, p0 in zip(model.parameters(), start))
    assert moved > 1e-3  # the updates did move the weights, by far more than the tolerance


@pytest.mark.cuda
@skip_without_cuda
def test_training_on_the_graphs_saves_a_checkpoint_that_resumes_on_the_gpu(tmp_path):
    config = preset("smoke", num_envs=64, num_steps=16, total_steps=64 * 16 * 6, checkpoint_every=3,
                    max_episode_steps=12)
    first = train(config, tmp_path / "run", device="cuda")
    assert first.global_step == config.total_steps
    payload = load_checkpoint(first.last_checkpoint, resumable=True)
    assert saved_device_type(payload) == "cuda"
    more = train(config.replace(total_steps=2 * config.total_steps), tmp_path / "run", device="cuda",
                 resume=first.last_checkpoint)
    assert more.global_step == 2 * config.total_steps
    with pytest.raises(TrainingError, match="trained on cuda and this run is on cpu"):
        train(config.replace(total_steps=3 * config.total_steps), tmp_path / "run", device="cpu",
              resume=more.last_checkpoint)
