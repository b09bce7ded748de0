"""The fast path: every game packed into one integer word, and `minatar_rule` as lookup tables.

Why the batched step is table lookups. Apart from the bricks, a game is small: the ball's cell and
direction, the paddle column and the strike flag take 8,800 values, and with the action and
"is there a brick where the ball is going" the outcome of a step is fixed. So `minatar_rule` is
run once for every such case when the module first steps a game, and a batched step looks the
outcome up instead of evaluating the rule chain with a dozen `torch.where`s per game. The game
state travels packed in one integer word per game (see `PackedGames`) beside the brick mask, so
a step is about forty cheap tensor ops, and an auto-reset is one select per word. The readable
`BreakoutState` (one tensor per field) is what `pack`/`unpack`, `step_game` and `render` speak;
the differential tests check every step against `minatar` itself.

Here: the layout of the game word (one table of fields that packing, unpacking and every mask
read), `pack`/`unpack`, the rule tables, `step_packed` (the batched step on packed state),
`step_game` (the same on a `BreakoutState`) and `render` (MinAtar's observation).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import torch

from breakout_ppo.env.rule import (
    ALL_BRICKS,
    FIRST_BRICK_ROW,
    GRID,
    NUM_ACTIONS,
    NUM_BRICK_ROWS,
    NUM_CHANNELS,
    PADDLE_MOVE,
    PADDLE_ROW,
    BreakoutState,
    StepEvents,
    bricks_to_grid,
    initial_state,
    minatar_rule,
)

# --- The packed state ---------------------------------------------------------------------------


class Field(NamedTuple):
    """Where one field sits in the game word: bits `shift` to `shift + width - 1`."""

    shift: int
    width: int

    @property
    def end(self) -> int:
        """The first bit above the field: where the next field starts."""
        return self.shift + self.width

    @property
    def mask(self) -> int:
        """The field's value bits, to AND with the word shifted down by `shift`."""
        return (1 << self.width) - 1

    @property
    def bits(self) -> int:
        """The field's bits in place in the word."""
        return self.mask << self.shift

    def read(self, word):
        """The field's value from a word (an int or an int64 tensor)."""
        return (word >> self.shift) & self.mask


# A row-9 ball (only ever in a lost game's final state) moving down reaches row 10: cell 109 still
# fits the 7-bit field, as the rule says (no bricks or paddle there) though MinAtar never steps it.
NUM_BALL_CELLS = (GRID + 1) * GRID

# One int64 word per game holds everything but the bricks. This is the one table of its fields:
# packing, unpacking, the table indices and every mask read it. Each field starts where the one
# before ends, lowest bits first:
#
#     0-6 ball cell (10 * row + column)   7-8 direction   9-12 paddle column   13 strike
#     14-20 trail cell (the ball's cell one step ago)    21-22 last executed action
BALL = Field(0, (NUM_BALL_CELLS - 1).bit_length())
DIRECTION = Field(BALL.end, 2)
PADDLE = Field(DIRECTION.end, (GRID - 1).bit_length())
STRIKE = Field(PADDLE.end, 1)
TRAIL = Field(STRIKE.end, BALL.width)
ACTION = Field(TRAIL.end, (NUM_ACTIONS - 1).bit_length())  # the top field: `word >> ACTION.shift` reads it

# The fields below DIRECTION's end (ball and direction) decide where the ball goes; those below
# STRIKE's end with the action and "brick ahead" decide the whole step: those are the two table
# indices, which is why these fields come first.
BALL_DIR_BITS = DIRECTION.end
KINEMATIC_BITS = STRIKE.end
GAME_BITS = ACTION.end


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
    game = ((state.ball_y * GRID + state.ball_x) << BALL.shift
            | state.ball_dir << DIRECTION.shift
            | state.paddle_x << PADDLE.shift
            | state.strike.long() << STRIKE.shift
            | (state.last_y * GRID + state.last_x) << TRAIL.shift
            | state.last_action << ACTION.shift)
    return PackedGames(game, state.bricks.long())


def unpack(packed: PackedGames) -> BreakoutState:
    """`PackedGames` -> `BreakoutState` (int64 fields, a bool `strike`)."""
    game = packed.game
    ball, trail = BALL.read(game), TRAIL.read(game)
    return BreakoutState(
        ball_x=ball % GRID,
        ball_y=ball // GRID,
        ball_dir=DIRECTION.read(game),
        last_x=trail % GRID,
        last_y=trail // GRID,
        paddle_x=PADDLE.read(game),
        bricks=packed.bricks.long(),
        strike=STRIKE.read(game).bool(),
        last_action=ACTION.read(game),
    )


# --- The rule as tables -------------------------------------------------------------------------

# Event flags of a step, one bit each, as the table keeps them for `StepEvents`.
BROKEN_FLAG, STRIKE_PASS_FLAG, SAME_COLUMN_FLAG, ADJACENT_COLUMN_FLAG = 1, 2, 4, 8


class RuleTables(NamedTuple):
    """`minatar_rule` tabulated (one copy per device, built on first use).

    Indexed by the ball and direction fields of the game word (its lowest `BALL_DIR_BITS` bits),
    where the ball is going: `target_bit`, `target_obs_cell`. Indexed by the step index
    `(kinematic * 3 + action) * 2 + brick_ahead`, what the step does: the rest but `fresh_game`,
    indexed by `side * 3 + action`. One table per quantity, so that each is one lookup in the step
    rather than a lookup and an unpacking.
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
def rule_tables(device: torch.device) -> RuleTables:
    target_bit = [0] * (1 << BALL_DIR_BITS)
    target_obs_cell = [3 * GRID * GRID] * (1 << BALL_DIR_BITS)
    size = (1 << KINEMATIC_BITS) * NUM_ACTIONS * 2
    next_game, brick_cleared, reward, lost, at_bottom, event_flags = ([0] * size for _ in range(6))
    for ball in range(NUM_BALL_CELLS):
        ball_y, ball_x = divmod(ball, GRID)
        for ball_dir in range(4):
            where = ball << BALL.shift | ball_dir << DIRECTION.shift
            probe = minatar_rule(ball_x, ball_y, ball_dir, paddle_x=-1, strike=False, brick_ahead=False)
            if FIRST_BRICK_ROW <= probe.target_y < FIRST_BRICK_ROW + NUM_BRICK_ROWS:
                target_bit[where] = 1 << ((probe.target_y - FIRST_BRICK_ROW) * GRID + probe.target_x)
            if probe.target_y < GRID:  # a row-10 target holds no brick: any cell takes the 0 added there
                target_obs_cell[where] = 3 * GRID * GRID + probe.target_y * GRID + probe.target_x
            for paddle_x in range(GRID):
                for strike in (0, 1):
                    kinematic = where | paddle_x << PADDLE.shift | strike << STRIKE.shift
                    for action in range(NUM_ACTIONS):
                        # The paddle moves first, so the bounce test sees where it is *after* the move.
                        moved = min(max(paddle_x + PADDLE_MOVE[action], 0), GRID - 1)
                        for brick_ahead in (0, 1):
                            o = minatar_rule(ball_x, ball_y, ball_dir, moved, bool(strike), bool(brick_ahead))
                            i = (kinematic * NUM_ACTIONS + action) * 2 + brick_ahead
                            next_game[i] = ((o.ball_y * GRID + o.ball_x) << BALL.shift
                                            | o.ball_dir << DIRECTION.shift
                                            | moved << PADDLE.shift
                                            # MinAtar sets `strike` on a break, keeps it on a
                                            # pass-through and clears it on every step that
                                            # enters no brick.
                                            | brick_ahead << STRIKE.shift
                                            | ball << TRAIL.shift
                                            | action << ACTION.shift)
                            brick_cleared[i] = target_bit[where] if o.brick_broken else 0
                            reward[i], lost[i], at_bottom[i] = float(o.brick_broken), o.lost, o.at_bottom
                            event_flags[i] = (o.brick_broken * BROKEN_FLAG | o.strike_pass * STRIKE_PASS_FLAG
                                              | o.same_column_bounce * SAME_COLUMN_FLAG
                                              | o.adjacent_column_bounce * ADJACENT_COLUMN_FLAG)
    fresh_game = [int(pack(initial_state(torch.tensor([bool(side)]), torch.tensor([action]))).game)
                  for side in (0, 1) for action in range(NUM_ACTIONS)]

    def table(values, dtype=torch.int64):
        return torch.tensor(values, dtype=dtype, device=device)

    return RuleTables(table(target_bit), table(target_obs_cell), table(next_game), table(brick_cleared),
                      table(reward, torch.float32), table(lost, torch.bool), table(at_bottom, torch.bool),
                      table(event_flags), table(fresh_game))


# --- The batched step ---------------------------------------------------------------------------

_BALL_DIR_MASK = (1 << BALL_DIR_BITS) - 1
_KINEMATIC_MASK = (1 << KINEMATIC_BITS) - 1


class PackedStep(NamedTuple):
    """What `step_packed` returns: the next state, and what the step did, per game."""

    games: PackedGames
    reward: torch.Tensor  # float32 (N,)
    terminated: torch.Tensor  # bool (N,): the ball was lost
    refill: torch.Tensor  # bool (N,): the ball reached the bottom row with no bricks left
    index: torch.Tensor  # int64 (N,): the step index into the outcome tables
    ball_dir_index: torch.Tensor  # int64 (N,): ball and direction fields of the old word, the target-cell index


def step_packed(games: PackedGames, action: torch.Tensor) -> PackedStep:
    """One MinAtar Breakout step for every game, on packed state: no sticky actions, no reset.

    `action` (int64 (N,)) is the executed action: 0 no-op, 1 left, 2 right.
    """
    game, bricks = games
    rules = rule_tables(game.device)
    # int64 throughout, the dtype of Python's integer constants: mixing dtypes costs a conversion per op.
    ball_dir_index = game & _BALL_DIR_MASK
    brick_ahead = (bricks & rules.target_bit.index_select(0, ball_dir_index)).clamp_(max=1)  # 0 or 1
    kinematic = game & _KINEMATIC_MASK
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
    flags = rule_tables(index.device).event_flags.index_select(0, index)

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
    target_cell = rule_tables(state.ball_x.device).target_obs_cell.index_select(0, step.ball_dir_index) - 3 * GRID * GRID
    return unpack(step.games), step.reward, step.terminated, events_of(step.index, step.refill), target_cell


# --- The observation ----------------------------------------------------------------------------


def render(state: BreakoutState) -> torch.Tensor:
    """MinAtar's `state()` for every game: float32 (N, 4, 10, 10), channels paddle, ball, trail, brick."""
    n = state.ball_x.shape[0]
    obs = torch.zeros(n, NUM_CHANNELS, GRID, GRID, device=state.ball_x.device)
    obs[:, 3] = bricks_to_grid(state.bricks).float()
    obs.view(n, -1).scatter_(1, object_cells(state), 1.0)
    return obs


def object_cells(state: BreakoutState) -> torch.Tensor:
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
