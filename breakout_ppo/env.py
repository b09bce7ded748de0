"""MinAtar Breakout as a batch of torch tensors.

Every game in the batch steps at once, on CPU or GPU, with exactly the dynamics of
`minatar.Environment("breakout")` (kenjyoung/MinAtar, `minatar/environments/breakout.py`): the same
rules in the same order, quirks included. `minatar_rule` is that rule for one game, written as
MinAtar's if/elif chain; `step_game` is a pure function of the batched game state; `BatchedBreakout`
adds what MinAtar's `Environment` wrapper adds (sticky actions) and what a vectorised trainer needs
(auto-reset, episode statistics, an optional step cap, observations kept up to date in place,
and, for training only, optional starts from partial walls).

Coordinates follow MinAtar: `x` is the column (0 = left), `y` the row (0 = top); the paddle lives
in row 9. Ball directions are MinAtar's codes

    0: up-left   1: up-right   2: down-right   3: down-left

so that `dir ^ 1` mirrors left/right, `dir ^ 3` (that is `3 - dir`) mirrors up/down and `dir ^ 2`
reverses both.

Bricks only ever exist in rows 1-3 (at the start and after each refill), so each game's bricks are
one bitmask: bit `10 * (row - 1) + column`. `bricks_to_grid`/`grid_to_bricks` convert to and
from MinAtar's 10x10 `brick_map`.

Why the batched step is table lookups. Apart from the bricks, a game is small: the ball's cell and
direction, the paddle column and the strike flag take 8,800 values, and with the action and
"is there a brick where the ball is going" the outcome of a step is fixed. So `minatar_rule` is
run once for every such case when the module first steps a game, and a batched step looks the
outcome up instead of evaluating the rule chain with a dozen `torch.where`s per game. The game
state travels packed in one integer word per game (see `PackedGames`) beside the brick mask, so
a step is about forty cheap tensor ops, and an auto-reset is one select per word. The readable
`BreakoutState` (one tensor per field) is what `get_state`/`set_state` and `info.final_state`
speak; the differential tests check every step against `minatar` itself.
"""

from __future__ import annotations

import functools
from functools import cached_property
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


# --- The packed state ---------------------------------------------------------------------------
#
# One int64 word per game holds everything but the bricks, in fields of these bits:
#
#     0-6 ball cell (10 * row + column)   7-8 direction   9-12 paddle column   13 strike
#     14-20 trail cell (the ball's cell one step ago)    21-22 last executed action
#
# Bits 0-8 (ball and direction) decide where the ball goes; bits 0-13 with the action and
# "brick ahead" decide the whole step: those are the two table indices.

BALL_SHIFT, DIR_SHIFT, PADDLE_SHIFT, STRIKE_SHIFT, TRAIL_SHIFT, ACTION_SHIFT = 0, 7, 9, 13, 14, 21
BALL_DIR_BITS = 9
KINEMATIC_BITS = 14
GAME_BITS = 23
# A row-9 ball (only ever in a lost game's final state) moving down reaches row 10: cell 109 still
# fits the 7-bit field, as the rule says (no bricks or paddle there) though MinAtar never steps it.
NUM_BALL_CELLS = (GRID + 1) * GRID


class PackedGames(NamedTuple):
    """Every game's state as two int64 (N,) tensors: the game word above and the brick mask."""

    game: torch.Tensor
    bricks: torch.Tensor


def pack(state: BreakoutState) -> PackedGames:
    """`BreakoutState` -> `PackedGames` (checks every field's range: packing must not wrap)."""
    ranges = dict(ball_x=GRID, ball_y=GRID, ball_dir=4, last_x=GRID, last_y=GRID, paddle_x=GRID,
                  bricks=ALL_BRICKS + 1, strike=2, last_action=NUM_ACTIONS)
    for name, value in state._asdict().items():
        if value.numel() and not bool(((value >= 0) & (value < ranges[name])).all()):
            raise ValueError(f"state.{name} holds values outside [0, {ranges[name] - 1}]")
    game = ((state.ball_y * GRID + state.ball_x) << BALL_SHIFT
            | state.ball_dir << DIR_SHIFT
            | state.paddle_x << PADDLE_SHIFT
            | state.strike.long() << STRIKE_SHIFT
            | (state.last_y * GRID + state.last_x) << TRAIL_SHIFT
            | state.last_action << ACTION_SHIFT)
    return PackedGames(game, state.bricks.long())


def unpack(packed: PackedGames) -> BreakoutState:
    """`PackedGames` -> `BreakoutState` (int64 fields, a bool `strike`)."""
    game = packed.game

    def field(shift, bits):
        return (game >> shift) & ((1 << bits) - 1)

    ball, trail = field(BALL_SHIFT, 7), field(TRAIL_SHIFT, 7)
    return BreakoutState(
        ball_x=ball % GRID,
        ball_y=ball // GRID,
        ball_dir=field(DIR_SHIFT, 2),
        last_x=trail % GRID,
        last_y=trail // GRID,
        paddle_x=field(PADDLE_SHIFT, 4),
        bricks=packed.bricks.long(),
        strike=field(STRIKE_SHIFT, 1).bool(),
        last_action=field(ACTION_SHIFT, 2),
    )


# Event flags of a step, one bit each, as the table keeps them for `StepEvents`.
BROKEN_FLAG, STRIKE_PASS_FLAG, SAME_COLUMN_FLAG, ADJACENT_COLUMN_FLAG = 1, 2, 4, 8


class _RuleTables(NamedTuple):
    """`minatar_rule` tabulated (one copy per device, built on first use).

    Indexed by bits 0-8 of the game word (ball cell and direction), where the ball is going:
    `target_bit`, `target_obs_cell`. Indexed by the step index `(kinematic * 3 + action) * 2 +
    brick_ahead`, what the step does: the rest but `fresh_game`, indexed by `side * 3 + action`.
    One table per quantity, so that each is one lookup in the step rather than a lookup and an
    unpacking.
    """

    target_bit: torch.Tensor  # int64: the brick bit of the cell the ball moves into, 0 if none
    target_obs_cell: torch.Tensor  # int64: that cell in the brick channel of a frame (300..399)
    next_game: torch.Tensor  # int64: the game word after the step
    brick_cleared: torch.Tensor  # int64: the brick bit the step breaks, 0 if none
    reward: torch.Tensor  # float32
    lost: torch.Tensor  # bool
    at_bottom: torch.Tensor  # bool: the ball reached the paddle row (an empty wall refills here)
    event_flags: torch.Tensor  # int64: the flags above
    fresh_game: torch.Tensor  # int64: MinAtar's start state on side 0 (left) or 1, sticky action kept


@functools.lru_cache(maxsize=None)
def _rule_tables(device: torch.device) -> _RuleTables:
    target_bit = [0] * (1 << BALL_DIR_BITS)
    target_obs_cell = [3 * GRID * GRID] * (1 << BALL_DIR_BITS)
    size = (1 << KINEMATIC_BITS) * NUM_ACTIONS * 2
    next_game, brick_cleared, reward, lost, at_bottom, event_flags = ([0] * size for _ in range(6))
    for ball in range(NUM_BALL_CELLS):
        ball_y, ball_x = divmod(ball, GRID)
        for ball_dir in range(4):
            where = ball | ball_dir << DIR_SHIFT
            probe = minatar_rule(ball_x, ball_y, ball_dir, paddle_x=-1, strike=False, brick_ahead=False)
            if FIRST_BRICK_ROW <= probe.target_y < FIRST_BRICK_ROW + NUM_BRICK_ROWS:
                target_bit[where] = 1 << ((probe.target_y - FIRST_BRICK_ROW) * GRID + probe.target_x)
            if probe.target_y < GRID:  # a row-10 target holds no brick: any cell takes the 0 added there
                target_obs_cell[where] = 3 * GRID * GRID + probe.target_y * GRID + probe.target_x
            for paddle_x in range(GRID):
                for strike in (0, 1):
                    kinematic = where | paddle_x << PADDLE_SHIFT | strike << STRIKE_SHIFT
                    for action in range(NUM_ACTIONS):
                        # The paddle moves first, so the bounce test sees where it is *after* the move.
                        moved = min(max(paddle_x + PADDLE_MOVE[action], 0), GRID - 1)
                        for brick_ahead in (0, 1):
                            o = minatar_rule(ball_x, ball_y, ball_dir, moved, bool(strike), bool(brick_ahead))
                            i = (kinematic * NUM_ACTIONS + action) * 2 + brick_ahead
                            next_game[i] = ((o.ball_y * GRID + o.ball_x) << BALL_SHIFT
                                            | o.ball_dir << DIR_SHIFT
                                            | moved << PADDLE_SHIFT
                                            # MinAtar sets `strike` on a break, keeps it on a
                                            # pass-through and clears it on every step that
                                            # enters no brick.
                                            | brick_ahead << STRIKE_SHIFT
                                            | ball << TRAIL_SHIFT
                                            | action << ACTION_SHIFT)
                            brick_cleared[i] = target_bit[where] if o.brick_broken else 0
                            reward[i], lost[i], at_bottom[i] = float(o.brick_broken), o.lost, o.at_bottom
                            event_flags[i] = (o.brick_broken * BROKEN_FLAG | o.strike_pass * STRIKE_PASS_FLAG
                                              | o.same_column_bounce * SAME_COLUMN_FLAG
                                              | o.adjacent_column_bounce * ADJACENT_COLUMN_FLAG)
    fresh_game = [int(pack(initial_state(torch.tensor([bool(side)]), torch.tensor([action]))).game)
                  for side in (0, 1) for action in range(NUM_ACTIONS)]

    def table(values, dtype=torch.int64):
        return torch.tensor(values, dtype=dtype, device=device)

    return _RuleTables(table(target_bit), table(target_obs_cell), table(next_game), table(brick_cleared),
                       table(reward, torch.float32), table(lost, torch.bool), table(at_bottom, torch.bool),
                       table(event_flags), table(fresh_game))


class PackedStep(NamedTuple):
    """What `step_packed` returns: the next state, and what the step did, per game."""

    games: PackedGames
    reward: torch.Tensor  # float32 (N,)
    terminated: torch.Tensor  # bool (N,): the ball was lost
    refill: torch.Tensor  # bool (N,): the ball reached the bottom row with no bricks left
    index: torch.Tensor  # int64 (N,): the step index into the outcome tables
    ball_dir_index: torch.Tensor  # int64 (N,): bits 0-8 of the old game word, the target-cell index


def step_packed(games: PackedGames, action: torch.Tensor) -> PackedStep:
    """One MinAtar Breakout step for every game, on packed state: no sticky actions, no reset.

    `action` (int64 (N,)) is the executed action: 0 no-op, 1 left, 2 right.
    """
    game, bricks = games
    rules = _rule_tables(game.device)
    # int64 throughout, the dtype of Python's integer constants: mixing dtypes costs a conversion per op.
    ball_dir_index = game & ((1 << BALL_DIR_BITS) - 1)
    brick_ahead = (bricks & rules.target_bit.index_select(0, ball_dir_index)).clamp_(max=1)  # 0 or 1
    kinematic = game & ((1 << KINEMATIC_BITS) - 1)
    index = torch.add(brick_ahead, torch.add(action, kinematic, alpha=NUM_ACTIONS), alpha=2)

    # A broken brick is removed; then an empty wall refills when the ball reaches the bottom row
    # (lost or not): the order of MinAtar's chain.
    bricks = bricks ^ rules.brick_cleared.index_select(0, index)
    refill = rules.at_bottom.index_select(0, index) & (bricks == 0)
    bricks = torch.where(refill, ALL_BRICKS, bricks)
    return PackedStep(PackedGames(rules.next_game.index_select(0, index), bricks),
                      rules.reward.index_select(0, index), rules.lost.index_select(0, index), refill, index,
                      ball_dir_index)


def events_of(index: torch.Tensor, refill: torch.Tensor) -> StepEvents:
    """The `StepEvents` of a step from its step index."""
    flags = _rule_tables(index.device).event_flags.index_select(0, index)

    def flag(bit):
        return (flags & bit) != 0

    return StepEvents(flag(BROKEN_FLAG), flag(STRIKE_PASS_FLAG), refill, flag(SAME_COLUMN_FLAG),
                      flag(ADJACENT_COLUMN_FLAG))


def step_game(state: BreakoutState, action: torch.Tensor):
    """One MinAtar Breakout step for every game of a `BreakoutState`: no sticky actions, no reset.

    `action` (int (N,)) is the executed action: 0 no-op, 1 left, 2 right. Returns
    `(next_state, reward, terminated, events, target_cell)`, where `target_cell` is the cell
    `10 * row + column` the ball moved into before any bounce (where a broken brick was).
    """
    step = step_packed(pack(state), action.long())
    target_cell = _rule_tables(state.ball_x.device).target_obs_cell.index_select(0, step.ball_dir_index) - 3 * GRID * GRID
    return unpack(step.games), step.reward, step.terminated, events_of(step.index, step.refill), target_cell


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


class StepInfo:
    """Per-step extras as full-batch tensors; read the episode fields only where `done` is set.

    `final_state`, `final_obs` and `events` are computed on first access from what the step kept,
    so loops that never look pay nothing.
    """

    def __init__(self, executed_action, done, episode_return, episode_length, episode_refills, final_games,
                 step_index, refill, partial_start):
        self.executed_action = executed_action  # int64 (N,), the action actually played after sticky actions
        self.done = done  # bool (N,), terminated | truncated: these games were reset after this step
        self.episode_return = episode_return  # float32 (N,), return of the episode that just ended
        self.episode_length = episode_length  # int64 (N,), its length in steps
        self.episode_refills = episode_refills  # int64 (N,), how many times its bricks were refilled
        self.final_games = final_games  # PackedGames before auto-reset (the current state where not done)
        self.partial_start = partial_start  # bool (N,), the episode (that just ended) began from a partial wall
        self._step_index, self._refill = step_index, refill

    @cached_property
    def final_state(self) -> BreakoutState:
        """The game state before auto-reset (the current one where not done)."""
        return unpack(self.final_games)

    @cached_property
    def final_obs(self) -> torch.Tensor:
        """The observation before auto-reset: the last frame of each episode that ended."""
        return render(self.final_state)

    @cached_property
    def events(self) -> StepEvents:
        return events_of(self._step_index, self._refill)


class BatchedBreakout:
    """`num_envs` MinAtar Breakout games stepped together, with auto-reset.

    Args:
        num_envs: number of games in the batch.
        device: where every tensor lives.
        sticky_action_prob: probability that the previous executed action is played instead of the
            requested one (MinAtar's default 0.1); as in MinAtar it survives a reset.
        max_episode_steps: if set, an episode reaching this many steps ends with `truncated`.
        seed: seeds start sides and sticky-action draws: same seed, same trajectories on CPU.
        partial_wall_prob: a training option, 0 (MinAtar's game) unless set: the probability that
            a game starts from a random partial wall instead of the full one. Each of its 30
            bricks stands with probability q, q drawn uniformly per game, so every count from an
            empty wall (which refills when the ball reaches the bottom row, as after a clear) to
            a full one is drawn. Everything after the start is MinAtar's dynamics.
            `info.partial_start` marks the episodes that began this way.
        random_ball_starts: with partial walls, those episodes also start the ball in a random
            cell of rows 3-5 (MinAtar's is row 3 at a side wall), moving down-left or down-right,
            trail on the ball as in MinAtar's start: more of the ball's paths from the first
            minute. Draws nothing extra when off.

    The observation tensor returned by `reset` and `step` is the environment's own buffer, updated
    in place by the next `step` (writing the few cells that change is what makes stepping cheap):
    copy it if you keep it, as a rollout buffer does anyway.
    """

    def __init__(self, num_envs, device="cpu", sticky_action_prob=0.1, max_episode_steps=None, seed=0,
                 partial_wall_prob=0.0, random_ball_starts=False):
        if int(num_envs) != num_envs or num_envs < 1:
            raise ValueError(f"num_envs must be a positive integer, got {num_envs}")
        if not 0.0 <= sticky_action_prob <= 1.0:
            raise ValueError(f"sticky_action_prob must be in [0, 1], got {sticky_action_prob}")
        if max_episode_steps is not None and max_episode_steps < 1:
            raise ValueError(f"max_episode_steps must be positive or None, got {max_episode_steps}")
        if not 0.0 <= partial_wall_prob <= 1.0:
            raise ValueError(f"partial_wall_prob must be in [0, 1], got {partial_wall_prob}")
        self.num_envs = n = int(num_envs)
        self.device = torch.device(device)
        self.sticky_action_prob = float(sticky_action_prob)
        self.max_episode_steps = max_episode_steps
        self.partial_wall_prob = float(partial_wall_prob)
        self.random_ball_starts = bool(random_ball_starts) and self.partial_wall_prob > 0
        self.generator = torch.Generator(self.device).manual_seed(seed)
        self._rules = _rule_tables(self.device)  # built once per process and device
        zeros = torch.zeros(n, dtype=torch.int64, device=self.device)
        self.episode_return = torch.zeros(n, device=self.device)
        self.episode_length = zeros.clone()
        self.episode_refills = zeros.clone()
        self.partial_start = torch.zeros(n, dtype=torch.bool, device=self.device)
        self.games = self._start_games(pack(initial_state(self._random_sides(), last_action=zeros)))
        self._obs = torch.zeros(n, NUM_CHANNELS, GRID, GRID, device=self.device)
        # Each step adds +1 or -1 to a few cells of each game's frame (cells numbered 0..399 in
        # channel, row, column order), all in one scatter that visits each frame once. Columns
        # 0-2 and 3-5 of `_cells` hold the paddle, ball and trail cells: one triple the cells lit
        # now, which get -1, the other the new ones, which get +1 (a cell that stays lit gets
        # both); the triples swap roles every step. Column 6 is the brick cell the ball moved
        # into, which gets -1 if the brick broke and 0 if not.
        self._cells = torch.zeros(n, 7, dtype=torch.int64, device=self.device)
        self._cell_values = torch.tensor(  # [k]: the values when the new cells are columns 3k..3k+2
            [[1.0, 1.0, 1.0, -1.0, -1.0, -1.0, 0.0], [-1.0, -1.0, -1.0, 1.0, 1.0, 1.0, 0.0]], device=self.device
        ).unsqueeze(1).repeat(1, n, 1)
        self._lit_column = 0
        # Paddle, ball and trail: their field's shift and mask in the game word, and the first
        # cell of their channel in a frame.
        self._object_fields = (
            torch.tensor([PADDLE_SHIFT, BALL_SHIFT, TRAIL_SHIFT], dtype=torch.int64, device=self.device),
            torch.tensor([15, 127, 127], dtype=torch.int64, device=self.device),
            torch.tensor([PADDLE_ROW * GRID, GRID * GRID, 2 * GRID * GRID], dtype=torch.int64, device=self.device),
        )
        # Brick rows 1-3 (cells 310-339) of every frame, two float32 cells per int64 word, and what
        # to OR into them: the bits of two 1.0s, or nothing.
        self._brick_fill_words = (torch.tensor(_TWO_ONES, device=self.device),
                                  torch.tensor(0, device=self.device))
        words = self._obs.view(n, -1).view(torch.int64)
        self._brick_row_words = words[:, _BRICK_ROWS_CELL // 2 : (_BRICK_ROWS_CELL + NUM_BRICK_CELLS) // 2]
        self._render_obs()

    @property
    def state(self) -> BreakoutState:
        """Every game's state, one tensor per field (unpacked on each read)."""
        return unpack(self.games)

    def _random_sides(self):
        u = torch.rand(self.num_envs, generator=self.generator, device=self.device)
        return u < 0.5

    def _draw_walls(self):
        """For every game: whether its next episode starts from a partial wall, and that wall.

        Draws from the env's generator only when partial walls are on, so that MinAtar's game
        (the default) draws exactly what it always drew."""
        u = torch.rand(self.num_envs, 2 + NUM_BRICK_CELLS, generator=self.generator, device=self.device)
        partial = u[:, 0] < self.partial_wall_prob
        standing = u[:, 2:] < u[:, 1:2]  # each brick with probability q = u[:, 1]
        return partial, rows_to_bricks(standing), standing

    def _draw_balls(self, games: torch.Tensor) -> torch.Tensor:
        """`games` (fresh game words) with the ball moved to a random cell of rows 3-5, heading
        down-left or down-right, its trail on it; paddle, strike and sticky action kept."""
        u = torch.rand(self.num_envs, 3, generator=self.generator, device=self.device)
        column = (u[:, 0] * GRID).long().clamp_(max=GRID - 1)
        row = START_ROW + (u[:, 1] * 3).long().clamp_(max=2)
        direction = torch.where(u[:, 2] < 0.5, 2, 3)  # down-right, down-left
        cell = row * GRID + column
        return (games & ~_BALL_AND_TRAIL_BITS) | cell << BALL_SHIFT | direction << DIR_SHIFT | cell << TRAIL_SHIFT

    def _start_games(self, games: PackedGames) -> PackedGames:
        """Fresh games of `reset`: the full wall, or partial walls (and balls) where drawn."""
        self.partial_start.zero_()
        if self.partial_wall_prob == 0:
            return games
        self.partial_start, walls, _ = self._draw_walls()
        game = games.game
        if self.random_ball_starts:
            game = torch.where(self.partial_start, self._draw_balls(game), game)
        return PackedGames(game, torch.where(self.partial_start, walls, games.bricks))

    def reset(self) -> torch.Tensor:
        """Start a new episode in every game; returns the first observations."""
        self.games = self._start_games(pack(initial_state(self._random_sides(), self.state.last_action)))
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
        # One uniform draw below 2**31 per game serves both random choices: the action is sticky
        # when the draw is below an even threshold, and the start side (should the episode end in
        # this step) is the draw's lowest bit. Each side of an even threshold holds as many odd
        # draws as even ones, so the two choices are independent.
        draw = torch.empty(self.num_envs, dtype=torch.int64, device=self.device)
        draw.random_(0, 1 << 31, generator=self.generator)
        if self.sticky_action_prob > 0:
            sticky = draw < 2 * round(self.sticky_action_prob * (1 << 30))
            executed = torch.where(sticky, self.games.game >> ACTION_SHIFT, actions)
        else:
            executed = actions
        step = step_packed(self.games, executed)

        episode_return = self.episode_return + step.reward
        episode_length = self.episode_length + 1
        episode_refills = self.episode_refills + step.refill
        terminated = step.terminated
        if self.max_episode_steps is None:
            done, truncated = terminated, torch.zeros_like(terminated)
        else:
            done = terminated | (episode_length >= self.max_episode_steps)
            truncated = done ^ terminated  # ended, but not lost

        # Auto-reset: a fresh game keeps only the sticky last action (MinAtar's reset leaves it).
        game, bricks = step.games
        side = draw & 1
        fresh = self._rules.fresh_game.index_select(0, torch.add(executed, side, alpha=NUM_ACTIONS))
        fresh_bricks = ALL_BRICKS
        partial_start = self.partial_start
        if self.partial_wall_prob > 0:
            partial, walls, standing = self._draw_walls()
            fresh_bricks = torch.where(partial, walls, ALL_BRICKS)
            if self.random_ball_starts:
                fresh = torch.where(partial, self._draw_balls(fresh), fresh)
            self.partial_start = torch.where(done, partial, partial_start)
        self.games = PackedGames(torch.where(done, fresh, game), torch.where(done, fresh_bricks, bricks))
        self.episode_return = torch.where(done, 0.0, episode_return)
        self.episode_length = torch.where(done, 0, episode_length)
        self.episode_refills = torch.where(done, 0, episode_refills)
        self._update_obs(step, step.refill | done)
        if self.partial_wall_prob > 0:
            self._paint_partial_walls(done & partial, standing)

        info = StepInfo(executed, done, episode_return, episode_length, episode_refills, step.games,
                        step.index, step.refill, partial_start)
        return self._obs, step.reward, terminated, truncated, info

    def _update_obs(self, step: PackedStep, bricks_filled):
        """Bring the observation buffer to `self.games` by writing only the cells that change."""
        cells = self._cells
        new = 3 - self._lit_column  # the triple of `_cells` that the cells lit from now on go in
        # Paddle, ball and trail cells of each frame from the game word, in one broadcast.
        shifts, masks, offsets = self._object_fields
        torch.add((self.games.game.unsqueeze(1) >> shifts) & masks, offsets, out=cells[:, new : new + 3])
        torch.index_select(self._rules.target_obs_cell, 0, step.ball_dir_index, out=cells[:, 6])
        values = self._cell_values[new // 3]
        torch.neg(step.reward, out=values[:, 6])  # the reward is 1 exactly where a brick broke
        self._obs.view(self.num_envs, -1).scatter_add_(1, cells, values)
        self._lit_column = new
        # Refilled and freshly reset games get full brick rows (a few games per thousand a step).
        if self.device.type == "cpu":
            # On the CPU a data-dependent index waits on nothing: write only the games that need it.
            self._brick_row_words.index_fill_(0, bricks_filled.nonzero().squeeze(1), _TWO_ONES)
        else:
            # On a GPU, nonzero would make the host wait. OR-ing the bits of two float32 1.0s into
            # a word sets both its cells to 1.0 whether they held 0.0 or 1.0, and OR-ing in 0
            # changes nothing: one pass over every game, with no branch.
            two_ones, zero = self._brick_fill_words
            self._brick_row_words.bitwise_or_(torch.where(bricks_filled, two_ones, zero).unsqueeze(1))

    def _paint_partial_walls(self, started: torch.Tensor, standing: torch.Tensor):
        """Overwrite the full brick rows `_update_obs` drew for the games that start partial.

        One branch-free pass over every game (no host sync on a GPU); it runs only when partial
        walls are on, and costs little beside the draw itself."""
        rows = self._obs[:, 3, FIRST_BRICK_ROW : FIRST_BRICK_ROW + NUM_BRICK_ROWS]
        rows.copy_(torch.where(started[:, None, None], standing.view(-1, NUM_BRICK_ROWS, GRID).float(), rows))

    def _render_obs(self) -> torch.Tensor:
        """Draw the whole observation from the games' state (after a reset or `set_state`)."""
        state = self.state
        self._obs.copy_(render(state))
        lit = self._lit_column
        self._cells[:, lit : lit + 3] = _object_cells(state)
        return self._obs

    def get_state(self) -> BreakoutState:
        """A copy of every game's state."""
        return self.state

    def set_state(self, state: BreakoutState) -> torch.Tensor:
        """Replace every game's state (episode counters are kept); returns the observation."""
        for name, value in zip(BreakoutState._fields, state):
            if tuple(value.shape) != (self.num_envs,):
                raise ValueError(f"state.{name} has shape {tuple(value.shape)}, expected ({self.num_envs},)")
        self.games = pack(state.to(self.device))
        return self._render_obs()

    def observe(self) -> torch.Tensor:
        """The current observation, without stepping."""
        return self._obs


_BALL_AND_TRAIL_BITS = 127 << BALL_SHIFT | 3 << DIR_SHIFT | 127 << TRAIL_SHIFT  # the fields a ball start sets
_BRICK_ROWS_CELL = 3 * GRID * GRID + FIRST_BRICK_ROW * GRID  # first cell of brick rows 1-3 in a frame
_TWO_ONES = torch.tensor([1.0, 1.0]).view(torch.int64).item()  # two float32 1.0s as one int64 word
