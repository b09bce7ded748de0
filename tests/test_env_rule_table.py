"""Every case of the tabulated rule against the `minatar` package, one MinAtar step each.

The batched env looks each step's outcome up in a table built from `minatar_rule`. Here every
live ball position and direction, paddle column, strike flag and action is played once with a
brick in the ball's way, once with the wall empty (so that a ball reaching the bottom row refills
it) and once with every brick but that one, on our `step_game` and on MinAtar's own `act`; the
next state, the reward, the terminal flag and the quirk events must agree exactly.
"""

from __future__ import annotations

import itertools

import numpy as np
import torch

from breakout_ppo.env import ALL_BRICKS, FIRST_BRICK_ROW, GRID, NUM_BRICK_ROWS, BreakoutState, bricks_to_grid, step_game
from support.minatar_reference import MOVING_DOWN, MOVING_RIGHT, OUR_EVENT_NAMES, load_slot, minimal_actions, reference_game, reference_step

LIVE_ROWS = range(GRID - 1)  # a live ball is never in the paddle row


def brick_bit(row: int, column: int) -> int:
    if FIRST_BRICK_ROW <= row < FIRST_BRICK_ROW + NUM_BRICK_ROWS:
        return 1 << ((row - FIRST_BRICK_ROW) * GRID + column)
    return 0


def every_case() -> BreakoutState:
    """One slot per case: ball cell and direction, paddle, strike, action, and up to three walls."""
    rows = []
    for ball_y, ball_x, ball_dir, paddle_x, strike, action in itertools.product(
            LIVE_ROWS, range(GRID), range(4), range(GRID), (False, True), range(3)):
        dx = 1 if ball_dir in MOVING_RIGHT else -1
        dy = 1 if ball_dir in MOVING_DOWN else -1
        ahead = brick_bit(max(ball_y + dy, 0), min(max(ball_x + dx, 0), GRID - 1))
        for bricks in sorted({ahead, 0, ALL_BRICKS & ~ahead}):
            rows.append((ball_x, ball_y, ball_dir, ball_x, ball_y, paddle_x, bricks, strike, action))
    columns = [torch.tensor(c) for c in zip(*rows)]
    return BreakoutState(*columns)


def test_every_tabulated_case_steps_as_minatar_does():
    state = every_case()
    n = state.ball_x.shape[0]
    assert n >= 50_000  # 7,200 situations x 3 actions, each with two or three walls
    # `last_action` is the action to play: MinAtar without sticky actions records what it played.
    next_state, reward, terminated, events, _ = step_game(state, state.last_action)
    ours = {name: getattr(next_state, name).tolist() for name in BreakoutState._fields}
    our_grids = bricks_to_grid(next_state.bricks).numpy()
    our_events = {name: getattr(events, name).tolist() for name in OUR_EVENT_NAMES}
    reward, terminated = reward.tolist(), terminated.tolist()

    game = reference_game(seed=0)
    codes = minimal_actions(game)
    for slot in range(n):
        load_slot(state, slot, game)
        their_reward, their_terminal, their_events = reference_step(game, int(state.last_action[slot]))
        e = game.env
        theirs = dict(ball_x=e.ball_x, ball_y=e.ball_y, ball_dir=e.ball_dir, last_x=e.last_x, last_y=e.last_y,
                      paddle_x=e.pos, strike=bool(e.strike), last_action=codes.index(game.last_action))
        for name, value in theirs.items():
            assert ours[name][slot] == value, (name, slot)
        assert np.array_equal(our_grids[slot], e.brick_map != 0), slot
        assert reward[slot] == their_reward and terminated[slot] == their_terminal, slot
        for name in OUR_EVENT_NAMES:
            assert our_events[name][slot] == their_events[name], (name, slot)
