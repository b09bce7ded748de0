"""The TensorBoard sink, read back with TensorBoard's own event reader."""

import io

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402
from tensorboard.plugins.hparams import plugin_data_pb2  # noqa: E402

from instruments.show.tensorboard_sink import TensorBoardSink, encode_gif  # noqa: E402

EVERYTHING = {"scalars": 0, "images": 0, "histograms": 0, "tensors": 0}


def read_events(run_dir):
    events = EventAccumulator(str(run_dir), size_guidance=EVERYTHING)
    events.Reload()
    return events


def moving_square(num_frames=23, height=90, width=160):
    """A yellow square moving right 5 pixels a frame and wrapping round: no two frames alike."""
    frames = np.zeros((num_frames, height, width, 3), dtype=np.uint8)
    for t in range(num_frames):
        frames[t, 30:60, 5 * t % 130 : 5 * t % 130 + 30] = (255, 200, 0)
    return frames


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One run with every kind of summary, written through the context manager."""
    run_dir = tmp_path_factory.mktemp("runs") / "demo"
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    activations = {}
    model[1].register_forward_hook(lambda module, inputs, output: activations.update(relu=output.detach()))
    model(torch.randn(16, 4)).sum().backward()
    figure, axes = plt.subplots(figsize=(2, 2), dpi=50)
    axes.plot([0, 1], [1, 0])
    with TensorBoardSink(run_dir) as tb:
        tb.hparams({"lr": 3e-4, "arch": "cnn", "anneal": True, "cap": None, "hidden": (64, 64)},
                   metrics={"charts/episodic_return": None, "eval/final_return": 12.5})
        for step in range(3):
            tb.record("losses/value_loss", torch.tensor(float(step)))
            tb.record("losses/value_loss", float(step) + 1.0)
            written = tb.dump(step)
            assert written == {"losses/value_loss": step + 0.5}
        tb.scalar("charts/episodic_return", 7.0, step=2)
        tb.image("images/rgb", np.full((12, 20, 3), 200, dtype=np.uint8), step=1)
        tb.image("images/figure", figure, step=1)
        tb.histograms(model.named_parameters(), step=1, prefix="weights/")
        tb.histograms({n: p.grad for n, p in model.named_parameters()}, step=1, prefix="gradients/")
        tb.histograms(activations, step=1, prefix="activations/")
        tb.text("notes", "**hello** from the sink", step=0)
        gif_frames = tb.video("videos/episode", moving_square(), step=2, fps=10, max_side=80)
    assert gif_frames == 23
    return run_dir, read_events(run_dir), model


def test_scalars_are_means_of_what_was_recorded(run):
    _, events, _ = run
    values = [(e.step, e.value) for e in events.Scalars("losses/value_loss")]
    assert values == [(0, 0.5), (1, 1.5), (2, 2.5)]
    assert [e.value for e in events.Scalars("charts/episodic_return")] == [7.0]


def test_images_and_figure(run):
    _, events, _ = run
    assert {"images/rgb", "images/figure", "videos/episode"} <= set(events.Tags()["images"])
    rgb = events.Images("images/rgb")[0]
    assert (rgb.height, rgb.width) == (12, 20)
    pixels = np.asarray(Image.open(io.BytesIO(rgb.encoded_image_string)).convert("RGB"))
    assert (pixels == 200).all()
    figure = events.Images("images/figure")[0]
    assert (figure.height, figure.width) == (100, 100)


def test_histograms_of_weights_gradients_and_activations(run):
    _, events, model = run
    tags = set(events.Tags()["histograms"])
    for name, _ in model.named_parameters():
        assert f"weights/{name}" in tags and f"gradients/{name}" in tags
    assert "activations/relu" in tags
    weight = events.Histograms("weights/0.weight")[0].histogram_value
    assert weight.num == model[0].weight.numel()
    assert weight.max == pytest.approx(model[0].weight.max().item(), rel=1e-6)


def test_text(run):
    _, events, _ = run
    assert "notes/text_summary" in events.Tags()["tensors"]
    text = events.Tensors("notes/text_summary")[0].tensor_proto.string_val[0].decode()
    assert "**hello** from the sink" in text


def test_video_is_an_animated_gif_of_every_frame(run):
    _, events, _ = run
    (video,) = events.Images("videos/episode")
    assert (video.step, video.height, video.width) == (2, 45, 80)  # 160x90 shrunk to 80 wide
    gif = Image.open(io.BytesIO(video.encoded_image_string))
    assert gif.format == "GIF" and gif.n_frames == 23 and gif.size == (80, 45)
    gif.seek(10)
    frame = np.asarray(gif.convert("RGB")).astype(int)
    # The square has moved: at frame 10 it spans columns 50-79 of 160, i.e. 25-39 of 80.
    assert np.abs(frame[22, 32] - (255, 200, 0)).max() < 40 and frame[22, 10].max() < 40


def test_hparams_land_in_the_same_run_directory(run):
    run_dir, events, _ = run
    content = events.PluginTagToContent("hparams")
    assert {"_hparams_/experiment", "_hparams_/session_start_info", "_hparams_/session_end_info"} <= set(content)
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"]).session_start_info
    assert start.hparams["lr"].number_value == pytest.approx(3e-4)
    assert start.hparams["arch"].string_value == "cnn"
    assert start.hparams["anneal"].number_value == 1  # torch's hparams() stores bools as numbers
    assert start.hparams["cap"].string_value == "none"
    assert start.hparams["hidden"].string_value == "(64, 64)"
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
    assert {m.name.tag for m in experiment.metric_infos} == {"charts/episodic_return", "eval/final_return"}
    assert [e.value for e in events.Scalars("eval/final_return")] == [12.5]
    assert [p for p in run_dir.iterdir() if p.is_dir()] == []  # no sibling run
    assert len(list(run_dir.glob("events.out.tfevents.*"))) == 1


def test_gif_keeps_every_kth_frame_past_the_limit():
    gif, height, width, count = encode_gif(moving_square(50), fps=10, max_side=200, max_frames=20)
    assert count == 17 and (height, width) == (90, 160)  # every 3rd frame: 0, 3, ..., 48
    image = Image.open(io.BytesIO(gif))
    assert image.n_frames == 17
    assert image.info["duration"] == 300  # three frames' time each, so the clip keeps its length


def test_gif_merges_identical_frames_and_says_so():
    frames = np.repeat(moving_square(4), 3, axis=0)  # every frame three times
    gif, _, _, count = encode_gif(frames, fps=10)
    image = Image.open(io.BytesIO(gif))
    assert count == image.n_frames == 4
    assert image.info["duration"] == 300


def test_bad_video_frames_are_refused():
    with pytest.raises(ValueError):
        encode_gif(np.zeros((3, 8, 8), dtype=np.uint8))
    with pytest.raises(ValueError):
        encode_gif([])
