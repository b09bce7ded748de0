"""The failure heatmap: where the ball and the paddle were just before the agent lost the ball.

`failure_heatmap(policy, episodes=1000)` plays `episodes` episodes side by side, exactly one per env
slot: a slot whose episode ended stops counting, and play goes on until every slot is done or the
step cap truncates it. Keeping the first N episodes to finish instead would keep the short ones.

For every *lost* episode (terminated, not truncated) it counts, per cell, where the ball and the
paddle were in the last K frames the agent acted on, so the path the ball took into the loss
shows. Frame age 0 is the frame on which the losing action was chosen: there the ball is always in
row 8 (it falls into row 9 on that step) and the paddle, as always, in row 9. It also counts the
ball-minus-paddle column offset, the context of each loss (the step it happened at, bricks left,
refills so far), and the same occupancy over all frames of all episodes, for contrast.

The bookkeeping is batched: a ring buffer of the last K positions per slot (int16), written every
step with the finished slots masked out, and read once at the end. `save_heatmap_png` draws it.

    from instruments.measure.heatmap import failure_heatmap, policy_from_model, save_heatmap_png
    heatmap = failure_heatmap(policy_from_model(model), episodes=1000)
    save_heatmap_png(heatmap, "failures.png")
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Callable

import numpy as np
import torch

from breakout_ppo.env import GRID, NUM_BRICK_CELLS, PADDLE_ROW, BatchedBreakout, BreakoutState
from breakout_ppo.evaluate import policy_actions

Policy = Callable[[torch.Tensor], torch.Tensor]
"""`policy(obs (n, 4, 10, 10)) -> actions (n,)`, row by row: the batch shrinks as slots finish."""

NUM_OFFSETS = 2 * GRID - 1  # ball column - paddle column, -9..9, stored at index offset + 9
NUM_POSITIONS = GRID * GRID * GRID  # (ball cell, paddle column) pairs


# ---------------------------------------------------------------------------------------------
# The agent's policy (scripted ones: `measure/scripted.py`)


def policy_from_model(model, greedy: bool = False, seed: int = 0) -> Policy:
    """A policy from an ActorCritic: sampled from its logits (or their argmax when `greedy`), the
    same way `breakout_ppo.evaluate` plays, under `torch.inference_mode`."""
    device = next(model.parameters()).device
    generator = torch.Generator(device).manual_seed(seed)

    @torch.inference_mode()
    def policy(obs: torch.Tensor) -> torch.Tensor:
        return policy_actions(model, obs, greedy, generator)

    return policy


# ---------------------------------------------------------------------------------------------
# The result


@dataclass
class FailureHeatmap:
    """Counts from `failure_heatmap`; every array is numpy. Frame age 0 is the frame the losing
    action was chosen on (ball in row 8), age 1 the one before, and so on up to `last_k - 1`."""

    last_k: int
    """How many frames before each loss are counted."""
    max_episode_steps: int | None
    """The step cap: episodes that reach it are truncated, not lost."""
    sticky_action_prob: float
    """MinAtar's sticky-action probability the episodes were played with."""

    returns: np.ndarray
    """float32 (episodes,): the return of each episode, one per env slot."""
    lengths: np.ndarray
    """int64 (episodes,): its length in steps; for a lost episode, the step the ball was lost on."""
    lost: np.ndarray
    """bool (episodes,): the episode ended by losing the ball (terminated)."""
    truncated: np.ndarray
    """bool (episodes,): the episode reached the step cap."""
    bricks_left: np.ndarray
    """int64 (episodes,): bricks standing at the end of the episode."""
    refills: np.ndarray
    """int64 (episodes,): how many times the brick wall was refilled during the episode."""

    ball_before_loss: np.ndarray
    """int64 (last_k, 10, 10): [age, row, column] ball cells over the last K frames before a loss."""
    paddle_before_loss: np.ndarray
    """int64 (last_k, 10): [age, column] paddle columns (the paddle is always in row 9)."""
    offset_before_loss: np.ndarray
    """int64 (last_k, 19): [age, 9 + ball column - paddle column]."""

    ball_all_frames: np.ndarray
    """int64 (10, 10): ball cells over every frame of every episode, for contrast."""
    paddle_all_frames: np.ndarray
    """int64 (10,): paddle columns over every frame of every episode."""
    offset_all_frames: np.ndarray
    """int64 (19,): ball-minus-paddle column offsets over every frame of every episode."""

    @property
    def episodes(self) -> int:
        return int(len(self.returns))

    @property
    def losses(self) -> int:
        return int(self.lost.sum())

    @property
    def truncations(self) -> int:
        return int(self.truncated.sum())

    @property
    def mean_return(self) -> float:
        return float(self.returns.mean())

    @property
    def frames(self) -> int:
        """Frames the agent acted on, over all episodes: the total of the all-frames counts."""
        return int(self.lengths.sum())

    @property
    def loss_steps(self) -> np.ndarray:
        """The step of each loss (its episode's length)."""
        return self.lengths[self.lost]

    @property
    def loss_bricks_left(self) -> np.ndarray:
        return self.bricks_left[self.lost]

    @property
    def loss_refills(self) -> np.ndarray:
        return self.refills[self.lost]

    def summary(self) -> dict:
        return {
            "episodes": self.episodes,
            "losses": self.losses,
            "truncated": self.truncations,
            "mean_return": self.mean_return,
            "mean_length": float(self.lengths.mean()),
            "frames": self.frames,
        }


# ---------------------------------------------------------------------------------------------
# The run


def position_code(state: BreakoutState) -> torch.Tensor:
    """(ball cell, paddle column) as one int64 per game: 10 * (10 * ball_y + ball_x) + paddle_x."""
    return (state.ball_y * GRID + state.ball_x) * GRID + state.paddle_x


@dataclass
class _Slots:
    """Per-slot records, one row per env slot; `slot` is the row's index among all episodes."""

    slot: torch.Tensor  # int64 (n,)
    active: torch.Tensor  # bool (n,): its episode is still running
    recent: torch.Tensor  # int16 (K, n): position codes of the last K frames, row t % K for step t
    lost: torch.Tensor  # bool (n,)
    truncated: torch.Tensor  # bool (n,)
    length: torch.Tensor  # int64 (n,)
    episode_return: torch.Tensor  # float32 (n,)
    refills: torch.Tensor  # int64 (n,)
    bricks: torch.Tensor  # int64 (n,): the brick bitmask at the end

    @classmethod
    def empty(cls, n, last_k, device):
        zeros = torch.zeros(n, dtype=torch.int64, device=device)
        no = torch.zeros(n, dtype=torch.bool, device=device)
        return cls(torch.arange(n, device=device), ~no, torch.zeros(last_k, n, dtype=torch.int16, device=device),
                   no.clone(), no.clone(), zeros.clone(), torch.zeros(n, device=device), zeros.clone(), zeros.clone())

    def select(self, rows: torch.Tensor) -> "_Slots":
        picked = {f.name: getattr(self, f.name).index_select(-1, rows) for f in fields(self)}
        return _Slots(**picked)

    def write_into(self, everyone: "_Slots") -> None:
        """Copy these rows into the full-size records, at their slots."""
        for f in fields(self):
            getattr(everyone, f.name).index_copy_(-1, self.slot, getattr(self, f.name))


@torch.inference_mode()
def failure_heatmap(policy: Policy, episodes: int = 1000, last_k: int = 8, max_episode_steps: int | None = 10_000,
                    sticky_action_prob: float = 0.1, seed: int = 0, device="cpu",
                    compact_every: int | None = 64) -> FailureHeatmap:
    """Play `episodes` episodes, one per env slot, with `policy` and count where the ball and the
    paddle were over the last `last_k` frames before each loss, and over all frames.

    Every `compact_every` steps (the only host syncs) the loop checks whether all slots are done,
    and once at most half the batch is still playing it moves those games into a smaller env, so
    that a long tail of survivors costs what its size costs. The smaller env draws its sticky
    actions from a new stream: same statistics, other samples. `compact_every=None` never compacts
    (and checks for the end every 64 steps). The policy sees the batch shrink: it must act row by row.
    """
    if last_k < 1:
        raise ValueError(f"last_k must be at least 1, got {last_k}")
    device = torch.device(device)
    env = BatchedBreakout(episodes, device=device, sticky_action_prob=sticky_action_prob,
                          max_episode_steps=max_episode_steps, seed=seed)
    obs = env.reset()
    state = env.get_state()
    everyone = _Slots.empty(episodes, last_k, device)
    slots = everyone.select(everyone.slot)
    position_counts = torch.zeros(NUM_POSITIONS, dtype=torch.int64, device=device)  # over all frames
    compactions = 0

    step = 0  # every slot started together, so this is each running episode's step
    while True:
        # The frame the agent acts on: remember it (finished slots keep their last K frames).
        code = position_code(state)
        ring_row = slots.recent[step % last_k]
        ring_row.copy_(torch.where(slots.active, code, ring_row))
        position_counts.scatter_add_(0, code, slots.active.long())

        obs, _, terminated, truncated, info = env.step(policy(obs))
        step += 1

        # Episodes that end now, for the first time in their slot.
        ended = info.done & slots.active
        slots.lost |= ended & terminated
        slots.truncated |= ended & truncated
        slots.length = torch.where(ended, step, slots.length)
        slots.episode_return = torch.where(ended, info.episode_return, slots.episode_return)
        slots.refills = torch.where(ended, info.episode_refills, slots.refills)
        slots.bricks = torch.where(ended, info.final_state.bricks, slots.bricks)
        slots.active &= ~info.done
        state = info.final_state  # the next frame, wherever the episode goes on

        if step == max_episode_steps:
            break  # every slot is done: the cap truncated the survivors
        if step % (compact_every or 64):
            continue
        playing = int(slots.active.sum())
        if playing == 0:
            break
        if compact_every and playing <= len(slots.slot) // 2:
            slots.write_into(everyone)
            rows = slots.active.nonzero().squeeze(1)
            compactions += 1
            env = env.select(rows, seed=seed + 1_000_003 * compactions)
            slots = slots.select(rows)
            obs, state = env.observe(), env.get_state()
    slots.write_into(everyone)
    return _summarise(everyone, position_counts, last_k, max_episode_steps, sticky_action_prob)


def _popcount(bricks: torch.Tensor) -> torch.Tensor:
    """Bricks standing in each 30-bit brick mask."""
    bits = torch.arange(NUM_BRICK_CELLS, device=bricks.device)
    return ((bricks.unsqueeze(1) >> bits) & 1).sum(dim=1)


def _summarise(everyone: _Slots, position_counts: torch.Tensor, last_k: int, max_episode_steps,
               sticky_action_prob):
    """Read every lost episode's last K frames out of its ring buffer and count them."""
    lengths = everyone.length.cpu().numpy()
    lost = everyone.lost.cpu().numpy()
    recent = everyone.recent.cpu().numpy().astype(np.int64)  # (K, episodes)

    # Frame age a of an episode of length L sits in ring row (L - 1 - a) % K; it exists if a < L.
    ages = np.arange(last_k)
    rows = (lengths[None, :] - 1 - ages[:, None]) % last_k  # (K, episodes)
    codes = np.take_along_axis(recent, rows, axis=0)
    counted = lost[None, :] & (ages[:, None] < lengths[None, :])
    ball_cell, paddle = codes // GRID, codes % GRID
    offset = ball_cell % GRID - paddle + GRID - 1

    def by_age(values, bins):
        return np.stack([np.bincount(values[a][counted[a]], minlength=bins) for a in range(last_k)])

    all_frames = position_counts.cpu().numpy().reshape(GRID * GRID, GRID)  # [ball cell, paddle column]
    ball_x = np.arange(GRID * GRID) % GRID
    offset_all = np.zeros(NUM_OFFSETS, dtype=np.int64)
    for paddle_x in range(GRID):
        np.add.at(offset_all, ball_x - paddle_x + GRID - 1, all_frames[:, paddle_x])

    return FailureHeatmap(
        last_k=last_k,
        max_episode_steps=max_episode_steps,
        sticky_action_prob=sticky_action_prob,
        returns=everyone.episode_return.cpu().numpy(),
        lengths=lengths,
        lost=lost,
        truncated=everyone.truncated.cpu().numpy(),
        bricks_left=_popcount(everyone.bricks).cpu().numpy(),
        refills=everyone.refills.cpu().numpy(),
        ball_before_loss=by_age(ball_cell, GRID * GRID).reshape(last_k, GRID, GRID),
        paddle_before_loss=by_age(paddle, GRID),
        offset_before_loss=by_age(offset, NUM_OFFSETS),
        ball_all_frames=all_frames.sum(axis=1).reshape(GRID, GRID),
        paddle_all_frames=all_frames.sum(axis=0),
        offset_all_frames=offset_all,
    )


# ---------------------------------------------------------------------------------------------
# The picture


def _compact(n: float) -> str:
    """A count in at most 4 characters: 7, 512, 3.4k, 12k, 1.2M."""
    n = float(n)
    for size, suffix in ((1e6, "M"), (1e3, "k")):
        if n >= size:
            value = n / size
            return f"{value:.1f}{suffix}" if value < 10 else f"{value:.0f}{suffix}"
    return f"{n:.0f}"


def _annotate(ax, image, values, text, fontsize=7):
    """Write `text(value)` in every cell whose value is nonzero, dark on light cells, light on dark."""
    cmap, norm = image.get_cmap(), image.norm
    for (row, column), value in np.ndenumerate(values):
        if value <= 0:
            continue
        r, g, b, _ = cmap(norm(value))
        colour = "black" if 0.299 * r + 0.587 * g + 0.114 * b > 0.5 else "white"
        ax.text(column, row, text(value), ha="center", va="center", fontsize=fontsize, color=colour)


def _grid_panel(fig, ax, counts, title, text, cmap="magma_r", colourbar_label="count"):
    """A 10x10 board: rows top to bottom as on screen, brick rows and paddle row labelled."""
    shown = np.ma.masked_equal(counts, 0)
    image = ax.imshow(shown, cmap=cmap, vmin=0, vmax=max(counts.max(), 1))
    _annotate(ax, image, counts, text)
    ax.set_title(title, fontsize=10)
    ax.set_xticks(range(GRID))
    labels = {1: "1 brick", 2: "2 brick", 3: "3 brick", PADDLE_ROW: f"{PADDLE_ROW} paddle"}
    ax.set_yticks(range(GRID), [labels.get(r, str(r)) for r in range(GRID)], fontsize=8)
    ax.set_xlabel("column")
    ax.set_ylabel("row")
    ax.axhspan(0.5, 3.5, color="tab:blue", alpha=0.08, zorder=0)  # rows 1-3: the brick wall
    ax.set_facecolor("white")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.03, label=colourbar_label)


def _age_panel(fig, ax, counts, title, xticks, xlabel):
    """[frames before the loss, value] counts, the last frame at the bottom, nearest the loss."""
    k = counts.shape[0]
    flipped = counts[::-1]  # oldest frame on top, as the ball falls down the page
    image = ax.imshow(np.ma.masked_equal(flipped, 0), cmap="magma_r", vmin=0, vmax=max(counts.max(), 1),
                      aspect="auto")
    _annotate(ax, image, flipped, _compact, fontsize=7 if counts.shape[1] <= 13 else 6)
    ax.set_title(title, fontsize=10)
    ax.set_yticks(range(k), [f"{k - i}" + (" (last)" if i == k - 1 else "") for i in range(k)], fontsize=8)
    ax.set_ylabel("frames before the loss")
    ax.set_xticks(*xticks)
    ax.set_xlabel(xlabel)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.03, label="lost balls")


def _share(counts):
    total = counts.sum()
    return counts / total * 100 if total else np.zeros(len(counts))


def save_heatmap_png(heatmap: FailureHeatmap, path, dpi: int = 110):
    """Draw `heatmap` as one PNG at `path`: the last K frames before each loss (top), the same
    over all frames for contrast (middle), and when the losses happened (bottom)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    h = heatmap
    k = h.last_k
    lost_frames = int(h.ball_before_loss.sum())
    fig, axes = plt.subplots(3, 3, figsize=(18, 16.5), gridspec_kw=dict(hspace=0.45, wspace=0.5))

    cap = f"{h.max_episode_steps:,}" if h.max_episode_steps else "no"
    fig.suptitle(
        f"Failure heatmap: {h.episodes:,} episodes, {h.losses:,} lost the ball, "
        f"{h.truncations:,} reached the {cap}-step cap  ·  mean return {h.mean_return:.1f}  ·  "
        f"sticky actions p = {h.sticky_action_prob:g}",
        fontsize=14, fontweight="bold", y=0.985)
    fig.text(0.5, 0.955,
             f"Top: where the ball and the paddle were in the last {k} frames the agent saw before each lost ball "
             f"(frame 1 = the last one: the ball is in row 8 and falls past the paddle in row 9 on that step).\n"
             f"Middle: the same over all {h.frames:,} frames of all episodes, for contrast.  "
             f"Bottom: when the balls were lost.  Board rows count from the top; empty cells never occurred.",
             ha="center", va="top", fontsize=10.5)

    # Top row: the last K frames before each loss.
    _grid_panel(fig, axes[0, 0], h.ball_before_loss.sum(axis=0),
                f"Ball cells, last {k} frames before a loss\n({lost_frames:,} frames from {h.losses:,} lost balls)",
                _compact, colourbar_label="frames (count)")
    _age_panel(fig, axes[0, 1], h.paddle_before_loss, f"Paddle column (row 9), last {k} frames before a loss",
               (range(GRID),), "paddle column")
    # Offsets -9..9, cropped to one beyond the widest seen before a loss (at least -4..4), so
    # that the cells stay legible; the middle-right title says how many frames fall outside.
    seen = np.flatnonzero(h.offset_before_loss.sum(axis=0)) - (GRID - 1)
    reach = int(np.clip(np.abs(seen).max(initial=0) + 1, 4, GRID - 1))
    offsets = np.arange(-reach, reach + 1)
    shown = slice(GRID - 1 - reach, GRID + reach)
    ticks = [str(o) if reach <= 6 or o % 2 == 0 else "" for o in offsets]
    _age_panel(fig, axes[0, 2], h.offset_before_loss[:, shown],
               f"Ball column − paddle column, last {k} frames before a loss\n(0: the ball is right above the paddle)",
               (range(len(offsets)), ticks), "ball column − paddle column")

    # Middle row: all frames, for contrast.
    all_share = _share(h.ball_all_frames.ravel()).reshape(GRID, GRID)
    _grid_panel(fig, axes[1, 0], all_share, f"Ball cells, all {h.frames:,} frames (% of frames)",
                lambda v: f"{v:.1f}" if v >= 0.05 else "·", cmap="Greens", colourbar_label="% of frames")

    ax = axes[1, 1]
    columns = np.arange(GRID)
    ax.bar(columns - 0.2, _share(h.paddle_all_frames), width=0.4, color="tab:green", label="all frames")
    ax.bar(columns + 0.2, _share(h.paddle_before_loss[0]), width=0.4, color="tab:red",
           label="last frame before a loss")
    ax.set_xticks(columns)
    ax.set_xlabel("paddle column")
    ax.set_ylabel("% of frames")
    ax.set_title("Paddle column: all frames vs the last frame before a loss", fontsize=10)
    ax.legend(fontsize=8)

    ax = axes[1, 2]
    # Where the paddle can still save the ball on the last frame: it moves one column, and catches
    # the ball under its current column or under the column it moves into.
    ax.axvspan(-1.5, 1.5, color="tab:green", alpha=0.10)
    ax.axvspan(-2.5, -1.5, color="gold", alpha=0.15)
    ax.axvspan(1.5, 2.5, color="gold", alpha=0.15)
    ax.bar(offsets - 0.2, _share(h.offset_all_frames)[shown], width=0.4, color="tab:green", label="all frames")
    ax.bar(offsets + 0.2, _share(h.offset_before_loss[0])[shown], width=0.4, color="tab:red",
           label="last frame before a loss")
    ax.set_xticks(offsets, ticks)
    ax.set_xlim(-reach - 0.5, reach + 0.5)
    outside = 100 - _share(h.offset_all_frames)[shown].sum()
    ax.set_ylim(top=ax.get_ylim()[1] * 1.25)  # room for the legend
    ax.set_xlabel("ball column − paddle column\n"
                  "green band: on the last frame the paddle can still catch the ball; gold: only if the\n"
                  "ball moves towards the paddle; outside: out of reach (the paddle moves one column a step)",
                  fontsize=9)
    ax.set_ylabel("% of frames")
    ax.set_title("Ball − paddle column: all frames vs the last frame before a loss"
                 + (f"\n({outside:.1f}% of all frames lie outside this range)" if outside >= 0.05 else ""),
                 fontsize=10)
    ax.legend(fontsize=8, loc="upper right")

    # Bottom row: the context of each loss.
    ax = axes[2, 0]
    steps = h.loss_steps
    if len(steps):
        top = max(int(steps.max()), 10)
        bins = np.unique(np.geomspace(1, top + 1, 40).astype(int)) if top > 200 else np.arange(0, top + 10, max(top // 40, 1))
        ax.hist(steps, bins=bins, color="tab:red")
        if top > 200:
            ax.set_xscale("log")
            ax.set_title("When the ball was lost (log scale)", fontsize=10)
        ax.axvline(np.median(steps), color="black", ls="--", lw=1, label=f"median {np.median(steps):.0f}")
        ax.legend(fontsize=8)
    ax.set_xlabel("step of the episode the ball was lost on")
    ax.set_ylabel("lost balls")
    if not ax.get_title():
        ax.set_title("When the ball was lost", fontsize=10)

    ax = axes[2, 1]
    ax.bar(np.arange(31), np.bincount(h.loss_bricks_left, minlength=31)[:31], color="tab:blue")
    ax.set_xlabel("bricks still standing (of 30)")
    ax.set_ylabel("lost balls")
    ax.set_title("Bricks left when the ball was lost", fontsize=10)

    ax = axes[2, 2]
    refills = np.bincount(h.loss_refills, minlength=1) if len(h.loss_refills) else np.zeros(1, dtype=int)
    ax.bar(np.arange(len(refills)), refills, color="tab:purple")
    if len(refills) <= 12:
        for x, value in enumerate(refills):
            if value:
                ax.text(x, value, _compact(value), ha="center", va="bottom", fontsize=8)
    ax.set_xlim(-0.7, max(len(refills), 4) - 0.3)
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.set_xlabel("times the wall was cleared and refilled before the loss")
    ax.set_ylabel("lost balls")
    ax.set_title("Walls cleared before the ball was lost", fontsize=10)

    for ax in axes[1:].ravel():
        ax.spines[["top", "right"]].set_visible(False)
    for ax in axes[1, 1:]:
        ax.grid(axis="y", alpha=0.3)
    fig.savefig(path, dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return path
