"""The command line: `breakout-ppo --help` once installed, or `python cli.py --help` in a clone.

The one module of `breakout_ppo` that reaches `instruments`: the commands that run instruments
import them when they run, so training, evaluation and the library never load them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import shutil
import signal
import sys
import time
from datetime import datetime
from pathlib import Path

import click

from breakout_ppo import __version__
from breakout_ppo.config import ARCHS, PRECISIONS, PRESETS, Config, field_docs, preset

DEFAULT_LOGDIR = Path("runs")
EXAMPLE_RUN = "example-agent"
"""Where `inspect --example` writes, under --logdir's default."""


def resolve_device(name: str):
    """'auto' picks CUDA when there is a GPU; asking for CUDA without one is an error."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise click.ClickException("--device cuda was requested but no CUDA GPU is available (use --device cpu or auto)")
    return torch.device(name)


device_option = click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto",
                             show_default=True, help="Where tensors live.")


NO_LIMIT = "none"


class OptionalInt(click.ParamType):
    """An integer, or 'none' for no limit (kept as the string until the config is built, since
    None already means "flag not given")."""

    name = "INTEGER|none"

    def convert(self, value, param, ctx):
        if value is None or isinstance(value, int):
            return value
        if str(value).lower() == NO_LIMIT:
            return NO_LIMIT
        try:
            return int(value)
        except ValueError:
            self.fail(f"{value!r} is not an integer or 'none'", param, ctx)


FIELD_CHOICES = {"arch": ARCHS, "precision": PRECISIONS}


def field_value_type(field: dataclasses.Field) -> click.ParamType:
    """The click type of one value of a Config field."""
    if field.name in FIELD_CHOICES:
        return click.Choice(FIELD_CHOICES[field.name])
    if field.type == "int | None":
        return OptionalInt()
    return {"bool": click.BOOL, "int": click.INT, "float": click.FLOAT, "str": click.STRING}[field.type]


def shown_default(field: dataclasses.Field) -> str:
    """The field's default (the `default` preset's value) as --help shows it."""
    if field.default is None:
        return NO_LIMIT
    if isinstance(field.default, bool):
        return "on" if field.default else "off"
    return f"{field.default:,}" if isinstance(field.default, int) else f"{field.default:g}" \
        if isinstance(field.default, float) else str(field.default)


def config_options(command):
    """One flag per Config field (`learning_rate` -> `--learning-rate`), help from its docstring."""
    docs = field_docs()
    for f in reversed(dataclasses.fields(Config)):
        flag = "--" + f.name.replace("_", "-")
        # Written into the help, not given as click's default: a flag left out must keep the preset's value.
        help_text = f"{docs.get(f.name, '')}  [default: {shown_default(f)}]"
        if f.type == "bool":
            option = click.option(f"{flag}/--no-{flag[2:]}", f.name, default=None, help=help_text)
        else:
            option = click.option(flag, f.name, type=field_value_type(f), default=None, help=help_text)
        command = option(command)
    return command


class ValueList(click.ParamType):
    """Comma-separated values of one config field (`0,0.01,0.1`), each checked by the field's type."""

    def __init__(self, item_type: click.ParamType):
        self.item_type = item_type
        self.name = f"{item_type.name.upper()},..."

    def convert(self, value, param, ctx):
        if isinstance(value, tuple):
            return value
        items = [item.strip() for item in str(value).split(",")]
        if not all(items):
            self.fail(f"empty value in {value!r}", param, ctx)
        return tuple(self.item_type.convert(item, param, ctx) for item in items)


SWEEP_FLAG_ALIASES = {"ent_coef": ["--entropy-coef"], "total_steps": ["--steps"]}


def config_value_list_options(command):
    """The sweep's flags: one per Config field as in `config_options`, each taking a comma list."""
    docs = field_docs()
    for f in reversed(dataclasses.fields(Config)):
        flags = ["--" + f.name.replace("_", "-"), *SWEEP_FLAG_ALIASES.get(f.name, [])]
        option = click.option(*flags, f.name, type=ValueList(field_value_type(f)), default=None, help=docs.get(f.name))
        command = option(command)
    return command


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="breakout-ppo")
def cli():
    """PPO on batched MinAtar Breakout, with instruments that show what the agent is thinking."""


@cli.command()
@click.option("--preset", "preset_name", type=click.Choice(list(PRESETS)), default=None,
              help="Starting point for the config; flags below override it.  [default: default; gpu for a new "
                   "run on CUDA; with --resume, the checkpoint's own config]")
@click.option("--run-name", default=None,
              help="Directory name under --logdir, new or empty (default: time-stamped; with --resume: the "
                   "checkpoint's own folder).")
@click.option("--logdir", type=click.Path(file_okay=False, path_type=Path), default=DEFAULT_LOGDIR,
              show_default=True, help="Parent directory of runs (TensorBoard's --logdir).")
@click.option("--resume", type=click.Path(path_type=Path), default=None,
              help="Continue the run this checkpoint belongs to, in its folder, with its config (flags given must "
                   "match it; --total-steps may grow). With --run-name, continue it as a new run there instead.")
@click.option("--instrument-every", type=click.IntRange(min=1), default=None, metavar="K",
              help="Every K updates, log the instrument panel (video, saliency, heatmap, histograms).")
@click.option("--snapshot-at", default="", metavar="SECONDS,...",
              help="Benchmarks: also save snapshot-<t>s.pt, the last model before t seconds after start-up.")
@click.option("--stop-at-step", type=click.IntRange(min=1), default=None, metavar="STEPS",
              help="Studies at equal steps: stop with a checkpoint once this many steps are done; the "
                   "learning-rate schedule still runs over --total-steps.")
@click.option("--cuda-graphs/--no-cuda-graphs", default=True, show_default=True,
              help="On one CUDA device, replay each rollout and update as a captured CUDA graph (no effect on the "
                   "CPU or under torchrun); off: the eager reference.")
@device_option
@config_options
def train(preset_name, run_name, logdir, resume, instrument_every, snapshot_at, stop_at_step, cuda_graphs, device,
          **overrides):
    """Train PPO and log to TensorBoard under runs/<run-name>/.

    Ctrl-C or SIGTERM finishes the current update, saves checkpoint.pt and exits with 130 or 143
    (128 + the signal, as if the signal had ended the process): stopped on request, resumable with
    --resume. A second signal stops at once. Exit 0 means training ran to its end (or to
    --stop-at-step), 1 an error.

    Under `torchrun --nproc_per_node=K cli.py train` the K processes train one run together (data
    parallel; num_envs and the minibatch split over them); rank 0 writes and reports.
    """
    from breakout_ppo.checkpoint import CheckpointError
    from breakout_ppo.distributed import ProcessGroupError, launched_rank
    from breakout_ppo.train import TimedSnapshots, TrainingError, train as run_training

    overrides = {k: (None if v == NO_LIMIT else v) for k, v in overrides.items() if v is not None}
    device = resolve_device(device)
    reporting = launched_rank() == 0  # under torchrun, rank 0 alone writes and reports
    config = starting_config(preset_name, resume, device, overrides, announce=reporting)
    try:
        snapshot_seconds = [float(t) for t in snapshot_at.split(",") if t.strip()]
    except ValueError:
        raise click.BadParameter(f"expected seconds separated by commas, got {snapshot_at!r}",
                                 param_hint="--snapshot-at") from None
    if run_name is not None:
        run_dir = logdir / check_run_name(run_name)
    elif resume is not None:
        run_dir = resume.parent  # the run the checkpoint belongs to, wherever it lives
    else:
        run_dir = logdir / datetime.now().strftime("%Y%m%d-%H%M%S")
    # Snapshots first: the panel takes seconds, which must not count against a snapshot's deadline.
    after_update = [TimedSnapshots(run_dir, snapshot_seconds, config)] if snapshot_seconds else []
    panel = None
    if instrument_every and reporting:
        from instruments.panel import TrainingPanel

        panel = TrainingPanel(run_dir, instrument_every, sticky_action_prob=config.sticky_action_prob, device=device)
        after_update.append(panel)
    bar = ProgressLine(config.total_steps)
    if reporting:
        click.echo(f"training on {device}: {config.total_steps:,} steps, run {run_dir}", err=True)
    try:
        result = run_training(config, run_dir, device=device, resume=resume, progress=bar.update,
                              after_update=after_update, stop_at_step=stop_at_step, cuda_graphs=cuda_graphs)
    except ProcessGroupError as error:  # this process's own loss: each survivor says it
        raise click.ClickException(str(error)) from None
    except (CheckpointError, TrainingError) as error:  # found or agreed on by every rank: rank 0 says it
        bar.finish()
        if not reporting:
            sys.exit(1)
        raise click.ClickException(str(error)) from None
    except OSError as error:  # the run directory's other files: config.json, events
        bar.finish()
        raise click.ClickException(f"cannot write {error.filename or run_dir}: {error.strerror or error}") from None
    except KeyboardInterrupt:
        bar.finish()
        click.echo("interrupted at once: the last periodic checkpoint in the run directory stands", err=True)
        sys.exit(130)
    finally:
        if panel is not None:
            panel.close()
    bar.finish()
    if result.interrupted and not reporting:
        sys.exit(128 + result.stop_signal)
    elif not reporting:
        return
    if result.interrupted:
        name = signal.Signals(result.stop_signal).name
        click.echo(f"stopped by {name} at step {result.global_step:,}: checkpoint saved to {result.last_checkpoint}; "
                   f"continue with --resume {result.last_checkpoint}", err=True)
        sys.exit(128 + result.stop_signal)
    elif stop_at_step is not None and result.global_step < config.total_steps:
        click.echo(f"stopped at {result.global_step:,} steps as asked, checkpoint {result.last_checkpoint}", err=True)
    else:
        click.echo(f"done: {result.global_step:,} steps, checkpoint {result.last_checkpoint}", err=True)


def starting_config(preset_name, resume, device, overrides: dict, announce: bool = True) -> Config:
    """The config `train` runs: the preset named, or without --preset the checkpoint's own config
    when resuming, the gpu preset for a new run on CUDA (said on stderr if `announce`), else the
    default; then the flags given."""
    from breakout_ppo.checkpoint import CheckpointError, config_from_checkpoint, load_checkpoint

    try:
        if preset_name is None and resume is not None:
            try:
                saved = config_from_checkpoint(load_checkpoint(resume), resume)
            except CheckpointError as error:
                raise click.ClickException(str(error)) from None
            return saved.replace(**overrides).validate()
        if preset_name is None:
            preset_name = "gpu" if device.type == "cuda" else "default"
            if preset_name == "gpu" and announce:
                click.echo("no --preset on a GPU: using the gpu preset (" + ", ".join(
                    f"{k.replace('_', '-')} {v:,}" for k, v in PRESETS["gpu"].items()) + "); --preset default for "
                    "the CPU's", err=True)
        return preset(preset_name, **overrides)
    except (ValueError, TypeError) as error:
        raise click.UsageError(str(error)) from None


def check_run_name(name: str) -> str:
    """A run name is one folder inside --logdir: never the logdir itself, nor a path out of it."""
    if name in ("", ".", "..") or "/" in name or "\\" in name or "\0" in name:
        raise click.BadParameter(f"{name!r} is not a folder name (one path component, no '/')",
                                 param_hint="--run-name")
    return name


class ProgressLine:
    """A one-line progress bar on stderr: steps, SPS and the recent episodic return."""

    def __init__(self, total: int):
        self.total = total
        self.tty = sys.stderr.isatty()
        self.last_print = 0.0
        self.start = time.perf_counter()

    def update(self, step: int, sps: float, recent_return: float):
        now = time.perf_counter()
        if not self.tty and now - self.last_print < 10 and step < self.total:
            return
        self.last_print = now
        frac = min(1.0, step / self.total)
        filled = int(30 * frac)
        ret = "-" if math.isnan(recent_return) else f"{recent_return:.1f}"
        line = (f"[{'#' * filled}{'.' * (30 - filled)}] {step:,}/{self.total:,} steps "
                f"{sps:,.0f} SPS return {ret} ({now - self.start:.0f}s)")
        click.echo(("\r" + line) if self.tty else line, err=True, nl=not self.tty)

    def finish(self):
        if self.tty:
            click.echo("", err=True)


@cli.command()
@click.argument("checkpoint", type=click.Path(path_type=Path))
@click.option("--episodes", type=click.IntRange(min=1), default=1024, show_default=True,
              help="Episodes, one per env slot.")
@click.option("--backend", type=click.Choice(["torch", "minatar"]), default="torch", show_default=True,
              help="Our batched env, or the original minatar package (slower) to cross-check.")
@click.option("--setting", type=click.Choice(["default", "gymnax"]), default="default", show_default=True,
              help="default: sticky actions 0.1, 10,000-step cap. gymnax: no sticky actions, 1000-step cap "
                   "(the setting of gymnax-blines' published score).")
@click.option("--seed", type=int, default=12345, show_default=True, help="Seed of the evaluation episodes.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write the figures as JSON.")
@device_option
def evaluate(checkpoint, episodes, backend, setting, seed, json_path, device):
    """Evaluate a checkpoint: sampled and greedy policy, mean with 95% CI."""
    import json

    from breakout_ppo.checkpoint import CheckpointError, load_agent
    from breakout_ppo.evaluate import SETTINGS, evaluate as run_evaluation

    device = resolve_device(device)
    try:
        model, config = load_agent(checkpoint, device=device)
    except CheckpointError as error:
        raise click.ClickException(str(error)) from None
    settings = SETTINGS[setting]
    click.echo(f"{checkpoint}: {episodes} episodes on {backend}, setting {setting} "
               f"(sticky {settings['sticky_action_prob']}, cap {settings['max_episode_steps']})")
    header = f"{'policy':8} {'mean':>8} {'std':>8} {'95% CI':>16} {'min':>6} {'max':>6} {'length':>8} {'capped':>6}"
    click.echo(header)
    results = {}
    for policy in ("sampled", "greedy"):
        result = run_evaluation(model, episodes=episodes, device=device, greedy=policy == "greedy",
                                seed=seed, backend=backend, **settings)
        s = result.summary()
        results[policy] = s
        ci = f"[{s['mean'] - s['ci95']:.1f}, {s['mean'] + s['ci95']:.1f}]"
        click.echo(f"{policy:8} {s['mean']:8.2f} {s['std']:8.2f} {ci:>16} {s['min']:6.0f} {s['max']:6.0f} "
                   f"{s['mean_length']:8.0f} {s['truncated']:6d}")
    if json_path:
        with one_line_errors():
            json_path.write_text(json.dumps({"checkpoint": str(checkpoint), "backend": backend, "setting": setting,
                                             "seed": seed, **results}, indent=2) + "\n")


@cli.command()
@click.argument("checkpoint", type=click.Path(path_type=Path), required=False)
@click.option("--example", is_flag=True,
              help="Inspect the trained agent that comes with the package (the default preset, seed 1), into "
                   f"{DEFAULT_LOGDIR}/{EXAMPLE_RUN}/: something to look at before training one.")
@click.option("--episodes", type=click.IntRange(min=1), default=1000, show_default=True,
              help="Episodes for the failure heatmap, one per env slot.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Where the files go (default: inspect/ beside checkpoint.pt, inspect-<name>/ beside any "
                   "other checkpoint file, so that each has its own).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the replayed episodes.")
@click.option("--max-video-steps", type=click.IntRange(min=1), default=2000, show_default=True,
              help="Longest episode prefix put in the video.")
@click.option("--tensorboard/--no-tensorboard", default=True, show_default=True,
              help="Also log everything under inspect/ in the checkpoint's run directory.")
@device_option
def inspect(checkpoint, example, episodes, out_dir, seed, max_video_steps, tensorboard, device):
    """Replay an agent: video, saliency, traces, failure heatmap, diagnosis, into files, TensorBoard
    and one HTML page. CHECKPOINT is a checkpoint file or a run directory (its checkpoint.pt)."""
    device = resolve_device(device)
    if (checkpoint is None) == (not example):
        raise click.UsageError("give a CHECKPOINT (a file or a run directory) or --example, one of the two")
    if example:
        # The packaged file is read where it lies; everything written goes under runs/, never into
        # the package (which may be read-only, or a clone's working tree).
        checkpoint, run_dir = example_agent_path(), DEFAULT_LOGDIR / EXAMPLE_RUN
        out_dir = out_dir or run_dir / "inspect"
        tensorboard_dir = run_dir
    else:
        if checkpoint.is_dir():
            checkpoint = checkpoint / "checkpoint.pt"
        out_dir = out_dir or default_inspection_dir(checkpoint)
        tensorboard_dir = checkpoint.parent
    require_checkpoint(checkpoint)
    from instruments.inspection import inspect_agent

    with one_line_errors(), removed_on_failure(out_dir):
        result = inspect_agent(checkpoint, out_dir, episodes=episodes, device=device, seed=seed,
                               max_video_steps=max_video_steps,
                               tensorboard_dir=tensorboard_dir if tensorboard else None)
    h = result.heatmap_summary
    click.echo(f"replayed episode: return {result.episode_return:g} in {result.episode_length} steps")
    click.echo(f"failure heatmap: {h['episodes']} episodes, mean return {h['mean_return']:.2f}, "
               f"{h['losses']} lost the ball, {h['truncated']} reached the step cap")
    click.echo(f"update code: {result.entropy_check}")
    fired = len(result.diagnosis.fired)
    click.echo(f"diagnosis: {fired} of {len(result.diagnosis.findings)} findings fired (!! marks them)")
    from instruments.judge.diagnose import evidence

    for finding, line in zip(result.diagnosis.findings, result.diagnosis.to_lines()):
        click.echo(f"  {line}")
        if finding.fired:  # what made it fire: the cells, counts or figures behind the value
            click.echo(f"       evidence: {evidence(finding)}")
        elif finding.verdict == "not judged":  # why it has no value ("not judged: ...")
            click.echo(f"       {evidence(finding)}")
    click.echo(f"files in {result.out_dir}:")
    for name, path in result.files.items():
        click.echo(f"  {name:14} {Path(path).name}")
    if result.tensorboard_dir:
        click.echo(f"TensorBoard: tensorboard --logdir {result.tensorboard_dir} (tags inspect/...)")


@cli.command()
@click.option("--name", default=None,
              help="The study's name and its directory under --logdir (default: sweep-<swept fields>, so the "
                   "same command continues it).")
@click.option("--preset", "preset_name", type=click.Choice(list(PRESETS)), default="default", show_default=True,
              help="Starting point of every run's config; the flags below override it.")
@click.option("--logdir", type=click.Path(file_okay=False, path_type=Path), default=DEFAULT_LOGDIR,
              show_default=True, help="Parent directory of the sweep (share it, e.g. over NFS, across machines "
                                      "so a trial taken over resumes from its checkpoint).")
@click.option("--storage", envvar="BREAKOUT_PPO_STORAGE", default=None, metavar="URL",
              help="Optuna storage of the study [default: sqlite:///<logdir>/<name>/study.db; env "
                   "BREAKOUT_PPO_STORAGE]. postgresql+psycopg://user:password@host/db lets workers on other "
                   "machines join (pip install -e '.[postgres]').")
@click.option("--seeds", "seed_count", type=click.IntRange(min=1), default=None,
              help="Seeds 1..N per grid point [default: 3]; or pick them with --seed A,B,...")
@click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True,
              help="Workers on this machine, each a process with (cores // workers) threads training one trial "
                   "at a time.")
@click.option("--eval-episodes", type=click.IntRange(min=1), default=1024, show_default=True,
              help="Episodes of each run's final evaluation (sampled policy, sticky 0.1, 10,000-step cap).")
@click.option("--heartbeat", type=click.IntRange(min=1), default=60, show_default=True, metavar="SECONDS",
              help="A running trial's heartbeat interval; after three missed its worker counts as dead and "
                   "another takes the trial over.")
@click.option("--max-retries", type=click.IntRange(min=0), default=2, show_default=True,
              help="Times a trial that failed (an error, NaN, a dead worker) is queued again; Ctrl-C is not counted.")
@click.option("--search", "searches", multiple=True, metavar="FIELD=DIST:LOW:HIGH",
              help="Search FIELD with TPE instead of a grid, DIST one of uniform, log, int, logint (e.g. "
                   "ent_coef=log:1e-4:0.3); repeat for several fields.")
@click.option("--trials", type=click.IntRange(min=1), default=None,
              help="Search trials TPE proposes, each trained on the first seed [default: 20].")
@click.option("--confirm", type=click.IntRange(min=0), default=None,
              help="Best search points trained again on the other seeds, fresh ones, for the report's "
                   "intervals [default: 3; seeds default to 4: one for the search, three fresh].")
@click.option("--prune", is_flag=True,
              help="Stop search trials whose evaluation at 1/4, 1/2 or 3/4 of their steps is below the median of "
                   "earlier trials' (Optuna's MedianPruner, after 4 trials).")
@click.option("--sampler-seed", type=int, default=None,
              help="Seed of TPE's proposals: one worker with the same seed proposes the same trials; local "
                   "worker i gets seed + i. [default: random]")
@click.option("--dry-run", is_flag=True, help="List the runs and the state of each in the study: complete, "
                                              "running, waiting, failed or new.")
@device_option
@config_value_list_options
def sweep(name, preset_name, logdir, storage, seed_count, workers, eval_episodes, heartbeat, max_retries, searches,
          trials, confirm, prune, sampler_seed, dry_run, device, **values):
    """Train a grid of configs x seeds as an Optuna study, evaluate each run, and write a report.

    Every config flag takes a comma list; several lists sweep their product
    (`--ent-coef 0,0.01 --learning-rate 5e-3,2.5e-3` is 4 points), one value fixes the field. Each
    point x seed is one trial, trained once: runs go to <logdir>/<name>/<field=value,...,seed=S>/,
    the report (Markdown and PNGs, from the storage alone) to <logdir>/<name>/report/. The same
    command, here or on another machine with the same --storage, joins the study; run it again
    after a Ctrl-C or a crash to resume.
    """
    from breakout_ppo.sweep import (OLD_PLAN_FILE, SweepError, SweepInterrupted, SweepPlan, default_storage,
                                    describe_storage_state, open_storage, open_study, parse_search,
                                    requeue_lost_trials, run_states, safe_url, sigterm_stops, start_workers,
                                    storage_error, wait_for_workers, work)
    from breakout_ppo.sweep_report import write_report
    from sqlalchemy.exc import SQLAlchemyError

    values = {k: tuple(None if x == NO_LIMIT else x for x in v) for k, v in values.items() if v is not None}
    seeds = values.pop("seed", None)
    if seeds and seed_count:
        raise click.UsageError("give --seeds N or --seed A,B,..., not both")
    try:
        search = tuple(parse_search(text) for text in searches)
        default_seeds = 4 if search else 3
        if search:
            trials = trials or 20
            confirm = min(3, trials) if confirm is None else confirm
        plan = SweepPlan(preset_name, values, seeds or tuple(range(1, (seed_count or default_seeds) + 1)),
                         eval_episodes, search, trials or 0, confirm or 0, prune)
        plan.check()
    except (ValueError, TypeError) as error:
        raise click.UsageError(str(error)) from None
    swept = plan.swept or [field for field, *_ in search]
    name = name or ("search-" if search else "sweep-") + "-".join(swept or ["seeds"])
    sweep_dir = logdir / name
    storage_url = storage or default_storage(sweep_dir)
    device = str(resolve_device(device))
    try:
        with sigterm_stops():
            if (sweep_dir / OLD_PLAN_FILE).exists():
                raise SweepError(f"{sweep_dir} holds a sweep of the old process pool ({OLD_PLAN_FILE}); move it away "
                                 "or choose another --name")
            if dry_run:
                states = describe_storage_state(storage_url, name, plan)
                for run_name, state in states.items():
                    click.echo(f"{state:9} {sweep_dir / run_name}")
                if not states:
                    click.echo(f"no trial yet: a search proposes its {plan.trials} trials as it runs")
                return
            study_storage = open_storage(storage_url, heartbeat, max_retries)
            study = open_study(study_storage, name, plan, sampler_seed)
            requeue_lost_trials(study, plan, max_retries)
            steps = plan.config_for({}, plan.seeds[0]).total_steps
            if search:
                what = (f"search of {plan.trials} trials of {steps:,} steps on seed {plan.seeds[0]}, the best "
                        f"{plan.confirm} again on seeds {', '.join(map(str, plan.seeds[1:]))}")
            else:
                what = f"{len(plan.runs())} runs of {steps:,} steps"
            click.echo(f"sweep {name} on {safe_url(storage_url)}: {what}, {workers} worker(s) here on {device}")
            if workers == 1:
                work(study, study_storage, plan, sweep_dir, device, max_retries, echo=click.echo)
            elif search or any(state in ("waiting", "running") for state in run_states(study, plan).values()):
                codes = wait_for_workers(start_workers(workers, storage_url, name, sweep_dir, device, heartbeat,
                                                       max_retries, sampler_seed))
                if any(codes):
                    click.echo(f"{sum(map(bool, codes))} of {workers} workers stopped with an error (their last line "
                               "above says why)", err=True)
    except SweepError as error:
        raise click.ClickException(str(error)) from None
    except SQLAlchemyError as error:  # the database went away mid-sweep: trials running here go stale
        raise click.ClickException(f"lost the storage {safe_url(storage_url)}: {storage_error(error, storage_url)}; "
                                   "run the same command again once it is back") from None
    except (SweepInterrupted, KeyboardInterrupt) as stopped:
        click.echo(f"interrupted: {stopped or 'stopped'}; run the same command again to resume", err=True)
        sys.exit(128 + getattr(stopped, "signum", signal.SIGINT))
    report = write_report(study, sweep_dir / "report")
    click.echo(f"{report.headline}\nreport: {report.markdown}")
    if report.failed:
        raise click.ClickException(f"{len(report.failed)} of {report.runs} runs failed, e.g. {report.failed[0]} "
                                   f"(the trials' user attribute `stopped` says why)")
    if report.missing:
        raise click.ClickException(f"{len(report.missing)} of {report.runs} runs are not complete, e.g. "
                                   f"{report.missing[0]}; run the same command again")


def example_agent_path() -> Path:
    """The model-only file of the agent shipped as package data (breakout_ppo/data/README.md)."""
    from importlib.resources import files

    return Path(str(files("breakout_ppo") / "data" / "example_agent.pt"))


def default_inspection_dir(checkpoint: Path) -> Path:
    """runs/<run>/inspect for the run's checkpoint.pt (where the run's page looks), and
    inspect-<name> for any other file beside it (a snapshot), so no inspection replaces another's."""
    from instruments.inspection_dir import INSPECT_DIR_NAME

    if checkpoint.name == "checkpoint.pt":
        return checkpoint.parent / INSPECT_DIR_NAME
    return checkpoint.parent / f"{INSPECT_DIR_NAME}-{checkpoint.stem}"


def require_checkpoint(path: Path) -> None:
    """A checkpoint that cannot be loaded (file, config or weights) is a one-line error, before any
    work starts."""
    from breakout_ppo.checkpoint import CheckpointError, load_agent

    try:
        load_agent(path)
    except CheckpointError as error:
        raise click.ClickException(str(error)) from None


@contextlib.contextmanager
def one_line_errors():
    """What the instruments raise for reasons the user can fix, as one line and exit 1."""
    from breakout_ppo.checkpoint import CheckpointError

    try:
        yield
    except CheckpointError as error:
        raise click.ClickException(str(error)) from None
    except OSError as error:
        raise click.ClickException(f"cannot write {error.filename or 'the output'}: {error.strerror or error}") from None


@contextlib.contextmanager
def removed_on_failure(out_dir: Path):
    """A folder the command creates goes again if the command fails: no half-made output is left."""
    existed = out_dir.exists()
    try:
        yield
    except BaseException:
        if not existed and out_dir.is_dir():
            shutil.rmtree(out_dir, ignore_errors=True)
        raise


@cli.command()
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--inspect", "inspect_first", is_flag=True,
              help="First inspect the run's checkpoint.pt into <run>/inspect/, so the page shows the agent as it is.")
@click.option("--episodes", type=click.IntRange(min=1), default=1000, show_default=True,
              help="With --inspect: episodes for the failure heatmap.")
@device_option
def report(path, inspect_first, episodes, device):
    """One self-contained HTML page to share: of a run (runs/<run>: learning curves and its latest
    inspection), or of an inspection directory (rebuilt from its files)."""
    from breakout_ppo.events import damaged_event_files
    from instruments.inspection_dir import INSPECT_DIR_NAME, SUMMARY_JSON
    from instruments.show.pages import ReportError, check_run_dir, write_inspection_report, write_run_report

    try:
        with one_line_errors():
            if (path / SUMMARY_JSON).is_file() and not inspect_first:
                page = write_inspection_report(path)
            else:
                check_run_dir(path)
                if inspect_first:
                    from instruments.inspection import inspect_agent

                    checkpoint = path / "checkpoint.pt"
                    require_checkpoint(checkpoint)
                    click.echo(f"inspecting {checkpoint}: {episodes} episodes", err=True)
                    with removed_on_failure(path / INSPECT_DIR_NAME):
                        inspect_agent(checkpoint, path / INSPECT_DIR_NAME, episodes=episodes,
                                      device=resolve_device(device), tensorboard_dir=path)
                page = write_run_report(path)
                for problem in damaged_event_files(path):
                    click.echo(f"warning: damaged event file {problem}: the page may miss what was logged after it",
                               err=True)
    except ReportError as error:
        raise click.ClickException(str(error)) from None
    click.echo(f"report: {page} ({page.stat().st_size / 1e6:.1f} MB, self-contained: open it in a browser)")


@cli.command()
@click.argument("checkpoint_a", type=click.Path(path_type=Path))
@click.argument("checkpoint_b", type=click.Path(path_type=Path))
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Where everything goes (default: runs/compare-<A>-vs-<B>).")
@click.option("--episodes", type=click.IntRange(min=2), default=1000, show_default=True,
              help="Episodes per agent, for its evaluation and for its failure heatmap.")
@click.option("--seed", type=int, default=12345, show_default=True,
              help="Seed of the evaluation episodes, the same for both agents.")
@device_option
def compare(checkpoint_a, checkpoint_b, out_dir, episodes, seed, device):
    """Before and after: two agents side by side (returns, failures, saliency, diagnosis), in the
    terminal, TensorBoard and one HTML page, with the differences that matter called out."""
    for checkpoint in (checkpoint_a, checkpoint_b):
        require_checkpoint(checkpoint)
    from instruments.comparison import compare_agents, summary_lines
    from instruments.show.pages import checkpoint_label

    device = resolve_device(device)
    if out_dir is None:
        out_dir = DEFAULT_LOGDIR / f"compare-{checkpoint_label(checkpoint_a)}-vs-{checkpoint_label(checkpoint_b)}"
    click.echo(f"comparing on {device}: {episodes} episodes per agent, into {out_dir}", err=True)
    with one_line_errors(), removed_on_failure(out_dir):
        comparison = compare_agents(checkpoint_a, checkpoint_b, out_dir, episodes=episodes, device=device, seed=seed)
    for line in summary_lines(comparison):
        click.echo(line)
    click.echo(f"page: {comparison.files['report']}")
    click.echo(f"TensorBoard: tensorboard --logdir {out_dir} (tags compare/...)")


if __name__ == "__main__":
    cli()
