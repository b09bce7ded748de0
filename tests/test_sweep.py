"""Sweeps: the grid, skip and resume, Ctrl-C, the report, and the HParams TensorBoard shows."""

import json
import math
import os
import signal
import subprocess
import sys
import time
from itertools import product
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from scipy import stats

import cli
from breakout_ppo.checkpoint import load_checkpoint
from breakout_ppo.stats import mean_ci, welch
from breakout_ppo.sweep import SweepError, SweepPlan, run_state, run_sweep
from breakout_ppo.sweep_report import write_report
from breakout_ppo.train import train
from ctrl_c import interrupt_after

ROOT = Path(__file__).resolve().parent.parent


def run_cli(*args):
    return CliRunner().invoke(cli.cli, [str(a) for a in args])


def test_the_grid_is_the_product_of_the_lists_times_the_seeds():
    plan = SweepPlan("smoke", {"ent_coef": (0.0, 0.01), "learning_rate": (5e-3, 2.5e-3), "hidden": (32,)}, (1, 2))
    runs = plan.runs()
    assert plan.swept == ["learning_rate", "ent_coef"]  # Config's order; `hidden` has one value: fixed
    assert len(runs) == 8 and len({r.name for r in runs}) == 8
    assert runs[0].name == "learning_rate=0.005,ent_coef=0.0,seed=1"
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


BAD_SWEEPS = [
    ("--ent-coef", "abc"),
    ("--ent-coef", "-1"),
    ("--ent-coef", "0,,0.1"),
    ("--ent-coef", "0,0"),
    ("--seeds", "-1"),
    ("--seeds", "2", "--seed", "1,2"),
    ("--workers", "0"),
    ("--preset", "huge"),
]


@pytest.mark.parametrize("args", BAD_SWEEPS, ids=[" ".join(a) for a in BAD_SWEEPS])
def test_nonsense_sweeps_get_a_one_line_error(args, tmp_path):
    result = run_cli("sweep", *args, "--logdir", tmp_path, "--dry-run")
    assert result.exit_code != 0
    assert "Error" in result.output and "Traceback" not in result.output
    assert not list(tmp_path.iterdir())


def test_a_run_directory_of_another_config_is_refused(tmp_path):
    run = SweepPlan("smoke", {"ent_coef": (0.0, 0.1)}, (1,)).runs()[0]
    (tmp_path / "config.json").write_text(json.dumps(run.config.replace(total_steps=512).to_dict()))
    with pytest.raises(SweepError, match="another config"):
        run_state(tmp_path, run.config)



def test_a_run_from_before_partial_walls_is_not_mixed_into_a_sweep_that_uses_them(tmp_path):
    run = SweepPlan("smoke", {"ent_coef": (0.0, 0.1)}, (1,)).runs()[0]
    assert run.config.partial_wall_starts > 0
    old = run.config.to_dict()
    del old["partial_wall_starts"]  # written before the field existed: trained on full walls
    (tmp_path / "config.json").write_text(json.dumps(old))
    with pytest.raises(SweepError, match="another config"):
        run_state(tmp_path, run.config)
    assert run_state(tmp_path, run.config.replace(partial_wall_starts=0.0)) == "new"


PLAN = SweepPlan("smoke", {"ent_coef": (0.0, 0.1)}, (1,), eval_episodes=16)


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    """A sweep of two runs: ent_coef=0.1 left half-trained (Ctrl-C after 2 of 4 updates) before the
    sweep starts, ent_coef=0.0 not started. Also the ent_coef=0.1 run trained without a break."""
    root = tmp_path_factory.mktemp("sweep")
    fresh, partial = PLAN.runs()
    straight = train(partial.config, root / "straight")
    half = train(partial.config, root / "sweep" / partial.name, progress=interrupt_after(2))
    assert half.interrupted and half.updates == 2
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("OMP_NUM_THREADS", "1")
        outcome = run_sweep(PLAN, root / "sweep", workers=2, echo=lambda line: None)
    return root / "sweep", straight, outcome


def test_a_partial_run_is_resumed_to_the_same_result_as_an_unbroken_one(swept):
    sweep_dir, straight, outcome = swept
    fresh, partial = PLAN.runs()
    assert outcome.failed == [] and sorted(outcome.finished) == sorted([fresh.name, partial.name])
    assert "resuming at update 2" in (sweep_dir / partial.name / "train.log").read_text()
    a = load_checkpoint(straight.last_checkpoint, resumable=True)
    b = load_checkpoint(sweep_dir / partial.name / "checkpoint.pt", resumable=True)
    assert a["update"] == b["update"] == 4
    for name, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][name]), name
    for run in (fresh, partial):
        result = json.loads((sweep_dir / run.name / "final_eval.json").read_text())
        assert result["episodes"] == 16 and result["global_step"] == 1024


def test_complete_runs_are_skipped_not_run_again(swept):
    sweep_dir, _, _ = swept
    files = [sweep_dir / run.name / name for run in PLAN.runs() for name in ("final_eval.json", "checkpoint.pt")]
    before = {path: (path.stat().st_mtime_ns, path.read_bytes()) for path in files}
    started = []
    outcome = run_sweep(PLAN, sweep_dir, workers=2, echo=started.append)
    assert outcome.skipped == [run.name for run in PLAN.runs()] and outcome.finished == [] and started == []
    assert {path: (path.stat().st_mtime_ns, path.read_bytes()) for path in files} == before


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
    assert set(groups) == {run.name for run in PLAN.runs()}
    for run in PLAN.runs():
        group = groups[run.name]
        assert group.hparams["ent_coef"].number_value == pytest.approx(run.config.ent_coef)
        metrics = {m.name.tag: m.value for m in group.metric_values}
        final = json.loads((sweep_dir / run.name / "final_eval.json").read_text())
        assert metrics["eval/mean_return"] == pytest.approx(final["mean"])
        assert "charts/episodic_return" in metrics


def test_ctrl_c_stops_the_sweep_keeps_the_checkpoint_and_exits_with_one_line(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(
        [sys.executable, "cli.py", "sweep", "--preset", "smoke", "--seeds", "1", "--steps", "100000000",
         "--checkpoint-every", "1", "--device", "cpu", "--logdir", str(tmp_path), "--name", "s"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
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
    assert load_checkpoint(checkpoint, resumable=True)["update"] >= 1
    assert "interrupted: checkpoint saved" in (checkpoint.parent / "train.log").read_text()


def write_fake_run(run_dir: Path, config, final_return, entropy):
    """A complete-looking run without training: config, events and final evaluation."""
    from torch.utils.tensorboard import SummaryWriter

    run_dir.mkdir(parents=True)
    (run_dir / "config.json").write_text(json.dumps(config.to_dict()))
    writer = SummaryWriter(str(run_dir))
    for step in range(256, 1025, 256):
        writer.add_scalar("charts/episodic_return", (final_return or 0.0) * step / 1024, step)
        writer.add_scalar("losses/entropy", entropy, step)
    writer.close()
    if final_return is not None:
        (run_dir / "final_eval.json").write_text(json.dumps({"mean": final_return, "ci95": 1.0}))


# Final returns per coefficient and seed; ent_coef=0.1 seed 3 is still running (no evaluation).
FAKE_RETURNS = {0.0: [10.0, 12.0, 11.0], 0.01: [20.0, 26.0, 23.0], 0.1: [15.0, 14.0, None]}


def test_the_report_names_the_best_coefficient_and_how_sure_that_is(tmp_path):
    plan = SweepPlan("smoke", {"ent_coef": tuple(FAKE_RETURNS)}, (1, 2, 3), eval_episodes=16)
    sweep_dir = tmp_path / "fake"
    for run in plan.runs():
        final = FAKE_RETURNS[run.config.ent_coef][run.config.seed - 1]
        write_fake_run(sweep_dir / run.name, run.config, final, entropy=1.0 - run.config.ent_coef)
    (sweep_dir / "sweep.json").write_text(json.dumps(plan.to_dict()))

    report = write_report(sweep_dir)
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
    for path in report.figures.values():
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.name in text
