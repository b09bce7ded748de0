"""`BatchedBreakout`, the environment a trainer uses: MinAtar Breakout for a batch of games.

It adds to the packed step (`packed.py`) what MinAtar's `Environment` wrapper adds (sticky
actions) and what a vectorised trainer needs (auto-reset, episode statistics, an optional step
cap, observations kept up to date in place, and, for training only, optional starts from partial
walls); `StepInfo` is what each step reports besides the observation, reward and end flags.
The readable `BreakoutState` (one tensor per field) is what `get_state`/`set_state` and
`info.final_state` speak; `save_state`/`load_state` and `select` carry the episode counters too.
"""

from __future__ import annotations

from functools import cached_property

import torch

from breakout_ppo.env.packed import (
    ACTION,
    BALL,
    DIRECTION,
    PADDLE,
    TRAIL,
    PackedGames,
    PackedStep,
    events_of,
    object_cells,
    pack,
    render,
    rule_tables,
    step_packed,
    unpack,
)
from breakout_ppo.env.rule import (
    ALL_BRICKS,
    FIRST_BRICK_ROW,
    GRID,
    NUM_ACTIONS,
    NUM_BRICK_CELLS,
    NUM_BRICK_ROWS,
    NUM_CHANNELS,
    PADDLE_ROW,
    START_ROW,
    BreakoutState,
    StepEvents,
    initial_state,
    rows_to_bricks,
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

    Every tensor of the env's state (games, episode counters, observation) is allocated once and
    written in place by `step`, `reset` and `set_state`/`load_state`, and a step depends on no
    Python value that changes from step to step: so a step captured in a CUDA graph
    (breakout_ppo/cuda_graphs.py) replays as the step it captured, on the env's current state.
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
        self._rules = rule_tables(self.device)  # built once per process and device
        zeros = torch.zeros(n, dtype=torch.int64, device=self.device)
        self.episode_return = torch.zeros(n, device=self.device)
        self.episode_length = zeros.clone()
        self.episode_refills = zeros.clone()
        self.partial_start = torch.zeros(n, dtype=torch.bool, device=self.device)
        self.games = self._start_games(pack(initial_state(self._random_sides(), last_action=zeros)))
        self.games = PackedGames(self.games.game.clone(), self.games.bricks.clone())  # owned, written in place
        self._obs = torch.zeros(n, NUM_CHANNELS, GRID, GRID, device=self.device)
        # Each step adds +1 or -1 to a few cells of each game's frame (cells numbered 0..399 in
        # channel, row, column order), all in one scatter that visits each frame once. Columns
        # 0-2 of `_cells` hold the paddle, ball and trail cells lit now, which get -1, columns 3-5
        # the new ones, which get +1 (a cell that stays lit gets both; adding +-1 to 0 or 1 is
        # exact in any order); after the scatter the new triple is copied over the old. Column 6
        # is the brick cell the ball moved into, which gets -1 if the brick broke and 0 if not.
        self._cells = torch.zeros(n, 7, dtype=torch.int64, device=self.device)
        self._cell_values = torch.tensor([-1.0, -1.0, -1.0, 1.0, 1.0, 1.0, 0.0], device=self.device).repeat(n, 1)
        # Paddle, ball and trail: their field's shift and mask in the game word, and the first
        # cell of their channel in a frame.
        self._object_fields = (
            torch.tensor([PADDLE.shift, BALL.shift, TRAIL.shift], dtype=torch.int64, device=self.device),
            torch.tensor([PADDLE.mask, BALL.mask, TRAIL.mask], dtype=torch.int64, device=self.device),
            torch.tensor([PADDLE_ROW * GRID, GRID * GRID, 2 * GRID * GRID], dtype=torch.int64, device=self.device),
        )
        # A full wall, 0.0 and 0 as tensors, for the step's `torch.where(..., out=)` (it takes no scalars).
        self._constants = (torch.tensor(ALL_BRICKS, device=self.device), torch.tensor(0.0, device=self.device),
                           torch.tensor(0, device=self.device))
        # Brick rows 1-3 (cells 310-339) of every frame, two float32 cells per int64 word, and what
        # to OR into them: the bits of two 1.0s, or nothing.
        self._brick_fill_words = (torch.tensor(_TWO_ONES, device=self.device),
                                  torch.tensor(0, device=self.device))
        words = self._obs.view(n, -1).view(torch.int64)
        self._brick_row_words = words[:, _BRICK_ROWS_CELL // 2 : (_BRICK_ROWS_CELL + NUM_BRICK_CELLS) // 2]
        self._render_obs()

    @property
    def state(self) -> BreakoutState:
        """Every game's state, one tensor per field (unpacked on each read, so a copy: the env
        writes its own tensors in place)."""
        state = unpack(self.games)
        return state._replace(bricks=state.bricks.clone())  # unpack hands back the env's own bricks

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
        return (games & ~_BALL_START_BITS) | cell << BALL.shift | direction << DIRECTION.shift | cell << TRAIL.shift

    def _start_games(self, games: PackedGames) -> PackedGames:
        """Fresh games of `reset`: the full wall, or partial walls (and balls) where drawn."""
        self.partial_start.zero_()
        if self.partial_wall_prob == 0:
            return games
        partial, walls, _ = self._draw_walls()
        self.partial_start.copy_(partial)
        game = games.game
        if self.random_ball_starts:
            game = torch.where(self.partial_start, self._draw_balls(game), game)
        return PackedGames(game, torch.where(self.partial_start, walls, games.bricks))

    def reset(self) -> torch.Tensor:
        """Start a new episode in every game; returns the first observations."""
        self._write_games(self._start_games(pack(initial_state(self._random_sides(), self.state.last_action))))
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
            executed = torch.where(sticky, self.games.game >> ACTION.shift, actions)
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
        full_wall, zero, zero_count = self._constants
        fresh_bricks = full_wall
        partial_start = self.partial_start
        if self.partial_wall_prob > 0:
            partial, walls, standing = self._draw_walls()
            fresh_bricks = torch.where(partial, walls, full_wall)
            if self.random_ball_starts:
                fresh = torch.where(partial, self._draw_balls(fresh), fresh)
            partial_start = partial_start.clone()  # the info keeps the ending episodes' flags
            torch.where(done, partial, partial_start, out=self.partial_start)
        # Written into the env's own tensors (see the class docstring), one kernel each: step.games,
        # and the episode counters before the reset, are new tensors the info keeps.
        torch.where(done, fresh_bricks, bricks, out=self.games.bricks)
        torch.where(done, fresh, game, out=self.games.game)
        torch.where(done, zero, episode_return, out=self.episode_return)
        torch.where(done, zero_count, episode_length, out=self.episode_length)
        torch.where(done, zero_count, episode_refills, out=self.episode_refills)
        self._update_obs(step, step.refill | done)
        if self.partial_wall_prob > 0:
            self._paint_partial_walls(done & partial, standing)

        info = StepInfo(executed, done, episode_return, episode_length, episode_refills, step.games,
                        step.index, step.refill, partial_start)
        return self._obs, step.reward, terminated, truncated, info

    def _update_obs(self, step: PackedStep, bricks_filled):
        """Bring the observation buffer to `self.games` by writing only the cells that change."""
        cells, values = self._cells, self._cell_values
        # Paddle, ball and trail cells of each frame from the game word, in one broadcast.
        shifts, masks, offsets = self._object_fields
        torch.add((self.games.game.unsqueeze(1) >> shifts) & masks, offsets, out=cells[:, 3:6])
        torch.index_select(self._rules.target_obs_cell, 0, step.ball_dir_index, out=cells[:, 6])
        torch.neg(step.reward, out=values[:, 6])  # the reward is 1 exactly where a brick broke
        self._obs.view(self.num_envs, -1).scatter_add_(1, cells, values)
        cells[:, 0:3] = cells[:, 3:6]  # the cells lit now, for the next step to clear
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
        self._cells[:, 0:3] = object_cells(state)
        return self._obs

    def _write_games(self, games: PackedGames) -> None:
        self.games.game.copy_(games.game)
        self.games.bricks.copy_(games.bricks)

    def get_state(self) -> BreakoutState:
        """A copy of every game's state."""
        return self.state

    def set_state(self, state: BreakoutState) -> torch.Tensor:
        """Replace every game's state (episode counters are kept); returns the observation."""
        for name, value in zip(BreakoutState._fields, state):
            if tuple(value.shape) != (self.num_envs,):
                raise ValueError(f"state.{name} has shape {tuple(value.shape)}, expected ({self.num_envs},)")
        self._write_games(pack(state.to(self.device)))
        return self._render_obs()

    def save_state(self) -> dict:
        """Every game's state and episode counters as CPU tensors, for a checkpoint.

        `{"state": {field: tensor}, "episode_return": ..., "episode_length": ...,
        "episode_refills": ..., "partial_start": ...}`, in that order: checkpoints store this dict
        as it is, so its keys are their format. The generator is not in it: a checkpoint keeps it
        with the other random states."""
        saved = {"state": {name: t.cpu() for name, t in self.state._asdict().items()}}
        # A copy: on the CPU `.cpu()` is the env's own tensor, which the next step overwrites.
        saved.update((name, getattr(self, name).cpu().clone()) for name in EPISODE_COUNTERS)
        return saved

    def load_state(self, saved: dict) -> torch.Tensor:
        """Put back what `save_state` returned (game states and episode counters); returns the
        observation. A dict from before partial-wall starts has no `partial_start`: the env keeps
        its own."""
        self.set_state(BreakoutState(**{name: t.to(self.device) for name, t in saved["state"].items()}))
        for name in EPISODE_COUNTERS:
            if name == "partial_start" and name not in saved:
                continue
            if tuple(saved[name].shape) != (self.num_envs,):
                raise ValueError(f"{name} has shape {tuple(saved[name].shape)}, expected ({self.num_envs},)")
            getattr(self, name).copy_(saved[name])
        return self._obs

    def select(self, rows: torch.Tensor, seed: int) -> "BatchedBreakout":
        """A new env holding only the games in `rows` (int64 indices) of this one, mid-episode,
        episode counters included, with the same options.

        A generator cannot be split by rows, so the new env draws from its own, seeded `seed`:
        same statistics, other samples."""
        smaller = BatchedBreakout(len(rows), device=self.device, sticky_action_prob=self.sticky_action_prob,
                                  max_episode_steps=self.max_episode_steps, seed=seed,
                                  partial_wall_prob=self.partial_wall_prob, random_ball_starts=self.random_ball_starts)
        smaller.set_state(BreakoutState(*(t.index_select(0, rows) for t in self.get_state())))
        for name in EPISODE_COUNTERS:
            getattr(smaller, name).copy_(getattr(self, name).index_select(0, rows))
        return smaller

    def observe(self) -> torch.Tensor:
        """The current observation, without stepping."""
        return self._obs


# What an episode has gathered so far, per game, beside its game state: `save_state`, `load_state`
# and `select` carry these.
EPISODE_COUNTERS = ("episode_return", "episode_length", "episode_refills", "partial_start")
_BALL_START_BITS = BALL.bits | DIRECTION.bits | TRAIL.bits  # the fields a ball start sets
_BRICK_ROWS_CELL = 3 * GRID * GRID + FIRST_BRICK_ROW * GRID  # first cell of brick rows 1-3 in a frame
_TWO_ONES = torch.tensor([1.0, 1.0]).view(torch.int64).item()  # two float32 1.0s as one int64 word
