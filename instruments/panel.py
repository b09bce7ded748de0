"""`cli.py train --instrument-every K`: the instrument panel logged while training runs.

Every K updates, on the model as it stands: a short replayed episode (video and mean saliency), a
failure heatmap over a few episodes, and histograms of weights, gradients (of the last minibatch)
and activations (recorded through hooks). Nothing here touches the training RNGs, the optimizer or
the gradients, so an instrumented run trains exactly like a plain one.
"""

from __future__ import annotations

from pathlib import Path

import torch

from instruments.measure.heatmap import failure_heatmap, policy_from_model, save_heatmap_png
from instruments.measure.hooks import Taps, layer_names
from instruments.measure.saliency import gradient_saliency, reduce_channels
from instruments.measure.traces import record_episode
from instruments.show.figures import plot_mean_saliency
from instruments.show.tensorboard_sink import TensorBoardSink, read_png
from instruments.show.video import iter_frames


class TrainingPanel:
    """Call it after each update: `panel(update, model, global_step)`; it acts every `every` updates."""

    def __init__(self, run_dir, every: int, heatmap_episodes: int = 100, video_steps: int = 300,
                 sticky_action_prob: float = 0.1, device="cpu"):
        if every < 1:
            raise ValueError("every must be at least 1")
        self.run_dir = Path(run_dir)
        self.every = every
        self.heatmap_episodes = heatmap_episodes
        self.video_steps = video_steps
        self.sticky_action_prob = sticky_action_prob
        self.device = device
        self.sink = None

    def __call__(self, update: int, model, global_step: int) -> None:
        if update % self.every:
            return
        if self.sink is None:
            self.sink = TensorBoardSink(self.run_dir)
        step = global_step
        sink = self.sink

        # Weights and the last minibatch's gradients, before anything else runs the model.
        sink.histograms(((n, p.detach()) for n, p in model.named_parameters()), step, prefix="weights/")
        sink.histograms(((n, p.grad) for n, p in model.named_parameters() if p.grad is not None), step,
                        prefix="gradients/")

        trace = record_episode(model, seed=update, max_steps=self.video_steps, saliency=True,
                               sticky_action_prob=self.sticky_action_prob, device=self.device)
        sink.video("panel/rollout", iter_frames(trace), step)

        frames = torch.from_numpy(trace.frames).to(self.device)
        relus = [name for name in layer_names(model) if isinstance(model.get_submodule(name), torch.nn.ReLU)]
        with torch.no_grad(), Taps(model, activations=relus) as taps:
            model(frames)
        sink.histograms(taps.activations.items(), step, prefix="activations/")

        value_maps = reduce_channels(gradient_saliency(model, frames, target="value")).cpu().numpy()
        png = plot_mean_saliency(trace.saliency.mean(axis=0), value_maps.mean(axis=0), len(trace),
                                 self.run_dir / "panel_saliency.png")
        sink.image("panel/saliency", read_png(png), step)

        heatmap = failure_heatmap(policy_from_model(model, seed=update), episodes=self.heatmap_episodes,
                                  max_episode_steps=2_000, sticky_action_prob=self.sticky_action_prob,
                                  seed=update, device=self.device)
        png = save_heatmap_png(heatmap, self.run_dir / "panel_heatmap.png")
        sink.image("panel/failure_heatmap", read_png(png), step)
        sink.scalar("panel/episode_return", float(trace.rewards.sum()), step)
        sink.flush()

    def close(self):
        if self.sink is not None:
            self.sink.close()
