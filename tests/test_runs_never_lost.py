"""No run is lost or mixed: one process per run directory, resume writes only where it came from,
and every failure a user can cause is one line with nothing half-made left behind."""

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from breakout_ppo import cli
from breakout_ppo.checkpoint import load_checkpoint
from breakout_ppo.config import preset
from breakout_ppo.train import TrainingError, train

ROOT = Path(__file__).resolve().parent.parent
SMOKE = ["train", "--preset", "smoke", "--device", "cpu"]


def run(*args):
    return CliRunner().invoke(cli.cli, [str(a) for a in args])


def assert_one_line_error(result, *needles):
    assert result.exit_code not in (0, None), result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    error_lines = [line for line in result.output.splitlines() if line.startswith("Error")]
    assert len(error_lines) == 1, result.output
    for needle in needles:
        assert needle in error_lines[0], (needle, error_lines[0])


def smoke_run(logdir, name, *extra):
    result = run(*SMOKE, "--run-name", name, "--logdir", logdir, *extra)
    assert result.exit_code == 0, result.output
    return logdir / name / "checkpoint.pt"


def scalar_steps(run_dir, tag="losses/policy_loss"):
    events = EventAccumulator(str(run_dir))
    events.Reload()
    return [e.step for e in events.Scalars(tag)]


# --- resume writes only into the run it continues ---

def test_resume_continues_in_the_checkpoints_own_folder_and_never_into_another_run(tmp_path):
    a, b = smoke_run(tmp_path, "A"), smoke_run(tmp_path, "B")
    a_before, b_before = a.read_bytes(), b.read_bytes()
    # Resuming B under A's name would overwrite A: refused, A untouched.
    result = run(*SMOKE, "--logdir", tmp_path, "--resume", b, "--run-name", "A", "--total-steps", 2048)
    assert_one_line_error(result, "already holds a run")
    assert a.read_bytes() == a_before

    # A copy of A elsewhere continues where it lies, not in runs/A.
    elsewhere = tmp_path / "elsewhere" / "A"
    shutil.copytree(tmp_path / "A", elsewhere)
    result = run(*SMOKE, "--logdir", tmp_path, "--resume", elsewhere / "checkpoint.pt", "--total-steps", 2048)
    assert result.exit_code == 0, result.output
    assert a.read_bytes() == a_before and b.read_bytes() == b_before
    assert load_checkpoint(elsewhere / "checkpoint.pt", resumable=True)["global_step"] == 2048

    # --run-name with --resume starts a new run from the checkpoint; the original is untouched.
    result = run(*SMOKE, "--logdir", tmp_path, "--resume", b, "--run-name", "C", "--total-steps", 2048)
    assert result.exit_code == 0, result.output
    assert load_checkpoint(tmp_path / "C" / "checkpoint.pt", resumable=True)["global_step"] == 2048
    assert b.read_bytes() == b_before


def test_two_trainings_of_one_name_the_second_is_refused_naming_the_first(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "cli.py", *SMOKE, "--run-name", "same", "--logdir", str(tmp_path)]
    first = subprocess.Popen([*command, "--total-steps", "100000000", "--checkpoint-every", "100000"],
                             cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True)
    try:
        for line in first.stderr:  # under way: the run directory is claimed
            if "SPS" in line:
                break
        files_before = sorted(p.name for p in (tmp_path / "same").iterdir())
        second = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
        assert second.returncode == 1, second.stderr
        assert second.stderr.strip().count("\n") == 1 and "Traceback" not in second.stderr, second.stderr
        assert f"in use by a training that is still running (pid {first.pid} " in second.stderr
        assert sorted(p.name for p in (tmp_path / "same").iterdir()) == files_before  # nothing written
        first.send_signal(signal.SIGINT)
        first.communicate(timeout=60)
    finally:
        first.kill()
    assert first.returncode == 128 + signal.SIGINT
    assert len(list((tmp_path / "same").glob("events.out.tfevents.*"))) == 1
    # Once the first has stopped, its run can be resumed: the lock died with the holder.
    result = run(*SMOKE, "--resume", tmp_path / "same" / "checkpoint.pt", "--total-steps", 100000000,
                 "--checkpoint-every", 100000, "--stop-at-step", 1)
    assert result.exit_code == 0, result.output


def test_a_killed_run_does_not_block_its_resume(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen([sys.executable, "cli.py", *SMOKE, "--run-name", "k", "--logdir", str(tmp_path),
                                "--total-steps", "100000000", "--checkpoint-every", "1"],
                               cwd=ROOT, env=env, stderr=subprocess.DEVNULL, text=True)
    checkpoint = tmp_path / "k" / "checkpoint.pt"
    try:
        while not checkpoint.exists() and process.poll() is None:
            time.sleep(0.05)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=60)
    finally:
        process.kill()
    step = load_checkpoint(checkpoint, resumable=True)["global_step"]
    result = run(*SMOKE, "--resume", checkpoint, "--total-steps", 100000000, "--checkpoint-every", 1,
                 "--stop-at-step", step + 1)
    assert result.exit_code == 0, result.output
    assert load_checkpoint(checkpoint, resumable=True)["global_step"] == step + 256


def test_a_name_left_by_a_run_without_checkpoint_is_not_reused(tmp_path):
    left = tmp_path / "left"
    left.mkdir()
    (left / "events.out.tfevents.1.host.1.0").write_bytes(b"")  # what a run that died early leaves
    result = run(*SMOKE, "--run-name", "left", "--logdir", tmp_path)
    assert_one_line_error(result, "events but no checkpoint")
    assert sorted(p.name for p in left.iterdir()) == ["events.out.tfevents.1.host.1.0"]
    # A folder no training wrote into (made by hand, or holding only a launcher's log) is fine.
    (tmp_path / "fresh").mkdir()
    (tmp_path / "fresh" / "train.log").write_text("launched\n")
    smoke_run(tmp_path, "fresh")


# --- events after the last checkpoint of a killed run appear once ---

def test_steps_logged_after_the_last_checkpoint_are_purged_on_resume(tmp_path):
    config = preset("smoke", total_steps=6 * 256, checkpoint_every=2)
    run_dir = tmp_path / "run"

    def crash_after_update_3(step, sps, recent_return):
        if step == 3 * 256:
            raise RuntimeError("the machine went away")

    with pytest.raises(RuntimeError):
        train(config, run_dir, progress=crash_after_update_3)
    assert sorted(scalar_steps(run_dir)) == [256, 512, 768]  # update 3 was logged, not saved
    train(config, run_dir, resume=run_dir / "checkpoint.pt")
    steps = scalar_steps(run_dir)
    assert sorted(steps) == [256 * u for u in range(1, 7)], steps  # 768 once, as TensorBoard shows it


# --- one line, and nothing half-made, for every failure a user can cause ---

@pytest.fixture
def broken_checkpoints(tmp_path_factory):
    """A good smoke checkpoint, and copies with a config its weights do not fit and with NaN weights."""
    logdir = tmp_path_factory.mktemp("runs")
    good = smoke_run(logdir, "good")
    payload = torch.load(good, weights_only=True)
    payload["config"]["hidden"] = 7
    torch.save(payload, logdir / "hidden7.pt")
    payload = torch.load(good, weights_only=True)
    payload["model"]["actor.torso.1.weight"][0, 0] = float("nan")
    torch.save(payload, logdir / "nan.pt")
    return logdir


def test_a_checkpoint_whose_weights_do_not_fit_its_config_names_the_layer(broken_checkpoints):
    bad = broken_checkpoints / "hidden7.pt"
    for command in (["inspect", bad, "--episodes", 4, "--out", broken_checkpoints / "out"],
                    ["compare", bad, broken_checkpoints / "good" / "checkpoint.pt", "--episodes", 4,
                     "--out", broken_checkpoints / "cmp"],
                    ["evaluate", bad, "--episodes", 4]):
        result = run(*command)
        assert_one_line_error(result, "hidden7.pt", "do not fit its config", "hidden 7", "actor.torso.1.weight is (128,")
    assert not (broken_checkpoints / "out").exists() and not (broken_checkpoints / "cmp").exists()


def test_report_inspect_on_a_bad_checkpoint_is_one_line_and_leaves_no_folder(broken_checkpoints):
    run_dir = broken_checkpoints / "good"
    shutil.copy(broken_checkpoints / "hidden7.pt", run_dir / "checkpoint.pt")
    result = run("report", run_dir, "--inspect", "--episodes", 4)
    assert_one_line_error(result, "do not fit its config")
    assert not (run_dir / "inspect").exists()


def test_non_finite_weights_are_named_as_such_not_as_a_shared_torso_mismatch(broken_checkpoints):
    result = run("inspect", broken_checkpoints / "nan.pt", "--episodes", 4, "--out", broken_checkpoints / "o")
    assert_one_line_error(result, "not finite", "actor.torso.1.weight")
    assert "shares" not in result.output and not (broken_checkpoints / "o").exists()


def test_an_inspection_that_fails_midway_removes_the_folder_it_made(broken_checkpoints, monkeypatch):
    import instruments.inspection as inspection

    def video_writer_fails(*args, **kwargs):
        raise OSError(28, "No space left on device", "rollout.mp4")

    monkeypatch.setattr(inspection, "write_video", video_writer_fails)
    out = broken_checkpoints / "midway"
    result = run("inspect", broken_checkpoints / "good" / "checkpoint.pt", "--episodes", 4, "--out", out,
                 "--no-tensorboard")
    assert_one_line_error(result, "No space left on device", "rollout.mp4")
    assert not out.exists()


def test_a_logdir_or_run_path_that_is_a_file_is_one_line(tmp_path):
    (tmp_path / "file").write_text("")
    assert_one_line_error(run(*SMOKE, "--logdir", tmp_path / "file"), "is a file")
    assert_one_line_error(run(*SMOKE, "--logdir", tmp_path, "--run-name", "file"), "a file is in the way")


@contextlib.contextmanager
def mounted(*mount_args):
    """A temporary mount (needs root and CAP_SYS_ADMIN), or a skip where this machine allows none."""
    target = Path(tempfile.mkdtemp())
    if os.geteuid() != 0 or subprocess.run(["mount", *mount_args, str(target)], capture_output=True).returncode:
        target.rmdir()
        pytest.skip("cannot mount here (needs root with CAP_SYS_ADMIN)")
    try:
        yield target
    finally:
        subprocess.run(["umount", "-l", str(target)], check=False)
        target.rmdir()


def test_a_read_only_logdir_is_one_line(tmp_path):
    source = tmp_path / "source"
    source.mkdir()
    with mounted("--bind", "-o", "ro", str(source)) as read_only:
        assert_one_line_error(run(*SMOKE, "--logdir", read_only / "runs"), "Read-only file system")


def test_a_full_disk_keeps_the_last_good_checkpoint_and_says_so(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    with mounted("-t", "tmpfs", "-o", "size=4m", "tmpfs") as disk:
        checkpoint = disk / "run" / "checkpoint.pt"
        process = subprocess.Popen([sys.executable, "cli.py", *SMOKE, "--logdir", str(disk), "--run-name", "run",
                                    "--total-steps", "100000000", "--checkpoint-every", "1"],
                                   cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True)
        try:
            while not checkpoint.exists() and process.poll() is None:
                time.sleep(0.05)
            with open(disk / "filler", "wb") as f, contextlib.suppress(OSError):
                while True:  # until the disk is full
                    f.write(b"\0" * 65536)
                    f.flush()
            stderr = process.communicate(timeout=120)[1]
        finally:
            process.kill()
        assert process.returncode == 1, stderr
        assert "Traceback" not in stderr, stderr
        errors = [line for line in stderr.splitlines() if line.startswith("Error")]
        assert len(errors) == 1, stderr
        assert "could not save" in errors[0] and "No space left on device" in errors[0], errors
        assert f"last good checkpoint: {checkpoint}" in errors[0]
        assert load_checkpoint(checkpoint, resumable=True)["update"] >= 1


# --- messages that name the real cause ---

def test_a_learning_rate_that_blows_up_is_named_not_called_a_dead_entropy_term(tmp_path):
    result = run(*SMOKE, "--logdir", tmp_path, "--learning-rate", "1e6")
    assert_one_line_error(result, "non-finite")
    assert "DEAD" not in result.output and not list(tmp_path.iterdir())
    assert_one_line_error(run(*SMOKE, "--logdir", tmp_path, "--vf-coef", "inf"), "vf_coef must be a finite number")


def test_a_resume_with_other_flags_names_the_differing_field(tmp_path):
    checkpoint = smoke_run(tmp_path, "r")
    result = run(*SMOKE, "--resume", checkpoint, "--learning-rate", "0.001", "--total-steps", 2048)
    assert_one_line_error(result, "learning_rate 0.005 -> 0.001")


def test_a_non_finite_loss_after_resume_names_the_resumed_checkpoint(tmp_path, monkeypatch):
    import breakout_ppo.ppo as ppo
    import breakout_ppo.train as training
    from breakout_ppo.preflight import EntropyCheck

    config = preset("smoke", total_steps=8 * 256)
    train(config.replace(total_steps=4 * 256), tmp_path / "r")
    real_loss = ppo.ppo_loss
    monkeypatch.setattr(ppo, "ppo_loss", lambda *a, **k: (lambda l, m: (l * float("nan"), m))(*real_loss(*a, **k)))
    monkeypatch.setattr(training, "check_entropy_term", lambda config, **where: EntropyCheck(True, 1.0))
    with pytest.raises(TrainingError, match=f"last good checkpoint: {tmp_path / 'r' / 'checkpoint.pt'}$"):
        train(config, tmp_path / "r", resume=tmp_path / "r" / "checkpoint.pt")


# --- smaller ---

@pytest.mark.parametrize("name", ["../x", "/tmp/abs", "", ".", "a/b"])
def test_a_run_name_is_one_folder_inside_the_logdir(tmp_path, name):
    logdir = tmp_path / "runs"
    assert_one_line_error(run(*SMOKE, "--logdir", logdir, "--run-name", name), "--run-name")
    assert not logdir.exists() and not (tmp_path / "x").exists()


def test_a_minibatch_of_one_sample_is_refused(tmp_path):
    result = run(*SMOKE, "--logdir", tmp_path, "--num-envs", 1, "--num-steps", 8, "--num-minibatches", 8)
    assert_one_line_error(result, "at least 2 samples")


def test_resuming_to_a_step_already_reached_trains_nothing_and_writes_nothing(tmp_path):
    checkpoint = smoke_run(tmp_path, "r")
    config_before, checkpoint_before = (tmp_path / "r" / "config.json").read_text(), checkpoint.read_bytes()
    result = run(*SMOKE, "--resume", checkpoint, "--total-steps", 512)
    assert_one_line_error(result, "nothing to train")
    assert (tmp_path / "r" / "config.json").read_text() == config_before and checkpoint.read_bytes() == checkpoint_before


def test_report_warns_about_truncated_or_garbage_event_files(tmp_path):
    smoke_run(tmp_path, "r")
    events = next((tmp_path / "r").glob("events.out.tfevents.*"))
    events.write_bytes(events.read_bytes()[:-7])
    (tmp_path / "r" / "events.out.tfevents.2.host.1.0").write_bytes(b"this is not an event file at all")
    result = run("report", tmp_path / "r")
    assert result.exit_code == 0, result.output
    warnings = [line for line in result.output.splitlines() if line.startswith("warning: damaged event file")]
    assert len(warnings) == 2, result.output
    assert "truncated" in warnings[0] and "not an event file" in warnings[1]
    assert "damaged event file" in (tmp_path / "r" / "report.html").read_text()


def test_evaluate_into_an_unwritable_json_path_is_one_line(tmp_path):
    checkpoint = smoke_run(tmp_path, "r")
    result = run("evaluate", checkpoint, "--episodes", 4, "--json", tmp_path / "missing" / "e.json")
    assert_one_line_error(result, "No such file or directory", "e.json")
