"""Partial-wall starts, a training option: only the start differs from MinAtar's game.

The draw is checked against its stated law (the share of partial starts, a standing-brick count
uniform over 0-30 because q is uniform), the play that follows against `minatar` itself, the
frames against a fresh render, and training's bookkeeping (returns of partial episodes left out)
against the real rollout. Resume with partial walls is `test_checkpoint.py`'s (the presets use them).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from breakout_ppo.config import preset
from breakout_ppo.env import ALL_BRICKS, NUM_BRICK_CELLS, BatchedBreakout, bricks_to_grid, render
from breakout_ppo.model import ActorCritic
from breakout_ppo.ppo import collect_rollout
from support.minatar_reference import Survivor, five_sigma, load_slot, reference_frames, reference_game, reference_step


def brick_counts(bricks: torch.Tensor) -> torch.Tensor:
    return bricks_to_grid(bricks).sum(dim=(1, 2))


def test_partial_starts_follow_their_law_and_the_frames_follow_the_state():
    p, n = 0.3, 512
    env = BatchedBreakout(n, sticky_action_prob=0.1, seed=7, partial_wall_prob=p)
    obs = env.reset()
    assert torch.equal(obs, render(env.state))
    started, partial_walls = 0, []
    rng = torch.Generator().manual_seed(0)
    for step in range(600):
        obs, _, _, _, info = env.step(torch.randint(0, 3, (n,), generator=rng))
        assert torch.equal(obs, render(env.state)), f"frame and state disagree at step {step}"
        started += int(info.done.sum())
        new_partial = info.done & env.partial_start
        partial_walls.append(env.state.bricks[new_partial])
        # A game that starts full has MinAtar's full wall.
        assert (env.state.bricks[info.done & ~env.partial_start] == ALL_BRICKS).all()
    walls = torch.cat(partial_walls)
    assert started > 5000
    assert abs(len(walls) / started - p) < five_sigma(p, started)
    # q uniform makes the count of standing bricks uniform over 0..30, and every cell is alike.
    histogram = torch.bincount(brick_counts(walls), minlength=NUM_BRICK_CELLS + 1).double() / len(walls)
    assert (histogram - 1 / 31).abs().max() < five_sigma(1 / 31, len(walls)), histogram
    per_cell = bricks_to_grid(walls)[:, 1:4].double().mean(0)
    assert (per_cell - 0.5).abs().max() < five_sigma(0.5, len(walls)), per_cell


def test_off_by_default_and_draws_nothing_extra():
    default = BatchedBreakout(64, seed=3)
    off = BatchedBreakout(64, seed=3, partial_wall_prob=0.0)
    default.reset(), off.reset()
    actions = torch.randint(0, 3, (300, 64), generator=torch.Generator().manual_seed(1))
    for a in actions:
        default.step(a), off.step(a)
    assert torch.equal(default.generator.get_state(), off.generator.get_state())
    assert not off.partial_start.any()
    with pytest.raises(ValueError, match="partial_wall_prob"):
        BatchedBreakout(4, partial_wall_prob=1.5)


@pytest.mark.parametrize("random_ball_starts", [False, True])
def test_play_from_a_partial_wall_is_minatars_play(random_ball_starts):
    """Every game starts partial; MinAtar games loaded with the same start step alongside, with
    the look-ahead player, through refills of emptied walls, until their first episode ends."""
    n = 48
    env = BatchedBreakout(n, sticky_action_prob=0.0, seed=11, partial_wall_prob=1.0,
                          random_ball_starts=random_ball_starts)
    env.reset()
    start = env.get_state()
    assert (brick_counts(start.bricks) < NUM_BRICK_CELLS).sum() >= n - 6  # nearly all really partial
    games = [reference_game(100 + i) for i in range(n)]
    for i, game in enumerate(games):
        load_slot(start, i, game)
    assert torch.equal(env.observe(), reference_frames(games))
    player = Survivor(seed=5, give_up=1 / 30)
    running = np.ones(n, dtype=bool)
    refills = 0
    for step in range(400):
        actions = player(games, step)
        _, reward, terminated, _, info = env.step(torch.from_numpy(actions))
        for i in np.flatnonzero(running):
            their_reward, their_terminal, events = reference_step(games[i], int(actions[i]))
            refills += events["refill"]
            assert reward[i] == their_reward and bool(terminated[i]) == their_terminal, (step, i)
        frames = reference_frames(games)
        mask = torch.from_numpy(running)
        assert torch.equal(info.final_obs[mask], frames[mask]), f"step {step}"
        running &= ~terminated.numpy()
        if not running.any():
            break
    assert refills >= 5  # the empty and nearly empty walls do refill, as after a clear


def test_training_returns_leave_partial_episodes_out():
    config = preset("smoke", num_envs=32, num_steps=64)
    model = ActorCritic(config.arch, config.hidden, shared_layers=0)
    generator = torch.Generator().manual_seed(0)
    all_partial = BatchedBreakout(32, seed=1, partial_wall_prob=1.0)
    _, _, stats = collect_rollout(model, all_partial, all_partial.reset(), config, generator)
    none_partial = BatchedBreakout(32, seed=1)
    _, _, full_stats = collect_rollout(model, none_partial, none_partial.reset(), config, generator)
    assert full_stats.count > 0  # random play loses balls within 64 steps...
    assert stats.count == 0  # ...and none of the all-partial episodes is counted


def test_random_ball_starts_follow_their_law_and_the_frames_follow_the_state():
    n = 512
    env = BatchedBreakout(n, sticky_action_prob=0.1, seed=5, partial_wall_prob=0.5, random_ball_starts=True)
    obs = env.reset()
    assert torch.equal(obs, render(env.state))
    partial_balls, full_balls = [], []
    rng = torch.Generator().manual_seed(2)
    for step in range(400):
        obs, _, _, _, info = env.step(torch.randint(0, 3, (n,), generator=rng))
        assert torch.equal(obs, render(env.state)), f"frame and state disagree at step {step}"
        state = env.state
        fields = torch.stack([state.ball_x, state.ball_y, state.ball_dir, state.last_x, state.last_y,
                              state.paddle_x, state.strike.long()], 1)
        partial_balls.append(fields[info.done & env.partial_start])
        full_balls.append(fields[info.done & ~env.partial_start])
    partial, full = torch.cat(partial_balls), torch.cat(full_balls)
    assert len(partial) > 2000 and len(full) > 2000
    # Full-wall episodes keep MinAtar's start: row 3 at a side wall, heading to the middle.
    assert ((full[:, 1] == 3) & (((full[:, 0] == 0) & (full[:, 2] == 2)) | ((full[:, 0] == 9) & (full[:, 2] == 3)))).all()
    # Partial ones: any column, rows 3-5, down-right or down-left, each alike; trail on the ball,
    # paddle in the middle, no strike, as MinAtar starts a game.
    for name, values, count in (("column", partial[:, 0], 10), ("row", partial[:, 1] - 3, 3),
                                ("direction", partial[:, 2] - 2, 2)):
        histogram = torch.bincount(values, minlength=count).double() / len(partial)
        assert len(histogram) == count, (name, histogram)
        assert (histogram - 1 / count).abs().max() < five_sigma(1 / count, len(partial)), (name, histogram)
    assert torch.equal(partial[:, 3:5], partial[:, 0:2])
    assert (partial[:, 5] == 4).all() and (partial[:, 6] == 0).all()


def test_random_ball_starts_change_nothing_without_partial_walls():
    plain = BatchedBreakout(64, seed=3)
    asked = BatchedBreakout(64, seed=3, random_ball_starts=True)  # no partial walls: MinAtar's game
    plain.reset(), asked.reset()
    for a in torch.randint(0, 3, (300, 64), generator=torch.Generator().manual_seed(1)):
        plain.step(a), asked.step(a)
    assert torch.equal(plain.generator.get_state(), asked.generator.get_state())
    assert torch.equal(plain.games.game, asked.games.game)
