"""`BatchedBreakout`'s contract beyond single transitions (those are compared with MinAtar in
test_env_differential.py): constructor checks, resets and start states, the step cap and
truncation, what `info` holds, seeding, the in-place observation buffer, `get_state`/`set_state`,
and the same game on CUDA. Frames are drawn by MinAtar's own `state()` wherever one is needed.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from breakout_ppo.env import (EPISODE_COUNTERS, MINATAR_ACTIONS, BatchedBreakout, BreakoutState, bricks_to_grid,
                              grid_to_bricks)
from support.minatar_reference import (
    UP_RIGHT,
    crafted_game,
    landing,
    load_slot,
    minatar_start_states,
    minimal_actions,
    reference_frame,
    reference_game,
    reference_step,
    render_by_reference,
    state_from_games,
    write_slot,
)

NOOP, LEFT, RIGHT = 0, 1, 2
skip_without_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU")


def random_actions(n: int, seed: int):
    generator = torch.Generator().manual_seed(seed)
    return lambda: torch.randint(0, 3, (n,), generator=generator)


def assert_start_states(state: BreakoutState, slots: torch.Tensor, last_action):
    """Every slot in `slots` holds one of MinAtar's two start states, with `last_action`."""
    starts = minatar_start_states()
    side = (state.ball_x[slots] == starts.ball_x[1]).long()
    for name, ours, start in zip(BreakoutState._fields[:-1], state[:-1], starts[:-1]):
        assert torch.equal(ours[slots], start[side]), f"{name} is not MinAtar's start state"
    assert torch.equal(state.last_action[slots], torch.as_tensor(last_action)), "the sticky action was not kept"


def first_landing_step() -> int:
    """How many steps after MinAtar's reset the ball first comes down to the paddle row."""
    steps, _ = landing(reference_game(seed=0))
    return steps


# ---------------------------------------------------------------------------------------------
# Construction and conventions


@pytest.mark.parametrize(
    "arguments",
    [
        dict(num_envs=0),
        dict(num_envs=-3),
        dict(num_envs=2.5),
        dict(num_envs=4, sticky_action_prob=-0.01),
        dict(num_envs=4, sticky_action_prob=1.01),
        dict(num_envs=4, max_episode_steps=0),
        dict(num_envs=4, max_episode_steps=-10),
    ],
)
def test_bad_constructor_arguments_raise_value_error(arguments):
    with pytest.raises(ValueError):
        BatchedBreakout(**arguments)


def test_the_edges_of_the_valid_ranges_are_accepted():
    for arguments in (dict(num_envs=1), dict(num_envs=3, sticky_action_prob=0.0),
                      dict(num_envs=3, sticky_action_prob=1.0), dict(num_envs=3, max_episode_steps=1)):
        obs = BatchedBreakout(**arguments).reset()
        assert obs.shape == (arguments["num_envs"], 4, 10, 10)


def test_set_state_rejects_a_state_of_another_batch_size():
    env = BatchedBreakout(4)
    other = BatchedBreakout(5).get_state()
    with pytest.raises(ValueError):
        env.set_state(other)


def test_our_actions_are_minatars_minimal_action_set():
    assert list(MINATAR_ACTIONS) == minimal_actions(reference_game(seed=0))


def test_brick_mask_bit_layout():
    # Documented layout: bit 10 * (row - 1) + column for the bricks in rows 1-3.
    bits = torch.arange(30)
    grids = bricks_to_grid(torch.ones(30, dtype=torch.int64) << bits)
    assert grids.shape == (30, 10, 10)
    for bit in range(30):
        assert grids[bit].sum() == 1 and grids[bit, 1 + bit // 10, bit % 10]
    assert torch.equal(grid_to_bricks(grids), torch.ones(30, dtype=torch.int64) << bits)
    # MinAtar's full wall is all 30 bits.
    assert state_from_games([reference_game(seed=0)]).bricks.item() == (1 << 30) - 1
    outside = torch.zeros(1, 10, 10, dtype=torch.bool)
    outside[0, 4, 2] = True
    with pytest.raises(ValueError):
        grid_to_bricks(outside)


def test_reference_helpers_copy_a_game_both_ways():
    # The test helpers themselves: a MinAtar game in an odd state goes into slot 2 and back.
    game = crafted_game(ball=(2, 7), direction=UP_RIGHT, paddle=1, bricks=[(1, 0), (2, 9), (3, 4)], strike=True)
    game.last_action = minimal_actions(game)[RIGHT]
    state = BatchedBreakout(3).get_state()
    write_slot(state, 2, game)
    back = reference_game(seed=1)
    load_slot(state, 2, back)
    for name in ("ball_x", "ball_y", "ball_dir", "last_x", "last_y", "pos", "strike", "terminal"):
        assert getattr(back.env, name) == getattr(game.env, name), name
    assert np.array_equal(back.env.brick_map, game.env.brick_map) and back.last_action == game.last_action
    assert torch.equal(render_by_reference(state)[2], torch.from_numpy(reference_frame(game)))


# ---------------------------------------------------------------------------------------------
# Reset


def test_reset_gives_minatars_start_states_on_both_sides_and_keeps_the_sticky_action():
    env = BatchedBreakout(64, sticky_action_prob=0.0, seed=3)
    obs = env.reset()
    all_slots = torch.arange(64)
    assert_start_states(env.get_state(), all_slots, last_action=torch.zeros(64, dtype=torch.int64))
    assert len(set(env.get_state().ball_x.tolist())) == 2, "64 games all started on one side"
    assert torch.equal(obs, render_by_reference(env.get_state()))
    # MinAtar's reset keeps the last action (sticky actions repeat it); so does ours.
    env.step(torch.full((64,), RIGHT))
    env.reset()
    assert_start_states(env.get_state(), all_slots, last_action=torch.full((64,), RIGHT))


def test_reset_restarts_the_episode_counters():
    cap = first_landing_step() - 1  # no episode can end on its own before the cap
    env = BatchedBreakout(8, sticky_action_prob=0.0, max_episode_steps=cap)
    noops = torch.zeros(8, dtype=torch.int64)
    env.reset()
    for _ in range(cap - 1):
        env.step(noops)
    env.reset()
    for _ in range(cap - 1):
        _, _, _, truncated, _ = env.step(noops)
        assert not truncated.any(), "the steps before reset were counted into the new episode"
    _, _, _, truncated, info = env.step(noops)
    assert truncated.all() and (info.episode_length == cap).all()


# ---------------------------------------------------------------------------------------------
# The step cap, auto-reset and `info`


def test_a_cap_at_the_first_landing_truncates_catches_and_leaves_losses_terminated():
    # With the cap exactly where the ball first comes down, every episode ends at that step:
    # lost balls with `terminated` (and not `truncated`), caught ones with `truncated`.
    cap = first_landing_step()
    env = BatchedBreakout(256, sticky_action_prob=0.0, max_episode_steps=cap, seed=1)
    env.reset()
    act = random_actions(256, seed=1)
    for _ in range(cap - 1):
        _, _, terminated, truncated, info = env.step(act())
        assert not (terminated | truncated | info.done).any()
    _, _, terminated, truncated, info = env.step(act())
    assert info.done.all() and not (terminated & truncated).any()
    assert terminated.any() and truncated.any()
    assert (info.episode_length == cap).all()


def test_truncation_and_info_against_a_tally_and_minatar():
    cap, n = 20, 128
    env = BatchedBreakout(n, sticky_action_prob=0.1, max_episode_steps=cap, seed=2)
    env.reset()
    act = random_actions(n, seed=2)
    scratch = reference_game(seed=0)
    returns, lengths = torch.zeros(n), torch.zeros(n, dtype=torch.int64)
    ended = {"terminated": 0, "truncated": 0}
    for _ in range(150):
        before = env.get_state()
        obs, reward, terminated, truncated, info = env.step(act())
        returns += reward
        lengths += 1
        done = info.done

        # Flags: done is exactly one of them; truncated exactly at the cap; no episode is longer.
        assert torch.equal(done, terminated | truncated) and not (terminated & truncated).any()
        assert torch.equal(truncated, ~terminated & (lengths == cap))
        assert (lengths <= cap).all()
        # Episode statistics of the episodes that ended, against our own tally.
        assert torch.equal(info.episode_length[done], lengths[done])
        assert torch.equal(info.episode_return[done], returns[done])
        # final_obs is the last frame of the old episode: MinAtar's drawing of final_state, and
        # the buffer's frame for games that go on.
        assert torch.equal(info.final_obs, render_by_reference(info.final_state))
        assert torch.equal(info.final_obs[~done], obs[~done])
        # final_state is one MinAtar step (with the executed action) from the state before.
        for slot in done.nonzero().flatten().tolist():
            load_slot(before, slot, scratch)
            reward_there, terminal_there, _ = reference_step(scratch, int(info.executed_action[slot]))
            assert torch.equal(info.final_obs[slot], torch.from_numpy(reference_frame(scratch)))
            assert (reward_there, terminal_there) == (reward[slot].item(), terminated[slot].item())
            for name, ours, theirs in zip(BreakoutState._fields, info.final_state, state_from_games([scratch])):
                assert ours[slot] == theirs[0], f"final_state.{name}"
        # Games that ended restarted: MinAtar's start state (sticky action kept), drawn in obs.
        slots = done.nonzero().flatten()
        assert_start_states(env.get_state(), slots, info.executed_action[slots])
        assert torch.equal(obs, render_by_reference(env.get_state()))

        ended["terminated"] += int(terminated.sum())
        ended["truncated"] += int(truncated.sum())
        returns[done], lengths[done] = 0.0, 0
    assert ended["terminated"] >= 500 and ended["truncated"] >= 30, ended


def test_set_state_keeps_the_episode_counters():
    cap = first_landing_step() - 1  # no episode can end on its own before the cap
    env = BatchedBreakout(8, sticky_action_prob=0.0, max_episode_steps=cap, seed=4)
    env.reset()
    for _ in range(cap - 1):
        env.step(torch.full((8,), LEFT))
    env.set_state(env.get_state())
    _, _, _, truncated, info = env.step(torch.full((8,), LEFT))
    assert truncated.all() and (info.episode_length == cap).all()


# ---------------------------------------------------------------------------------------------
# Seeding


def trajectory(seed: int, steps: int = 100, n: int = 64, device="cpu"):
    """Everything a run of random requests (action seed fixed) produces, with sticky actions and
    a step cap so that the env's generator drives sticky draws and start sides."""
    env = BatchedBreakout(n, device=device, sticky_action_prob=0.1, max_episode_steps=30, seed=seed)
    frames = [env.reset().clone()]
    act = random_actions(n, seed=123)
    outputs = []
    for _ in range(steps):
        obs, reward, terminated, truncated, info = env.step(act())
        frames.append(obs.clone())
        outputs.append(torch.stack([reward, terminated.float(), truncated.float(),
                                    info.executed_action.float(), info.episode_length.float()]))
    return torch.stack(frames).cpu(), torch.stack(outputs).cpu()


def test_the_same_seed_gives_the_same_trajectories():
    frames, outputs = trajectory(seed=7)
    again_frames, again_outputs = trajectory(seed=7)
    assert torch.equal(frames, again_frames) and torch.equal(outputs, again_outputs)


def test_a_different_seed_gives_different_trajectories():
    frames, outputs = trajectory(seed=7)
    other_frames, other_outputs = trajectory(seed=8)
    # 64 start sides alike has probability 2**-64; and the sticky draws differ.
    assert not torch.equal(frames[0], other_frames[0])
    assert not torch.equal(outputs[:, 3], other_outputs[:, 3])


# ---------------------------------------------------------------------------------------------
# The observation buffer and the state copies


def test_observations_are_one_buffer_updated_in_place():
    env = BatchedBreakout(16, sticky_action_prob=0.0, seed=5)
    act = random_actions(16, seed=5)
    first = env.reset()
    assert first.dtype == torch.float32 and first.shape == (16, 4, 10, 10)
    kept = first.clone()
    obs, *_ = env.step(act())
    # The same storage: the frame kept by reference changed, the clone did not.
    assert obs.data_ptr() == first.data_ptr() == env.observe().data_ptr()
    assert torch.equal(first, obs) and not torch.equal(first, kept)
    assert torch.equal(env.observe(), render_by_reference(env.get_state()))
    # set_state redraws the same buffer.
    assert env.set_state(env.get_state()).data_ptr() == first.data_ptr()


def _env_memory(env):
    """Where each of the env's tensors lives, and every other attribute's value."""
    tensors = {"game": env.games.game.data_ptr(), "bricks": env.games.bricks.data_ptr()}
    others = {}
    for name, value in vars(env).items():
        if isinstance(value, torch.Tensor):
            tensors[name] = value.data_ptr()
        elif not isinstance(value, (tuple, torch.Generator)):
            others[name] = value
    return tensors, others


def test_every_state_tensor_is_written_in_place_and_no_python_value_changes_per_step():
    # What a step captured in a CUDA graph needs: replaying it reads and writes the same memory,
    # so the env must never rebind a tensor, and nothing a step does may hang on a Python value
    # that changes from step to step. Truncations, losses, refills and partial walls all happen.
    env = BatchedBreakout(64, sticky_action_prob=0.1, max_episode_steps=30, seed=3, partial_wall_prob=0.5,
                          random_ball_starts=True)
    act = random_actions(64, seed=3)
    env.reset()
    before = _env_memory(env)
    saved = env.save_state()
    ended = 0
    for _ in range(120):
        *_, info = env.step(act())
        ended += int(info.done.sum())
        assert _env_memory(env) == before
    assert ended > 64  # every kind of episode end was stepped through
    env.reset()
    env.load_state(saved)
    env.set_state(env.get_state())
    assert _env_memory(env) == before
    # What save_state handed out is a copy: stepping on did not change it.
    again = BatchedBreakout(64, sticky_action_prob=0.1, max_episode_steps=30, seed=3, partial_wall_prob=0.5,
                            random_ball_starts=True)
    again.reset()
    reference = again.save_state()
    for name in ("episode_return", "episode_length", "partial_start"):
        assert torch.equal(saved[name], reference[name])


def test_get_state_and_set_state_copy():
    env = BatchedBreakout(4, sticky_action_prob=0.0, seed=6)
    env.reset()
    state = env.get_state()
    state.paddle_x.fill_(0)  # changing the copy leaves the env alone
    assert not torch.equal(env.get_state().paddle_x, state.paddle_x)
    env.set_state(state)
    state.paddle_x.fill_(9)  # and so does changing the state after handing it over
    assert (env.get_state().paddle_x == 0).all()
    assert (env.observe()[:, 0, 9, 0] == 1).all()


def test_save_state_and_load_state_carry_the_episode_counters():
    # Partial walls on, so that which episodes began from one is part of the state too.
    def make():
        return BatchedBreakout(16, sticky_action_prob=0.1, max_episode_steps=40, seed=8, partial_wall_prob=0.5)

    env, act = make(), random_actions(16, seed=8)
    env.reset()
    for _ in range(30):
        env.step(act())
    saved = env.save_state()
    assert list(saved) == ["state", *EPISODE_COUNTERS] and list(saved["state"]) == list(BreakoutState._fields)
    assert all(t.device.type == "cpu" for t in [*saved["state"].values(), *(saved[n] for n in EPISODE_COUNTERS)])
    twin = make()
    assert torch.equal(twin.load_state(saved), env.observe())
    twin.generator.set_state(env.generator.get_state())
    for _ in range(30):  # long enough for episodes to end at the cap and start again
        actions = act()
        obs, reward, terminated, truncated, info = env.step(actions)
        twin_obs, twin_reward, twin_terminated, twin_truncated, twin_info = twin.step(actions)
        assert torch.equal(obs, twin_obs) and torch.equal(reward, twin_reward)
        assert torch.equal(terminated, twin_terminated) and torch.equal(truncated, twin_truncated)
        for name in EPISODE_COUNTERS:
            assert torch.equal(getattr(info, name), getattr(twin_info, name)), name
            assert torch.equal(getattr(env, name), getattr(twin, name)), name

    # Saved before partial-wall starts existed: no partial_start, and the env keeps its own.
    kept = twin.partial_start.clone()
    twin.load_state({name: value for name, value in env.save_state().items() if name != "partial_start"})
    assert torch.equal(twin.partial_start, kept)
    with pytest.raises(ValueError, match="episode_length has shape"):
        twin.load_state({**saved, "episode_length": saved["episode_length"][:3]})


def test_sticky_probability_one_always_repeats_and_zero_never_does():
    for p, expected in ((1.0, lambda requests: torch.zeros_like(requests)), (0.0, lambda requests: requests)):
        env = BatchedBreakout(32, sticky_action_prob=p, seed=9)
        env.reset()  # last_action starts as no-op, so p = 1 plays no-ops for ever
        act = random_actions(32, seed=9)
        for _ in range(50):
            requests = act()
            _, _, _, _, info = env.step(requests)
            assert torch.equal(info.executed_action, expected(requests)), p


# ---------------------------------------------------------------------------------------------
# CUDA


@pytest.mark.cuda
@skip_without_cuda
def test_cuda_and_cpu_play_the_same_games():
    n, steps = 256, 300
    cpu = BatchedBreakout(n, device="cpu", sticky_action_prob=0.0, seed=1)
    cuda = BatchedBreakout(n, device="cuda", sticky_action_prob=0.0, seed=1)
    cpu.reset()
    cuda.set_state(cpu.get_state())
    act = random_actions(n, seed=1)
    for _ in range(steps):
        actions = act()
        cpu_out = cpu.step(actions)
        cuda_out = cuda.step(actions.cuda())
        cpu_info, cuda_info = cpu_out[4], cuda_out[4]
        for name, a, b in zip(("obs", "reward", "terminated", "truncated"), cpu_out[:4], cuda_out[:4]):
            assert b.device.type == "cuda", name
            if name == "obs":  # a game that just ended shows a fresh one, whose start side each device draws
                a, b = a[~cpu_info.done], b[~cuda_info.done]
            assert torch.equal(a, b.cpu()), name
        for name, a, b in zip(BreakoutState._fields, cpu_info.final_state, cuda_info.final_state):
            assert torch.equal(a, b.cpu()), f"final_state.{name}"
        assert torch.equal(cpu_info.final_obs, cuda_info.final_obs.cpu())
        for name in ("episode_return", "episode_length", "episode_refills", "done", "executed_action"):
            assert torch.equal(getattr(cpu_info, name), getattr(cuda_info, name).cpu()), name
        # The two devices draw start sides from their own generators: resync after resets.
        if cpu_info.done.any():
            cuda.set_state(cpu.get_state())
            assert torch.equal(cpu.observe(), cuda.observe().cpu())


@pytest.mark.cuda
@skip_without_cuda
def test_cuda_seeding_is_deterministic_and_everything_stays_on_the_gpu():
    frames, outputs = trajectory(seed=7, device="cuda")
    again_frames, again_outputs = trajectory(seed=7, device="cuda")
    assert torch.equal(frames, again_frames) and torch.equal(outputs, again_outputs)
    env = BatchedBreakout(8, device="cuda", max_episode_steps=5)
    obs, reward, terminated, truncated, info = env.step(torch.zeros(8, dtype=torch.int64))
    tensors = [obs, reward, terminated, truncated, info.executed_action, info.done, info.episode_return,
               info.episode_length, info.episode_refills, info.final_obs, *info.final_state, *info.events,
               *env.get_state(), env.observe()]
    assert all(t.device.type == "cuda" for t in tensors)
