"""Episode videos and contact sheets: the game as the agent saw it, next to what it thought.

The layout follows the AlphaStar exhibition videos. On the left, the 10x10 MinAtar frame the agent
acted on, upscaled with one colour per channel (legend underneath) and the saliency of the chosen
action (the policy's choice, before any sticky repeat) laid over it in translucent blue. On the
right, the policy's action probabilities (the played action highlighted) and the critic's value
estimate so far, with the current step marked;
step, reward and return counters in the title bar.

Saliency is scaled over the whole episode, not per frame: one scale (the 95th percentile of the
frames' largest |s|, so a few outlier frames cannot wash out the rest) lets brightness be compared
between frames; per-frame scaling would paint a full-strength map even on steps where
nothing mattered to the agent. `saliency_scale="frame"` gives per-frame scaling when wanted.

Row t of the trace is the decision at step t, so frame t shows the observation, the probabilities
and value computed from it, the action played, and the reward that action earned (counted in the
return shown).

    from instruments.show.video import render_frame, write_video, write_contact_sheet
    write_video(trace, "episode.mp4")          # H.264, yuv420p: plays in a browser
    write_contact_sheet(trace, "episode.png")  # key frames on one page
    rgb = render_frame(trace, t)               # (450, 800, 3) uint8

Videos are encoded with PyAV's libx264: OpenCV's wheels have no H.264 encoder, and their `mp4v`
files do not play in browsers. Rendering draws everything static once per trace (`FrameRenderer`)
and reuses one canvas, so most of the time goes to the encoder.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from breakout_ppo.env import ACTION_NAMES, CHANNELS, GRID, PADDLE_ROW
from breakout_ppo.env.rule import minatar_rule
from instruments.measure.traces import Trace

FRAME_WIDTH, FRAME_HEIGHT = 800, 450  # both even, as yuv420p needs

# RGB. Objects avoid blue, which is saliency's colour.
BACKGROUND = (14, 16, 24)
PANEL = (30, 33, 46)
GRID_LINE = (46, 50, 66)
TEXT = (230, 232, 240)
DIM_TEXT = (150, 155, 172)
CHANNEL_COLOURS = {
    "paddle": (235, 235, 235),
    "ball": (255, 210, 40),
    "trail": (150, 105, 35),
    "brick": (205, 65, 70),
}
CHANNEL_DESCRIPTIONS = {"paddle": "paddle", "ball": "ball", "trail": "trail (ball's last cell)", "brick": "brick"}
SALIENCY_COLOUR = (40, 130, 255)
SALIENCY_ALPHA = 0.7  # opacity of the overlay where saliency is at its (scaled) maximum
PLAYED = (255, 150, 40)  # the executed action's bar
BAR = (95, 110, 150)
BAR_TRACK = (44, 48, 64)
VALUE_LINE = (120, 200, 255)
REWARD = (90, 220, 110)

FONT = cv2.FONT_HERSHEY_SIMPLEX

BT601_SMPTE170M, LIMITED_RANGE = 6, 1  # FFmpeg's AVColorSpace/Primaries/TRC and AVColorRange codes

# Layout, in pixels of the 800x450 frame.
TITLE_HEIGHT = 40
BOARD_X, BOARD_Y, CELL = 20, 50, 35  # the game board: 350x350
BOARD_SIZE = GRID * CELL
RIGHT_X = 400
BAR_LABEL_X, BAR_X, BAR_WIDTH, BAR_HEIGHT = RIGHT_X, RIGHT_X + 64, 250, 20
BAR_TOPS = (84, 116, 148)
PLOT_X0, PLOT_Y0, PLOT_X1, PLOT_Y1 = 456, 226, 784, 392

# Cell colour index: 0 background, then one per channel; later channels in DRAW_ORDER win a cell.
_COLOUR_TABLE = np.array([BACKGROUND] + [CHANNEL_COLOURS[c] for c in CHANNELS], dtype=np.float32)
_DRAW_ORDER = ("brick", "trail", "paddle", "ball")  # the ball is drawn over the trail and a brick


def _text(img, text, org, scale=0.5, colour=TEXT, thickness=1, align="left"):
    """cv2.putText with left/right/centre alignment of the baseline origin."""
    if align != "left":
        (w, _), _ = cv2.getTextSize(text, FONT, scale, thickness)
        org = (org[0] - (w if align == "right" else w // 2), org[1])
    cv2.putText(img, text, (int(org[0]), int(org[1])), FONT, scale, colour, thickness, cv2.LINE_AA)


def _text_width(text, scale=0.5, thickness=1):
    return cv2.getTextSize(text, FONT, scale, thickness)[0][0]


def _format_value(v: float) -> str:
    return f"{v:.2f}" if abs(v) < 100 else f"{v:.0f}"


def saliency_weights(saliency: np.ndarray | None, num_steps: int, scale: str = "episode") -> np.ndarray:
    """|saliency| scaled to [0, 1], (T, 10, 10) float32; zeros when the trace has none.

    `scale="episode"`: divided by the 95th percentile of the per-frame maxima, then clipped.
    `scale="frame"`: each frame divided by its own maximum.
    """
    if saliency is None:
        return np.zeros((num_steps, GRID, GRID), dtype=np.float32)
    s = np.abs(np.asarray(saliency, dtype=np.float32))
    if scale == "episode":
        top = float(np.percentile(s.max(axis=(1, 2)), 95)) if len(s) else 0.0
        denominator = np.float32(top if top > 0 else 1.0)
    elif scale == "frame":
        denominator = s.max(axis=(1, 2), keepdims=True)
        denominator[denominator <= 0] = 1.0
    else:
        raise ValueError(f"saliency scale must be 'episode' or 'frame', got {scale!r}")
    return np.clip(s / denominator, 0.0, 1.0)


SUBCELLS = 7  # board cells are drawn as 7x7 blocks: a 1-block saliency ring around a 5x5 object


def board_images(trace: Trace, saliency_scale: str = "episode") -> np.ndarray:
    """Every step's board as (T, 70, 70, 3) uint8 RGB, 7x7 pixels per cell: the cell's background
    tinted by saliency, and the object in the cell (if any) as an inset square in its true colour,
    so the saliency shows as a ring around it."""
    frames = np.asarray(trace.frames) > 0.5
    num_steps = frames.shape[0]
    index = np.zeros((num_steps, GRID, GRID), dtype=np.int64)
    for name in _DRAW_ORDER:
        index[frames[:, CHANNELS.index(name)]] = CHANNELS.index(name) + 1
    alpha = SALIENCY_ALPHA * saliency_weights(trace.saliency, num_steps, saliency_scale)[..., None]
    tint = np.array(BACKGROUND, np.float32) * (1.0 - alpha) + np.array(SALIENCY_COLOUR, np.float32) * alpha
    cells = np.round(tint).astype(np.uint8)[:, :, None, :, None, :]  # (T, y, 1, x, 1, 3)
    board = np.broadcast_to(cells, (num_steps, GRID, SUBCELLS, GRID, SUBCELLS, 3)).copy()
    objects = _COLOUR_TABLE.astype(np.uint8)[index][:, :, None, :, None, :]
    inner = board[:, :, 1:-1, :, 1:-1]
    np.copyto(inner, np.broadcast_to(objects, inner.shape), where=(index > 0)[:, :, None, :, None, None])
    return board.reshape(num_steps, GRID * SUBCELLS, GRID * SUBCELLS, 3)


def _upscale_board(board: np.ndarray, cell: int) -> np.ndarray:
    """One (70, 70, 3) board to (10*cell, 10*cell, 3), with subtle grid lines between cells."""
    size = GRID * cell
    board = cv2.resize(board, (size, size), interpolation=cv2.INTER_NEAREST)
    board[::cell, :] = GRID_LINE
    board[:, ::cell] = GRID_LINE
    board[-1, :] = GRID_LINE
    board[:, -1] = GRID_LINE
    return board


class FrameRenderer:
    """Renders one trace frame by frame; everything that does not change is drawn once.

    `render(t)` returns the renderer's own canvas, overwritten by the next call: copy it to keep it.
    """

    def __init__(self, trace: Trace, saliency_scale: str = "episode", title: str = "MinAtar Breakout: PPO agent"):
        if len(trace) == 0:
            raise ValueError("cannot render an empty trace")
        self.trace = trace
        self.num_steps = len(trace)
        self.boards = board_images(trace, saliency_scale)
        self.probs = np.asarray(trace.probs, dtype=np.float32)
        self.actions = np.asarray(trace.actions, dtype=np.int64)
        self.values = np.asarray(trace.values, dtype=np.float32)
        self.rewards = np.asarray(trace.rewards, dtype=np.float32)
        self.returns = np.cumsum(self.rewards)
        self.has_saliency = trace.saliency is not None
        self.saliency_scale = saliency_scale
        self.base = self._draw_static(title)
        self.canvas = self.base.copy()
        self._plot_points, self._plot_full = self._draw_value_curve()

    # -- static parts, drawn once ---------------------------------------------------------------

    def _draw_static(self, title):
        img = np.empty((FRAME_HEIGHT, FRAME_WIDTH, 3), dtype=np.uint8)
        img[:] = BACKGROUND
        img[:TITLE_HEIGHT] = PANEL
        _text(img, title, (16, 27), 0.7, TEXT, 2)
        # Legend for the board: one swatch per channel, then the saliency ramp.
        x, y = BOARD_X, BOARD_Y + BOARD_SIZE + 20
        for name in ("paddle", "ball", "trail", "brick"):
            cv2.rectangle(img, (x, y - 11), (x + 12, y + 1), CHANNEL_COLOURS[name], -1)
            label = CHANNEL_DESCRIPTIONS[name]
            _text(img, label, (x + 17, y), 0.42, DIM_TEXT)
            x += 17 + _text_width(label, 0.42) + 14
        y += 21
        if self.has_saliency:
            ramp_x = BOARD_X
            for i in range(60):
                a = SALIENCY_ALPHA * i / 59
                colour = tuple(int(round(b * (1 - a) + s * a)) for b, s in zip(BACKGROUND, SALIENCY_COLOUR))
                img[y - 11 : y + 1, ramp_x + i] = colour
            cv2.rectangle(img, (ramp_x, y - 11), (ramp_x + 59, y + 1), GRID_LINE, 1)
            scope = "over the episode" if self.saliency_scale == "episode" else "per frame"
            _text(img, f"saliency of the chosen action (blue; scaled {scope})", (ramp_x + 68, y), 0.42, DIM_TEXT)
        else:
            _text(img, "no saliency recorded", (BOARD_X, y), 0.42, DIM_TEXT)
        # Action bars: labels and empty tracks.
        _text(img, "Action probabilities", (RIGHT_X, BAR_TOPS[0] - 14), 0.55, TEXT)
        _text(img, "orange = played", (PLOT_X1, BAR_TOPS[0] - 14), 0.42, PLAYED, align="right")
        for top, name in zip(BAR_TOPS, ACTION_NAMES):
            _text(img, name, (BAR_LABEL_X, top + 15), 0.5, DIM_TEXT)
            cv2.rectangle(img, (BAR_X, top), (BAR_X + BAR_WIDTH, top + BAR_HEIGHT), BAR_TRACK, -1)
        # Value plot: frame, axis labels with the episode's min and max.
        _text(img, "Value estimate V(s)", (RIGHT_X, PLOT_Y0 - 14), 0.55, TEXT)
        cv2.rectangle(img, (PLOT_X0, PLOT_Y0), (PLOT_X1, PLOT_Y1), PANEL, -1)
        cv2.rectangle(img, (PLOT_X0, PLOT_Y0), (PLOT_X1, PLOT_Y1), GRID_LINE, 1)
        vmin, vmax = self._value_range()
        _text(img, "max", (PLOT_X0 - 6, PLOT_Y0 + 10), 0.38, DIM_TEXT, align="right")
        _text(img, _format_value(vmax), (PLOT_X0 - 6, PLOT_Y0 + 24), 0.42, TEXT, align="right")
        _text(img, _format_value(vmin), (PLOT_X0 - 6, PLOT_Y1 - 14), 0.42, TEXT, align="right")
        _text(img, "min", (PLOT_X0 - 6, PLOT_Y1), 0.38, DIM_TEXT, align="right")
        if vmin < 0 < vmax:
            y0 = self._value_y(0.0)
            for x in range(PLOT_X0 + 2, PLOT_X1 - 2, 6):
                cv2.line(img, (x, y0), (x + 2, y0), GRID_LINE, 1)
        _text(img, "0", (PLOT_X0, PLOT_Y1 + 16), 0.42, DIM_TEXT)
        _text(img, str(self.num_steps - 1), (PLOT_X1, PLOT_Y1 + 16), 0.42, DIM_TEXT, align="right")
        _text(img, "step", ((PLOT_X0 + PLOT_X1) // 2, PLOT_Y1 + 16), 0.42, DIM_TEXT, align="centre")
        cv2.line(img, (PLOT_X0 + 8, PLOT_Y1 + 32), (PLOT_X0 + 8, PLOT_Y1 + 40), REWARD, 2)
        _text(img, "reward received", (PLOT_X0 + 16, PLOT_Y1 + 40), 0.4, DIM_TEXT)
        return img

    def _value_range(self):
        vmin, vmax = float(self.values.min()), float(self.values.max())
        if vmax - vmin < 1e-6:
            vmin, vmax = vmin - 0.5, vmax + 0.5
        return vmin, vmax

    def _value_y(self, v):
        vmin, vmax = self._value_range()
        inner = PLOT_Y1 - PLOT_Y0 - 12
        return int(round(PLOT_Y1 - 6 - (v - vmin) / (vmax - vmin) * inner))

    def _step_x(self, t):
        if self.num_steps == 1:
            return PLOT_X0 + 4
        return int(round(PLOT_X0 + 4 + t / (self.num_steps - 1) * (PLOT_X1 - PLOT_X0 - 8)))

    def _draw_value_curve(self):
        """The whole episode's curve drawn once; frame t reveals the columns up to step t."""
        points = np.array([(self._step_x(t), self._value_y(v)) for t, v in enumerate(self.values)], dtype=np.int32)
        full = self.base.copy()
        for t in np.flatnonzero(self.rewards):
            x = points[t, 0]
            cv2.line(full, (int(x), PLOT_Y1 - 1), (int(x), PLOT_Y1 - 9), REWARD, 2)
        cv2.polylines(full, [points.reshape(-1, 1, 2)], False, VALUE_LINE, 2, cv2.LINE_AA)
        return points, full[PLOT_Y0 + 1 : PLOT_Y1, PLOT_X0 + 1 : PLOT_X1].copy()

    # -- per frame ------------------------------------------------------------------------------

    def render(self, t: int) -> np.ndarray:
        """Frame for step t: (450, 800, 3) uint8 RGB (the renderer's canvas, reused)."""
        if not 0 <= t < self.num_steps:
            raise IndexError(f"step {t} outside a trace of {self.num_steps} steps")
        img = self.canvas
        np.copyto(img, self.base)
        img[BOARD_Y : BOARD_Y + BOARD_SIZE, BOARD_X : BOARD_X + BOARD_SIZE] = _upscale_board(self.boards[t], CELL)

        reward = float(self.rewards[t])
        _text(img, f"step {t} / {self.num_steps - 1}", (430, 26), 0.55, TEXT)
        _text(img, "reward", (572, 26), 0.55, DIM_TEXT)
        if reward:
            _text(img, f"{reward:+g}", (634, 26), 0.55, REWARD, 2)
        else:
            _text(img, "0", (634, 26), 0.55, DIM_TEXT)
        _text(img, "return", (676, 26), 0.55, DIM_TEXT)
        _text(img, f"{self.returns[t]:g}", (736, 26), 0.55, TEXT, 2)

        played = int(self.actions[t])
        for a, top in enumerate(BAR_TOPS):
            p = float(self.probs[t, a])
            colour = PLAYED if a == played else BAR
            width = int(round(np.clip(p, 0.0, 1.0) * BAR_WIDTH))
            if width > 0:
                cv2.rectangle(img, (BAR_X, top), (BAR_X + width, top + BAR_HEIGHT), colour, -1)
            _text(img, f"{p:.2f}", (BAR_X + BAR_WIDTH + 8, top + 15), 0.5, colour if a == played else TEXT)
            if a == played:
                _text(img, ACTION_NAMES[a], (BAR_LABEL_X, top + 15), 0.5, PLAYED, 2)

        x, y = (int(c) for c in self._plot_points[t])
        columns = x - PLOT_X0
        img[PLOT_Y0 + 1 : PLOT_Y1, PLOT_X0 + 1 : PLOT_X0 + 1 + columns] = self._plot_full[:, :columns]
        cv2.line(img, (x, PLOT_Y0 + 1), (x, PLOT_Y1 - 1), DIM_TEXT, 1)
        cv2.circle(img, (x, y), 5, PLAYED, -1, cv2.LINE_AA)
        value = _format_value(float(self.values[t]))
        _text(img, f"V = {value}", (PLOT_X1, PLOT_Y0 - 14), 0.55, VALUE_LINE, align="right")
        return img


def iter_frames(trace: Trace, saliency_scale: str = "episode"):
    """Every frame of the trace in order; each is the same reused buffer, so copy any you keep."""
    renderer = FrameRenderer(trace, saliency_scale)
    for t in range(len(trace)):
        yield renderer.render(t)


def render_frame(trace: Trace, t: int, saliency_scale: str = "episode") -> np.ndarray:
    """The video frame for step `t`: (450, 800, 3) uint8 RGB. For many frames use `FrameRenderer`."""
    return FrameRenderer(trace, saliency_scale).render(t).copy()


def write_video(trace: Trace, path, fps: int = 10, crf: int = 23, preset: str = "veryfast",
                x264_params: str = "subme=1:me=dia", saliency_scale: str = "episode") -> Path:
    """Write the episode as an H.264 MP4 (yuv420p, fast start) that browsers play; returns the path.

    `crf` is x264's quality (lower is better, 23 its default); `preset` and `x264_params` trade
    encoding speed for size. The default, veryfast with the cheapest motion search, encodes these
    flat-coloured frames as fast as superfast does, into files about 40% smaller.
    """
    import av  # PyAV's wheels carry libx264

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    renderer = FrameRenderer(trace, saliency_scale)
    # moov atom first, so a browser can start playing before the whole file has arrived.
    with av.open(str(path), mode="w", options={"movflags": "+faststart"}) as container:
        options = {"crf": str(crf), "preset": preset, "x264-params": x264_params}
        stream = container.add_stream("libx264", rate=fps, options=options)
        stream.width, stream.height = FRAME_WIDTH, FRAME_HEIGHT
        stream.pix_fmt = "yuv420p"
        # OpenCV's RGB -> I420 is BT.601 limited range; say so in the stream, so players don't guess.
        context = stream.codec_context
        context.colorspace = context.color_primaries = context.color_trc = BT601_SMPTE170M
        context.color_range = LIMITED_RANGE
        for t in range(len(trace)):
            # cv2's conversion is ~10x faster than PyAV's swscale rgb24 -> yuv420p at this size.
            yuv = cv2.cvtColor(renderer.render(t), cv2.COLOR_RGB2YUV_I420)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(yuv, format="yuv420p")))
        container.mux(stream.encode())  # flush the encoder's delayed frames
    return path


# ---------------------------------------------------------------------------------------------
# Contact sheet


def key_frames(trace: Trace, evenly_spaced: int = 8, max_rewards: int = 6, final: int = 3) -> list[tuple[int, str]]:
    """Steps worth a look, sorted, as (step, reason): `evenly_spaced` steps across the episode, up to
    `max_rewards` steps whose action earned a reward (spread over all of them), and the `final`
    last steps, which lead into the loss when the episode was lost (`ends_in_a_loss`; a trace cut
    short ends where it was cut, and the sheet says so). A step chosen for two reasons
    keeps the more specific one (final, then reward)."""
    n = len(trace)
    chosen: dict[int, str] = {}
    for t in np.unique(np.linspace(0, n - 1, min(evenly_spaced, n)).round().astype(int)):
        chosen[int(t)] = "overview"
    rewarded = np.flatnonzero(np.asarray(trace.rewards) != 0)
    if len(rewarded) > max_rewards:
        rewarded = rewarded[np.linspace(0, len(rewarded) - 1, max_rewards).round().astype(int)]
    for t in rewarded:
        chosen[int(t)] = "reward"
    for t in range(max(0, n - final), n):
        chosen[t] = "final"
    return sorted(chosen.items())


def ends_in_a_loss(trace: Trace) -> bool:
    """Whether the trace's last step loses the ball, i.e. the episode ended there, or whether it is
    a prefix (`record_episode(max_steps=...)`, `inspect --max-video-steps`) cut while the game went
    on. Read from the last frame with MinAtar's rule (`breakout_ppo.env.rule.minatar_rule`): the
    ball in row 8 with its trail above it falls into the paddle row on this step, and is lost unless
    the paddle, moved by the executed action, is under its old or its new column."""
    if not len(trace):
        return False
    frame = trace.frames[-1]
    ball = np.argwhere(frame[CHANNELS.index("ball")] > 0.5)
    trail = np.argwhere(frame[CHANNELS.index("trail")] > 0.5)
    paddle = np.flatnonzero(frame[CHANNELS.index("paddle"), PADDLE_ROW] > 0.5)
    if len(ball) != 1 or len(trail) != 1 or len(paddle) != 1:
        return False
    (ball_y, ball_x), (trail_y, trail_x) = ball[0], trail[0]
    if ball_y != PADDLE_ROW - 1 or trail_y >= ball_y:  # not falling into the paddle row
        return False
    step_x = int(np.sign(ball_x - trail_x)) or (1 if ball_x == 0 else -1)  # 0: it just bounced off a side wall
    direction = 2 if step_x > 0 else 3  # down-right, down-left (rule.STEP_X, STEP_Y)
    move = {"left": -1, "right": 1}.get(ACTION_NAMES[int(trace.actions[-1])], 0)
    paddle_x = min(max(int(paddle[0]) + move, 0), GRID - 1)
    return minatar_rule(int(ball_x), int(ball_y), direction, paddle_x, strike=False, brick_ahead=False).lost


FINAL = (225, 110, 225)
REASON_COLOURS = {"overview": DIM_TEXT, "reward": REWARD, "final": FINAL}
TILE_CELL = 21
TILE_BOARD = GRID * TILE_CELL
TILE_W, TILE_H = TILE_BOARD + 24, TILE_BOARD + 110


def _tile(renderer: FrameRenderer, t: int, reason: str, lost: bool = True) -> np.ndarray:
    """One labelled key frame: the board, a caption, and mini probability bars. `lost`: the trace
    ends with the ball lost (else it was cut, and its last steps are not the episode's)."""
    tile = np.empty((TILE_H, TILE_W, 3), dtype=np.uint8)
    tile[:] = PANEL
    x0, y0 = 12, 12
    tile[y0 : y0 + TILE_BOARD, x0 : x0 + TILE_BOARD] = _upscale_board(renderer.boards[t], TILE_CELL)
    y = y0 + TILE_BOARD + 18
    steps_left = renderer.num_steps - 1 - t
    end = "loss" if lost else "cut"
    note = {"overview": "", "reward": f"{renderer.rewards[t]:+g} reward", "final": f"{steps_left} before {end}"}[reason]
    if reason == "final" and steps_left == 0:
        note = "ball lost" if lost else "cut here"
    _text(tile, f"step {t}", (x0, y), 0.5, TEXT)
    _text(tile, note, (x0 + TILE_BOARD, y), 0.42, REASON_COLOURS[reason], align="right")
    y += 20
    _text(tile, f"V={_format_value(float(renderer.values[t]))}", (x0, y), 0.42, VALUE_LINE)
    _text(tile, f"return {renderer.returns[t]:g}", (x0 + TILE_BOARD, y), 0.42, DIM_TEXT, align="right")
    played = int(renderer.actions[t])
    for a, name in enumerate(ACTION_NAMES):
        y += 16
        colour = PLAYED if a == played else BAR
        _text(tile, name, (x0, y), 0.38, PLAYED if a == played else DIM_TEXT)
        bar_x, bar_w = x0 + 46, TILE_BOARD - 46 - 36
        cv2.rectangle(tile, (bar_x, y - 9), (bar_x + bar_w, y), BAR_TRACK, -1)
        p = float(np.clip(renderer.probs[t, a], 0.0, 1.0))
        if p > 0:
            cv2.rectangle(tile, (bar_x, y - 9), (bar_x + int(round(p * bar_w)), y), colour, -1)
        _text(tile, f"{p:.2f}", (x0 + TILE_BOARD, y), 0.38, TEXT, align="right")
    cv2.rectangle(tile, (0, 0), (TILE_W - 1, TILE_H - 1), REASON_COLOURS[reason], 1)
    return tile


def contact_sheet(trace: Trace, columns: int = 6, saliency_scale: str = "episode", **key_frame_args) -> np.ndarray:
    """The key frames (see `key_frames`) as one labelled RGB image, with a header and legend."""
    renderer = FrameRenderer(trace, saliency_scale)
    keys = key_frames(trace, **key_frame_args)
    columns = max(1, min(columns, len(keys)))
    rows = -(-len(keys) // columns)
    gap, header = 8, 80
    width = max(columns * (TILE_W + gap) + gap, 720)
    height = header + rows * (TILE_H + gap) + gap
    sheet = np.empty((height, width, 3), dtype=np.uint8)
    sheet[:] = BACKGROUND
    total = renderer.returns[-1]
    lost = ends_in_a_loss(trace)
    title = (f"MinAtar Breakout: PPO agent, {len(trace)} steps to the lost ball, return {total:g}" if lost else
             f"MinAtar Breakout: PPO agent, first {len(trace)} steps (cut there, the game went on), return {total:g}")
    _text(sheet, title, (gap, 24), 0.62, TEXT, 2)
    # Legend: palette, saliency, bars, and what the tile borders mean.
    x, y = gap, 50
    entries = [(CHANNEL_COLOURS[c], CHANNEL_DESCRIPTIONS[c]) for c in ("paddle", "ball", "trail", "brick")]
    if renderer.has_saliency:
        entries.append((SALIENCY_COLOUR, "saliency"))
    entries += [(PLAYED, "played action"), (REWARD, "border: step earning a reward"), (FINAL, "border: last steps, into the loss" if lost else "border: last steps shown (cut)")]
    _text(sheet, "Each tile: the frame the agent acted on at that step, its value estimate V, and its action "
          "probabilities.", (gap, 72), 0.4, DIM_TEXT)
    for colour, label in entries:
        w = _text_width(label, 0.4)
        if x + 16 + w > width - gap:
            break
        cv2.rectangle(sheet, (x, y - 10), (x + 10, y), colour, -1)
        _text(sheet, label, (x + 14, y), 0.4, DIM_TEXT)
        x += 14 + w + 14
    for i, (t, reason) in enumerate(keys):
        r, c = divmod(i, columns)
        top, left = header + gap + r * (TILE_H + gap), gap + c * (TILE_W + gap)
        sheet[top : top + TILE_H, left : left + TILE_W] = _tile(renderer, t, reason, lost)
    return sheet


def write_contact_sheet(trace: Trace, path, columns: int = 6, saliency_scale: str = "episode",
                        **key_frame_args) -> Path:
    """Write `contact_sheet(...)` as a PNG; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet = contact_sheet(trace, columns, saliency_scale, **key_frame_args)
    if not cv2.imwrite(str(path), cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR)):
        raise OSError(f"could not write {path}")
    return path


if __name__ == "__main__":
    import argparse

    from instruments.measure.scripted import synthetic_trace

    parser = argparse.ArgumentParser(description="Preview: video, one frame and a contact sheet of a synthetic trace.")
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    demo = synthetic_trace(args.steps, args.seed)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    write_video(demo, args.out_dir / "episode.mp4")
    cv2.imwrite(str(args.out_dir / "frame.png"), cv2.cvtColor(render_frame(demo, len(demo) // 2), cv2.COLOR_RGB2BGR))
    write_contact_sheet(demo, args.out_dir / "contact_sheet.png")
    print(f"{len(demo)} steps, return {demo.rewards.sum():g}: wrote episode.mp4, frame.png, contact_sheet.png"
          f" in {args.out_dir}")
