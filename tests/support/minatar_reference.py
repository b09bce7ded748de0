"""The `minatar` package as the oracle for our batched Breakout.

Helpers to move a game between the two worlds, one slot at a time:

- `reference_game` makes a seeded `minatar.Environment("breakout")` in its reset state;
- `state_from_games` / `write_slot` copy MinAtar games into a `BreakoutState` (all slots, or one);
- `load_slot` copies one slot of a `BreakoutState` back into a MinAtar game;
- `reference_frames` turns MinAtar's channels-last bool `state()` into our float32 (N, 4, 10, 10);
- `reference_step` plays one action on a MinAtar game and says which of Breakout's quirks fired,
  judged only from MinAtar's own state before and after `act` (never from our env's events);
- `Survivor` plays MinAtar games with a look-ahead that keeps the ball alive, so walls get cleared.
- `five_sigma` is the tolerance of the frequency tests (sticky actions, partial-wall starts).

Our action `i` is MinAtar's `minimal_action_set()[i]`; that list is read from MinAtar itself.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch
from minatar import Environment

from breakout_ppo.env import BreakoutState, bricks_to_grid, grid_to_bricks

# MinAtar's ball direction codes, read off `minatar/environments/breakout.py`:
# 0 up-left, 1 up-right, 2 down-right, 3 down-left.
UP_LEFT, UP_RIGHT, DOWN_RIGHT, DOWN_LEFT = 0, 1, 2, 3
MOVING_DOWN = (DOWN_RIGHT, DOWN_LEFT)
MOVING_UP = (UP_LEFT, UP_RIGHT)
MOVING_LEFT = (UP_LEFT, DOWN_LEFT)
MOVING_RIGHT = (UP_RIGHT, DOWN_RIGHT)
LAST_ROW_ABOVE_PADDLE = 8

# The events `reference_step` detects. The first five are the ones our `StepEvents` also reports.
EVENT_NAMES = (
    "brick_broken",
    "strike_pass",
    "refill",
    "same_column_bounce",
    "adjacent_column_bounce",
    "side_wall",
    "top_wall",
    "corner",
    "side_wall_and_brick",
    "lost",
    "refill_and_lost",
)
OUR_EVENT_NAMES = EVENT_NAMES[:5]

NOOP, LEFT, RIGHT = 0, 1, 2  # our actions (MinAtar's minimal_action_set() at these indices)


def reference_game(seed: int, sticky_action_prob: float = 0.0) -> Environment:
    """A MinAtar Breakout whose start sides (and sticky draws) come from `seed`, in its reset state."""
    game = Environment("breakout", sticky_action_prob=sticky_action_prob)
    game.seed(seed)
    game.reset()  # Env.__init__ already reset with an unseeded generator: reset again, seeded
    return game


def minimal_actions(game: Environment) -> list[int]:
    """MinAtar's action codes for our actions 0, 1, 2 (no-op, left, right)."""
    return list(game.minimal_action_set())


def state_from_games(games: list[Environment]) -> BreakoutState:
    """One `BreakoutState` slot per MinAtar game, in order."""
    g = [game.env for game in games]
    codes = minimal_actions(games[0])

    def column(values, dtype=torch.int64):
        return torch.tensor(values, dtype=dtype)

    grids = torch.from_numpy(np.stack([e.brick_map for e in g]) != 0)
    return BreakoutState(
        ball_x=column([e.ball_x for e in g]),
        ball_y=column([e.ball_y for e in g]),
        ball_dir=column([e.ball_dir for e in g]),
        last_x=column([e.last_x for e in g]),
        last_y=column([e.last_y for e in g]),
        paddle_x=column([e.pos for e in g]),
        bricks=grid_to_bricks(grids),
        strike=column([bool(e.strike) for e in g], torch.bool),
        last_action=column([codes.index(game.last_action) for game in games]),
    )


def write_slot(state: BreakoutState, slot: int, game: Environment) -> None:
    """Overwrite slot `slot` of `state` (in place) with MinAtar's game."""
    one = state_from_games([game])
    for ours, theirs in zip(state, one):
        ours[slot] = theirs[0].to(ours.device)


def load_slot(state: BreakoutState, slot: int, game: Environment) -> None:
    """Overwrite MinAtar's game with slot `slot` of `state`: the inverse of `write_slot`."""
    e = game.env
    e.ball_x = int(state.ball_x[slot])
    e.ball_y = int(state.ball_y[slot])
    e.ball_dir = int(state.ball_dir[slot])
    e.last_x = int(state.last_x[slot])
    e.last_y = int(state.last_y[slot])
    e.pos = int(state.paddle_x[slot])
    # MinAtar keeps its brick map as float64 0/1 and tests `== 1`.
    e.brick_map = bricks_to_grid(state.bricks[slot : slot + 1].cpu())[0].numpy().astype(np.float64)
    e.strike = bool(state.strike[slot])
    e.terminal = False
    game.last_action = minimal_actions(game)[int(state.last_action[slot])]


def reference_frame(game: Environment) -> np.ndarray:
    """MinAtar's (10, 10, 4) bool `state()` as our float32 (4, 10, 10) frame."""
    return game.state().transpose(2, 0, 1).astype(np.float32)


def reference_frames(games: list[Environment]) -> torch.Tensor:
    """MinAtar's frames of every game as one float32 (N, 4, 10, 10) tensor."""
    return torch.from_numpy(np.stack([game.state() for game in games]).transpose(0, 3, 1, 2).astype(np.float32))


def render_by_reference(state: BreakoutState) -> torch.Tensor:
    """Draw every slot of `state` with MinAtar's own `state()`: (N, 4, 10, 10) float32 on CPU."""
    scratch = Environment("breakout", sticky_action_prob=0.0)
    cpu = state.to("cpu")
    frames = []
    for slot in range(cpu.ball_x.shape[0]):
        load_slot(cpu, slot, scratch)
        frames.append(reference_frame(scratch))
    return torch.from_numpy(np.stack(frames))


@dataclass(frozen=True)
class Snapshot:
    """The parts of a MinAtar game's state that the event detection reads."""

    ball_x: int
    ball_y: int
    ball_dir: int
    pos: int
    strike: bool
    bricks_left: int
    terminal: bool

    @staticmethod
    def of(game: Environment) -> "Snapshot":
        e = game.env
        return Snapshot(e.ball_x, e.ball_y, e.ball_dir, e.pos, bool(e.strike), int(np.count_nonzero(e.brick_map)),
                        bool(e.terminal))


def detect_events(before: Snapshot, after: Snapshot, reward: float) -> dict[str, bool]:
    """Which quirks of MinAtar's rules fired in one `act`, judged from its state before and after.

    - a brick broke: reward 1.
    - strike pass-through: after the step MinAtar's `strike` is set (it is set exactly when the
      ball's target cell held a brick) but no reward came: the ball went into the brick.
    - refill: the brick count went from 0 up (the only way bricks appear).
    - bottom bounce: the ball was in row 8 moving down (row 9 never holds a brick, so it reached the
      paddle row) and the game goes on; same column if the paddle (after its move) is under the
      ball's old column, adjacent otherwise.
    - side wall: the ball's column did not change (every other rule moves it one column).
    - top wall: the ball was in row 0 moving up.
    """
    bottom = before.ball_y == LAST_ROW_ABOVE_PADDLE and before.ball_dir in MOVING_DOWN
    bounced = bottom and not after.terminal
    side_wall = after.ball_x == before.ball_x
    top_wall = before.ball_y == 0 and before.ball_dir in MOVING_UP
    broken = reward == 1
    return dict(
        brick_broken=broken,
        strike_pass=after.strike and reward == 0,
        refill=before.bricks_left == 0 and after.bricks_left > 0,
        same_column_bounce=bounced and before.ball_x == after.pos,
        adjacent_column_bounce=bounced and before.ball_x != after.pos,
        side_wall=side_wall,
        top_wall=top_wall,
        corner=side_wall and top_wall,
        side_wall_and_brick=side_wall and after.strike,
        lost=after.terminal,
        refill_and_lost=after.terminal and before.bricks_left == 0 and after.bricks_left > 0,
    )


def reference_step(game: Environment, action: int) -> tuple[float, bool, dict[str, bool]]:
    """Play our action index `action` on MinAtar's game: (reward, terminal, events)."""
    before = Snapshot.of(game)
    reward, terminal = game.act(minimal_actions(game)[action])
    return float(reward), bool(terminal), detect_events(before, Snapshot.of(game), reward)


def lookahead_copy(game: Environment) -> Environment:
    """A deep copy of MinAtar's game that shares its random generators (copying those is slow, and
    a look-ahead never resets or draws from them)."""
    memo = {id(game.random): game.random, id(game.env.random): game.env.random}
    return copy.deepcopy(game, memo)


def landing(game: Environment, horizon: int = 200) -> tuple[int, set[int]] | None:
    """Look ahead on a copy of MinAtar's game: in how many steps the ball next comes down to the
    paddle row, and the paddle columns that bounce it back (its old column and the one it lands
    in). Until then the ball's path does not depend on the paddle, so no-ops are as good as any
    action for the look-ahead. None if the ball does not come down within `horizon` steps."""
    ahead = lookahead_copy(game)
    ahead.sticky_action_prob = 0.0
    for steps in range(1, horizon + 1):
        e = ahead.env
        comes_down = e.ball_y == LAST_ROW_ABOVE_PADDLE and e.ball_dir in MOVING_DOWN
        ahead.act(0)
        if comes_down:
            return steps, {e.last_x, e.ball_x}
    return None


def crafted_game(ball: tuple[int, int], direction: int, paddle: int = 4, bricks="full",
                 strike: bool = False) -> Environment:
    """A MinAtar game put in a chosen state: `ball` is (row, column); `bricks` is "full" (rows
    1-3), "none", or a list of (row, column) cells. The trail is drawn one diagonal step behind
    the ball (it only shows in the frame: MinAtar's rules read the ball's current cell)."""
    game = reference_game(seed=0)
    e = game.env
    e.ball_y, e.ball_x = ball
    e.ball_dir = direction
    dx = 1 if direction in MOVING_RIGHT else -1
    dy = 1 if direction in MOVING_DOWN else -1
    e.last_y = min(max(e.ball_y - dy, 0), 9)
    e.last_x = min(max(e.ball_x - dx, 0), 9)
    e.pos = paddle
    e.brick_map = np.zeros((10, 10))
    if bricks == "full":
        e.brick_map[1:4, :] = 1
    elif bricks != "none":
        for row, column in bricks:
            e.brick_map[row, column] = 1
    e.strike = strike
    return game


def minatar_start_states() -> BreakoutState:
    """MinAtar's two start states as two slots, ball on the left wall first, read off reset games."""
    by_column = {}
    for seed in range(1000):
        game = reference_game(seed)
        by_column.setdefault(game.env.ball_x, game)
        if len(by_column) == 2:
            return state_from_games([by_column[column] for column in sorted(by_column)])
    raise AssertionError(f"MinAtar started 1000 games with the ball in columns {sorted(by_column)} only")


class Survivor:
    """Random play restricted to the actions that still let the paddle reach where the ball comes
    down, found by looking ahead on a copy of the MinAtar game. Picks the bounce column at random
    among the two that work (same column, adjacent column), so both bounces occur; random play
    almost never clears the wall, this does, so refills and long episodes occur. Gives up on a
    ball now and then (probability `give_up` per ball, then plays at random), so that long
    episodes end too, some after a refill."""

    NEVER = 10**9  # steps until the ball comes down, if the look-ahead does not see it come down

    def __init__(self, seed: int, give_up: float = 0.0):
        self.rng = np.random.default_rng(seed)
        self.give_up = give_up
        self.plans = {}  # game index -> [steps until the ball comes down, paddle columns that bounce it]

    def __call__(self, games, step):
        return np.array([self.choose(i, game) for i, game in enumerate(games)], dtype=np.int64)

    def choose(self, i, game):
        plan = self.plans.get(i)
        if plan is None or plan[0] == 0:  # a new ball to catch (or the first)
            plan = self.plans[i] = list(landing(game) or (self.NEVER, set()))
            if self.rng.random() < self.give_up:
                plan[1] = set()  # no column to aim for: play at random until it comes down
        steps_left, columns = plan
        paddle = game.env.pos
        keeps_alive = [
            action
            for action, move in ((NOOP, 0), (LEFT, -1), (RIGHT, 1))
            if any(abs(min(max(paddle + move, 0), 9) - c) <= steps_left - 1 for c in columns)
        ]
        plan[0] -= 1
        return self.rng.choice(keeps_alive) if keeps_alive else self.rng.integers(0, 3)


def five_sigma(p: float, samples: int) -> float:
    """Five binomial standard errors of a frequency estimated from `samples` draws."""
    return 5 * (p * (1 - p) / samples) ** 0.5
