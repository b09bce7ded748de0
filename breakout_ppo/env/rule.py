"""The rule of MinAtar Breakout, readably: the game's constants, its state, and one step of one game.

This is what a reader should meet first; `packed.py` turns the rule into tables for the fast
batched step and `batched.py` wraps that step in the environment a trainer uses.

The dynamics are exactly those of `minatar.Environment("breakout")` (kenjyoung/MinAtar,
`minatar/environments/breakout.py`): the same rules in the same order, quirks included.
`minatar_rule` is that rule for one game, written as MinAtar's if/elif chain.

Coordinates follow MinAtar: `x` is the column (0 = left), `y` the row (0 = top); the paddle lives
in row 9. Ball directions are MinAtar's codes

    0: up-left   1: up-right   2: down-right   3: down-left

so that `dir ^ 1` mirrors left/right, `dir ^ 3` (that is `3 - dir`) mirrors up/down and `dir ^ 2`
reverses both.

Bricks only ever exist in rows 1-3 (at the start and after each refill), so each game's bricks are
one bitmask: bit `10 * (row - 1) + column`. `bricks_to_grid`/`grid_to_bricks` convert to and
from MinAtar's 10x10 `brick_map`.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

GRID = 10
NUM_CHANNELS = 4
CHANNELS = ("paddle", "ball", "trail", "brick")  # MinAtar's channel order
PADDLE_ROW = GRID - 1
FIRST_BRICK_ROW, NUM_BRICK_ROWS = 1, 3
NUM_BRICK_CELLS = NUM_BRICK_ROWS * GRID
# In a flattened frame (channel, row, column) only cells 90-339 can ever be 1: the paddle channel's
# bottom row, all of the ball and trail channels, the brick channel down to row 3 (its row 0 rides
# along to keep the run contiguous). The other 150 of the 400 are 0 in every Breakout frame.
LIVE_FRAME_CELLS = slice(PADDLE_ROW * GRID, (3 * GRID + FIRST_BRICK_ROW + NUM_BRICK_ROWS) * GRID)
ALL_BRICKS = (1 << NUM_BRICK_CELLS) - 1

NUM_ACTIONS = 3
ACTION_NAMES = ("no-op", "left", "right")
MINATAR_ACTIONS = (0, 1, 3)  # our action i is MinAtar's action MINATAR_ACTIONS[i] (its minimal set)
NOOP, LEFT, RIGHT = 0, 1, 2

START_ROW, START_PADDLE_X = 3, 4


class BreakoutState(NamedTuple):
    """The full game state of every game in the batch; every field is an int64 or bool (N,) tensor."""

    ball_x: torch.Tensor  # column of the ball
    ball_y: torch.Tensor  # row of the ball
    ball_dir: torch.Tensor  # direction code 0..3 (see module docstring)
    last_x: torch.Tensor  # ball column one step ago, drawn as the trail
    last_y: torch.Tensor  # ball row one step ago
    paddle_x: torch.Tensor  # paddle column (the paddle is always in row 9)
    bricks: torch.Tensor  # bitmask of the bricks in rows 1-3, bit 10 * (row - 1) + column
    strike: torch.Tensor  # bool: the ball entered a brick on the previous step (see minatar_rule)
    last_action: torch.Tensor  # previous *executed* action (0..2), what a sticky action repeats

    def clone(self) -> "BreakoutState":
        return BreakoutState(*(t.clone() for t in self))

    def to(self, device) -> "BreakoutState":
        return BreakoutState(*(t.to(device) for t in self))


class StepEvents(NamedTuple):
    """What happened inside one step, per game (bool (N,) tensors): for tests and instruments."""

    brick_broken: torch.Tensor  # the ball removed a brick (reward 1)
    strike_pass: torch.Tensor  # the ball entered a brick while `strike` was set: no reward, brick stays
    refill: torch.Tensor  # the ball reached the bottom row with no bricks left: rows 1-3 refilled
    same_column_bounce: torch.Tensor  # paddle under the ball's old column: ball goes back up, same side
    adjacent_column_bounce: torch.Tensor  # paddle where the ball lands: ball reverses both directions


def bricks_to_grid(bricks: torch.Tensor) -> torch.Tensor:
    """Bitmask (N,) -> bool (N, 10, 10), MinAtar's `brick_map`."""
    bits = torch.arange(NUM_BRICK_CELLS, device=bricks.device)
    rows = ((bricks.unsqueeze(1) >> bits) & 1).bool().view(-1, NUM_BRICK_ROWS, GRID)
    grid = torch.zeros(bricks.shape[0], GRID, GRID, dtype=torch.bool, device=bricks.device)
    grid[:, FIRST_BRICK_ROW : FIRST_BRICK_ROW + NUM_BRICK_ROWS] = rows
    return grid


def grid_to_bricks(grid: torch.Tensor) -> torch.Tensor:
    """Bool or 0/1 (N, 10, 10) -> bitmask (N,). Bricks outside rows 1-3 cannot occur in Breakout."""
    grid = torch.as_tensor(grid).bool()
    rows = slice(FIRST_BRICK_ROW, FIRST_BRICK_ROW + NUM_BRICK_ROWS)
    outside = grid.clone()
    outside[:, rows] = False
    if outside.any():
        raise ValueError("Breakout bricks can only be in rows 1-3")
    return rows_to_bricks(grid[:, rows].flatten(1))


def rows_to_bricks(standing: torch.Tensor) -> torch.Tensor:
    """Bool (N, 30), brick rows 1-3 flattened -> bitmask (N,)."""
    bits = torch.arange(NUM_BRICK_CELLS, device=standing.device)
    return (standing.long() << bits).sum(dim=1)


def initial_state(start_right: torch.Tensor, last_action: torch.Tensor) -> BreakoutState:
    """The state MinAtar's `reset` makes; `start_right` (bool (N,)) picks the ball's start side.

    The ball starts in row 3 at the left or right wall, moving down towards the middle. MinAtar's
    `Environment.reset` does not touch the sticky `last_action`, so it is carried over.
    """
    ball_x = torch.where(start_right, GRID - 1, 0)
    ball_y = torch.full_like(ball_x, START_ROW)
    return BreakoutState(
        ball_x=ball_x,
        ball_y=ball_y,
        ball_dir=torch.where(start_right, 3, 2),
        last_x=ball_x.clone(),
        last_y=ball_y.clone(),
        paddle_x=torch.full_like(ball_x, START_PADDLE_X),
        bricks=torch.full_like(ball_x, ALL_BRICKS),
        strike=torch.zeros_like(start_right),
        last_action=last_action.clone(),
    )


# --- The rule, for one game --------------------------------------------------------------------

STEP_X = (-1, 1, 1, -1)  # ball direction code -> column change
STEP_Y = (-1, -1, 1, 1)  # ball direction code -> row change
PADDLE_MOVE = (0, -1, 1)  # action -> paddle column change: no-op, left, right


class RuleOutcome(NamedTuple):
    """What one step does to one game's ball (`minatar_rule`'s answer)."""

    ball_x: int
    ball_y: int
    ball_dir: int
    target_x: int  # the cell the ball moved into before any bounce (where a broken brick was)
    target_y: int
    brick_broken: bool
    strike_pass: bool
    at_bottom: bool  # the ball reached the paddle row: an empty wall refills here
    same_column_bounce: bool
    adjacent_column_bounce: bool
    lost: bool


def minatar_rule(ball_x: int, ball_y: int, ball_dir: int, paddle_x: int, strike: bool,
                 brick_ahead: bool) -> RuleOutcome:
    """One step of MinAtar's `Breakout.act` for one game, after the paddle has moved.

    The rules are MinAtar's if/elif chain in MinAtar's order. `brick_ahead` says whether a brick
    stands in the cell the ball moves into (after the side-wall clamp): the caller, who holds the
    bricks, looks it up, so that this function sees only the small part of the state.
    """
    new_x, new_y = ball_x + STEP_X[ball_dir], ball_y + STEP_Y[ball_dir]
    breaks = strike_pass = at_bottom = same_column = adjacent_column = lost = False

    # Side walls: stay in the grid, mirror left/right. Not part of the chain: the rules below
    # still apply in the same step (a corner bounce mirrors both ways).
    if not 0 <= new_x <= GRID - 1:
        new_x = min(max(new_x, 0), GRID - 1)
        ball_dir ^= 1
    target_x, target_y = new_x, max(new_y, 0)

    if new_y < 0:  # the top wall
        new_y = 0
        ball_dir ^= 3
    elif brick_ahead:
        # Without `strike` the brick breaks, pays 1 and the ball bounces back to its old row;
        # with `strike` (the previous step also entered a brick) the ball passes into the brick,
        # which stays, and pays nothing.
        if strike:
            strike_pass = True
        else:
            breaks = True
            new_y = ball_y
            ball_dir ^= 3
    elif new_y == PADDLE_ROW:
        # The paddle bounces the ball if it is under the ball's *old* column (straight back up,
        # same side) or under its new one (reversed), else the ball is lost.
        at_bottom = True
        if ball_x == paddle_x:
            same_column = True
            ball_dir ^= 3
            new_y = ball_y
        elif new_x == paddle_x:
            adjacent_column = True
            ball_dir ^= 2
            new_y = ball_y
        else:
            lost = True
    return RuleOutcome(new_x, new_y, ball_dir, target_x, target_y, breaks, strike_pass, at_bottom,
                       same_column, adjacent_column, lost)
