"""Episode video, frames and contact sheet: read back with decoders and readers that did not write
them (PyAV's H.264 decoder, OpenCV), and pixels checked where the layout says things are."""

import av
import cv2
import numpy as np
import pytest

from breakout_ppo.env import CHANNELS, GRID
from instruments.measure.scripted import synthetic_trace
from instruments.measure.traces import Trace
from instruments.show.video import (
    BACKGROUND,
    BAR,
    BAR_TOPS,
    BAR_WIDTH,
    BAR_X,
    BOARD_SIZE,
    BOARD_X,
    BOARD_Y,
    CELL,
    CHANNEL_COLOURS,
    FRAME_HEIGHT,
    FRAME_WIDTH,
    PLAYED,
    SALIENCY_ALPHA,
    SALIENCY_COLOUR,
    contact_sheet,
    ends_in_a_loss,
    key_frames,
    render_frame,
    saliency_weights,
    write_contact_sheet,
    write_video,
)


def hand_made_trace(num_steps=5):
    """Ball at (row 5, column 3), its trail at (4, 2), paddle in column 6, bricks in row 1;
    saliency only on the ball's cell. Step t plays action t % 3 with probabilities (0.1, 0.3, 0.6)."""
    frames = np.zeros((num_steps, 4, GRID, GRID), dtype=np.float32)
    frames[:, CHANNELS.index("paddle"), 9, 6] = 1
    frames[:, CHANNELS.index("ball"), 5, 3] = 1
    frames[:, CHANNELS.index("trail"), 4, 2] = 1
    frames[:, CHANNELS.index("brick"), 1, :] = 1
    saliency = np.zeros((num_steps, GRID, GRID), dtype=np.float32)
    saliency[:, 5, 3] = 1.0
    return Trace(
        frames=frames,
        actions=np.arange(num_steps) % 3,
        probs=np.tile(np.array([0.1, 0.3, 0.6], dtype=np.float32), (num_steps, 1)),
        values=np.linspace(-1, 2, num_steps).astype(np.float32),
        rewards=np.array([0, 1, 0, 0, 1][:num_steps], dtype=np.float32),
        saliency=saliency,
    )


def cells_with_colour(frame, colour):
    """(row, column) of every board cell whose centre pixel has exactly this colour."""
    board = frame[BOARD_Y : BOARD_Y + BOARD_SIZE, BOARD_X : BOARD_X + BOARD_SIZE]
    centres = board[CELL // 2 :: CELL, CELL // 2 :: CELL]
    return sorted(map(tuple, np.argwhere((centres == colour).all(axis=-1))))


@pytest.fixture(scope="module")
def episode():
    trace = synthetic_trace(max_steps=300, seed=4)
    assert len(trace) > 40 and trace.rewards.sum() > 0 and trace.saliency is not None
    return trace


def test_frame_is_even_sized_rgb():
    frame = render_frame(hand_made_trace(), 0)
    assert frame.shape == (FRAME_HEIGHT, FRAME_WIDTH, 3) and frame.dtype == np.uint8
    assert FRAME_WIDTH % 2 == 0 and FRAME_HEIGHT % 2 == 0


def test_objects_are_in_their_cells_in_their_colours():
    frame = render_frame(hand_made_trace(), 2)
    assert cells_with_colour(frame, CHANNEL_COLOURS["ball"]) == [(5, 3)]
    assert cells_with_colour(frame, CHANNEL_COLOURS["trail"]) == [(4, 2)]
    assert cells_with_colour(frame, CHANNEL_COLOURS["paddle"]) == [(9, 6)]
    assert cells_with_colour(frame, CHANNEL_COLOURS["brick"]) == [(1, c) for c in range(GRID)]


def test_ball_wins_over_trail_and_brick_in_the_same_cell():
    trace = hand_made_trace()
    trace.frames[:, CHANNELS.index("ball")] = 0
    trace.frames[:, CHANNELS.index("ball"), 1, 4] = 1  # inside a brick, on top of the trail
    trace.frames[:, CHANNELS.index("trail"), 1, 4] = 1
    frame = render_frame(trace, 0)
    assert cells_with_colour(frame, CHANNEL_COLOURS["ball"]) == [(1, 4)]
    assert (1, 4) not in cells_with_colour(frame, CHANNEL_COLOURS["brick"])


def test_saliency_tints_its_cell_blue_and_leaves_the_others():
    frame = render_frame(hand_made_trace(), 0).astype(int)
    ring = (BOARD_Y + 5 * CELL + 2, BOARD_X + 3 * CELL + 2)  # inside the ball's cell, outside the ball
    empty = (BOARD_Y + 5 * CELL + 2, BOARD_X + 5 * CELL + 2)
    blue, background = frame[ring], frame[empty]
    assert blue[2] > background[2] + 100 and blue[2] > blue[0] + 100
    # Full saliency: the background blended towards the saliency colour by SALIENCY_ALPHA.
    expected = (1 - SALIENCY_ALPHA) * np.array(BACKGROUND) + SALIENCY_ALPHA * np.array(SALIENCY_COLOUR)
    assert np.abs(blue - expected).max() <= 1
    assert (background == BACKGROUND).all()
    no_saliency = hand_made_trace()
    no_saliency.saliency = None
    assert (render_frame(no_saliency, 0)[ring] == background).all()


def test_played_action_bar_is_highlighted_and_bars_have_the_probability_lengths():
    trace = hand_made_trace()
    for t in range(3):
        frame = render_frame(trace, t)
        for action, top in enumerate(BAR_TOPS):
            y = top + 10
            colour = PLAYED if action == t else BAR
            length = round(float(trace.probs[t, action]) * BAR_WIDTH)
            assert tuple(frame[y, BAR_X + 2]) == colour, (t, action)
            assert tuple(frame[y, BAR_X + length - 2]) == colour, (t, action)
            assert tuple(frame[y, BAR_X + length + 3]) != colour, (t, action)


def test_saliency_scaled_over_the_episode_or_per_frame():
    s = np.zeros((3, GRID, GRID), dtype=np.float32)
    s[0, 0, 0], s[1, 0, 0], s[2, 0, 0] = 10.0, 10.0, 1.0  # the last frame matters ten times less
    episode = saliency_weights(s, 3, "episode")
    frame = saliency_weights(s, 3, "frame")
    assert episode[0, 0, 0] == 1.0 and episode[2, 0, 0] == pytest.approx(0.1, rel=0.05)
    assert frame[2, 0, 0] == 1.0
    assert saliency_weights(None, 3).shape == (3, GRID, GRID)
    with pytest.raises(ValueError):
        saliency_weights(s, 3, "global")


def test_one_step_trace_renders():
    trace = hand_made_trace(1)
    assert render_frame(trace, 0).shape == (FRAME_HEIGHT, FRAME_WIDTH, 3)
    with pytest.raises(IndexError):
        render_frame(trace, 1)


def test_video_decodes_to_every_frame_as_h264_yuv420p(episode, tmp_path):
    path = write_video(episode, tmp_path / "episode.mp4", fps=12)
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264"
        assert stream.codec_context.pix_fmt == "yuv420p"
        assert (stream.codec_context.width, stream.codec_context.height) == (FRAME_WIDTH, FRAME_HEIGHT)
        assert stream.average_rate == 12
        decoded = [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]
    assert len(decoded) == len(episode)
    # In order and close to what was rendered (H.264 is lossy; a wrong frame differs by far more).
    for t in (0, len(episode) // 2, len(episode) - 1):
        error = np.abs(decoded[t].astype(int) - render_frame(episode, t)).mean()
        assert error < 4.0, (t, error)
    assert np.abs(decoded[0].astype(int) - render_frame(episode, len(episode) - 1)).mean() > 4.0
    # Fast start: the index (moov) precedes the media data, so a browser can play while loading.
    data = path.read_bytes()
    assert 0 < data.find(b"moov") < data.find(b"mdat")


def test_video_reads_back_with_opencv(episode, tmp_path):
    path = write_video(episode, tmp_path / "episode.mp4")
    capture = cv2.VideoCapture(str(path))
    if not capture.isOpened():
        pytest.skip("this OpenCV build cannot read H.264 MP4")
    frames = 0
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        assert frame.shape == (FRAME_HEIGHT, FRAME_WIDTH, 3)
        frames += 1
    capture.release()
    assert frames == len(episode)


def test_key_frames_cover_rewards_and_the_end():
    trace = hand_made_trace(5)
    keys = key_frames(trace, evenly_spaced=2, max_rewards=6, final=2)
    assert keys == [(0, "overview"), (1, "reward"), (3, "final"), (4, "final")]
    many = synthetic_trace(max_steps=300, seed=4)
    keys = key_frames(many, evenly_spaced=8, max_rewards=4, final=3)
    steps = [t for t, _ in keys]
    assert steps == sorted(set(steps))
    assert sum(reason == "reward" for _, reason in keys) == 4
    assert all(many.rewards[t] != 0 for t, reason in keys if reason == "reward")
    assert steps[-3:] == [len(many) - 3, len(many) - 2, len(many) - 1]


def test_contact_sheet_png_reads_back_with_its_size(episode, tmp_path):
    expected = contact_sheet(episode, columns=5)
    path = write_contact_sheet(episode, tmp_path / "sheet.png", columns=5)
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    assert image is not None and image.shape == expected.shape
    assert np.array_equal(cv2.cvtColor(image, cv2.COLOR_BGR2RGB), expected)  # PNG is lossless
    tiles = len(key_frames(episode))
    assert expected.shape[0] > 80 + (-(-tiles // 5)) * 200  # every row of tiles is there


def prefix(trace, steps):
    """The first `steps` steps of `trace`: what `record_episode(max_steps=steps)` records of the same game."""
    return Trace(trace.frames[:steps], trace.actions[:steps], trace.probs[:steps], trace.values[:steps],
                 trace.rewards[:steps], None if trace.saliency is None else trace.saliency[:steps])


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_a_trace_ends_in_a_loss_only_where_the_env_ended_the_episode(seed):
    # The env's own account is the reference: a whole episode of a fresh network (sticky actions on)
    # and of the scripted follower (bounces, refills) ends in a loss; every shorter prefix, which
    # the env played on from, was cut.
    from breakout_ppo.config import preset
    from breakout_ppo.model import ActorCritic
    from instruments.measure.traces import record_episode

    torch = pytest.importorskip("torch")
    torch.manual_seed(seed)
    model = ActorCritic.from_config(preset("default")).eval()
    for whole in (record_episode(model, seed=seed, saliency=False), synthetic_trace(max_steps=3000, seed=seed)):
        assert len(whole) < 3000  # the game ended: not cut by max_steps
        assert ends_in_a_loss(whole)
        assert not any(ends_in_a_loss(prefix(whole, n)) for n in range(1, len(whole)))


def test_contact_sheet_labels_a_cut_trace_as_cut(episode, monkeypatch):
    import instruments.show.video as video

    def labels(trace):
        written = []
        real = video._text
        monkeypatch.setattr(video, "_text", lambda img, text, *a, **k: (written.append(text), real(img, text, *a, **k)))
        video.contact_sheet(trace)
        monkeypatch.setattr(video, "_text", real)
        return written

    lost = synthetic_trace(max_steps=3000, seed=4)  # played to its loss
    whole = labels(lost)
    assert "ball lost" in whole and "1 before loss" in whole and not any("cut" in t for t in whole)
    # The fixture stops at max_steps=300 while the game goes on, as `inspect --max-video-steps` does.
    assert len(episode) == 300 and not ends_in_a_loss(episode)
    for trace in (episode, prefix(lost, len(lost) - 5)):
        cut = labels(trace)
        assert "cut here" in cut and "1 before cut" in cut and not any("lost" in t or "loss" in t for t in cut)
        assert any(t.startswith("MinAtar Breakout") and "cut there" in t for t in cut)
