"""Sweeps on Optuna: the grid, exactly-once trials over two workers, rerun and resume, Ctrl-C,
bad input, the report from the storage, and the HParams TensorBoard shows."""

import json
import math
import os
import signal
import subprocess
import sys
import time
from itertools import product
from pathlib import Path

import optuna
import pytest
import torch
from click.testing import CliRunner
from optuna.trial import TrialState
from scipy import stats

from breakout_ppo import cli
from breakout_ppo.checkpoint import load_checkpoint
from breakout_ppo.stats import mean_ci, welch
from breakout_ppo.sweep import SweepPlan, default_storage, open_storage
from breakout_ppo.sweep_report import collect_search, log_ticks, search_figure, write_report
from breakout_ppo.train import train
from support.ctrl_c import interrupt_after

ROOT = Path(__file__).resolve().parent.parent


def run_cli(*args):
    return CliRunner().invoke(cli.cli, [str(a) for a in args])


def load(sweep_dir, name=None):
    return optuna.load_study(storage=open_storage(default_storage(sweep_dir)), study_name=name or sweep_dir.name)


def test_the_grid_is_the_product_of_the_lists_times_the_seeds():
    plan = SweepPlan("smoke", {"ent_coef": (0.0, 0.01), "learning_rate": (5e-3, 2.5e-3), "hidden": (32,)}, (1, 2))
    runs = plan.runs()
    assert plan.swept == ["learning_rate", "ent_coef"]  # Config's order; `hidden` has one value: fixed
    assert len(runs) == 8 and len({r.name for r in runs}) == 8
    assert runs[0].name == "learning_rate=0.005,ent_coef=0.0,seed=1"
    assert runs[0].params == {"learning_rate": 0.005, "ent_coef": 0.0, "seed": 1}
    assert [r.config.seed for r in runs] == [1] * 4 + [2] * 4  # every point on seed 1 first
    assert {(r.config.learning_rate, r.config.ent_coef) for r in runs} == set(product((5e-3, 2.5e-3), (0.0, 0.01)))
    assert all(r.config.hidden == 32 and r.config.num_envs == 8 for r in runs)  # the smoke preset underneath


def test_cli_comma_lists_and_the_entropy_coef_alias(tmp_path):
    result = run_cli("sweep", "--preset", "smoke", "--entropy-coef", "0,0.01", "--learning-rate", "5e-3,2.5e-3",
                     "--steps", "512", "--seeds", "2", "--logdir", tmp_path, "--dry-run")
    assert result.exit_code == 0, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 8 and all(line.startswith("new") for line in lines)
    assert str(tmp_path / "sweep-learning_rate-ent_coef" / "learning_rate=0.0025,ent_coef=0.01,seed=2") in lines[-1]
    assert not list(tmp_path.iterdir())  # a dry run creates no storage


BAD_SWEEPS = [
    ("--ent-coef", "abc"),
    ("--ent-coef", "-1"),
    ("--ent-coef", "0,,0.1"),
    ("--ent-coef", "0,0"),
    ("--seeds", "-1"),
    ("--seeds", "2", "--seed", "1,2"),
    ("--workers", "0"),
    ("--preset", "huge"),
    ("--search", "ent_coef=log:0:0.3"),
    ("--search", "ent_coef=gauss:1e-4:0.3"),
    ("--search", "ent_coef=log:a:b"),
    ("--search", "ent_coef:log:1e-4:0.3"),
    ("--search", "entropy=log:1e-4:0.3"),
    ("--search", "hidden=log:8:256"),
    ("--search", "ent_coef=log:1e-4:0.3", "--learning-rate", "1e-3,2e-3"),
    ("--search", "ent_coef=log:1e-4:0.3", "--seeds", "2"),
    ("--prune",),
    ("--trials", "5"),
]
BAD_STORAGES = [
    ("--storage", "not a url"),
    ("--storage", "postgresql+psycopg2://sweeper:s3cret@127.0.0.1:9/db"),  # psycopg2 is not a dependency
    ("--storage", "postgresql+psycopg://sweeper:s3cret@127.0.0.1:9/db"),  # nothing listens on port 9
]
BAD = [(*args, "--dry-run") for args in BAD_SWEEPS + BAD_STORAGES] + BAD_STORAGES


@pytest.mark.parametrize("args", BAD, ids=[" ".join(a) for a in BAD])
def test_nonsense_sweeps_get_a_one_line_error_and_leave_nothing(args, tmp_path):
    result = run_cli("sweep", "--preset", "smoke", *args, "--logdir", tmp_path)
    assert result.exit_code != 0
    assert result.output.startswith("Error") or "\nError" in result.output, result.output
    assert result.output.strip().splitlines()[-1].startswith("Error") and "Traceback" not in result.output
    assert "s3cret" not in result.output
    assert not list(tmp_path.iterdir())


def test_a_postgres_url_without_its_driver_names_the_extra(tmp_path):
    result = run_cli("sweep", "--preset", "smoke", "--storage", "postgresql+psycopg2://u@localhost/db",
                     "--logdir", tmp_path)
    assert "pip install -e '.[postgres]'" in result.output and "postgresql+psycopg://" in result.output


def test_a_folder_of_the_old_process_pool_is_refused(tmp_path):
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "sweep.json").write_text("{}")
    result = run_cli("sweep", "--preset", "smoke", "--name", "old", "--logdir", tmp_path)
    assert result.exit_code == 1 and "old process pool" in result.output
    assert [p.name for p in (tmp_path / "old").iterdir()] == ["sweep.json"]


SMOKE = ("--preset", "smoke", "--device", "cpu", "--eval-episodes", "16")
GRID = (*SMOKE, "--ent-coef", "0,0.1", "--seeds", "2", "--steps", "4096", "--checkpoint-every", "2")
GRID_PLAN = SweepPlan("smoke", {"ent_coef": (0.0, 0.1), "total_steps": (4096,), "checkpoint_every": (2,)},
                      (1, 2), eval_episodes=16)


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    """A sweep of 2 points x 2 seeds on SQLite with two workers: ent_coef=0.1 seed 1 left
    half-trained (Ctrl-C after 2 of 16 updates) before the sweep starts. Also that run trained
    without a break."""
    root = tmp_path_factory.mktemp("sweep")
    partial = GRID_PLAN.runs()[1]
    assert partial.name == "ent_coef=0.1,seed=1"
    straight = train(partial.config, root / "straight")
    half = train(partial.config, root / "grid" / partial.name, progress=interrupt_after(2))
    assert half.interrupted and half.updates == 2
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("OMP_NUM_THREADS", "1")
        result = run_cli("sweep", *GRID, "--workers", "2", "--logdir", root, "--name", "grid")
    assert result.exit_code == 0, (result.output, result.exception)
    return root / "grid", straight, result.output


def test_two_workers_train_every_point_exactly_once(swept):
    sweep_dir, _, output = swept
    trials = load(sweep_dir).get_trials()
    assert sorted(t.user_attrs["run"] for t in trials) == sorted(run.name for run in GRID_PLAN.runs())
    assert {t.state for t in trials} == {TrialState.COMPLETE}
    assert len({t.user_attrs["worker"] for t in trials}) == 2, output  # each worker completed at least one
    for trial in trials:  # nobody trained a step twice
        assert trial.user_attrs["resumed_from_step"] + trial.user_attrs["steps_trained"] == 4096
        assert trial.params == GRID_PLAN.runs()[trial.user_attrs["order"]].params
    assert "report:" in output and (sweep_dir / "report" / "report.md").exists()


def test_a_partial_run_is_resumed_to_the_same_result_as_an_unbroken_one(swept):
    sweep_dir, straight, _ = swept
    partial = GRID_PLAN.runs()[1]
    trial, = [t for t in load(sweep_dir).get_trials() if t.user_attrs["run"] == partial.name]
    assert trial.user_attrs["resumed_from_step"] == 512
    a = load_checkpoint(straight.last_checkpoint, resumable=True)
    b = load_checkpoint(sweep_dir / partial.name / "checkpoint.pt", resumable=True)
    assert a["update"] == b["update"] == 16
    for name, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][name]), name
    for trial in load(sweep_dir).get_trials():
        assert trial.user_attrs["eval"]["episodes"] == 16 and trial.user_attrs["eval"]["global_step"] == 4096
        assert trial.value == trial.user_attrs["eval"]["mean"]


def test_a_finished_sweep_run_again_trains_nothing(swept):
    sweep_dir, _, _ = swept
    files = sorted(path for path in sweep_dir.rglob("*") if path.is_file() and "report" not in path.parts)
    before = {path: path.stat().st_mtime_ns for path in files}
    result = run_cli("sweep", *GRID, "--workers", "2", "--logdir", sweep_dir.parent, "--name", "grid")
    assert result.exit_code == 0, result.output
    assert "training" not in result.output and "resuming" not in result.output
    assert len(load(sweep_dir).get_trials()) == 4
    assert {path: path.stat().st_mtime_ns for path in files if path.name != "study.db"} == \
        {path: t for path, t in before.items() if path.name != "study.db"}


def test_a_study_of_another_grid_or_base_config_is_refused_saying_what_differs(swept):
    sweep_dir, _, _ = swept
    other_grid = run_cli("sweep", *SMOKE, "--ent-coef", "0,0.2", "--seeds", "2", "--steps", "4096",
                         "--checkpoint-every", "2", "--logdir", sweep_dir.parent, "--name", "grid")
    assert other_grid.exit_code == 1 and "ent_coef: [0.0, 0.1] in the study, [0.0, 0.2] here" in other_grid.output
    other_base = run_cli("sweep", *GRID, "--hidden", "32", "--logdir", sweep_dir.parent, "--name", "grid")
    assert other_base.exit_code == 1 and "hidden: 128 in the study, 32 here" in other_base.output
    assert len(load(sweep_dir).get_trials()) == 4


def session_groups(logdir: Path):
    """What TensorBoard's HParams tab lists for `logdir`, through the plugin's own request handler."""
    from tensorboard import context
    from tensorboard.backend.event_processing import data_provider, plugin_event_multiplexer
    from tensorboard.plugins import base_plugin
    from tensorboard.plugins.hparams import api_pb2, backend_context, list_session_groups

    multiplexer = plugin_event_multiplexer.EventMultiplexer()
    multiplexer.AddRunsFromDirectory(str(logdir))
    multiplexer.Reload()
    provider = data_provider.MultiplexerDataProvider(multiplexer, str(logdir))
    backend = backend_context.Context(base_plugin.TBContext(logdir=str(logdir), multiplexer=multiplexer,
                                                            data_provider=provider))
    statuses = [api_pb2.STATUS_UNKNOWN, api_pb2.STATUS_SUCCESS, api_pb2.STATUS_FAILURE, api_pb2.STATUS_RUNNING]
    request = api_pb2.ListSessionGroupsRequest(start_index=0, slice_size=100, allowed_statuses=statuses)
    return list_session_groups.Handler(context.RequestContext(), backend, "", request).run().session_groups


def test_tensorboard_hparams_lists_every_run_with_its_final_evaluation(swept):
    sweep_dir, _, _ = swept
    groups = {group.name: group for group in session_groups(sweep_dir)}
    assert set(groups) == {run.name for run in GRID_PLAN.runs()}
    trials = {t.user_attrs["run"]: t for t in load(sweep_dir).get_trials()}
    for run in GRID_PLAN.runs():
        group = groups[run.name]
        assert group.hparams["ent_coef"].number_value == pytest.approx(run.config.ent_coef)
        metrics = {m.name.tag: m.value for m in group.metric_values}
        assert metrics["eval/mean_return"] == pytest.approx(trials[run.name].value)
        assert trials[run.name].user_attrs["run_dir"] == str((sweep_dir / run.name).resolve())
        assert "charts/episodic_return" in metrics


def test_ctrl_c_saves_the_checkpoint_puts_the_trial_back_and_exits_with_one_line(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "cli.py", "sweep", *SMOKE, "--seeds", "1", "--steps", "100000000",
               "--checkpoint-every", "1", "--logdir", str(tmp_path), "--name", "s"]
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    checkpoint = tmp_path / "s" / "seed=1" / "checkpoint.pt"
    try:
        while not checkpoint.exists() and process.poll() is None:  # the worker is in its training loop
            time.sleep(0.2)
        process.send_signal(signal.SIGINT)
        stdout, stderr = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 130, stdout + stderr
    assert stderr.strip().count("\n") == 0 and "interrupted" in stderr, stderr
    assert "interrupted, checkpoint saved at step" in stdout
    step = load_checkpoint(checkpoint, resumable=True)["global_step"]
    assert step >= 256
    first, copy = load(tmp_path / "s").get_trials()
    assert (first.state, first.user_attrs["stopped"]) == (TrialState.FAIL, "interrupted")
    assert copy.state == TrialState.WAITING and copy.user_attrs["attempt"] == 1  # a Ctrl-C uses no retry
    dry = subprocess.run([*command, "--dry-run"], cwd=ROOT, env=env, capture_output=True, text=True)
    assert dry.stdout.split() == ["waiting", str(tmp_path / "s" / "seed=1")], dry.stdout + dry.stderr


# Final returns per coefficient and seed; ent_coef=0.1 seed 3 is still running (no evaluation).
FAKE_RETURNS = {0.0: [10.0, 12.0, 11.0], 0.01: [20.0, 26.0, 23.0], 0.1: [15.0, 14.0, None]}


def fake_study(plan: SweepPlan, name: str):
    """A study as `cli.py sweep` leaves it, without training: one trial per run, with its curves."""
    from breakout_ppo.sweep import study_definition

    study = optuna.create_study(study_name=name, direction="maximize")
    study.set_user_attr("sweep", json.loads(json.dumps(study_definition(plan))))
    distribution = optuna.distributions.CategoricalDistribution
    for order, run in enumerate(plan.runs()):
        final = FAKE_RETURNS[run.config.ent_coef][run.config.seed - 1]
        steps = list(range(256, 1025, 256))
        curves = {"charts/episodic_return": [steps, [(final or 0.0) * s / 1024 for s in steps]],
                  "losses/entropy": [steps, [1.0 - run.config.ent_coef] * len(steps)]}
        study.add_trial(optuna.trial.create_trial(
            state=TrialState.COMPLETE if final is not None else TrialState.RUNNING, value=final,
            params=run.params, distributions={"ent_coef": distribution(list(FAKE_RETURNS)),
                                              "seed": distribution([1, 2, 3])},
            user_attrs={"run": run.name, "order": order, "curves": curves}))
    return study


def test_the_report_names_the_best_coefficient_and_how_sure_that_is(tmp_path):
    plan = SweepPlan("smoke", {"ent_coef": tuple(FAKE_RETURNS)}, (1, 2, 3), eval_episodes=16)
    report = write_report(fake_study(plan, "fake"), tmp_path / "report")
    text = report.markdown.read_text()
    assert report.best == "ent_coef=0.01" and "**Best: ent_coef=0.01**" in text
    # By hand: mean 23, sample std 3, t(0.975, 2 df) = 4.302653, half-width 4.302653 * 3 / sqrt(3) = 7.45.
    assert mean_ci([20, 26, 23]) == pytest.approx((23.0, 4.302653 * 3 / math.sqrt(3)))
    assert "| ent_coef=0.01 | 23.00 ± 7.45 | 20.00 | 26.00 | 23.00 |" in text
    assert "| ent_coef=0.1 | 14.50 ± 6.35 | 15.00 | 14.00 | - |" in text
    assert "Runner-up: ent_coef=0.1" in text
    reference = stats.ttest_ind([20, 26, 23], [15, 14], equal_var=False)
    test = welch([20, 26, 23], [15, 14])
    assert (test.t, test.p) == pytest.approx((reference.statistic, reference.pvalue))
    assert f"p = {test.p:.3f}" in text
    assert "Incomplete:** 1 of 9 runs" in text and "ent_coef=0.1,seed=3" in text
    assert report.missing == ["ent_coef=0.1,seed=3"] and report.failed == []
    for path in report.figures.values():
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.name in text


def test_a_trial_that_fails_by_itself_is_retried_a_bounded_number_of_times_and_reported(tmp_path):
    sweep_dir = tmp_path / "poisoned"
    sweep_dir.mkdir()
    (sweep_dir / "ent_coef=0.0,seed=1").write_text("a file where the run directory should be")
    result = run_cli("sweep", *SMOKE, "--ent-coef", "0,0.1", "--seeds", "1", "--max-retries", "1",
                     "--logdir", tmp_path, "--name", "poisoned")
    assert result.exit_code == 1
    assert result.output.strip().splitlines()[-1].startswith("Error: 1 of 2 runs failed, e.g. ent_coef=0.0,seed=1: error:")
    trials = load(sweep_dir).get_trials()
    poisoned = [t for t in trials if t.user_attrs["run"] == "ent_coef=0.0,seed=1"]
    assert [(t.state, t.user_attrs["attempt"]) for t in poisoned] == [(TrialState.FAIL, 1), (TrialState.FAIL, 2)]
    assert [t.state for t in trials if t not in poisoned] == [TrialState.COMPLETE]
    assert "**Failed** (not tried again): ent_coef=0.0,seed=1: error:" in (sweep_dir / "report" / "report.md").read_text()
    again = run_cli("sweep", *SMOKE, "--ent-coef", "0,0.1", "--seeds", "1", "--max-retries", "1",
                    "--logdir", tmp_path, "--name", "poisoned")
    assert again.exit_code == 1 and len(load(sweep_dir).get_trials()) == 3  # used up: not queued again


SEARCH = (*SMOKE, "--search", "ent_coef=log:1e-4:0.3", "--search", "learning_rate=log:1e-4:1e-2", "--seeds", "3")


def search(tmp_path, name, *args):
    result = run_cli("sweep", *SEARCH, *args, "--logdir", tmp_path, "--name", name)
    assert result.exit_code == 0, result.output
    return load(tmp_path / name).get_trials(), result.output


def test_one_worker_with_a_fixed_sampler_seed_proposes_the_same_trials_and_confirms_the_best(tmp_path):
    first, output = search(tmp_path, "a", "--trials", "3", "--confirm", "1", "--sampler-seed", "7")
    second, _ = search(tmp_path, "b", "--trials", "3", "--confirm", "1", "--sampler-seed", "7")
    proposals = [t.params for t in first if t.user_attrs["phase"] == "search"]
    assert len(proposals) == 3 and proposals == [t.params for t in second if t.user_attrs["phase"] == "search"]
    best = max((t for t in first if t.user_attrs["phase"] == "search"), key=lambda t: t.value)
    confirmation = [t for t in first if t.user_attrs["phase"] == "confirm"]
    assert [(t.params, t.user_attrs["seed"], t.state) for t in confirmation] == \
        [(best.params, seed, TrialState.COMPLETE) for seed in (2, 3)]
    text = (tmp_path / "a" / "report" / "report.md").read_text()
    assert "trained on seed 1 alone (3 complete, 0 pruned, 0 failed)" in text
    assert "## The best 1 again on fresh seeds 2, 3" in text and f"**Best: trial={best.number}," in text
    again = run_cli("sweep", *SEARCH, "--trials", "3", "--confirm", "1", "--logdir", tmp_path, "--name", "a")
    assert again.exit_code == 0 and "training" not in again.output and len(load(tmp_path / "a").get_trials()) == 5


def test_two_workers_racing_through_a_search_train_exactly_its_trials_each_once(tmp_path):
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("OMP_NUM_THREADS", "1")
        trials, output = search(tmp_path, "race", "--trials", "4", "--confirm", "0", "--workers", "2",
                                "--steps", "4096")
    assert sorted(t.user_attrs["run"] for t in trials) == [f"trial={n},seed=1" for n in range(4)]
    assert [t.number for t in trials] == [0, 1, 2, 3]  # run trial=N is the study's trial N
    assert {t.state for t in trials} == {TrialState.COMPLETE}
    assert len({t.user_attrs["worker"] for t in trials}) == 2, output  # both took trials
    for trial in trials:  # TPE proposed each one point, trained once
        assert set(trial.params) == {"ent_coef", "learning_rate"}
        assert (trial.user_attrs["resumed_from_step"], trial.user_attrs["steps_trained"]) == (0, 4096)
    assert len({tuple(t.params.values()) for t in trials}) == 4
    report = (tmp_path / "race" / "report" / "report.md").read_text()
    assert "trained on seed 1 alone (4 complete, 0 pruned, 0 failed)" in report
    # --confirm 0: the headline is the best search trial on its one seed, and no empty confirmation section.
    best = max(trials, key=lambda t: t.value)
    assert f"**Best search trial: trial={best.number},seed=1**" in report and "not trained again" in report
    assert "## The best" not in report and "No run is complete" not in report + output
    assert "sweep_final_return.png" not in report and (tmp_path / "race" / "report" / "sweep_search.png").exists()


def test_a_search_begun_without_its_trials_queued_gets_the_rest_queued_and_no_more(tmp_path):
    """As a search begun before the study queued its trials up front: trials 0 and 2 proposed (1 a
    copy of 0, put back); opening it queues the two still missing, and opening it again none."""
    from breakout_ppo.sweep import open_study, study_definition

    plan = SweepPlan("smoke", {}, (1,), eval_episodes=16, search=(("ent_coef", "log", 1e-4, 0.3),), trials=4)
    storage = open_storage(default_storage(tmp_path / "old"))
    study = optuna.create_study(storage=storage, study_name="old", direction="maximize")
    study.set_user_attr("sweep", json.loads(json.dumps(study_definition(plan))))
    study.set_user_attr("enqueued", True)
    distribution = {"ent_coef": optuna.distributions.FloatDistribution(1e-4, 0.3, log=True)}
    for run, state in [("trial=0,seed=1", TrialState.FAIL), ("trial=0,seed=1", TrialState.COMPLETE),
                       ("trial=2,seed=1", TrialState.COMPLETE)]:
        study.add_trial(optuna.trial.create_trial(state=state, value=1.0 if state == TrialState.COMPLETE else None,
                                                  params={"ent_coef": 0.01}, distributions=distribution,
                                                  user_attrs={"run": run, "phase": "search", "seed": 1}))
    for _ in range(2):
        open_study(storage, "old", plan)
        waiting = [t.user_attrs["run"] for t in study.get_trials(states=(TrialState.WAITING,))]
        assert waiting == ["trial=1,seed=1", "trial=3,seed=1"]


def test_a_pruned_search_reports_at_a_quarter_half_and_three_quarters_and_says_what_it_saved(tmp_path):
    trials, _ = search(tmp_path, "p", "--trials", "6", "--confirm", "0", "--prune", "--steps", "2048",
                       "--sampler-seed", "3")
    assert len(trials) == 6
    for trial in trials:
        steps = set(trial.intermediate_values)
        if trial.state == TrialState.PRUNED:
            assert trial.user_attrs["pruned_at_step"] == max(steps) and steps <= {512, 1024, 1536}
            checkpoint = tmp_path / "p" / trial.user_attrs["run"] / "checkpoint.pt"
            assert load_checkpoint(checkpoint, resumable=True)["global_step"] == max(steps)
        else:
            assert trial.state == TrialState.COMPLETE and steps == {512, 1024, 1536}
    pruned = [t for t in trials if t.state == TrialState.PRUNED]
    saved = sum(2048 - t.user_attrs["pruned_at_step"] for t in pruned)
    text = (tmp_path / "p" / "report" / "report.md").read_text()
    assert f"({6 - len(pruned)} complete, {len(pruned)} pruned, 0 failed)" in text
    assert f"trained {6 * 2048 - saved:,} of {6 * 2048:,} steps" in text


def test_a_pruned_trial_keeps_its_checkpoint_at_the_prune_step_and_resumes_from_it_as_if_unbroken(tmp_path):
    """With a pruner that stops every trial at its first report, the quarter of the steps."""
    from breakout_ppo.sweep import open_study, work

    plan = SweepPlan("smoke", {"total_steps": (2048,)}, (1,), eval_episodes=16,
                     search=(("ent_coef", "log", 1e-4, 0.3),), trials=1, prune=True)
    storage = open_storage(default_storage(tmp_path / "p"))
    open_study(storage, "p", plan)
    study = optuna.load_study(storage=storage, study_name="p", pruner=optuna.pruners.ThresholdPruner(lower=1e9))
    lines = []
    work(study, storage, plan, tmp_path / "p", echo=lines.append)
    trial, = study.get_trials()
    assert trial.state == TrialState.PRUNED and trial.user_attrs["pruned_at_step"] == 512, lines
    assert list(trial.intermediate_values) == [512] and trial.user_attrs["steps_trained"] == 512
    assert any("pruned trial 0 trial=0,seed=1" in line and "its checkpoint there stands" in line for line in lines)
    checkpoint = tmp_path / "p" / trial.user_attrs["run"] / "checkpoint.pt"
    assert load_checkpoint(checkpoint, resumable=True)["global_step"] == 512

    config = plan.config_for(trial.params, 1)
    resumed = train(config, checkpoint.parent, resume=checkpoint)
    straight = train(config, tmp_path / "straight")
    assert resumed.global_step == straight.global_step == 2048
    a = load_checkpoint(resumed.last_checkpoint, resumable=True)["model"]
    b = load_checkpoint(straight.last_checkpoint, resumable=True)["model"]
    assert all(torch.equal(a[name], b[name]) for name in a)


@pytest.mark.parametrize("low, high, ticks", [
    (1e-4, 0.3, [1e-4, 1e-3, 1e-2, 1e-1]),  # powers of ten where three or more fit
    (1e-4, 1e-2, [1e-4, 1e-3, 1e-2]),
    (1e-6, 1.0, [1e-6, 1e-4, 1e-2, 1.0]),  # at most five: every other one
    (1e-4, 5e-4, [1e-4, 2e-4, 5e-4]),  # else 1, 2 and 5 times them
    (8, 256, [10, 20, 50, 100, 200]),
    (3e-4, 4e-4, [3e-4, 4e-4]),  # else the ends
])
def test_a_log_axis_gets_a_few_round_ticks(low, high, ticks):
    assert log_ticks(low, high) == pytest.approx(ticks)


def test_the_search_plot_draws_pruned_trials_apart_at_their_last_intermediate_return():
    from breakout_ppo.sweep import study_definition

    plan = SweepPlan("smoke", {}, (1,), eval_episodes=64, search=(("learning_rate", "log", 1e-4, 5e-4),),
                     trials=4, prune=True)
    study = optuna.create_study(study_name="pruned", direction="maximize")
    study.set_user_attr("sweep", json.loads(json.dumps(study_definition(plan))))
    lr = optuna.distributions.FloatDistribution(1e-4, 5e-4, log=True)
    for number, (state, value, intermediate) in enumerate([
            (TrialState.COMPLETE, 9.0, {256: 4.0, 512: 6.0, 768: 8.0}), (TrialState.PRUNED, None, {256: 1.0}),
            (TrialState.PRUNED, None, {256: 3.0, 512: 2.0}), (TrialState.COMPLETE, 7.0, {256: 5.0})]):
        study.add_trial(optuna.trial.create_trial(
            state=state, value=value, intermediate_values=intermediate,
            params={"learning_rate": 1e-4 * (1 + number)}, distributions={"learning_rate": lr},
            user_attrs={"run": f"trial={number},seed=1", "phase": "search", "seed": 1}))
    figure = search_figure(collect_search(study, plan), plan, "title")
    assert [text.get_text() for text in figure.legends[0].texts] == [
        "complete: final return (64 episodes)",
        "pruned at step 256: its last intermediate return (16 episodes)",
        "pruned at step 512: its last intermediate return (16 episodes)"]
    # (learning rate, return) of each point, in the order of the legend
    complete, at_256, at_512 = (c.get_offsets().ravel().tolist() for c in figure.axes[0].collections)
    assert complete == pytest.approx([1e-4, 9.0, 4e-4, 7.0])
    assert (at_256, at_512) == (pytest.approx([2e-4, 1.0]), pytest.approx([3e-4, 2.0]))
    assert [label.get_text() for label in figure.axes[0].get_xticklabels()] == ["0.0001", "0.0002", "0.0005"]
    figure.clf()
