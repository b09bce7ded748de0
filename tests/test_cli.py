"""The command line as a user meets it: help, training output, bad input, Ctrl-C."""

import dataclasses
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from breakout_ppo import cli
from breakout_ppo.checkpoint import load_checkpoint

ROOT = Path(__file__).resolve().parent.parent


def run(*args):
    return CliRunner().invoke(cli.cli, [str(a) for a in args])


def test_help_and_version():
    assert run("--help").exit_code == 0
    result = run("--version")
    assert result.exit_code == 0 and "0.1.0" in result.output
    assert "--learning-rate" in run("train", "--help").output


def test_train_writes_events_hparams_config_and_checkpoint(tmp_path):
    result = run("train", "--preset", "smoke", "--run-name", "r", "--logdir", tmp_path, "--device", "cpu")
    assert result.exit_code == 0, result.output
    run_dir = tmp_path / "r"
    assert (run_dir / "config.json").exists()
    assert load_checkpoint(run_dir / "checkpoint.pt", resumable=True)["update"] == 4
    events = EventAccumulator(str(run_dir))
    events.Reload()
    scalars = set(events.Tags()["scalars"])
    for tag in ("charts/episodic_return", "charts/SPS", "charts/learning_rate", "losses/policy_loss",
                "losses/value_loss", "losses/entropy", "losses/approx_kl", "losses/clip_fraction",
                "losses/explained_variance"):
        assert tag in scalars, tag
    # HParams live in this run's own event file, not in a sibling run directory.
    assert "_hparams_/experiment" in events.PluginTagToContent("hparams")
    assert [p.name for p in run_dir.iterdir() if p.is_dir()] == []


def test_stop_at_step_stops_there_with_a_checkpoint(tmp_path):
    result = run("train", "--preset", "smoke", "--run-name", "r", "--logdir", tmp_path, "--device", "cpu",
                 "--stop-at-step", "300")
    assert result.exit_code == 0, result.output
    assert "stopped at 512 steps as asked" in result.output  # the first update boundary past 300
    saved = load_checkpoint(tmp_path / "r" / "checkpoint.pt", resumable=True)
    assert saved["update"] == 2 and saved["config"]["total_steps"] == 1024


def test_a_resume_without_preset_keeps_the_checkpoints_config(tmp_path):
    first = run("train", "--preset", "smoke", "--learning-rate", "0.001", "--hidden", "32", "--run-name", "r",
                "--logdir", tmp_path, "--device", "cpu")
    assert first.exit_code == 0, first.output
    # No --preset and no flags but a longer run: the smoke preset and its changed fields carry on.
    more = run("train", "--resume", tmp_path / "r" / "checkpoint.pt", "--total-steps", "2048", "--device", "cpu")
    assert more.exit_code == 0, more.output
    saved = load_checkpoint(tmp_path / "r" / "checkpoint.pt", resumable=True)
    assert saved["global_step"] == 2048
    assert saved["config"]["learning_rate"] == 0.001 and saved["config"]["hidden"] == 32
    assert saved["config"]["num_envs"] == 8  # the smoke preset's
    # A flag that contradicts the checkpoint is still refused, naming the field.
    other = run("train", "--resume", tmp_path / "r" / "checkpoint.pt", "--total-steps", "4096",
                "--learning-rate", "0.002", "--device", "cpu")
    assert other.exit_code == 1 and "learning_rate 0.001 -> 0.002" in other.output


def test_a_new_run_on_cuda_without_preset_takes_the_gpu_preset_and_says_so(capsys):
    # Only the device's type is read: no GPU needed to check the choice.
    config = cli.starting_config(None, None, torch.device("cuda"), {"seed": 4})
    assert config == cli.preset("gpu", seed=4)
    assert "using the gpu preset" in capsys.readouterr().err
    assert cli.starting_config(None, None, torch.device("cpu"), {}) == cli.preset("default")
    assert cli.starting_config("default", None, torch.device("cuda"), {}) == cli.preset("default")


BAD_FLAGS = [
    ("train", "--num-envs", "0"),
    ("train", "--learning-rate", "-1"),
    ("train", "--learning-rate", "fast"),
    ("train", "--gamma", "1.5"),
    ("train", "--num-minibatches", "7"),
    ("train", "--arch", "transformer"),
    ("train", "--precision", "float8"),
    ("train", "--shared-layers", "3"),
    ("train", "--preset", "huge"),
    ("train", "--max-episode-steps", "forever"),
    ("train", "--snapshot-at", "soon"),
    ("train", "--stop-at-step", "0"),
    ("train", "--partial-wall-starts", "1.5"),
    ("train", "--device", "tpu"),
    ("evaluate", "whatever.pt", "--episodes", "0"),
]


@pytest.mark.parametrize("args", BAD_FLAGS, ids=[" ".join(a) for a in BAD_FLAGS])
def test_nonsense_flags_get_a_clear_error(args, tmp_path):
    result = run(*args, *(["--logdir", tmp_path] if args[0] == "train" else []))
    assert result.exit_code != 0
    assert "Error" in result.output and "Traceback" not in result.output
    assert not isinstance(result.exception, Exception) or isinstance(result.exception, SystemExit)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_cuda_without_a_gpu_is_a_clear_error(tmp_path):
    result = run("train", "--preset", "smoke", "--device", "cuda", "--logdir", tmp_path)
    assert result.exit_code != 0 and "no CUDA GPU" in result.output


def test_evaluate_prints_both_policies(tmp_path):
    assert run("train", "--preset", "smoke", "--run-name", "r", "--logdir", tmp_path).exit_code == 0
    result = run("evaluate", tmp_path / "r" / "checkpoint.pt", "--episodes", "16", "--json", tmp_path / "e.json")
    assert result.exit_code == 0, result.output
    assert "sampled" in result.output and "greedy" in result.output
    assert (tmp_path / "e.json").exists()


def test_evaluate_a_corrupt_checkpoint_is_one_line(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint at all")
    result = subprocess.run([sys.executable, "cli.py", "evaluate", str(bad)], cwd=ROOT, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode != 0
    assert result.stderr.strip().count("\n") == 0 and "Error" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_a_stop_signal_saves_flushes_exits_128_plus_signal_and_resumes_from_the_saved_step(tmp_path, signum):
    # SIGTERM is what schedulers, containers and sweep managers send: it must save like Ctrl-C.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    args = ["train", "--preset", "smoke", "--total-steps", "100000000", "--checkpoint-every", "100000"]
    process = subprocess.Popen([sys.executable, "cli.py", *args, "--run-name", "c", "--logdir", str(tmp_path)],
                               cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True)
    try:
        # Wait until training is under way (the first progress line), then send the signal.
        for line in process.stderr:
            if "SPS" in line:
                break
        process.send_signal(signum)
        rest = process.communicate(timeout=60)[1]
    finally:
        process.kill()
    assert process.returncode == 128 + signum, rest
    assert f"stopped by {signal.Signals(signum).name}" in rest and "checkpoint saved" in rest
    checkpoint = tmp_path / "c" / "checkpoint.pt"
    payload = load_checkpoint(checkpoint, resumable=True)
    assert payload["update"] >= 1
    events = EventAccumulator(str(tmp_path / "c"))
    events.Reload()
    assert len(events.Scalars("losses/policy_loss")) >= payload["update"]

    # Resuming continues from the saved step, in the same folder, to the new end.
    saved_step, total = payload["global_step"], payload["global_step"] + 2 * 256
    result = run(*args[:3], "--total-steps", total, "--checkpoint-every", "100000", "--resume", checkpoint)
    assert result.exit_code == 0, result.output
    resumed = load_checkpoint(checkpoint, resumable=True)
    assert (resumed["global_step"], resumed["update"]) == (total, payload["update"] + 2)
    events = EventAccumulator(str(tmp_path / "c"))
    events.Reload()
    steps = [e.step for e in events.Scalars("losses/policy_loss")]
    assert len(steps) == len(set(steps)) and max(steps) == total and saved_step + 256 in steps


def test_training_into_an_existing_run_is_refused_not_overwritten(tmp_path):
    args = ["train", "--preset", "smoke", "--run-name", "r", "--logdir", tmp_path]
    assert run(*args).exit_code == 0
    before = (tmp_path / "r" / "checkpoint.pt").read_bytes()
    result = run(*args)
    assert result.exit_code != 0 and "already holds a run" in result.output
    assert (tmp_path / "r" / "checkpoint.pt").read_bytes() == before


@pytest.mark.parametrize("anneal_ent", [False, True])
def test_entropy_coefficient_follows_its_schedule(tmp_path, anneal_ent):
    flag = "--anneal-ent" if anneal_ent else "--no-anneal-ent"
    result = run("train", "--preset", "smoke", "--run-name", "r", "--logdir", tmp_path, "--device", "cpu",
                 "--ent-coef", "0.02", flag)
    assert result.exit_code == 0, result.output
    events = EventAccumulator(str(tmp_path / "r"))
    events.Reload()
    logged = [e.value for e in events.Scalars("charts/ent_coef")]
    rates = [e.value for e in events.Scalars("charts/learning_rate")]
    updates = 4  # the smoke preset: 1024 steps in batches of 256
    remaining = [1 - u / updates for u in range(updates)]
    expected = [0.02 * r for r in remaining] if anneal_ent else [0.02] * updates
    assert logged == pytest.approx(expected, rel=1e-6)
    # The same schedule as the learning rate's, which anneals in both cases.
    assert rates == pytest.approx([5e-3 * r for r in remaining], rel=1e-6)


def test_timed_snapshots_hold_the_last_model_before_each_deadline(tmp_path):
    # No model exists before t = 0 s (the process start): no file. A deadline after the end of
    # training holds the final model.
    result = run("train", "--preset", "smoke", "--run-name", "r", "--logdir", tmp_path, "--snapshot-at", "0,100000")
    assert result.exit_code == 0, result.output
    assert not (tmp_path / "r" / "snapshot-0s.pt").exists()
    snapshot = load_checkpoint(tmp_path / "r" / "snapshot-100000s.pt")
    final = load_checkpoint(tmp_path / "r" / "checkpoint.pt")
    assert snapshot["kind"] == "model" and snapshot["global_step"] == final["global_step"] == 1024
    assert all(torch.equal(snapshot["model"][k], final["model"][k]) for k in final["model"])


def test_every_config_flag_shows_its_default_in_help():
    from breakout_ppo.config import Config

    fields = {f.name: f for f in dataclasses.fields(Config)}
    options = {p.name: p for p in cli.train.params if p.name in fields}
    assert set(options) == set(fields)
    for name, option in options.items():
        assert option.help.endswith(f"[default: {cli.shown_default(fields[name])}]"), (name, option.help)
    help_text = " ".join(run("train", "--help").output.split())
    assert "[default: 14,000,000]" in help_text and "[default: on]" in help_text


def test_the_installed_console_command_is_the_same_command_line():
    script = Path(sys.executable).parent / "breakout-ppo"
    if not script.exists() and os.environ.get("CI") != "true":
        pytest.skip("this environment was installed before the console script existed: pip install -e . again")
    result = subprocess.run([str(script), "train", "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "Usage: breakout-ppo train" in result.stdout and "[default: 14,000,000]" in " ".join(result.stdout.split())
    # `python cli.py` in a clone is a thin entry to the same group.
    thin = subprocess.run([sys.executable, "cli.py", "train", "--help"], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert thin.stdout.startswith("Usage: cli.py train")
    assert thin.stdout.split("Options:", 1)[1] == result.stdout.split("Options:", 1)[1]
