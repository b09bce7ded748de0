"""One TensorBoard sink for everything the instruments log: scalars, images, histograms, text,
videos and hyperparameters, all into one run directory.

Scalars follow Stable-Baselines3's record-then-dump: `record` collects values (floats or 0-d
tensors, kept on their device, so recording costs no host sync) during an update, `dump(step)`
writes the mean of each tag once. Everything else is written when called.

    with TensorBoardSink("runs/demo") as tb:
        tb.hparams({"lr": 3e-4, "arch": "cnn"}, metrics={"charts/episodic_return": None})
        tb.record("losses/value_loss", loss)            # many times per update
        tb.dump(step)                                   # once per update
        tb.histograms(model.named_parameters(), step, prefix="weights/")
        tb.image("failures", rgb_array_or_figure, step)
        tb.video("episode", iter_frames(trace), step)   # animated GIF, see `video`

Two traps this works around. `SummaryWriter.add_video` imports `moviepy.editor`, which moviepy 2
removed, and then only warns and writes nothing (pytorch issue 147317): `video` encodes an
animated GIF with Pillow and writes it as an image summary, which TensorBoard's Images tab plays.
`SummaryWriter.add_hparams` writes into a new sibling run directory: `hparams` writes the HParams
plugin's summaries into this run's own event file instead.

TensorBoard keeps only 10 images per tag unless started with `--samples_per_plugin images=0`.
"""

from __future__ import annotations

import io
from collections import defaultdict
from collections.abc import Iterable, Mapping
from pathlib import Path

import cv2
import numpy as np
import torch


def read_png(path) -> np.ndarray:
    """A PNG file as an (H, W, 3) uint8 RGB array, as `TensorBoardSink.image` takes it."""
    image = cv2.imread(str(path))
    if image is None:
        raise OSError(f"could not read {path} as an image")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def _numpy(values) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        return values.detach().cpu().numpy()
    return np.asarray(values)


def _hparam_value(value):
    """The HParams plugin takes bool, int, float or str (and 0-d tensors of those)."""
    if isinstance(value, (bool, int, float, str)):
        return value
    if value is None:
        return "none"
    return str(value)


def encode_gif(frames: Iterable, fps: float = 10.0, max_side: int = 480,
               max_frames: int = 300) -> tuple[bytes, int, int, int]:
    """Frames (each (H, W, 3) uint8 RGB) as an animated GIF: returns (bytes, height, width, frames).

    Frames are shrunk (INTER_AREA) so the longer side is at most `max_side`, and, past
    `max_frames`, only every k-th frame is kept (the delay grows to keep the duration). Each frame
    is downscaled as it arrives, so a generator that reuses one buffer is fine. All frames share
    one 256-colour palette made from a sample of them, which keeps colours steady from frame to
    frame. Pillow merges identical consecutive frames (adding up their delays), so the GIF can hold
    fewer frames than were kept: the count returned is the GIF's own.
    """
    from PIL import Image  # Pillow comes with matplotlib

    small = []
    for frame in frames:
        frame = _numpy(frame)
        if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
            raise ValueError(f"video frames must be (H, W, 3) uint8 RGB, got {frame.dtype} {frame.shape}")
        h, w = frame.shape[:2]
        scale = min(1.0, max_side / max(h, w))
        if scale < 1.0:
            size = (max(2, round(w * scale)), max(2, round(h * scale)))
            frame = cv2.resize(frame, size, interpolation=cv2.INTER_AREA)
        else:
            frame = frame.copy()
        small.append(frame)
    if not small:
        raise ValueError("no frames to encode")
    stride = -(-len(small) // max_frames)
    small = small[::stride]
    sample = np.concatenate(small[:: max(1, len(small) // 16)], axis=0)
    palette = Image.fromarray(sample).quantize(256, method=Image.Quantize.MEDIANCUT)
    images = [Image.fromarray(f).quantize(palette=palette, dither=Image.Dither.NONE) for f in small]
    buffer = io.BytesIO()
    # GIF delays are in 1/100 s; Pillow rounds the milliseconds given here.
    images[0].save(buffer, format="GIF", save_all=True, append_images=images[1:],
                   duration=max(20, round(1000 * stride / fps)), loop=0)
    h, w = small[0].shape[:2]
    return buffer.getvalue(), h, w, Image.open(buffer).n_frames


class TensorBoardSink:
    """A `SummaryWriter` for one run directory, with a narrow interface (see the module docstring)."""

    def __init__(self, log_dir, flush_secs: int = 30):
        from torch.utils.tensorboard import SummaryWriter

        self.log_dir = Path(log_dir)
        self.writer = SummaryWriter(str(self.log_dir), flush_secs=flush_secs)
        self._recorded: dict[str, list] = defaultdict(list)

    # -- scalars --------------------------------------------------------------------------------

    def record(self, tag: str, value) -> None:
        """Collect a scalar (float or 0-d tensor) for the next `dump`; repeated tags are averaged."""
        if isinstance(value, torch.Tensor):
            value = value.detach().reshape(())
        self._recorded[tag].append(value)

    def dump(self, step: int) -> dict[str, float]:
        """Write the mean of each recorded tag at `step`, forget them, and return what was written."""
        written = {}
        for tag, values in self._recorded.items():
            as_cpu = [v.to("cpu", torch.float64) if isinstance(v, torch.Tensor) else float(v) for v in values]
            written[tag] = float(torch.tensor(as_cpu, dtype=torch.float64).mean())
            self.writer.add_scalar(tag, written[tag], step)
        self._recorded.clear()
        return written

    def scalar(self, tag: str, value, step: int) -> None:
        """Write one scalar now."""
        self.writer.add_scalar(tag, float(value), step)

    # -- images, histograms, text ---------------------------------------------------------------

    def image(self, tag: str, image, step: int) -> None:
        """An (H, W, 3) or (H, W) image (uint8, or float in [0, 1]), or a matplotlib figure (closed)."""
        if hasattr(image, "savefig"):
            self.writer.add_figure(tag, image, step, close=True)
            return
        image = _numpy(image)
        if image.ndim == 3 and image.shape[2] not in (1, 3, 4):
            raise ValueError(f"image must be (H, W, C) with C in 1, 3, 4, got {image.shape}")
        self.writer.add_image(tag, image, step, dataformats="HWC" if image.ndim == 3 else "HW")

    def histogram(self, tag: str, values, step: int) -> None:
        """A histogram of any tensor or array (weights, activations, gradients); empty ones are skipped."""
        values = _numpy(values).astype(np.float64, copy=False).ravel()
        if values.size:
            self.writer.add_histogram(tag, values, step)

    def histograms(self, named_values, step: int, prefix: str = "") -> None:
        """A histogram per (name, values) pair of a mapping or iterable, e.g.
        `histograms(model.named_parameters(), step, "weights/")`,
        `histograms({n: p.grad for n, p in model.named_parameters()}, step, "gradients/")` (None is
        skipped), or activations stored by a forward hook; each under `prefix + name`."""
        items = named_values.items() if isinstance(named_values, Mapping) else named_values
        for name, values in items:
            if values is not None:
                self.histogram(prefix + name, values, step)

    def text(self, tag: str, text: str, step: int) -> None:
        """Markdown text, shown in TensorBoard's Text tab."""
        self.writer.add_text(tag, text, step)

    # -- video ----------------------------------------------------------------------------------

    def video(self, tag: str, frames: Iterable, step: int, fps: float = 10.0, max_side: int = 480,
              max_frames: int = 300) -> int:
        """Frames ((H, W, 3) uint8 RGB each; an array (T, H, W, 3) or any iterable) as an animated
        GIF in the Images tab; returns how many frames the GIF holds. See `encode_gif` for the
        downscaling that keeps event files small (an 800x450, 250-step episode: about 2 MB at 480x270)."""
        from tensorboard.compat.proto.summary_pb2 import Summary

        gif, height, width, count = encode_gif(frames, fps, max_side, max_frames)
        image = Summary.Image(height=height, width=width, colorspace=3, encoded_image_string=gif)
        self.writer._get_file_writer().add_summary(Summary(value=[Summary.Value(tag=tag, image=image)]), step)
        return count

    # -- hyperparameters ------------------------------------------------------------------------

    def hparams(self, params: Mapping, metrics: Mapping[str, float | None], step: int = 0) -> None:
        """Hyperparameters for TensorBoard's HParams tab, in this run's own event file.

        `metrics` names the scalar tags the HParams tab shows next to them. A value is written as a
        scalar at `step`; None only declares the tag, for one this run logs anyway (such as
        `charts/episodic_return`). Values other than bool, int, float, str are stored as strings.
        """
        from torch.utils.tensorboard.summary import hparams

        values = {k: _hparam_value(v) for k, v in params.items()}
        declared = {k: 0.0 if v is None else float(v) for k, v in metrics.items()}
        file_writer = self.writer._get_file_writer()
        for summary in hparams(values, declared):
            file_writer.add_summary(summary, step)
        for tag, value in metrics.items():
            if value is not None:
                self.writer.add_scalar(tag, float(value), step)

    # -- lifetime -------------------------------------------------------------------------------

    def flush(self) -> None:
        """Push everything written so far to disk (recorded scalars wait for `dump`)."""
        self.writer.flush()

    def close(self) -> None:
        """Flush and close the event file. Scalars recorded but not dumped are dropped."""
        self.writer.flush()
        self.writer.close()

    def __enter__(self) -> "TensorBoardSink":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
