"""Sweeps when workers die: a SIGKILLed worker's trial is taken over by a live worker and resumed
from its checkpoint on PostgreSQL (a throwaway cluster; skipped without PostgreSQL locally, failed
under CI=true), or by a rerun on SQLite, also when it was killed the moment it took the trial; a
killed command takes its worker processes with it; SIGTERM stops every worker with its checkpoint."""

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from breakout_ppo.checkpoint import load_checkpoint
from breakout_ppo.sweep import SweepPlan, default_storage, open_storage, open_study, work
from support.postgres import postgres_bindir, postgres_cluster

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
UPDATE = 8 * 32
"""Steps per update in the smoke preset (8 envs x 32 steps)."""


@pytest.fixture(scope="module")
def postgres_url():
    bindir = postgres_bindir()
    missing = None if bindir else "PostgreSQL (no initdb under `pg_config --bindir`; apt-get install postgresql)"
    try:
        import psycopg  # noqa: F401
    except ImportError:
        missing = "psycopg, the driver (pip install -e '.[postgres]')"
    if missing:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{missing} is missing; .ci/run installs it")
        pytest.skip(f"{missing} is not installed")
    with postgres_cluster(bindir) as url:
        yield url


def sweep_command(tmp_path, storage, *args):
    return [sys.executable, "cli.py", "sweep", "--preset", "smoke", "--device", "cpu", "--eval-episodes", "8",
            "--heartbeat", "1", "--logdir", str(tmp_path), "--name", f"s{os.getpid()}-{tmp_path.name}",
            "--storage", storage, *args]


def wait_for(condition, timeout=60.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = condition()
        if result:
            return result
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def running_trials(study):
    try:
        return study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    except Exception:  # the study is being created
        return []


def load_study_when_created(storage, name):
    def attempt():
        try:
            return optuna.load_study(storage=storage, study_name=name)
        except KeyError:
            return None
    return wait_for(attempt, what="the study")


def is_gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"  # a zombie nobody has reaped yet
    except FileNotFoundError:
        return True


@pytest.mark.slow
def test_a_killed_workers_trial_is_taken_over_and_resumed_from_its_checkpoint(postgres_url, tmp_path):
    """On PostgreSQL (SQLite's takeover: the rerun test below; its resume: test_sweep's partial run)."""
    storage_url = postgres_url
    total, every = 60 * UPDATE, 5
    command = sweep_command(tmp_path, storage_url, "--ent-coef", "0,0.1", "--seeds", "1", "--steps", str(total),
                            "--checkpoint-every", str(every))
    name = command[command.index("--name") + 1]
    out_a, out_b = open(tmp_path / "a.log", "w+"), open(tmp_path / "b.log", "w+")
    a = subprocess.Popen(command, cwd=ROOT, env=ENV, stdout=out_a, stderr=subprocess.STDOUT)
    b = subprocess.Popen(command, cwd=ROOT, env=ENV, stdout=out_b, stderr=subprocess.STDOUT)
    try:
        study = load_study_when_created(open_storage(storage_url), name)

        def a_has_taken_a_trial():
            for trial in running_trials(study):
                if trial.user_attrs.get("worker", "").endswith(f":{a.pid}") and "run_dir" in trial.user_attrs:
                    return trial

        killed = wait_for(a_has_taken_a_trial, what="worker A to take a trial")
        checkpoint = Path(killed.user_attrs["run_dir"]) / "checkpoint.pt"
        deadline = time.monotonic() + 60
        while not checkpoint.exists() and time.monotonic() < deadline:  # looking at the file is quick
            time.sleep(0.01)
        os.kill(a.pid, signal.SIGKILL)
        a.wait()
        checkpoint_step = load_checkpoint(checkpoint)["global_step"]
        assert b.wait(timeout=120) == 0
    finally:
        for process in (a, b):
            process.kill()
    out_b.seek(0)
    output = out_b.read()
    assert "s3cret" not in output
    assert output.startswith("sweep ") and "sweeper:***@127.0.0.1" in output.splitlines()[0]

    trials = study.get_trials()
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert sorted(t.user_attrs["run"] for t in complete) == ["ent_coef=0.0,seed=1", "ent_coef=0.1,seed=1"]
    killed = study.trials[killed.number]
    assert [t.number for t in trials if t.state != TrialState.COMPLETE] == [killed.number]
    assert killed.state == TrialState.FAIL
    taken, = [t for t in complete if t.user_attrs["run"] == killed.user_attrs["run"]]
    assert taken.user_attrs["previous_trial"] == killed.number
    assert taken.user_attrs["previous_stop"] == "its worker stopped sending heartbeats"
    assert taken.user_attrs["attempt"] == 2 and taken.user_attrs["worker"].endswith(f":{b.pid}")
    # The takeover resumed at the checkpoint, not at 0, and trained only the rest ...
    assert 0 < checkpoint_step == taken.user_attrs["resumed_from_step"] < total
    assert taken.user_attrs["steps_trained"] == total - checkpoint_step
    assert f"resuming at step {checkpoint_step:,}" in output
    # ... and A had trained at most one checkpoint interval past that checkpoint (its last heartbeat
    # recorded how far): the run cost at most total_steps + one interval.
    assert killed.user_attrs.get("step", 0) <= checkpoint_step + every * UPDATE
    assert taken.user_attrs["eval"]["global_step"] == total


@pytest.mark.slow
def test_a_killed_command_takes_its_worker_processes_with_it(tmp_path):
    storage = default_storage(tmp_path / "s")
    command = sweep_command(tmp_path, storage, "--ent-coef", "0,0.1", "--seeds", "1", "--steps", "100000000",
                            "--workers", "2")
    sweep = subprocess.Popen(command, cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        study = load_study_when_created(open_storage(storage), command[command.index("--name") + 1])

        def both_training():
            trials = [t for t in running_trials(study) if "worker" in t.user_attrs]
            return trials if len(trials) == 2 else None

        trials = wait_for(both_training, what="both workers training")
        workers = [int(t.user_attrs["worker"].rsplit(":", 1)[1]) for t in trials]
        assert sweep.pid not in workers and len(set(workers)) == 2
        os.kill(sweep.pid, signal.SIGKILL)
        sweep.wait()
        wait_for(lambda: all(is_gone(pid) for pid in workers), timeout=10, what="the workers to die")
    finally:
        sweep.kill()


@pytest.mark.slow
def test_sigterm_stops_every_worker_with_its_checkpoint_and_queues_its_trial_again(tmp_path):
    storage = default_storage(tmp_path / "s")
    command = sweep_command(tmp_path, storage, "--ent-coef", "0,0.1", "--seeds", "1", "--steps", "100000000",
                            "--checkpoint-every", "1", "--workers", "2")
    sweep = subprocess.Popen(command, cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        study = load_study_when_created(open_storage(storage), command[command.index("--name") + 1])

        def both_have_checkpoints():
            trials = [t for t in running_trials(study) if "run_dir" in t.user_attrs]
            return len(trials) == 2 and all((Path(t.user_attrs["run_dir"]) / "checkpoint.pt").exists() for t in trials)

        wait_for(both_have_checkpoints, what="both workers' first checkpoints")
        sweep.send_signal(signal.SIGTERM)
        stdout, stderr = sweep.communicate(timeout=60)
    finally:
        sweep.kill()
    assert sweep.returncode == 128 + signal.SIGTERM, stdout + stderr
    assert stderr.strip().splitlines()[-1].startswith("interrupted: stopped 2 worker(s)"), stderr
    trials = study.get_trials()
    stopped = [t for t in trials if t.state == TrialState.FAIL]
    assert sorted(t.user_attrs["run"] for t in stopped) == ["ent_coef=0.0,seed=1", "ent_coef=0.1,seed=1"]
    assert all(t.user_attrs["stopped"] == "interrupted" for t in stopped)
    queued = [t for t in trials if t.state == TrialState.WAITING]
    assert sorted((t.user_attrs["run"], t.user_attrs["attempt"]) for t in queued) == \
        [("ent_coef=0.0,seed=1", 1), ("ent_coef=0.1,seed=1", 1)]
    for trial in stopped:
        checkpoint = Path(trial.user_attrs["run_dir"]) / "checkpoint.pt"
        assert load_checkpoint(checkpoint, resumable=True)["global_step"] >= UPDATE


@pytest.mark.slow
def test_a_rerun_takes_over_a_dead_workers_trial_and_starts_afresh_where_its_run_directory_is_gone(tmp_path):
    storage = default_storage(tmp_path / "s")
    command = sweep_command(tmp_path, storage, "--seeds", "1", "--steps", str(40 * UPDATE), "--checkpoint-every", "5")
    name = command[command.index("--name") + 1]
    dead = subprocess.Popen(command, cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        study = load_study_when_created(open_storage(storage), name)
        trial = wait_for(lambda: next((t for t in running_trials(study) if "run_dir" in t.user_attrs), None),
                         what="the worker to take its trial")
        run_dir = Path(trial.user_attrs["run_dir"])
        wait_for(lambda: (run_dir / "checkpoint.pt").exists(), what="its first checkpoint")
        os.kill(dead.pid, signal.SIGKILL)
        dead.wait()
    finally:
        dead.kill()
    shutil.rmtree(run_dir)  # as on another machine, without a shared --logdir
    rerun = subprocess.run(command, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=120)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert f"taking over trial {trial.number} (its worker stopped sending heartbeats); no checkpoint reachable " \
           f"in {run_dir}, starting afresh" in rerun.stdout
    first, taken = study.get_trials()
    assert (first.state, taken.state) == (TrialState.FAIL, TrialState.COMPLETE)
    assert taken.user_attrs["resumed_from_step"] == 0 and taken.user_attrs["steps_trained"] == 40 * UPDATE


def work_until_a_trial_is_taken_then_die(storage_url: str, study_name: str, sweep_dir: str) -> None:
    """A worker (the sweep's own loop) SIGKILLed the moment its claim on a trial commits, before it
    does anything else with it. Run in a process of its own (see the test below)."""
    storage = open_storage(storage_url, heartbeat=1)
    set_state = storage.set_trial_state_values

    def set_state_then_die(trial_id, state, values=None):
        taken = set_state(trial_id, state, values)
        if taken and state == TrialState.RUNNING:
            os.kill(os.getpid(), signal.SIGKILL)
        return taken

    storage.set_trial_state_values = set_state_then_die
    study = optuna.load_study(storage=storage, study_name=study_name)
    work(study, storage, SweepPlan.from_dict(study.user_attrs["sweep"]), sweep_dir)


@pytest.mark.slow
def test_a_worker_killed_the_moment_it_takes_a_trial_leaves_it_to_be_taken_over(tmp_path):
    storage_url = default_storage(tmp_path / "s")
    total = 4 * UPDATE
    command = sweep_command(tmp_path, storage_url, "--ent-coef", "0,0.1", "--seeds", "1", "--steps", str(total))
    name = command[command.index("--name") + 1]
    plan = SweepPlan("smoke", {"ent_coef": (0.0, 0.1), "total_steps": (total,)}, (1,), eval_episodes=8)
    study = open_study(open_storage(storage_url), name, plan)  # what the command would create
    dying = subprocess.run(
        [sys.executable, "-c", "from test_sweep_faults import work_until_a_trial_is_taken_then_die as w; "
                               f"w({storage_url!r}, {name!r}, {str(tmp_path / name)!r})"],
        cwd=ROOT / "tests", env=ENV, capture_output=True, text=True, timeout=60)
    assert dying.returncode == -signal.SIGKILL, dying.stdout + dying.stderr
    killed, = running_trials(study)  # taken, and no more: no run directory, no training
    assert "run_dir" not in killed.user_attrs and not (tmp_path / name / killed.user_attrs["run"]).exists()

    # Before the claim carried a heartbeat this trial never went stale: the rerun waited forever.
    rerun = subprocess.run(command, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=120)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    trials = study.get_trials()
    assert study.trials[killed.number].state == TrialState.FAIL
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert sorted(t.user_attrs["run"] for t in complete) == ["ent_coef=0.0,seed=1", "ent_coef=0.1,seed=1"]
    assert [t for t in trials if t not in complete] == [study.trials[killed.number]]
    taken, = [t for t in complete if t.user_attrs.get("previous_trial") == killed.number]
    assert taken.user_attrs["run"] == killed.user_attrs["run"]
    assert taken.user_attrs["previous_stop"] == "its worker stopped sending heartbeats"
    for trial in complete:  # each run trained once, from the start, by the rerun
        assert (trial.user_attrs["resumed_from_step"], trial.user_attrs["steps_trained"]) == (0, total)
