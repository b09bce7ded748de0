"""Hyperparameter sweeps: a grid of configs times seeds, each a run under `runs/<sweep-name>/`.

`SweepPlan` is the grid as the user gave it; `plan.runs()` expands it into one `SweepRun` per grid
point and seed. `run_sweep` trains and evaluates every run that is not complete yet, each in its
own worker process (`python -m breakout_ppo.sweep RUN_DIR`), so that a crash or Ctrl-C in one
training is isolated and the sweep can be restarted: a run with `final_eval.json` is complete and
skipped, a run with `checkpoint.pt` is resumed (bit for bit on CPU), anything else starts fresh.

A worker trains, evaluates its final checkpoint and writes the evaluation return into the run's
TensorBoard events as `eval/mean_return`, one of the HParams metrics, so that TensorBoard's
parallel-coordinates view over `runs/<sweep-name>` compares the runs on it.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from breakout_ppo.config import Config, preset

PLAN_FILE = "sweep.json"
FINAL_EVAL_FILE = "final_eval.json"
"""Written last by a worker: its existence marks the run complete."""
LOG_FILE = "train.log"
EVAL_SEED = 12345
"""Every run is evaluated on the same episode seeds, so the grid points meet the same games."""
EVAL_RETURN_TAG = "eval/mean_return"


class SweepError(Exception):
    """The sweep cannot go on; the message is one line meant for the user."""


class SweepInterrupted(Exception):
    """Ctrl-C: the workers were stopped and their checkpoints stand."""


@dataclass(frozen=True)
class SweepRun:
    name: str
    """Directory under the sweep: the swept values and the seed, e.g. `ent_coef=0.01,seed=1`."""
    config: Config
    point: tuple
    """The grid point, `((field, value), ...)` for the swept fields: what seeds are averaged over."""

    @property
    def label(self) -> str:
        return point_label(self.point)


def point_label(point: tuple) -> str:
    return ",".join(f"{name}={value}" for name, value in point) or "all runs"


@dataclass(frozen=True)
class SweepPlan:
    preset: str
    values: dict
    """Config field -> the values given for it; a field with one value is fixed, not swept."""
    seeds: tuple
    eval_episodes: int = 1024

    @property
    def swept(self) -> list[str]:
        """Fields with more than one value, in the order of `Config`."""
        order = [f.name for f in dataclasses.fields(Config)]
        return [name for name in order if len(self.values.get(name, ())) > 1]

    def points(self) -> list[tuple]:
        swept = self.swept
        return [tuple(zip(swept, combination)) for combination in itertools.product(*(self.values[n] for n in swept))]

    def runs(self) -> list[SweepRun]:
        """Every grid point for seed 1, then every point for seed 2, ...: a sweep stopped half-way
        has compared all points on its first seeds rather than some points on all seeds.

        Raises ValueError (one line) for a value that makes no sense, before anything runs."""
        if "seed" in self.values:
            raise ValueError("give the seeds as `seeds`, not as a swept value of `seed`")
        for name, values in [*self.values.items(), ("seed", self.seeds)]:
            if len(set(values)) != len(values):
                raise ValueError(f"{name} lists a value twice: {', '.join(map(str, values))}")
        fixed = {name: values[0] for name, values in self.values.items() if len(values) == 1}
        runs = []
        for seed in self.seeds:
            for point in self.points():
                config = preset(self.preset, **fixed, **dict(point), seed=seed)
                name = ",".join(f"{field}={value}" for field, value in (*point, ("seed", seed)))
                runs.append(SweepRun(name, config, point))
        return runs

    def command_line(self, name: str) -> str:
        """The `cli.py sweep` command that makes this plan."""
        words = ["python cli.py sweep", f"--name {name}"]
        if self.preset != "default":
            words.append(f"--preset {self.preset}")
        for field, values in self.values.items():
            words.append(f"--{field.replace('_', '-')} {','.join('none' if v is None else str(v) for v in values)}")
        counted = self.seeds == tuple(range(1, len(self.seeds) + 1))
        words.append(f"--seeds {len(self.seeds)}" if counted else f"--seed {','.join(map(str, self.seeds))}")
        if self.eval_episodes != 1024:
            words.append(f"--eval-episodes {self.eval_episodes}")
        return " ".join(words)

    def to_dict(self) -> dict:
        return {"preset": self.preset, "values": {k: list(v) for k, v in self.values.items()},
                "seeds": list(self.seeds), "eval_episodes": self.eval_episodes}

    @classmethod
    def from_dict(cls, data: dict) -> "SweepPlan":
        return cls(data["preset"], {k: tuple(v) for k, v in data["values"].items()}, tuple(data["seeds"]),
                   data["eval_episodes"])


# --- the state of one run on disk --------------------------------------------------------------

COMPLETE, PARTIAL, NEW = "complete", "partial", "new"


def run_state(run_dir: Path, config: Config) -> str:
    """complete (evaluated), partial (a checkpoint to resume from) or new; SweepError if the
    directory holds a run of another config (a different budget, say), which must not be mixed in."""
    saved = run_dir / "config.json"
    if saved.exists():
        try:
            same = Config.from_saved(json.loads(saved.read_text())) == config
        except (ValueError, TypeError):  # not JSON, or fields of another version
            same = False
        if not same:
            raise SweepError(f"{run_dir} holds a run with another config; choose another sweep --name "
                             f"or remove that directory")
    if (run_dir / FINAL_EVAL_FILE).exists():
        return COMPLETE
    if (run_dir / "checkpoint.pt").exists():
        return PARTIAL
    return NEW


def read_final_eval(run_dir: Path) -> dict | None:
    path = Path(run_dir) / FINAL_EVAL_FILE
    return json.loads(path.read_text()) if path.exists() else None


# --- the sweep: a pool of worker processes -----------------------------------------------------

@dataclass
class SweepOutcome:
    skipped: list
    """Names of runs already complete before this call."""
    finished: list
    failed: list
    """(name, last line of its log) for runs whose worker exited with an error."""


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def worker_environment(workers: int) -> dict:
    """Split the cores between the workers: K processes that each spin all cores' worth of
    OpenMP threads slow each other down by an order of magnitude. An explicit OMP_NUM_THREADS wins."""
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", str(max(1, available_cores() // workers)))
    env["PYTHONUNBUFFERED"] = "1"
    return env


def run_sweep(plan: SweepPlan, sweep_dir, workers: int = 1, device: str = "cpu", echo=print) -> SweepOutcome:
    """Run every run of `plan` that is not complete, at most `workers` at once; `echo` gets one
    line per run started, finished or failed. Ctrl-C stops the workers cleanly (each saves its
    checkpoint) and raises SweepInterrupted."""
    sweep_dir = Path(sweep_dir)
    runs = plan.runs()
    states = {run.name: run_state(sweep_dir / run.name, run.config) for run in runs}
    sweep_dir.mkdir(parents=True, exist_ok=True)
    (sweep_dir / PLAN_FILE).write_text(json.dumps(plan.to_dict(), indent=2) + "\n")

    outcome = SweepOutcome(skipped=[r.name for r in runs if states[r.name] == COMPLETE], finished=[], failed=[])
    pending = [r for r in runs if states[r.name] != COMPLETE]
    env = worker_environment(workers)
    active: dict[subprocess.Popen, tuple[SweepRun, float]] = {}
    total, started = len(pending), 0
    try:
        while pending or active:
            while pending and len(active) < workers:
                run = pending.pop(0)
                started += 1
                process = start_worker(sweep_dir / run.name, run.config, plan.eval_episodes, device, env)
                active[process] = (run, time.perf_counter())
                verb = "resuming" if states[run.name] == PARTIAL else "starting"
                echo(f"[{started}/{total}] {verb} {run.name}")
            time.sleep(0.2)
            for process in [p for p in active if p.poll() is not None]:
                run, since = active.pop(process)
                minutes = (time.perf_counter() - since) / 60
                if process.returncode == 0:
                    result = read_final_eval(sweep_dir / run.name)
                    outcome.finished.append(run.name)
                    echo(f"done {run.name}: return {result['mean']:.2f} ± {result['ci95']:.2f} ({minutes:.1f} min)")
                else:
                    reason = last_log_line(sweep_dir / run.name / LOG_FILE)
                    outcome.failed.append((run.name, reason))
                    echo(f"FAILED {run.name} (exit {process.returncode}): {reason}")
    except KeyboardInterrupt:
        stop_workers(list(active))
        raise SweepInterrupted(f"stopped {len(active)} run(s); their checkpoints stand") from None
    return outcome


def start_worker(run_dir: Path, config: Config, eval_episodes: int, device: str, env: dict) -> subprocess.Popen:
    """The worker reads its config from `config.json`, the file the run keeps anyway. It gets its
    own session, so a Ctrl-C at the terminal reaches only the sweep, which passes on exactly one."""
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.json").write_text(json.dumps(config.to_dict(), indent=2) + "\n")
    log = open(run_dir / LOG_FILE, "a")
    try:
        return subprocess.Popen(
            [sys.executable, "-m", "breakout_ppo.sweep", str(run_dir), "--device", device,
             "--eval-episodes", str(eval_episodes)],
            stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    finally:
        log.close()  # the child holds its own copy


def stop_workers(processes: list) -> None:
    """One SIGINT each: the worker finishes its update and saves its checkpoint. A second Ctrl-C
    while waiting passes on a second SIGINT, which stops them at once (the last periodic
    checkpoint stands)."""
    for process in processes:
        process.send_signal(signal.SIGINT)
    while True:
        try:
            for process in processes:
                process.wait()
            return
        except KeyboardInterrupt:
            for process in processes:
                if process.poll() is None:
                    process.send_signal(signal.SIGINT)


def last_log_line(path: Path) -> str:
    try:
        lines = [line.strip() for line in path.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return "no log"
    return lines[-1][:300] if lines else "no output"


# --- the worker: one run, in its own process ---------------------------------------------------

def train_and_evaluate(run_dir: Path, device: str = "cpu", eval_episodes: int = 1024) -> dict | None:
    """Train the run in `run_dir` (resuming its checkpoint if there is one), evaluate the final
    model and write `final_eval.json`. Returns the evaluation, or None if training was interrupted."""
    from breakout_ppo.checkpoint import load_agent, load_checkpoint
    from breakout_ppo.evaluate import SETTINGS, evaluate
    from breakout_ppo.train import train

    config = Config.from_saved(json.loads((run_dir / "config.json").read_text())).validate()
    checkpoint = run_dir / "checkpoint.pt"
    done_updates = load_checkpoint(checkpoint, resumable=True)["update"] if checkpoint.exists() else 0
    if done_updates < config.num_updates:
        start = f"resuming at update {done_updates}" if done_updates else "training"
        print(f"{start}: {config.num_updates} updates, {config.total_steps:,} steps, "
              f"{os.environ.get('OMP_NUM_THREADS', 'default')} OpenMP threads", flush=True)
        result = train(config, run_dir, device=device, resume=checkpoint if done_updates else None,
                       progress=ProgressPrinter(config.num_updates * config.batch_size))
        if result.interrupted:
            print(f"interrupted: checkpoint saved at step {result.global_step:,}", flush=True)
            return None

    model, _ = load_agent(checkpoint, device=device)
    settings = SETTINGS["default"]
    evaluation = evaluate(model, episodes=eval_episodes, device=device, seed=EVAL_SEED, **settings)
    global_step = load_checkpoint(checkpoint)["global_step"]
    summary = {**evaluation.summary(), "global_step": global_step, "policy": "sampled", "seed": EVAL_SEED, **settings}
    write_eval_scalar(run_dir, summary["mean"], global_step)
    tmp = run_dir / f".{FINAL_EVAL_FILE}.tmp"
    tmp.write_text(json.dumps(summary, indent=2) + "\n")
    os.replace(tmp, run_dir / FINAL_EVAL_FILE)
    print(f"evaluation: return {summary['mean']:.2f} ± {summary['ci95']:.2f} over {eval_episodes} episodes",
          flush=True)
    return summary


def write_eval_scalar(run_dir: Path, mean_return: float, global_step: int) -> None:
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(run_dir))
    writer.add_scalar(EVAL_RETURN_TAG, mean_return, global_step)
    writer.close()


class ProgressPrinter:
    """A progress line every `every` seconds, for the run's log file."""

    def __init__(self, total: int, every: float = 30.0):
        self.total, self.every, self.last = total, every, time.perf_counter()

    def __call__(self, step: int, sps: float, recent_return: float):
        now = time.perf_counter()
        if now - self.last >= self.every or step >= self.total:
            self.last = now
            print(f"{step:,}/{self.total:,} steps, {sps:,.0f} SPS, training return {recent_return:.1f}", flush=True)


def main(argv=None) -> int:
    import argparse

    from breakout_ppo.checkpoint import CheckpointError
    from breakout_ppo.train import TrainingError

    parser = argparse.ArgumentParser(description="Worker of a sweep: train, then evaluate, one run.")
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--eval-episodes", type=int, default=1024)
    args = parser.parse_args(argv)
    try:
        return 0 if train_and_evaluate(args.run_dir, args.device, args.eval_episodes) else 130
    except (CheckpointError, TrainingError, ValueError, OSError) as error:
        print(f"error: {error}", flush=True)
        return 1
    except KeyboardInterrupt:  # a second Ctrl-C, or one outside the training loop
        print("interrupted: the last checkpoint stands", flush=True)
        return 130


if __name__ == "__main__":
    sys.exit(main())
