"""MinAtar Breakout as a batch of torch tensors.

Every game in the batch steps at once, on CPU or GPU, with exactly the dynamics of
`minatar.Environment("breakout")` (kenjyoung/MinAtar, `minatar/environments/breakout.py`): the same
rules in the same order, quirks included. `step_game` is a pure function of the batched game state;
`BatchedBreakout` adds what MinAtar's `Environment` wrapper adds (sticky actions) and what a
vectorised trainer needs (auto-reset, episode statistics, an optional step cap, observations kept
up to date in place).

Coordinates follow MinAtar: `x` is the column (0 = left), `y` the row (0 = top); the paddle lives
in row 9. Ball directions are MinAtar's codes

    0: up-left   1: up-right   2: down-right   3: down-left

so that `dir ^ 1` mirrors left/right, `dir ^ 3` (that is `3 - dir`) mirrors up/down and `dir ^ 2`
reverses both.

Bricks only ever exist in rows 1-3 (at the start and after each refill), so each game's bricks are
one int64 bitmask: bit `10 * (row - 1) + column`. `bricks_to_grid`/`grid_to_bricks` convert to and
from MinAtar's 10x10 `brick_map`.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from functools import cached_property
from typing import NamedTuple

import torch

GRID = 10
NUM_CHANNELS = 4
CHANNELS = ("paddle", "ball", "trail", "brick")  # MinAtar's channel order
PADDLE_ROW = GRID - 1
FIRST_BRICK_ROW, NUM_BRICK_ROWS = 1, 3
NUM_BRICK_CELLS = NUM_BRICK_ROWS * GRID
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
    strike: torch.Tensor  # bool: the ball entered a brick on the previous step (see step_game)
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
    bits = torch.arange(NUM_BRICK_CELLS, device=grid.device)
    return (grid[:, rows].flatten(1).long() << bits).sum(dim=1)


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


class _RuleTables(NamedTuple):
    """Small lookup tables that step_game indexes (one copy per device, built on first use)."""

    paddle_move: torch.Tensor  # action -> paddle column change: no-op 0, left -1, right +1
    step_x: torch.Tensor  # ball direction code -> column change (see the module docstring)
    step_y: torch.Tensor  # ball direction code -> row change
    brick_bit: torch.Tensor  # cell 10 * row + column -> its bit in `bricks`, 0 outside rows 1-3


@functools.lru_cache(maxsize=None)
def _rule_tables(device: torch.device) -> _RuleTables:
    def table(values):
        return torch.tensor(values, dtype=torch.int64, device=device)

    # Rows 0-10: a ball already lost in row 9 (a terminal state, which MinAtar never steps) would
    # move on to row 10, where there are no bricks either.
    brick_bit = [0] * ((GRID + 1) * GRID)
    for bit in range(NUM_BRICK_CELLS):
        brick_bit[FIRST_BRICK_ROW * GRID + bit] = 1 << bit
    return _RuleTables(
        paddle_move=table([0, -1, 1]),
        step_x=table([-1, 1, 1, -1]),
        step_y=table([-1, -1, 1, 1]),
        brick_bit=table(brick_bit),
    )


def step_game(state: BreakoutState, action: torch.Tensor):
    """One MinAtar Breakout step for every game: no sticky actions, no reset.

    `action` (int64 (N,)) is the executed action: 0 no-op, 1 left, 2 right. Returns
    `(next_state, reward, terminated, events, target_cell)`, where `target_cell` is the cell
    `10 * row + column` the ball moved into before any bounce (where a broken brick was).
    The rules are MinAtar's if/elif chain; each `elif` below holds only where no earlier rule did.
    """
    ball_x, ball_y, ball_dir, _, _, paddle_x, bricks, strike, _ = state
    rules = _rule_tables(ball_x.device)

    # The paddle moves first, so the bounce test below sees where it is *after* the move.
    paddle_x = (paddle_x + rules.paddle_move.index_select(0, action)).clamp_(0, GRID - 1)

    # The ball moves one cell diagonally.
    new_x = ball_x + rules.step_x.index_select(0, ball_dir)
    new_y = ball_y + rules.step_y.index_select(0, ball_dir)

    # Side walls: stay in the grid, mirror left/right (`dir ^ 1`). Not part of the chain: the
    # rules below still apply in the same step (a corner bounce mirrors both ways).
    inside_x = new_x.clamp(0, GRID - 1)
    hit_side = inside_x != new_x
    new_x = inside_x
    ball_dir = ball_dir ^ hit_side

    # if: the top wall.
    hit_top = new_y < 0
    new_y = new_y.clamp_(min=0)
    target_cell = torch.add(new_x, new_y, alpha=GRID)

    # elif: a brick where the ball lands (never with hit_top: row 0 holds no bricks). Without
    # `strike` it breaks, pays 1 and the ball bounces back to its old row; with `strike` (set
    # because the previous step also entered a brick) the ball passes into the brick, which
    # stays, and pays nothing.
    brick = rules.brick_bit.index_select(0, target_cell)
    brick_ahead = (bricks & brick) != 0
    breaks = brick_ahead & ~strike
    strike_pass = brick_ahead & strike
    bricks = torch.where(breaks, bricks ^ brick, bricks)

    # elif: the bottom row (no brick can be in the way there). An empty wall refills first; then
    # the paddle bounces the ball if it is under the ball's *old* column (straight back up) or
    # under its new one (reversed), else the ball is lost.
    at_bottom = new_y == PADDLE_ROW
    refill = at_bottom & (bricks == 0)
    bricks = torch.where(refill, ALL_BRICKS, bricks)
    same_column = at_bottom & (ball_x == paddle_x)
    adjacent_column = at_bottom & ~same_column & (new_x == paddle_x)
    terminated = at_bottom & ~(same_column | adjacent_column)

    # The top wall, a broken brick and a same-column paddle mirror up/down; the adjacent-column
    # paddle reverses both. Every bounce but the top wall's puts the ball back in its old row.
    ball_dir = torch.where(hit_top | breaks | same_column, ball_dir ^ 3, ball_dir)
    ball_dir = torch.where(adjacent_column, ball_dir ^ 2, ball_dir)
    new_y = torch.where(breaks | same_column | adjacent_column, ball_y, new_y)

    next_state = BreakoutState(
        ball_x=new_x,
        ball_y=new_y,
        ball_dir=ball_dir,
        last_x=ball_x,
        last_y=ball_y,
        paddle_x=paddle_x,
        bricks=bricks,
        # MinAtar sets `strike` on a break, keeps it on a pass-through, and clears it on every
        # step that enters no brick: together, strike = "the ball entered a brick this step".
        strike=brick_ahead,
        last_action=action,
    )
    events = StepEvents(breaks, strike_pass, refill, same_column, adjacent_column)
    return next_state, breaks.float(), terminated, events, target_cell


def render(state: BreakoutState) -> torch.Tensor:
    """MinAtar's `state()` for every game: float32 (N, 4, 10, 10), channels paddle, ball, trail, brick."""
    n = state.ball_x.shape[0]
    obs = torch.zeros(n, NUM_CHANNELS, GRID, GRID, device=state.ball_x.device)
    obs[:, 3] = bricks_to_grid(state.bricks).float()
    obs.view(n, -1).scatter_(1, _object_cells(state), 1.0)
    return obs


def _object_cells(state: BreakoutState) -> torch.Tensor:
    """Flat indices into one (4 * 10 * 10) frame of the paddle, ball and trail cells: (N, 3)."""
    cells = GRID * GRID
    return torch.stack(
        [
            0 * cells + PADDLE_ROW * GRID + state.paddle_x,
            1 * cells + state.ball_y * GRID + state.ball_x,
            2 * cells + state.last_y * GRID + state.last_x,
        ],
        dim=1,
    )


@dataclass
class StepInfo:
    """Per-step extras as full-batch tensors; read the episode fields only where `done` is set."""

    executed_action: torch.Tensor  # int64 (N,), the action actually played after sticky actions
    done: torch.Tensor  # bool (N,), terminated | truncated: these games were reset after this step
    episode_return: torch.Tensor  # float32 (N,), return of the episode that just ended
    episode_length: torch.Tensor  # int64 (N,), its length in steps
    episode_refills: torch.Tensor  # int64 (N,), how many times its bricks were refilled
    final_state: BreakoutState  # the game state before auto-reset (the current one where not done)
    events: StepEvents

    @cached_property
    def final_obs(self) -> torch.Tensor:
        """The observation before auto-reset: the last frame of each episode that ended.

        Rendered from `final_state` on first access, so loops that never look pay nothing.
        """
        return render(self.final_state)


class BatchedBreakout:
    """`num_envs` MinAtar Breakout games stepped together, with auto-reset.

    Args:
        num_envs: number of games in the batch.
        device: where every tensor lives.
        sticky_action_prob: probability that the previous executed action is played instead of the
            requested one (MinAtar's default 0.1); as in MinAtar it survives a reset.
        max_episode_steps: if set, an episode reaching this many steps ends with `truncated`.
        seed: seeds start sides and sticky-action draws: same seed, same trajectories on CPU.

    The observation tensor returned by `reset` and `step` is the environment's own buffer, updated
    in place by the next `step` (writing the few cells that change is what makes stepping cheap):
    copy it if you keep it, as a rollout buffer does anyway.
    """

    def __init__(self, num_envs, device="cpu", sticky_action_prob=0.1, max_episode_steps=None, seed=0):
        if int(num_envs) != num_envs or num_envs < 1:
            raise ValueError(f"num_envs must be a positive integer, got {num_envs}")
        if not 0.0 <= sticky_action_prob <= 1.0:
            raise ValueError(f"sticky_action_prob must be in [0, 1], got {sticky_action_prob}")
        if max_episode_steps is not None and max_episode_steps < 1:
            raise ValueError(f"max_episode_steps must be positive or None, got {max_episode_steps}")
        self.num_envs = n = int(num_envs)
        self.device = torch.device(device)
        self.sticky_action_prob = float(sticky_action_prob)
        self.max_episode_steps = max_episode_steps
        self.generator = torch.Generator(self.device).manual_seed(seed)
        zeros = torch.zeros(n, dtype=torch.int64, device=self.device)
        self.state = initial_state(self._random_sides(), last_action=zeros)
        self.episode_return = torch.zeros(n, device=self.device)
        self.episode_length = zeros.clone()
        self.episode_refills = zeros.clone()

        self._obs = torch.zeros(n, NUM_CHANNELS, GRID, GRID, device=self.device)
        # Each step adds +1 or -1 to a few cells of each game's frame (cells numbered 0..399 in
        # channel, row, column order), all in one scatter that visits each frame once. Columns
        # 0-2 and 3-5 of `_cells` hold the paddle, ball and trail cells: one triple the cells lit
        # now, which get -1, the other the new ones, which get +1 (a cell that stays lit gets
        # both); the triples swap roles every step. Column 6 is a broken brick's cell, which gets
        # -1; games that broke none add 0 to their new paddle cell instead.
        self._cells = torch.zeros(n, 7, dtype=torch.int64, device=self.device)
        self._cell_values = torch.tensor(  # [k]: the values when the new cells are columns 3k..3k+2
            [[1.0, 1.0, 1.0, -1.0, -1.0, -1.0, 0.0], [-1.0, -1.0, -1.0, 1.0, 1.0, 1.0, 0.0]], device=self.device
        ).unsqueeze(1).repeat(1, n, 1)
        self._lit_column = 0
        # Brick rows 1-3 (cells 310-339) of every frame, two float32 cells per int64 word.
        words = self._obs.view(n, -1).view(torch.int64)
        self._brick_row_words = words[:, _BRICK_ROWS_CELL // 2 : (_BRICK_ROWS_CELL + NUM_BRICK_CELLS) // 2]
        self._render_obs()

    def _random_sides(self):
        u = torch.rand(self.num_envs, generator=self.generator, device=self.device)
        return u < 0.5

    def reset(self) -> torch.Tensor:
        """Start a new episode in every game; returns the first observations."""
        self.state = initial_state(self._random_sides(), self.state.last_action)
        self.episode_return.zero_()
        self.episode_length.zero_()
        self.episode_refills.zero_()
        return self._render_obs()

    def step(self, actions: torch.Tensor):
        """Play `actions` (int (N,): 0 no-op, 1 left, 2 right) in every game.

        Returns `(obs, reward, terminated, truncated, info)`. Games whose episode ended are reset
        at once: `obs` is then the first frame of the new episode, `info.final_obs` the last
        frame of the old one. Nothing here waits on the device; an action outside 0-2 is an
        index out of range.
        """
        actions = actions.to(device=self.device, dtype=torch.int64)
        # One draw of 31 random bits per game serves both random choices, from disjoint bits so
        # that they are independent: bits 0-29 are a uniform integer below 2**30 that decides the
        # sticky action, bit 30 the start side should the episode end in this step.
        bits = torch.empty(self.num_envs, dtype=torch.int32, device=self.device).random_(generator=self.generator)
        if self.sticky_action_prob > 0:
            sticky = (bits & _STICKY_BITS) < round(self.sticky_action_prob * (_STICKY_BITS + 1))
            executed = torch.where(sticky, self.state.last_action, actions)
        else:
            executed = actions
        final_state, reward, terminated, events, target_cell = step_game(self.state, executed)

        episode_return = self.episode_return + reward
        episode_length = self.episode_length + 1
        episode_refills = self.episode_refills + events.refill
        if self.max_episode_steps is None:
            truncated = torch.zeros_like(terminated)
        else:
            truncated = ~terminated & (episode_length >= self.max_episode_steps)
        done = terminated | truncated

        start_right = bits >> 30
        self.state = _reset_where(done, start_right, final_state)
        self.episode_return = torch.where(done, 0.0, episode_return)
        self.episode_length = torch.where(done, 0, episode_length)
        self.episode_refills = torch.where(done, 0, episode_refills)
        self._update_obs(events.brick_broken, target_cell, events.refill | done)

        info = StepInfo(
            executed_action=executed,
            done=done,
            episode_return=episode_return,
            episode_length=episode_length,
            episode_refills=episode_refills,
            final_state=final_state,
            events=events,
        )
        return self._obs, reward, terminated, truncated, info

    def _update_obs(self, brick_broken, target_cell, bricks_filled):
        """Bring the observation buffer to `self.state` by writing only the cells that change."""
        state, cells = self.state, self._cells
        new = 3 - self._lit_column  # the triple of `_cells` that the cells lit from now on go in
        torch.add(state.paddle_x, PADDLE_ROW * GRID, out=cells[:, new])
        torch.add(state.ball_x, state.ball_y, alpha=GRID, out=cells[:, new + 1]).add_(1 * GRID * GRID)
        torch.add(state.last_x, state.last_y, alpha=GRID, out=cells[:, new + 2]).add_(2 * GRID * GRID)
        torch.where(brick_broken, target_cell + 3 * GRID * GRID, cells[:, new], out=cells[:, 6])
        values = self._cell_values[new // 3]
        torch.mul(brick_broken, -1.0, out=values[:, 6])
        self._obs.view(self.num_envs, -1).scatter_add_(1, cells, values)
        self._lit_column = new
        # Refilled and freshly reset games get full brick rows. OR-ing the bits of two float32
        # 1.0s into a word sets both its cells to 1.0 whether they held 0.0 or 1.0, and OR-ing
        # in 0 changes nothing: one pass over every game, with no branch.
        self._brick_row_words.bitwise_or_(torch.where(bricks_filled, _TWO_ONES, 0).unsqueeze(1))

    def _render_obs(self) -> torch.Tensor:
        """Draw the whole observation from `self.state` (after a reset or `set_state`)."""
        self._obs.copy_(render(self.state))
        lit = self._lit_column
        self._cells[:, lit : lit + 3] = _object_cells(self.state)
        return self._obs

    def get_state(self) -> BreakoutState:
        """A copy of every game's state."""
        return self.state.clone()

    def set_state(self, state: BreakoutState) -> torch.Tensor:
        """Replace every game's state (episode counters are kept); returns the observation."""
        for name, value in zip(BreakoutState._fields, state):
            if tuple(value.shape) != (self.num_envs,):
                raise ValueError(f"state.{name} has shape {tuple(value.shape)}, expected ({self.num_envs},)")
        self.state = state.to(self.device).clone()
        return self._render_obs()

    def observe(self) -> torch.Tensor:
        """The current observation, without stepping."""
        return self._obs


_BRICK_ROWS_CELL = 3 * GRID * GRID + FIRST_BRICK_ROW * GRID  # first cell of brick rows 1-3 in a frame
_TWO_ONES = torch.tensor([1.0, 1.0]).view(torch.int64).item()  # two float32 1.0s as one int64 word
_STICKY_BITS = (1 << 30) - 1  # bits 0-29 of a random_ int32 draw


def _reset_where(done: torch.Tensor, start_right: torch.Tensor, state: BreakoutState) -> BreakoutState:
    """`initial_state(start_right, state.last_action)` where `done`, `state` elsewhere.

    The same as a `torch.where` over every field, but cheaper: only the ball's column and
    direction depend on the start side (`start_right` is 0 or 1 here, so that they are arithmetic
    rather than a select on a random mask); the other fields of a fresh game are constants.
    """
    ball_x = torch.where(done, start_right * (GRID - 1), state.ball_x)
    return BreakoutState(
        ball_x=ball_x,
        ball_y=torch.where(done, START_ROW, state.ball_y),
        ball_dir=torch.where(done, start_right + 2, state.ball_dir),  # 2 down-right, 3 down-left
        last_x=torch.where(done, ball_x, state.last_x),
        last_y=torch.where(done, START_ROW, state.last_y),
        paddle_x=torch.where(done, START_PADDLE_X, state.paddle_x),
        bricks=torch.where(done, ALL_BRICKS, state.bricks),
        strike=state.strike & ~done,
        last_action=state.last_action,
    )
