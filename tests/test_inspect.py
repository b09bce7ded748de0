"""`cli.py inspect` end to end on a briefly trained agent: files, a decodable video, TensorBoard tags."""

import json
import shutil
from pathlib import Path

import av
import pytest
from click.testing import CliRunner
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from breakout_ppo import cli
from instruments.judge.diagnose import FINDING_NAMES, Diagnosis


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    logdir = tmp_path_factory.mktemp("runs")
    result = CliRunner().invoke(cli.cli, ["train", "--preset", "smoke", "--run-name", "r", "--logdir", str(logdir)])
    assert result.exit_code == 0, result.output
    return logdir / "r" / "checkpoint.pt"


def test_inspect_writes_every_instrument_and_logs_them(checkpoint, tmp_path):
    out = tmp_path / "out"
    result = CliRunner().invoke(cli.cli, ["inspect", str(checkpoint), "--episodes", "24", "--out", str(out)])
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["heatmap"]["episodes"] == 24
    assert summary["entropy_term"]["passed"] and "entropy term live" in result.output
    for name in ("rollout.mp4", "contact_sheet.png", "trace.csv", "trace.json", "traces.png", "saliency.npz",
                 "saliency_mean.png", "failure_heatmap.png"):
        assert (out / name).stat().st_size > 0, name

    steps = summary["episode"]["length"]
    assert len((out / "trace.csv").read_text().strip().splitlines()) == steps + 1  # header + one row a step
    with av.open(str(out / "rollout.mp4")) as container:
        assert sum(1 for _ in container.decode(video=0)) == steps

    events = EventAccumulator(str(checkpoint.parent), size_guidance={"images": 0, "histograms": 0})
    events.Reload()
    tags = events.Tags()
    assert {"inspect/heatmap", "inspect/contact_sheet", "inspect/saliency_plot", "inspect/traces_plot",
            "inspect/rollout"} <= set(tags["images"])
    assert "inspect/episode_return" in tags["scalars"] and "inspect/value" in tags["histograms"]
    text = events.Tensors("inspect/diagnosis/text_summary")[-1].tensor_proto.string_val[0].decode()
    assert "findings fired" in text and "dead entropy term" in text


def test_inspect_writes_and_prints_the_diagnosis(checkpoint, tmp_path):
    out = tmp_path / "out"
    result = CliRunner().invoke(cli.cli, ["inspect", str(checkpoint), "--episodes", "24", "--out", str(out),
                                          "--no-tensorboard"])
    assert result.exit_code == 0, result.output
    record = json.loads((out / "diagnosis.json").read_text(), parse_constant=pytest.fail)  # strict JSON
    diagnosis = Diagnosis.from_dict(record)
    assert [f.name for f in diagnosis.findings] == list(FINDING_NAMES)
    assert json.loads((out / "summary.json").read_text())["files"]["diagnosis"] == str(out / "diagnosis.json")
    # One line a finding: title, value, threshold, verdict, advice; a fired one marked "!!".
    lines = {f.name: next(line for line in result.output.splitlines() if f" {f.title} " in line)
             for f in diagnosis.findings}
    for f in diagnosis.findings:
        line = lines[f.name]
        assert f"fires {f.comparison}" in line and f.advice in line
        assert line.lstrip().startswith("!!") == f.fired and ("FIRED" in line) == f.fired
    assert not diagnosis.findings[FINDING_NAMES.index("dead_entropy_term")].fired  # the real update


def test_inspect_a_missing_checkpoint_is_a_clear_error(tmp_path):
    result = CliRunner().invoke(cli.cli, ["inspect", str(tmp_path / "missing.pt")])
    assert result.exit_code != 0 and "checkpoint not found" in result.output


def test_instrument_every_logs_the_panel_and_does_not_change_training(tmp_path):
    import torch

    from breakout_ppo.checkpoint import load_checkpoint

    base = ["train", "--preset", "smoke", "--logdir", str(tmp_path)]
    assert CliRunner().invoke(cli.cli, [*base, "--run-name", "plain"]).exit_code == 0
    result = CliRunner().invoke(cli.cli, [*base, "--run-name", "watched", "--instrument-every", "2"])
    assert result.exit_code == 0, result.output

    events = EventAccumulator(str(tmp_path / "watched"), size_guidance={"images": 0, "histograms": 0})
    events.Reload()
    tags = events.Tags()
    assert {"panel/rollout", "panel/saliency", "panel/failure_heatmap"} <= set(tags["images"])
    histograms = tags["histograms"]
    for prefix in ("weights/", "gradients/", "activations/"):
        assert any(tag.startswith(prefix) for tag in histograms), prefix
    assert len(events.Images("panel/saliency")) == 2  # updates 2 and 4 of 4

    plain = load_checkpoint(tmp_path / "plain" / "checkpoint.pt", resumable=True)["model"]
    watched = load_checkpoint(tmp_path / "watched" / "checkpoint.pt", resumable=True)["model"]
    assert all(torch.equal(plain[name], watched[name]) for name in plain)


def test_inspect_takes_a_run_directory_and_gives_each_checkpoint_its_own_folder(checkpoint):
    run_dir = checkpoint.parent
    shutil.copy(checkpoint, run_dir / "snapshot-90s.pt")
    for target in (run_dir, run_dir / "snapshot-90s.pt"):
        result = CliRunner().invoke(cli.cli, ["inspect", str(target), "--episodes", "8", "--no-tensorboard"])
        assert result.exit_code == 0, result.output
    first = json.loads((run_dir / "inspect" / "summary.json").read_text())
    second = json.loads((run_dir / "inspect-snapshot-90s" / "summary.json").read_text())
    assert Path(first["checkpoint"]).name == "checkpoint.pt"
    assert Path(second["checkpoint"]).name == "snapshot-90s.pt"


def test_inspect_example_shows_the_packaged_agent_and_writes_only_under_runs(tmp_path, monkeypatch):
    from breakout_ppo.checkpoint import load_agent

    agent = cli.example_agent_path()
    _, config = load_agent(agent)  # a real, loadable agent of the default preset
    assert config.hidden == 128 and agent.stat().st_size < 1_000_000
    record = json.loads((agent.parent / "example_agent.json").read_text())
    assert record["config"] == config.to_dict() and record["evaluation"]["sampled"]["episodes"] == 1024
    package_files = sorted(p.name for p in agent.parent.iterdir())
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(cli.cli, ["inspect", "--example", "--episodes", "8", "--max-video-steps", "50"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "runs" / "example-agent" / "inspect" / "report.html").is_file()
    assert sorted(p.name for p in agent.parent.iterdir()) == package_files  # nothing written into the package
    assert CliRunner().invoke(cli.cli, ["inspect"]).exit_code == 2  # neither a checkpoint nor --example


def test_a_built_wheel_carries_the_example_agent(tmp_path):
    # What a non-editable install gets: the wheel's files.
    import subprocess
    import sys
    import zipfile

    root = Path(cli.__file__).resolve().parent.parent
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w",
                            str(tmp_path), str(root)], capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stderr[-2000:]
    wheel = next(tmp_path.glob("breakout_ppo-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {"breakout_ppo/data/example_agent.pt", "breakout_ppo/data/example_agent.json"} <= names
    assert any(name.endswith("entry_points.txt") for name in names)
