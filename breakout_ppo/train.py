"""The training loop, and the one place that writes: TensorBoard events, checkpoints, config.

Everything a run writes goes through `RunWriter`, so that when training spans several processes
(torchrun, breakout_ppo/distributed.py) only rank 0 has one.
"""

from __future__ import annotations

import copy
import json
import math
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from breakout_ppo import distributed, events
from breakout_ppo.checkpoint import (
    CheckpointError,
    config_from_checkpoint,
    load_checkpoint,
    model_from_checkpoint,
    rank_state,
    restore_env,
    save_checkpoint,
    save_model,
    saved_rank_state,
    saved_device_type,
    saved_world_size,
)
from breakout_ppo.config import Config
from breakout_ppo.cuda_graphs import CaptureError, capturable_adam, capture_training, keep_capturable
from breakout_ppo.env import BatchedBreakout
from breakout_ppo.model import ActorCritic
from breakout_ppo.ppo import annealed, collect_rollout, ppo_update
from breakout_ppo.preflight import check_entropy_term
from breakout_ppo.rundir import RunDirectory, RunDirectoryError


def process_start_time() -> float:
    """Wall-clock time at which this process started (so start-up counts in time-to-score)."""
    try:
        with open("/proc/self/stat") as f:
            start_ticks = int(f.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
        return time.time() - (uptime - start_ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return time.time()


class TrainingError(Exception):
    """Training stopped for a reason the user must see (one line)."""


class RunWriter:
    """Writes into a claimed `runs/<name>/`: the config as JSON, TensorBoard events, checkpoints.

    `purge_step`: on resume, the step after the checkpoint's. Events a killed run logged after its
    last checkpoint are then hidden by TensorBoard's reader, so resumed steps appear once, not twice.
    """

    def __init__(self, run_dir: Path, config: Config, purge_step: int | None = None):
        from torch.utils.tensorboard import SummaryWriter

        self.run_dir = Path(run_dir)
        (self.run_dir / "config.json").write_text(json.dumps(config.to_dict(), indent=2) + "\n")
        self.tb = SummaryWriter(str(self.run_dir), purge_step=purge_step)
        self._log_hparams(config)

    def _log_hparams(self, config: Config):
        # Written into this run's own event file (add_hparams would make a sibling run), so
        # TensorBoard's HParams tab pairs these values with this run's charts/episodic_return.
        from torch.utils.tensorboard.summary import hparams

        values = {k: (v if v is not None else "none") for k, v in config.to_dict().items()}
        # eval/mean_return is written by a sweep's final evaluation (breakout_ppo/sweep.py); it is
        # declared here because TensorBoard reads a run's HParams metrics from its first summary.
        metrics = {events.EPISODIC_RETURN: 0.0, events.EVAL_MEAN_RETURN: 0.0}
        for summary in hparams(values, metrics):
            self.tb.file_writer.add_summary(summary)

    def scalars(self, values: dict, step: int):
        for tag, value in values.items():
            self.tb.add_scalar(tag, value, step)

    def checkpoint(self, name: str, **state) -> Path:
        return save_checkpoint(self.run_dir / name, **state)

    def close(self):
        self.tb.flush()
        self.tb.close()


class TimedSnapshots:
    """For time-to-score benchmarks: `snapshot-<t>s.pt` in the run directory holds the last model
    that existed before `t` seconds after process start (so start-up counts), for each t in
    `seconds`; a model-only file with the step and time it was made at, loadable with `load_agent`.
    Pass it to `train(after_update=...)`; if training ends before a deadline, the final model is
    the last one before it."""

    def __init__(self, run_dir, seconds, config: Config):
        self.run_dir, self.deadlines, self.config = Path(run_dir), sorted(seconds), config
        self.process_start = process_start_time()
        self.previous = None  # (elapsed seconds, global step, weights) at the last update boundary

    def __call__(self, updates_done: int, model, global_step: int) -> None:
        elapsed = time.time() - self.process_start
        while self.deadlines and elapsed >= self.deadlines[0]:
            deadline = self.deadlines.pop(0)
            if self.previous is not None:  # else no model existed before the deadline
                self._save(deadline, *self.previous)
        if self.deadlines and updates_done == self.config.num_updates:
            for deadline in self.deadlines:
                self._save(deadline, elapsed, global_step, model.state_dict())
            self.deadlines = []
        if self.deadlines:
            self.previous = (elapsed, global_step, copy.deepcopy(model.state_dict()))

    def _save(self, deadline: float, elapsed: float, global_step: int, weights: dict) -> None:
        save_model(self.run_dir / f"snapshot-{deadline:g}s.pt", weights, self.config, global_step, elapsed)


@dataclass
class TrainResult:
    run_dir: Path
    global_step: int
    updates: int
    stop_signal: int | None
    """The signal (SIGINT or SIGTERM) that stopped training early, checkpoint saved; None otherwise."""
    last_checkpoint: Path | None
    recent_returns: list = field(default_factory=list)
    rank: int = 0
    """This process's rank under torchrun (0 without): rank 0 writes and reports."""

    @property
    def interrupted(self) -> bool:
        return self.stop_signal is not None


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class _StopOnSignal:
    """Ctrl-C (SIGINT) or SIGTERM, what schedulers and containers send: finish the current update,
    checkpoint and stop. A second signal stops at once, except under torchrun (`second_stops=False`):
    there each process gets Ctrl-C twice, from the terminal and forwarded by torchrun, and torchrun
    itself kills the processes if they outlive its grace period."""

    def __init__(self, second_stops: bool = True):
        self.signal = None
        self.second_stops = second_stops
        self._previous = {}

    @property
    def requested(self) -> bool:
        return self.signal is not None

    def __enter__(self):
        for signum in STOP_SIGNALS:
            try:
                self._previous[signum] = signal.signal(signum, self._handle)
            except ValueError:  # not the main thread: leave signals alone
                break
        return self

    def _handle(self, signum, frame):
        if self.requested:
            if self.second_stops:
                raise KeyboardInterrupt
            return
        self.signal = signum

    def __exit__(self, *exc):
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        return False


def train(config: Config, run_dir, device="cpu", resume=None, progress=None, after_update=(),
          stop_at_step=None, cuda_graphs=True) -> TrainResult:
    """Train PPO from scratch (or from the checkpoint `resume`) and write the run to `run_dir`.

    `run_dir` must be new (missing or empty), except that resuming may continue in the checkpoint's
    own folder; it is held for the whole run (breakout_ppo/rundir.py), so no other training can
    write into it. A bad config, checkpoint or directory raises TrainingError before anything is
    written.
    `progress(global_step, sps, recent_return)` is called after each update, for a progress bar.
    `after_update`: callables `(updates_done, model, global_step)` called after each update, before
    its checkpoint: the CLI passes the instrument panel (training itself never imports
    `instruments`) and `TimedSnapshots` for time-to-score benchmarks.
    `stop_at_step`: for studies at equal steps, stop (with a checkpoint, as on Ctrl-C) at the first
    update boundary at or past this step; the learning-rate schedule still runs to `total_steps`.
    `cuda_graphs`: on one CUDA device, replay the rollout and the update as CUDA graphs
    (breakout_ppo/cuda_graphs.py); off, or on the CPU, or under torchrun, they run eagerly.

    Launched by torchrun, each process calls this and they train one run together
    (breakout_ppo/distributed.py): rank 0 alone claims and writes `run_dir` and calls `progress`
    and `after_update`; an error any rank finds before training is raised on all of them.
    """
    config.validate()
    ranks = distributed.join(device)
    captured = cuda_graphs and ranks.device.type == "cuda" and ranks.size == 1
    if not ranks.is_writer:
        progress, after_update = None, ()
    run = None
    try:
        error = None
        try:
            payload = _resume_payload(config, resume, ranks)
            split_error = ranks.split_error(config)
            if split_error:
                raise TrainingError(split_error)
            # A dead entropy term makes every ent_coef "have no effect"; catch it before spending hours.
            # Every rank runs it: the same verdict everywhere, without a collective.
            entropy_check = check_entropy_term(config, device=ranks.device, cuda_graphs=captured)
            if not entropy_check.passed:
                raise TrainingError(f"preflight failed: {entropy_check}")
            if ranks.is_writer:
                continuing = resume is not None and Path(run_dir).resolve() == Path(resume).resolve().parent
                try:
                    run = RunDirectory.claim(run_dir, new=not continuing)
                except RunDirectoryError as claim_error:
                    raise TrainingError(str(claim_error)) from None
        except (TrainingError, CheckpointError) as found:
            error = found
        except CaptureError as found:  # the preflight's probe of the captured update
            error = TrainingError(str(found))
        agreed = ranks.first_error(None if error is None else str(error), config)  # all ranks go on, or none does
        if agreed is not None:
            raise error if error is not None and str(error) == agreed else TrainingError(agreed)
        return _train(config, run.path if run is not None else Path(run_dir), ranks, payload=payload, resume=resume,
                      progress=progress, after_update=after_update, stop_at_step=stop_at_step, captured=captured)
    finally:
        if run is not None:
            run.release()
        distributed.leave(ranks)


def _resume_payload(config: Config, resume, ranks) -> dict | None:
    """The checkpoint to resume from, checked against the flags and the number of processes; every
    rank reads it (on several machines, from the same path)."""
    if resume is None:
        return None
    payload = load_checkpoint(resume, resumable=True)
    trained_on = saved_device_type(payload)
    if trained_on != ranks.device.type:
        raise TrainingError(f"{resume} was trained on {trained_on} and this run is on {ranks.device.type}: its random "
                            f"streams are {trained_on} generators, which cannot continue on another device; resume it "
                            f"with --device {trained_on} (evaluate, inspect and compare read it on any device)")
    saved = config_from_checkpoint(payload, resume)
    differences = saved.differences(config, ignore=("total_steps",))
    if differences:
        raise TrainingError(f"{resume} was trained with a different config (checkpoint -> these flags: "
                            f"{'; '.join(differences)}); resume with the same flags")
    model_from_checkpoint(payload, config, resume)  # refuse weights that do not fit before any write
    if payload["update"] >= config.num_updates:
        raise TrainingError(f"{resume} is at step {payload['global_step']:,}, update {payload['update']}, and "
                            f"--total-steps {config.total_steps:,} ends at update {config.num_updates}: nothing "
                            f"to train; give a larger --total-steps to continue it")
    if saved_world_size(payload) != ranks.size:
        trained_on = saved_world_size(payload)
        how = "without torchrun" if trained_on == 1 else f"on {trained_on} processes (torchrun, nnodes x nproc_per_node)"
        raise TrainingError(f"{resume} was trained by {trained_on} process{'es' if trained_on > 1 else ''}, this run has "
                            f"{ranks.size}: its envs and random streams are split {trained_on} ways; resume it {how}")
    return payload


class _NoWriter:
    """What ranks other than 0 write: nothing."""

    def scalars(self, values: dict, step: int):
        pass

    def close(self):
        pass


def _make_optimizer(model, config: Config, captured: bool) -> torch.optim.Adam:
    if captured:
        return capturable_adam(model, config.learning_rate)
    # One fused kernel per step instead of a handful of ops per parameter: Adam's step took a third
    # of the time on the 2-core CPU (0.45 -> 0.15 ms per minibatch), about 7% of training.
    return torch.optim.Adam(model.parameters(), lr=config.learning_rate, eps=1e-5, fused=True)


def _load_optimizer(optimizer, saved: dict, captured: bool) -> None:
    """`load_state_dict` also copies the saved run's options (fused or capturable, a float or a
    tensor learning rate): put back the ones this run's path needs."""
    optimizer.load_state_dict(saved)
    if captured:
        keep_capturable(optimizer)
        return
    for group in optimizer.param_groups:
        group.update(fused=True, capturable=False, foreach=None)
        if isinstance(group["lr"], torch.Tensor):
            group["lr"] = float(group["lr"])


def _train(config, run_dir, ranks, *, payload, resume, progress, after_update, stop_at_step, captured) -> TrainResult:
    device = ranks.device
    torch.manual_seed(config.seed)
    model = ActorCritic.from_config(config).to(device)
    ranks.broadcast_weights(model)
    optimizer = _make_optimizer(model, config, captured)
    # Under torchrun each rank steps its slice of the envs with streams of its own (rank 0: a lone run's).
    streams = ranks.streams(config.seed, device)
    env = BatchedBreakout(ranks.local_num_envs(config), device=device, sticky_action_prob=config.sticky_action_prob,
                          max_episode_steps=config.max_episode_steps, seed=streams.env_seed,
                          partial_wall_prob=config.partial_wall_starts,
                          random_ball_starts=config.random_ball_starts)
    sampler, minibatch_order = streams.sampler, streams.minibatch_order
    obs = env.reset()
    global_step, first_update = 0, 0
    if payload is not None:
        model.load_state_dict(payload["model"])
        _load_optimizer(optimizer, payload["optimizer"], captured)
        own = saved_rank_state(payload, ranks.rank)
        restore_env(env, own)
        obs = env.observe()
        sampler.set_state(own["rng"]["sampler"])
        torch.set_rng_state(own["rng"]["torch"])
        if minibatch_order is not sampler:
            minibatch_order.set_state(payload["rng"]["minibatch_order"])
        global_step, first_update = payload["global_step"], payload["update"]

    # Captured only in one process, where the minibatch order is the sampler's stream: the graphs
    # draw both from `sampler`, as the eager path does there.
    try:  # before anything is written: a failed capture leaves the run folder as it found it
        graphs = capture_training(model, optimizer, env, config, sampler) if captured else None
    except CaptureError as error:
        raise TrainingError(str(error)) from None
    purge_step = global_step + 1 if payload is not None else None
    writer = RunWriter(run_dir, config, purge_step=purge_step) if ranks.is_writer else _NoWriter()
    last_checkpoint = Path(resume) if resume is not None else None
    recent_returns = []

    def save(update):
        # Every rank hands its envs and streams to rank 0, which writes the one file; all learn if it failed.
        states = ranks.gather_to_writer(rank_state(env, sampler))
        error = None
        if ranks.is_writer:
            try:
                writer.checkpoint("checkpoint.pt", model=model, optimizer=optimizer, config=config, ranks=states,
                                  global_step=global_step, update=update, minibatch_order=minibatch_order)
            except CheckpointError as failed:
                error = f"{failed}; last good checkpoint: {last_checkpoint or 'none saved yet'}"
        error = ranks.first_error(error)
        if error is not None:
            raise TrainingError(error)
        return Path(run_dir) / "checkpoint.pt"

    process_start = process_start_time()
    start = time.perf_counter()
    start_step = global_step
    update = first_update
    stop_signal = 0
    try:
        with _StopOnSignal(second_stops=ranks.size == 1) as stop:
            for update in range(first_update, config.num_updates):
                scheduled = annealed(config, update)
                if graphs is not None:
                    rollout, obs, episodes = graphs.collect()
                    metrics = graphs.update(scheduled)
                else:
                    rollout, obs, episodes = collect_rollout(model, env, obs, config, sampler)
                    metrics = ppo_update(model, optimizer, rollout, scheduled, minibatch_order, ranks)
                global_step += config.batch_size
                # Over all ranks (no-ops in one process): the NaN flag, losses, finished episodes.
                non_finite = ranks.max(bool(metrics.pop("non_finite")))
                metrics, episodes = ranks.mean(metrics), ranks.sum(episodes)

                if non_finite:
                    raise TrainingError(
                        f"non-finite loss at update {update + 1} (step {global_step}); "
                        f"last good checkpoint: {last_checkpoint or 'none saved yet'}"
                    )
                sps = (global_step - start_step) / (time.perf_counter() - start)
                scalars = {f"losses/{k}": float(v) for k, v in metrics.items()}
                elapsed = time.time() - process_start
                scalars.update({events.LEARNING_RATE: scheduled.learning_rate, events.ENT_COEF: scheduled.ent_coef,
                                events.SPS: sps, events.ELAPSED_SECONDS: elapsed})
                n = float(episodes.count)
                if n > 0:
                    mean_return = float(episodes.return_sum) / n
                    recent_returns.append(mean_return)
                    scalars[events.EPISODIC_RETURN] = mean_return
                    scalars[events.EPISODIC_LENGTH] = float(episodes.length_sum) / n
                writer.scalars(scalars, global_step)
                if progress is not None:
                    progress(global_step, sps, recent_returns[-1] if recent_returns else math.nan)

                done = update + 1
                for callback in after_update:
                    callback(done, model, global_step)
                stop_signal = ranks.max(stop.signal or 0)  # a signal to any rank stops them all here
                stop_here = bool(stop_signal) or (stop_at_step is not None and global_step >= stop_at_step)
                if stop_here or done % config.checkpoint_every == 0 or done == config.num_updates:
                    last_checkpoint = save(done)
                if stop_here:
                    break
    finally:
        writer.close()
    return TrainResult(Path(run_dir), global_step, update + 1 - first_update, stop_signal or stop.signal,
                       last_checkpoint, recent_returns, rank=ranks.rank)
