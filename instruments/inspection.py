"""`python cli.py inspect ckpt.pt`: replay an agent and write every instrument for it.

One function, `inspect_agent`, in the order a researcher reads the results:
    1. one episode replayed step by step -> rollout video, contact sheet, value and policy traces
    2. gradient saliency of the chosen action and of the value -> per-frame maps and their mean
    3. the failure heatmap over many episodes -> where the ball and paddle were before each loss
    4. the diagnosis: named findings (value stuck, entropy collapse, ...) measured on fresh play
    5. all of it into the run's TensorBoard directory under `inspect/`, and a summary
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from breakout_ppo.checkpoint import load_agent, load_checkpoint
from breakout_ppo.env import ACTION_NAMES
from breakout_ppo.evaluate import EvalResult
from breakout_ppo.preflight import check_entropy_term
from instruments.inspection_dir import (
    CONTACT_SHEET_PNG,
    DIAGNOSIS_JSON,
    HEATMAP_PNG,
    ROLLOUT_MP4,
    SALIENCY_NPZ,
    SALIENCY_PNG,
    SUMMARY_JSON,
    TRACE_CSV,
    TRACE_JSON,
    TRACES_PNG,
)
from instruments.judge.diagnose import Diagnosis, diagnose
from instruments.measure.heatmap import failure_heatmap, policy_from_model, save_heatmap_png
from instruments.measure.saliency import gradient_saliency, reduce_channels
from instruments.measure.traces import Trace, record_episode
from instruments.show.figures import plot_mean_saliency, plot_traces
from instruments.show.pages import write_inspection_report
from instruments.show.video import iter_frames, write_contact_sheet, write_video


@dataclass
class Inspection:
    out_dir: Path
    files: dict
    episode_return: float
    episode_length: int
    heatmap_summary: dict
    entropy_check: str
    tensorboard_dir: Path | None
    diagnosis: Diagnosis | None = None


def write_trace_files(trace: Trace, out_dir: Path) -> tuple[Path, Path]:
    """The per-step record as CSV (one row a step) and JSON (with the saliency maps)."""
    csv_path, json_path = out_dir / TRACE_CSV, out_dir / TRACE_JSON
    returns = trace.returns_so_far
    with open(csv_path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["step", "action", *[f"p_{name}" for name in ACTION_NAMES], "value", "reward", "return"])
        for t in range(len(trace)):
            writer.writerow([t, ACTION_NAMES[int(trace.actions[t])], *(f"{p:.5f}" for p in trace.probs[t]),
                             f"{trace.values[t]:.5f}", f"{trace.rewards[t]:g}", f"{returns[t]:g}"])
    record = {
        "actions": trace.actions.tolist(),
        "action_names": list(ACTION_NAMES),
        "probs": np.round(trace.probs, 5).tolist(),
        "values": np.round(trace.values, 5).tolist(),
        "rewards": trace.rewards.tolist(),
        "saliency": None if trace.saliency is None else np.round(trace.saliency, 6).tolist(),
    }
    json_path.write_text(json.dumps(record))
    return csv_path, json_path


def inspect_agent(checkpoint, out_dir, episodes: int = 1000, device="cpu", seed: int = 0,
                  max_video_steps: int = 2000, tensorboard_dir=None) -> Inspection:
    """Replay the agent in `checkpoint` and write the instruments to `out_dir` (and TensorBoard)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model, config = load_agent(checkpoint, device=device)
    global_step = int(load_checkpoint(checkpoint).get("global_step", 0))
    files = {}

    # 1. One episode, step by step.
    trace = record_episode(model, seed=seed, max_steps=max_video_steps, saliency=True,
                           sticky_action_prob=config.sticky_action_prob, device=device)
    files["video"] = write_video(trace, out_dir / ROLLOUT_MP4)
    files["contact_sheet"] = write_contact_sheet(trace, out_dir / CONTACT_SHEET_PNG)
    files["trace_csv"], files["trace_json"] = write_trace_files(trace, out_dir)
    files["traces_plot"] = plot_traces(trace, out_dir / TRACES_PNG)

    # 2. Saliency: per frame (already in the trace) and averaged, for the action and the value.
    frames = torch.from_numpy(trace.frames).to(device)
    action_maps = trace.saliency
    value_maps = reduce_channels(gradient_saliency(model, frames, target="value")).cpu().numpy()
    np.savez_compressed(out_dir / SALIENCY_NPZ, action=action_maps, value=value_maps)
    files["saliency"] = out_dir / SALIENCY_NPZ
    files["saliency_plot"] = plot_mean_saliency(action_maps.mean(axis=0), value_maps.mean(axis=0), len(trace),
                                                out_dir / SALIENCY_PNG)

    # 3. Failure heatmap over many episodes, one per env slot.
    heatmap = failure_heatmap(policy_from_model(model, seed=seed), episodes=episodes,
                              sticky_action_prob=config.sticky_action_prob, seed=seed, device=device)
    files["heatmap"] = save_heatmap_png(heatmap, out_dir / HEATMAP_PNG)
    # The checkpoint cannot show a dead entropy term; probing the update code that made it can.
    entropy_check = check_entropy_term(config)

    # 4. The diagnosis, from a fresh rollout of the agent, the heatmap and the preflight's probe.
    diagnosis = diagnose(model, config, heatmap, seed=seed, device=device, entropy_check=entropy_check)
    (out_dir / DIAGNOSIS_JSON).write_text(json.dumps(diagnosis.to_dict(), indent=2) + "\n")
    files["diagnosis"] = out_dir / DIAGNOSIS_JSON
    summary = {
        "checkpoint": str(checkpoint),
        "entropy_term": {"passed": entropy_check.passed, "finding": str(entropy_check)},
        "global_step": global_step,
        "episode": {"return": float(trace.rewards.sum()), "length": len(trace)},
        "heatmap": heatmap.summary(),
        # The heatmap episodes are an evaluation too: their mean return with a 95% CI, for the report.
        "returns": EvalResult(heatmap.returns, heatmap.lengths, heatmap.truncated).summary(),
        "config": config.to_dict(),
        "files": {k: str(v) for k, v in files.items()},
    }
    (out_dir / SUMMARY_JSON).write_text(json.dumps(summary, indent=2) + "\n")
    files["summary"] = out_dir / SUMMARY_JSON

    # 5. The same into TensorBoard, beside the run's training curves.
    if tensorboard_dir is not None:
        _log_to_tensorboard(Path(tensorboard_dir), global_step, trace, files, heatmap, diagnosis)
    # Last, so the page holds every file above.
    files["report"] = write_inspection_report(out_dir)
    return Inspection(out_dir, files, float(trace.rewards.sum()), len(trace), heatmap.summary(),
                      str(entropy_check), Path(tensorboard_dir) if tensorboard_dir else None, diagnosis)


def _log_to_tensorboard(log_dir: Path, step: int, trace: Trace, files: dict, heatmap,
                        diagnosis: Diagnosis) -> None:
    from instruments.show.tensorboard_sink import TensorBoardSink, read_png

    with TensorBoardSink(log_dir) as sink:
        sink.scalar("inspect/episode_return", float(trace.rewards.sum()), step)
        sink.scalar("inspect/heatmap_mean_return", heatmap.mean_return, step)
        sink.scalar("inspect/heatmap_loss_fraction", heatmap.losses / max(1, heatmap.episodes), step)
        for tag in ("heatmap", "contact_sheet", "saliency_plot", "traces_plot"):
            sink.image(f"inspect/{tag}", read_png(files[tag]), step)
        sink.video("inspect/rollout", iter_frames(trace), step)
        sink.histogram("inspect/value", trace.values, step)
        sink.histogram("inspect/action_saliency", trace.saliency, step)
        sink.text("inspect/summary", "\n".join(f"- **{k}**: {v}" for k, v in heatmap.summary().items()), step)
        sink.text("inspect/diagnosis", diagnosis.to_markdown(), step)

