"""MinAtar Breakout as a batch of torch tensors, read in three layers.

Every game in the batch steps at once, on CPU or GPU, with exactly the dynamics of
`minatar.Environment("breakout")`; the differential tests check every step against `minatar`.

- `rule.py`: the game's rule, readably: constants, the `BreakoutState` record, `initial_state` and
  `minatar_rule`, one step of one game as MinAtar's if/elif chain. Start here.
- `packed.py`: the fast path derived from that rule: each game packed into one integer word (one
  table of its fields), the rule run once per case into lookup tables, `step_packed`/`step_game`
  (the batched step) and `render` (MinAtar's observation).
- `batched.py`: `BatchedBreakout`, the environment a trainer uses (sticky actions, auto-reset,
  episode counters, observations kept up to date in place, optional partial-wall starts), and
  its `StepInfo`.

Every name used outside the package is re-exported here, so `from breakout_ppo.env import X` is the
way in.
"""

from breakout_ppo.env.batched import EPISODE_COUNTERS, BatchedBreakout, StepInfo
from breakout_ppo.env.packed import (
    PackedGames,
    PackedStep,
    events_of,
    pack,
    render,
    step_game,
    step_packed,
    unpack,
)
from breakout_ppo.env.rule import (
    ACTION_NAMES,
    ALL_BRICKS,
    CHANNELS,
    FIRST_BRICK_ROW,
    GRID,
    LEFT,
    LIVE_FRAME_CELLS,
    MINATAR_ACTIONS,
    NOOP,
    NUM_ACTIONS,
    NUM_BRICK_CELLS,
    NUM_BRICK_ROWS,
    NUM_CHANNELS,
    PADDLE_ROW,
    RIGHT,
    START_PADDLE_X,
    START_ROW,
    BreakoutState,
    RuleOutcome,
    StepEvents,
    bricks_to_grid,
    grid_to_bricks,
    initial_state,
    minatar_rule,
    rows_to_bricks,
)

__all__ = [
    # rule.py
    "ACTION_NAMES", "ALL_BRICKS", "CHANNELS", "FIRST_BRICK_ROW", "GRID", "LEFT", "LIVE_FRAME_CELLS",
    "MINATAR_ACTIONS", "NOOP", "NUM_ACTIONS", "NUM_BRICK_CELLS", "NUM_BRICK_ROWS", "NUM_CHANNELS",
    "PADDLE_ROW", "RIGHT", "START_PADDLE_X", "START_ROW", "BreakoutState", "RuleOutcome", "StepEvents",
    "bricks_to_grid", "grid_to_bricks", "initial_state", "minatar_rule", "rows_to_bricks",
    # packed.py (the layout of the game word, `Field` and its table, stays inside it)
    "PackedGames", "PackedStep", "events_of", "pack", "render", "step_game", "step_packed", "unpack",
    # batched.py
    "EPISODE_COUNTERS", "BatchedBreakout", "StepInfo",
]
