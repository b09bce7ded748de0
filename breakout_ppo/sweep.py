"""Hyperparameter sweeps on Optuna: a grid of configs times seeds, each a trial of one study.

A study lives in a database (Optuna's storage): SQLite in `runs/<sweep>/study.db` by default, or
any URL such as `postgresql+psycopg://user@host/db`, so that workers on other machines join it by
running the same command. `SweepPlan` is the grid as the user gave it; the command that creates
the study enqueues one trial per grid point and seed (every point on the first seed first), and
every worker takes only waiting trials, so each is trained exactly once. A trial trains a run
under `runs/<sweep>/<field=value,...,seed=S>/`, evaluates it and stores the result in the trial
(the evaluation, the learning and entropy curves), so the report needs the storage alone.

A search (`SweepPlan.search`) enqueues its `trials` trials up front too, on the first seed (run
`trial=N,seed=S`, N also the trial's number), but without parameters: TPE proposes them when a
worker takes the trial, so it learns from every result so far, and the queue, not a count that
workers racing each other could both pass, bounds the search at exactly `trials`. Once every
search trial is finished the best `confirm` points are enqueued on the other seeds, fresh ones for
the report.

Nothing is lost when a worker stops:
- Ctrl-C or SIGTERM: training saves its checkpoint, the trial is marked failed (what Optuna does
  to an interrupted trial) and a copy is put back in the queue; the next run of the command
  resumes it.
- SIGKILL, a crash, a machine gone: the trial's heartbeat stops, any live worker (or a rerun)
  fails it as stale and puts a copy back, and whoever takes the copy resumes from the run's
  `checkpoint.pt` if the run directory is reachable (a shared `--logdir`), else starts afresh.
  A worker records a trial's heartbeat before it takes the trial, so one killed the moment it took
  it leaves a trial that goes stale too (Optuna never counts a trial without a heartbeat stale).
- A trial that fails by itself (NaN, an error) is put back at most `max_retries` times.

SQLite is made safe for several processes by starting every transaction with BEGIN IMMEDIATE:
Optuna takes a waiting trial by reading its state and then writing RUNNING, which two processes
could otherwise both do. PostgreSQL locks the row (SELECT ... FOR UPDATE).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import itertools
import json
import math
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

from breakout_ppo.config import Config, preset
from breakout_ppo.events import ENTROPY, EPISODIC_RETURN, EVAL_MEAN_RETURN, read_scalars

STORAGE_ENV = "BREAKOUT_PPO_STORAGE"
"""Environment variable holding the storage URL: how workers get it without a password in argv."""
DB_FILE = "study.db"
OLD_PLAN_FILE = "sweep.json"
"""Written by the process pool that sweeps ran on before Optuna: such folders are refused."""
EVAL_SEED = 12345
"""Every run is evaluated on the same episode seeds, so the grid points meet the same games."""
CURVE_TAGS = (EPISODIC_RETURN, ENTROPY)
"""Curves each trial stores for the report, at most `CURVE_POINTS` points each."""
CURVE_POINTS = 200


class SweepError(Exception):
    """The sweep cannot go on; the message is one line meant for the user."""


class SweepInterrupted(Exception):
    """Ctrl-C or SIGTERM: the workers were stopped, their checkpoints stand and their trials are
    queued again. `signum`: which of the two (the command exits with 128 + it, as training does)."""

    def __init__(self, message: str, signum: int = signal.SIGINT):
        super().__init__(message)
        self.signum = signum


class Stopped(KeyboardInterrupt):
    """Ctrl-C or SIGTERM, raised where the sweep itself must stop (training handles both itself,
    finishing its update and saving)."""

    def __init__(self, signum: int = signal.SIGINT):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@contextlib.contextmanager
def sigterm_stops():
    """SIGTERM, what schedulers and containers send, stops the sweep as Ctrl-C does."""

    def stop(signum, frame):
        raise Stopped(signum)

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


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

    @property
    def params(self) -> dict:
        """The trial's Optuna parameters: the swept values and the seed."""
        return {**dict(self.point), "seed": self.config.seed}


def point_label(point: tuple) -> str:
    return ",".join(f"{name}={value}" for name, value in point) or "all runs"


SEARCH_DISTRIBUTIONS = {"uniform": (float, False), "log": (float, True), "int": (int, False), "logint": (int, True)}
"""`--search FIELD=DIST:LOW:HIGH`: DIST -> (type of the field, sampled on a log scale)."""


def parse_search(text: str) -> tuple:
    """`ent_coef=log:1e-4:0.3` -> ("ent_coef", "log", 1e-4, 0.3); ValueError (one line) otherwise."""
    field, _, spec = text.partition("=")
    parts = spec.split(":")
    if not field or len(parts) != 3:
        raise ValueError(f"--search {text!r}: expected FIELD=DIST:LOW:HIGH, e.g. ent_coef=log:1e-4:0.3")
    dist, low, high = parts
    types = {f.name: f.type for f in dataclasses.fields(Config)}
    if field not in types or field == "seed":
        raise ValueError(f"--search {text!r}: {field!r} is not a config field one can search")
    if dist not in SEARCH_DISTRIBUTIONS:
        raise ValueError(f"--search {text!r}: unknown distribution {dist!r}; choose {', '.join(SEARCH_DISTRIBUTIONS)}")
    kind, log = SEARCH_DISTRIBUTIONS[dist]
    if types[field] != kind.__name__:
        raise ValueError(f"--search {text!r}: {field} is a {types[field]} field; "
                         f"use {'uniform or log' if types[field] == 'float' else 'int or logint'}")
    try:
        low, high = kind(low), kind(high)
    except ValueError:
        raise ValueError(f"--search {text!r}: LOW and HIGH must be {types[field]} numbers") from None
    if not low < high or (log and low <= 0):
        raise ValueError(f"--search {text!r}: needs LOW < HIGH{' and LOW > 0 on a log scale' if log else ''}")
    return field, dist, low, high


@dataclass(frozen=True)
class SweepPlan:
    preset: str
    values: dict
    """Config field -> the values given for it; a field with one value is fixed, not swept."""
    seeds: tuple
    """A grid trains every point on each. A search trains its trials on the first and the best
    `confirm` points again on the others (fresh seeds, so their interval is not flattered by the
    selection)."""
    eval_episodes: int = 1024
    search: tuple = ()
    """Searched fields, `((field, distribution, low, high), ...)` (see `parse_search`); empty: a grid."""
    trials: int = 0
    """Search trials that TPE proposes."""
    confirm: int = 0
    """Best search points trained again on the fresh seeds."""
    prune: bool = False
    """Stop search trials whose intermediate evaluation falls below the median of earlier trials'."""

    @property
    def kind(self) -> str:
        return "search" if self.search else "grid"

    @property
    def fixed(self) -> dict:
        return {name: values[0] for name, values in self.values.items() if len(values) == 1}

    def config_for(self, params: dict, seed: int) -> Config:
        """The config of a trial with these swept or searched values."""
        return preset(self.preset, **self.fixed, **params, seed=seed)

    def check(self) -> None:
        """ValueError (one line) for a plan that makes no sense, before anything runs."""
        if not self.search:
            if self.trials or self.confirm or self.prune:
                raise ValueError("--trials, --confirm and --prune are for searches (--search FIELD=DIST:LOW:HIGH)")
            self.runs()
            return
        if self.swept:
            raise ValueError(f"a search takes one value per other flag; {', '.join(self.swept)} lists several")
        searched = [field for field, *_ in self.search]
        for field in searched:
            if searched.count(field) > 1 or field in self.values:
                raise ValueError(f"{field} is searched twice, or both searched and given")
        if self.trials < 1 or not 0 <= self.confirm <= self.trials:
            raise ValueError("a search needs --trials >= 1 and --confirm between 0 and --trials")
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seed lists a value twice: {', '.join(map(str, self.seeds))}")
        if self.confirm and len(self.seeds) < 3:
            raise ValueError("confirming the best points needs at least 2 fresh seeds: --seeds 3 or more "
                             "(the first trains the search, the others the confirmation)")
        for corner in (0, 1):  # the bounds of every range make a valid config
            self.config_for({field: bounds[corner] for field, _, *bounds in self.search}, self.seeds[0])

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

    def base_config(self) -> dict:
        """The config every run shares: all fields but the swept or searched ones and the seed."""
        config = preset(self.preset, **self.fixed).to_dict()
        return {k: v for k, v in config.items() if k not in {*self.swept, *(f for f, *_ in self.search), "seed"}}

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
        words += [f"--search {field}={dist}:{low}:{high}" for field, dist, low, high in self.search]
        if self.search:
            words += [f"--trials {self.trials}", f"--confirm {self.confirm}", *(["--prune"] if self.prune else [])]
        return " ".join(words)

    def to_dict(self) -> dict:
        return {"preset": self.preset, "values": {k: list(v) for k, v in self.values.items()},
                "seeds": list(self.seeds), "eval_episodes": self.eval_episodes,
                "search": [list(s) for s in self.search], "trials": self.trials, "confirm": self.confirm,
                "prune": self.prune}

    @classmethod
    def from_dict(cls, data: dict) -> "SweepPlan":
        return cls(data["preset"], {k: tuple(v) for k, v in data["values"].items()}, tuple(data["seeds"]),
                   data["eval_episodes"], tuple(tuple(s) for s in data.get("search", ())), data.get("trials", 0),
                   data.get("confirm", 0), data.get("prune", False))


# --- the storage -------------------------------------------------------------------------------

def default_storage(sweep_dir) -> str:
    return f"sqlite:///{Path(sweep_dir).resolve() / DB_FILE}"


def safe_url(url: str) -> str:
    """The URL as it may be printed: any password replaced by ***."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # malformed: show only the scheme
        return url.split("://", 1)[0] + "://..."


def storage_error(error: Exception, url: str) -> str:
    """The first line of a database error, from the driver's own message, with no password in it."""
    from sqlalchemy.engine import make_url

    lines = str(getattr(error, "orig", None) or error).strip().splitlines()
    message = lines[0] if lines else type(error).__name__
    try:
        password = make_url(url).password
    except Exception:
        return message
    return message.replace(str(password), "***") if password else message


def parse_url(url: str):
    from sqlalchemy.engine import make_url

    try:
        return make_url(url)
    except Exception:
        raise SweepError(f"malformed storage URL {safe_url(url)!r}: expected e.g. sqlite:///path/study.db "
                         "or postgresql+psycopg://user:password@host/database") from None


def open_storage(url: str, heartbeat: int = 60, max_retries: int = 2):
    """Optuna's RDBStorage on `url`, with heartbeats every `heartbeat` s (a trial is stale after
    three missed) and stale trials put back in the queue. SweepError (one line) for a malformed or
    unreachable URL, or a PostgreSQL URL without its driver."""
    import optuna
    from sqlalchemy import event

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    parsed = parse_url(url)
    sqlite = parsed.get_backend_name() == "sqlite"
    if sqlite and parsed.database:
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
    if sqlite:
        # pysqlite left to itself opens a transaction before the first write, and a reader that then
        # writes can deadlock with another process ("database is locked" at once, no waiting). So
        # the driver never begins one (isolation_level None) and waits up to a minute for a lock;
        # `_serialise_sqlite` then makes SQLAlchemy's transactions BEGIN IMMEDIATE.
        engine_kwargs = {"creator": functools.partial(sqlite3.connect, parsed.database, timeout=60,
                                                      isolation_level=None, check_same_thread=False)}
    else:
        engine_kwargs = {"pool_pre_ping": True}

    def connect():
        return optuna.storages.RDBStorage(
            url, engine_kwargs=engine_kwargs, heartbeat_interval=heartbeat, grace_period=3 * heartbeat,
            heartbeat_stale_trial_callback=lambda study, trial: put_back(
                study, trial, "its worker stopped sending heartbeats", max_retries, counts=True))

    try:
        try:
            storage = connect()
        except Exception as error:
            if "already exists" not in str(error):
                raise
            storage = connect()  # another process created the tables at the same moment: they are there now
    except ImportError as error:
        if parsed.get_backend_name() == "postgresql":
            raise SweepError("PostgreSQL storage needs its driver: pip install -e '.[postgres]' (psycopg 3) and "
                             "a postgresql+psycopg:// URL") from None
        raise SweepError(f"storage {safe_url(url)}: {error}") from None
    except Exception as error:
        raise SweepError(f"cannot open storage {safe_url(url)}: {storage_error(error, url)}") from None
    if sqlite:
        _serialise_sqlite(storage.engine, event)
    return storage


def _serialise_sqlite(engine, event) -> None:
    """Every transaction takes SQLite's write lock at its start (SQLAlchemy's documented recipe for
    pysqlite), so Optuna's read-then-write of a trial's state is atomic across processes. (Until
    now, while Optuna created its tables, each statement was a transaction of its own.)"""

    @event.listens_for(engine, "begin")
    def _begin_immediate(connection):
        connection.exec_driver_sql("BEGIN IMMEDIATE")


def study_definition(plan: SweepPlan) -> dict:
    return {"kind": plan.kind, **plan.to_dict(), "base_config": plan.base_config()}


def describe_difference(stored: dict, wanted: dict) -> str:
    """What differs between two study definitions, in words: `ent_coef: [0.0, 0.1] in the study, [0.0, 0.2] here`."""
    parts = []
    for key in sorted({*stored, *wanted} - {"base_config", "values"}):
        if stored.get(key) != wanted.get(key):
            parts.append(f"{key}: {stored.get(key)} in the study, {wanted.get(key)} here")
    for group in ("values", "base_config"):
        a, b = stored.get(group, {}), wanted.get(group, {})
        for key in sorted({*a, *b}):
            if a.get(key) != b.get(key):
                parts.append(f"{key}: {a.get(key, 'not given')} in the study, {b.get(key, 'not given')} here")
    return "; ".join(parts[:4]) + ("; ..." if len(parts) > 4 else "")


def make_sampler(plan: SweepPlan, seed: int | None):
    """TPE with a constant liar (running trials count as bad, so parallel workers spread out);
    proposals repeat for one worker with a fixed `seed` only."""
    import optuna

    return optuna.samplers.TPESampler(seed=seed, constant_liar=True)


def make_pruner(plan: SweepPlan):
    """Median rule: a trial whose evaluation at a quarter, half or three quarters of its steps is
    below the median of earlier trials' at that step stops (after 4 trials have set the median)."""
    import optuna

    return optuna.pruners.MedianPruner(n_startup_trials=4) if plan.prune else optuna.pruners.NopPruner()


def enqueue_trials(study, plan: SweepPlan) -> None:
    """One waiting trial per grid point x seed, in grid order; for a search, one per search trial,
    on the first seed and without parameters (TPE proposes them when a worker takes the trial).
    The queue thus holds every trial of the sweep from the start, and workers only take from it."""
    if plan.kind == "grid":
        for order, run in enumerate(plan.runs()):
            study.enqueue_trial(run.params, user_attrs={"run": run.name, "order": order, "attempt": 1},
                                skip_if_exists=True)
    else:
        # Counted by run, as skip_if_exists cannot (these have no parameters yet), so that queueing
        # again adds only what is missing. In a new study they are its first trials: trial=N is trial N.
        runs = {t.user_attrs["run"] for t in study.get_trials(deepcopy=False) if t.user_attrs.get("phase") == "search"}
        seed = plan.seeds[0]
        free = (n for n in itertools.count() if f"trial={n},seed={seed}" not in runs)
        for number in itertools.islice(free, max(0, plan.trials - len(runs))):
            study.enqueue_trial({}, user_attrs={"run": f"trial={number},seed={seed}", "order": number, "attempt": 1,
                                                "phase": "search", "seed": seed})
    study.set_user_attr("enqueued", True)


def open_study(storage, name: str, plan: SweepPlan, sampler_seed: int | None = None, wait: float = 60.0):
    """Create the study and enqueue its grid, or load it and check that it sweeps the same grid
    on the same base config. Only the process that creates the study enqueues it (others wait for
    that), so two commands started at once do not enqueue a point twice."""
    import optuna

    wanted = json.loads(json.dumps(study_definition(plan)))  # tuples -> lists, as stored
    sampler, pruner = make_sampler(plan, sampler_seed), make_pruner(plan)
    try:
        study = optuna.create_study(storage=storage, study_name=name, direction="maximize", sampler=sampler,
                                    pruner=pruner)
    except optuna.exceptions.DuplicatedStudyError:
        study = optuna.load_study(storage=storage, study_name=name, sampler=sampler, pruner=pruner)
    else:
        study.set_user_attr("sweep", wanted)
        enqueue_trials(study, plan)
        return study
    deadline = time.monotonic() + wait
    while not study.user_attrs.get("enqueued") and time.monotonic() < deadline:
        time.sleep(0.5)  # its creator is enqueueing the grid
    stored = study.user_attrs.get("sweep")
    if stored is None:
        raise SweepError(f"study {name!r} exists in the storage but is not a sweep of this program")
    if stored != wanted:
        raise SweepError(f"study {name!r} sweeps another grid or base config ({describe_difference(stored, wanted)}); "
                         "choose another --name")
    if not study.user_attrs.get("enqueued") or plan.kind == "search":
        # Its creator died half-way; or a search begun when workers proposed its trials as they went
        # (none queued up front) is left some to propose. Otherwise this adds nothing.
        enqueue_trials(study, plan)
    return study


def put_back(study, trial, why: str, max_retries: int, counts: bool) -> bool:
    """Queue a copy of a failed trial (same parameters, same run), unless it has used its retries.
    `counts`: whether this failure uses one of them (a Ctrl-C does not)."""
    attempt = trial.user_attrs.get("attempt", 1) + (1 if counts else 0)
    if attempt > 1 + max_retries:
        return False
    params = trial.system_attrs.get("fixed_params") or trial.params
    same = {key: trial.user_attrs[key] for key in ("run", "order", "phase", "seed") if key in trial.user_attrs}
    study.enqueue_trial(params, user_attrs={**same, "attempt": attempt, "previous_trial": trial.number,
                                            "previous_stop": why})
    return True


def requeue_lost_trials(study, plan: SweepPlan, max_retries: int) -> None:
    """A worker killed between failing a trial and putting it back leaves a point with neither a
    result nor a trial to run: put those back (each rerun of the command checks)."""
    from optuna.trial import TrialState

    by_run = {}
    for trial in study.get_trials(deepcopy=False):
        if "run" in trial.user_attrs:
            by_run.setdefault(trial.user_attrs["run"], []).append(trial)
    for trials in by_run.values():
        if all(t.state == TrialState.FAIL for t in trials):
            last = max(trials, key=lambda t: t.number)
            # Counted as a failure: a trial that used its last retry must not come back here.
            put_back(study, last, last.user_attrs.get("stopped", "lost"), max_retries, counts=True)


def run_states(study, plan: SweepPlan) -> dict:
    """Run name -> complete, pruned, running, waiting, failed or new (a grid's run with no trial yet)."""
    from optuna.trial import TrialState

    rank = {TrialState.COMPLETE: 5, TrialState.PRUNED: 4, TrialState.RUNNING: 3, TrialState.WAITING: 2,
            TrialState.FAIL: 1}
    states = {run.name: "new" for run in plan.runs()} if plan.kind == "grid" else {}
    best = {}
    for trial in study.get_trials(deepcopy=False) if study is not None else []:
        name = trial.user_attrs.get("run")
        if name is not None and rank.get(trial.state, 0) > best.get(name, 0):
            best[name] = rank[trial.state]
            states[name] = trial.state.name.lower().replace("fail", "failed")
    return states


def describe_storage_state(url: str, name: str, plan: SweepPlan) -> dict:
    """`run_states` of the study, creating neither a database nor a study."""
    import optuna

    parsed = parse_url(url)
    if parsed.get_backend_name() == "sqlite" and not Path(parsed.database or "").exists():
        return run_states(None, plan)
    try:
        study = optuna.load_study(storage=open_storage(url), study_name=name)
    except KeyError:  # no such study yet
        study = None
    return run_states(study, plan)


# --- one worker: take waiting trials until none is left ----------------------------------------

@dataclass
class WorkerOutcome:
    finished: list
    """Run names this worker completed."""
    failed: list
    """(run name, one line why) for trials that failed here."""


class Heartbeat:
    """Records the trial's heartbeat every `interval` s from a thread (what Optuna's own optimize
    loop does), with the training's latest step as the trial's `step` attribute."""

    def __init__(self, storage, trial, trial_id: int, interval: float):
        self.storage, self.trial, self.trial_id, self.interval = storage, trial, trial_id, interval
        self.step, self._recorded_step = 0, None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, daemon=True)

    def _beat(self):
        while True:
            try:
                self.storage.record_heartbeat(self.trial_id)
                if self.step != self._recorded_step:
                    self.trial.set_user_attr("step", self.step)
                    self._recorded_step = self.step
            except Exception:  # the storage hiccuped: the next beat tries again
                pass
            if self._stop.wait(self.interval):
                return

    def __enter__(self):
        self.storage.record_heartbeat(self.trial_id)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        return False


def take_waiting_trial(study, storage):
    """(trial, trial id) of the first waiting trial in grid order, now RUNNING, ours and with a
    heartbeat; None when none is waiting. Optuna's `ask` would take one too, but makes up a new
    trial when none is waiting."""
    import optuna
    from optuna.trial import TrialState

    study_id = storage.get_study_id_from_name(study.study_name)
    waiting = study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
    for frozen in sorted(waiting, key=lambda t: (t.user_attrs.get("order", math.inf), t.number)):
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, frozen.number)
        # The heartbeat before the claim: Optuna never finds a RUNNING trial without one stale, so a
        # worker killed between the two would leave its trial running forever. On a trial that stays
        # waiting (another worker took it first) the heartbeat is inert: only running trials go stale.
        storage.record_heartbeat(trial_id)
        try:
            if storage.set_trial_state_values(trial_id, TrialState.RUNNING):  # False: another took it
                return optuna.Trial(study, trial_id), trial_id
        except optuna.exceptions.UpdateFinishedTrialError:
            continue
    return None


def is_duplicate(study, trial) -> int | None:
    """Another trial of the same run that is complete, or running and older: two commands that
    created the queue at the same moment can enqueue a point twice; the older trial keeps it."""
    from optuna.trial import TrialState

    run = trial.user_attrs["run"]
    for other in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.RUNNING)):
        if other.user_attrs.get("run") == run and other.number != trial.number and (
                other.state == TrialState.COMPLETE or other.number < trial.number):
            return other.number
    return None


def worker_label() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def work(study, storage, plan: SweepPlan, sweep_dir, device: str = "cpu", max_retries: int = 2,
         echo=print) -> WorkerOutcome:
    """Train waiting trials (a search trial gets TPE's proposal as it is taken) until every trial
    is finished. With none to take while others run, poll: a running trial whose worker died goes
    stale and is put back, and this worker takes it over. Ctrl-C puts the trial back and raises
    SweepInterrupted."""
    import optuna
    from optuna.storages import fail_stale_trials
    from optuna.trial import TrialState

    sweep_dir = Path(sweep_dir)
    outcome = WorkerOutcome([], [])
    poll = min(storage.get_heartbeat_interval(), 1.0)  # how soon an idle worker sees the sweep end
    while True:
        fail_stale_trials(study)  # puts copies of stale trials back (open_storage's callback)
        taken = take_waiting_trial(study, storage)
        if taken is None:
            if plan.kind == "search" and enqueue_confirmation(study, plan):
                continue
            if not study.get_trials(deepcopy=False, states=(TrialState.RUNNING, TrialState.WAITING)):
                return outcome
            time.sleep(poll)
            continue
        trial, trial_id = taken
        name = trial.user_attrs["run"]
        suggest(trial, plan)
        seed = trial.params["seed"] if plan.kind == "grid" else trial.user_attrs["seed"]
        config = plan.config_for({k: v for k, v in trial.params.items() if k != "seed"}, seed)
        trial.set_user_attr("worker", worker_label())
        trial.set_user_attr("run_dir", str((sweep_dir / name).resolve()))
        duplicate = is_duplicate(study, trial)
        if duplicate is not None:
            trial.set_user_attr("stopped", f"duplicate of trial {duplicate}")
            study.tell(trial, state=TrialState.FAIL)
            continue
        prune = PruneCheck(trial, config, plan.eval_episodes) if plan.prune and \
            trial.user_attrs.get("phase") == "search" else None
        try:
            with Heartbeat(storage, trial, trial_id, storage.get_heartbeat_interval()) as heartbeat:
                summary = run_trial(trial, name, config, sweep_dir / name, plan.eval_episodes, device, heartbeat,
                                    echo, prune)
            study.tell(trial, summary["mean"])
        except KeyboardInterrupt as stop:  # the checkpoint stands; the next run of the command resumes it
            trial.set_user_attr("stopped", "interrupted")
            put_back(study, study.tell(trial, state=TrialState.FAIL), "interrupted", max_retries, counts=False)
            raise SweepInterrupted(f"trial {trial.number} ({name}) stopped with its checkpoint and queued again",
                                   getattr(stop, "signum", signal.SIGINT)) from None
        except optuna.exceptions.UpdateFinishedTrialError:
            # Our heartbeat came late (a starved machine, a storage outage) and another worker failed
            # the trial as stale: its copy is queued, and the run directory's lock keeps the two apart.
            echo(f"trial {trial.number} {name} was failed as stale while it ran here; its copy in the queue stands")
            continue
        except optuna.TrialPruned as pruned:
            study.tell(trial, state=TrialState.PRUNED)
            echo(f"pruned trial {trial.number} {name}: {pruned}; its checkpoint there stands")
            continue
        except Exception as error:  # NaN, a bad checkpoint, a full disk: this trial fails, the worker goes on
            why = (str(error).strip().splitlines() or [type(error).__name__])[0][:300]
            trial.set_user_attr("stopped", f"error: {why}")
            retried = put_back(study, study.tell(trial, state=TrialState.FAIL), f"error: {why}", max_retries,
                               counts=True)
            outcome.failed.append((name, why))
            echo(f"FAILED trial {trial.number} {name}: {why}" +
                 ("; queued again" if retried else f"; given up after {1 + max_retries} attempts"))
            continue
        outcome.finished.append(name)
        echo(f"done trial {trial.number} {name}: return {summary['mean']:.2f} ± {summary['ci95']:.2f}")


def suggest(trial, plan: SweepPlan) -> None:
    """Record the trial's parameters: a queued trial's own values (Optuna returns the enqueued
    ones), or TPE's proposal for a new search trial."""
    if plan.kind == "grid":
        for field, values in [*((f, plan.values[f]) for f in plan.swept), ("seed", plan.seeds)]:
            trial.suggest_categorical(field, list(values))
        return
    for field, dist, low, high in plan.search:
        if SEARCH_DISTRIBUTIONS[dist][0] is int:
            trial.suggest_int(field, low, high, log=SEARCH_DISTRIBUTIONS[dist][1])
        else:
            trial.suggest_float(field, low, high, log=SEARCH_DISTRIBUTIONS[dist][1])


def run_trial(trial, name: str, config: Config, run_dir: Path, eval_episodes: int, device: str, heartbeat, echo,
              prune=None) -> dict:
    """Train (or resume) the trial's run, evaluate its final model and store the results in the
    trial. Returns the evaluation summary; raises Stopped if training was. `prune` (a PruneCheck):
    training stops with a checkpoint at each of its steps and goes on from there unless the check
    raises optuna.TrialPruned, so a pruned run keeps its checkpoint at the prune step."""
    from breakout_ppo.checkpoint import load_agent, load_checkpoint
    from breakout_ppo.evaluate import SETTINGS, evaluate
    from breakout_ppo.train import train

    checkpoint = run_dir / "checkpoint.pt"
    done_step = load_checkpoint(checkpoint, resumable=True)["global_step"] if checkpoint.exists() else 0
    label = f"trial {trial.number} {name}"
    if run_dir.exists() and not checkpoint.exists():
        # A run that died before its first checkpoint: nothing to resume, and its events would mix in.
        echo(f"{label}: {run_dir} has no checkpoint; starting afresh")
        shutil.rmtree(run_dir)
    if trial.user_attrs.get("previous_trial") is not None and not done_step:
        echo(f"{label}: taking over trial {trial.user_attrs['previous_trial']} "
             f"({trial.user_attrs.get('previous_stop')}); no checkpoint reachable in {run_dir}, starting afresh")
    trial.set_user_attr("resumed_from_step", done_step)
    if done_step < config.total_steps:
        verb = f"resuming at step {done_step:,}" if done_step else "training"
        echo(f"{label}: {verb} to {config.total_steps:,} steps")

        def progress(step, sps, recent_return):
            heartbeat.step = step

        # Training stops at each prune step as it would on Ctrl-C, with its checkpoint (resuming it
        # gives the run an unbroken training would), and the check evaluates that checkpoint.
        step = done_step
        for stop_at in [*(prune.steps_from(done_step) if prune is not None else []), None]:
            if stop_at is None or stop_at > step:
                result = train(config, run_dir, device=device, resume=checkpoint if step else None,
                               progress=progress, stop_at_step=stop_at)
                step = result.global_step
                trial.set_user_attr("steps_trained", step - done_step)
                if result.interrupted:
                    echo(f"{label}: interrupted, checkpoint saved at step {step:,}")
                    raise Stopped(getattr(result, "stop_signal", None) or signal.SIGINT)
            if stop_at is not None:
                prune(checkpoint, device)
    else:
        trial.set_user_attr("steps_trained", 0)

    model, _ = load_agent(checkpoint, device=device)
    settings = SETTINGS["default"]
    evaluation = evaluate(model, episodes=eval_episodes, device=device, seed=EVAL_SEED, **settings)
    global_step = load_checkpoint(checkpoint)["global_step"]
    summary = {**evaluation.summary(), "global_step": global_step, "policy": "sampled", "seed": EVAL_SEED, **settings}
    write_eval_scalar(run_dir, summary["mean"], global_step)
    trial.set_user_attr("eval", summary)
    trial.set_user_attr("curves", read_curves(run_dir))
    return summary


# --- searches: TPE's proposals, pruning, and the best points again on fresh seeds --------------

def enqueue_confirmation(study, plan: SweepPlan) -> bool:
    """Once every search trial is finished: queue the best `plan.confirm` points on the fresh seeds
    (`plan.seeds[1:]`). True if it queued them now."""
    from optuna.trial import TrialState

    if not plan.confirm or study.user_attrs.get("confirm_enqueued"):
        return False
    search = [t for t in study.get_trials(deepcopy=False) if t.user_attrs.get("phase") == "search"]
    if not search or any(not t.state.is_finished() for t in search):  # all were queued with the study
        return False
    complete = sorted((t for t in search if t.state == TrialState.COMPLETE), key=lambda t: t.value, reverse=True)
    for rank, best in enumerate(complete[:plan.confirm]):
        point = best.user_attrs["run"].split(",")[0]  # trial=N
        for i, seed in enumerate(plan.seeds[1:]):
            study.enqueue_trial(best.params, user_attrs={
                "run": f"{point},seed={seed}", "order": 10**6 + rank * 1000 + i, "attempt": 1, "phase": "confirm",
                "seed": seed, "confirms": best.number})
    study.set_user_attr("confirm_enqueued", True)
    return True


def prune_episodes(eval_episodes: int) -> int:
    """Episodes of a pruned search's intermediate evaluations: a quarter of the final one's."""
    return max(16, eval_episodes // 4)


class PruneCheck:
    """The intermediate evaluations of a pruned search trial, at a quarter, half and three quarters
    of its updates (`steps`): training stops there with its checkpoint (see run_trial), whose model
    is evaluated on a quarter of the final evaluation's episodes and reported to the trial; when the
    pruner says stop, optuna.TrialPruned is raised and the checkpoint stays, to inspect or resume."""

    def __init__(self, trial, config: Config, eval_episodes: int):
        self.trial, self.episodes = trial, prune_episodes(eval_episodes)
        updates = config.num_updates
        self.steps = [u * config.batch_size
                      for u in sorted({max(1, round(updates * f)) for f in (0.25, 0.5, 0.75)} - {updates})]

    def steps_from(self, step: int) -> list[int]:
        """The evaluation steps still ahead of a run at `step` (one at `step` itself included: a
        trial taken over at a prune step is evaluated there before it trains on)."""
        return [s for s in self.steps if s >= step]

    def __call__(self, checkpoint: Path, device) -> None:
        import optuna

        from breakout_ppo.checkpoint import load_agent, load_checkpoint
        from breakout_ppo.evaluate import SETTINGS, evaluate

        model, _ = load_agent(checkpoint, device=device)
        step = load_checkpoint(checkpoint)["global_step"]
        mean = evaluate(model, episodes=self.episodes, device=device, seed=EVAL_SEED, **SETTINGS["default"]).mean
        self.trial.report(mean, step)
        if self.trial.should_prune():
            self.trial.set_user_attr("pruned_at_step", step)
            raise optuna.TrialPruned(f"return {mean:.2f} at step {step:,} is below the median of earlier trials")


def write_eval_scalar(run_dir: Path, mean_return: float, global_step: int) -> None:
    """The HParams metric TensorBoard's parallel-coordinates view compares runs on."""
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(run_dir))
    writer.add_scalar(EVAL_MEAN_RETURN, mean_return, global_step)
    writer.close()


def read_curves(run_dir: Path) -> dict:
    """{tag: [steps, values]} of `CURVE_TAGS` from the run's events, thinned to `CURVE_POINTS`."""
    scalars = read_scalars(run_dir)  # a resumed run's steps after its checkpoint are purged there
    curves = {}
    for tag in CURVE_TAGS:
        if tag not in scalars:
            continue
        steps, values = scalars[tag]
        keep = sorted({round(i * (len(steps) - 1) / (CURVE_POINTS - 1)) for i in range(CURVE_POINTS)}) \
            if len(steps) > CURVE_POINTS else range(len(steps))
        curves[tag] = [[int(steps[i]) for i in keep], [float(values[i]) for i in keep]]
    return curves


# --- the command: K local workers on the storage -----------------------------------------------

def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def worker_environment(workers: int, storage_url: str) -> dict:
    """Split the cores between the workers: K processes that each spin all cores' worth of
    OpenMP threads slow each other down by an order of magnitude. An explicit OMP_NUM_THREADS wins.
    The storage URL goes in the environment, so no password shows in a process list."""
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", str(max(1, available_cores() // workers)))
    env["PYTHONUNBUFFERED"] = "1"
    env[STORAGE_ENV] = storage_url
    return env


def _die_with_parent() -> None:
    """In the child, before exec: SIGKILL it when the sweep command dies, however it dies (Linux
    prctl PR_SET_PDEATHSIG), so a killed command leaves no training behind."""
    import ctypes

    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def start_workers(count: int, storage_url: str, study_name: str, sweep_dir: Path, device: str, heartbeat: int,
                  max_retries: int, sampler_seed: int | None = None) -> list:
    """Worker processes that share the command's stdout. Each gets its own session, so a Ctrl-C at
    the terminal reaches only the command, which passes on exactly one SIGINT."""
    env = worker_environment(count, storage_url)
    return [subprocess.Popen(
        [sys.executable, "-m", "breakout_ppo.sweep", "--study", study_name, "--sweep-dir", str(sweep_dir),
         "--device", device, "--heartbeat", str(heartbeat), "--max-retries", str(max_retries), "--label", f"w{i + 1}",
         *([] if sampler_seed is None else ["--sampler-seed", str(sampler_seed + i)])],
        env=env, start_new_session=True, preexec_fn=_die_with_parent) for i in range(count)]


def wait_for_workers(processes: list) -> list:
    """Exit codes of the workers. Ctrl-C or SIGTERM passes the same signal once to each (it
    finishes its update, saves, puts its trial back) and raises SweepInterrupted; a second passes
    a second, which stops them at once (the last periodic checkpoint stands)."""
    try:
        return [process.wait() for process in processes]
    except KeyboardInterrupt as stop:
        signum = getattr(stop, "signum", signal.SIGINT)
    for process in processes:
        process.send_signal(signum)
    while True:
        try:
            codes = [process.wait() for process in processes]
            break
        except KeyboardInterrupt:
            for process in processes:
                if process.poll() is None:
                    process.send_signal(signum)
    raise SweepInterrupted(f"stopped {sum(code == 128 + signum for code in codes)} worker(s); their checkpoints "
                           "stand and their trials are queued again", signum)


def main(argv=None) -> int:
    """A worker process of `cli.py sweep --workers K`; the storage URL comes from the environment.
    Exits 0 when no trial is left, 128 + the signal when stopped by Ctrl-C or SIGTERM, 1 on an error."""
    import argparse

    import optuna

    parser = argparse.ArgumentParser(description="A worker of a sweep: train waiting trials until none is left.")
    parser.add_argument("--study", required=True)
    parser.add_argument("--sweep-dir", type=Path, required=True)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--heartbeat", type=int, default=60)
    parser.add_argument("--max-retries", type=int, default=2)
    parser.add_argument("--label", default="")
    parser.add_argument("--sampler-seed", type=int, default=None)
    args = parser.parse_args(argv)

    def echo(line):
        print(f"[{args.label}] {line}" if args.label else line, flush=True)

    try:
        with sigterm_stops():
            storage = open_storage(os.environ[STORAGE_ENV], args.heartbeat, args.max_retries)
            plan = SweepPlan.from_dict(optuna.load_study(storage=storage, study_name=args.study).user_attrs["sweep"])
            study = optuna.load_study(storage=storage, study_name=args.study, pruner=make_pruner(plan),
                                      sampler=make_sampler(plan, args.sampler_seed))
            work(study, storage, plan, args.sweep_dir, args.device, args.max_retries, echo)
    except (SweepInterrupted, KeyboardInterrupt) as stopped:
        echo(f"interrupted: {stopped}")
        return 128 + getattr(stopped, "signum", signal.SIGINT)
    except (SweepError, KeyError, ValueError) as error:
        echo(f"error: {error}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
