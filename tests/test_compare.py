"""`cli.py compare A.pt B.pt`: Welch's interval against a hand computation, the differences that
matter on made-up agents, and the whole command on two smoke-trained agents (terminal, TensorBoard,
the page in headless Chromium)."""

import html
import json
import math
import re

import numpy as np
import pytest
from click.testing import CliRunner
from scipy import stats
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from breakout_ppo import cli
from breakout_ppo.evaluate import EvalResult
from support.headless_chromium import chromium_or_skip, probe_page, screenshot
from instruments.judge.compare import (
    Agent,
    difference_sentence,
    differences_that_matter,
    welch_difference,
)
from instruments.judge.diagnose import Diagnosis, Finding

EPISODES = 16


# ---------------------------------------------------------------------------------------------
# Statistics


def test_welch_interval_is_the_hand_computation():
    a = np.array([12.0, 15.0, 11.0, 14.0, 13.0, 16.0, 12.0, 14.0])
    b = np.array([18.0, 25.0, 14.0, 22.0, 30.0, 19.0])
    # By hand: means 13.375 and 21.333, sums of squared deviations 19.875 and 159.333, so the
    # squared standard errors are 19.875 / 7 / 8 and 159.333 / 5 / 6, and Welch-Satterthwaite's
    # df = (sa + sb)^2 / (sa^2 / 7 + sb^2 / 5) = 5.672 (scipy's ttest_ind(equal_var=False) agrees,
    # t = 3.343, p = 0.017: significant at 5%).
    sa, sb = 19.875 / 7 / 8, 159.3333333 / 5 / 6
    df = (sa + sb) ** 2 / (sa**2 / 7 + sb**2 / 5)
    assert df == pytest.approx(5.6725, abs=1e-3)
    # t(0.975) lies between the table's df 5 (2.5706) and df 6 (2.4469).
    critical = stats.t.ppf(0.975, df)
    assert 2.4469 < critical < 2.5706
    result = welch_difference(a, b)
    assert result.difference == pytest.approx(b.mean() - a.mean())
    assert result.df == pytest.approx(df)
    assert result.half_width == pytest.approx(critical * math.sqrt(sa + sb))
    assert result.significant and result.low > 0  # 7.96 ± 5.91

    overlapping = welch_difference(a, a[::-1] + 0.5)
    assert not overlapping.significant and overlapping.low < 0 < overlapping.high
    assert "not significant" in difference_sentence(overlapping) and "significant)" in difference_sentence(result)
    assert welch_difference([3.0, 3.0], [3.0, 3.0]).half_width == 0.0


# ---------------------------------------------------------------------------------------------
# The differences that matter, on made-up agents


def finding(name, fired, value, details=None):
    return Finding(name=name, title=name.replace("_", " "), fired=fired, value=value, threshold=0.1,
                   comparison="<", advice="do something", details=details or {})


def made_up_agent(label, returns, entropy_fired, loss_columns, saliency_rows):
    saliency = np.zeros((10, 10))
    saliency[saliency_rows] = 1.0
    diagnosis = Diagnosis([finding("entropy_collapse", entropy_fired, 0.05 if entropy_fired else 0.3),
                           finding("failure_hot_spots", False, 3.0, {"loss_column_counts": loss_columns})])
    returns = np.asarray(returns, dtype=np.float64)
    evaluation = EvalResult(returns, np.full(len(returns), 100), np.zeros(len(returns), dtype=bool))
    return Agent(label, None, None, 0, {}, evaluation, {}, diagnosis, saliency)


def test_the_callouts_name_the_return_the_findings_the_losses_and_the_gaze():
    rng = np.random.default_rng(0)
    a = made_up_agent("A", rng.normal(10, 2, 200), True, [0, 0, 0, 0, 0, 0, 0, 10, 40, 10], slice(9, 10))
    b = made_up_agent("B", rng.normal(20, 3, 200), False, [5, 10, 20, 10, 5, 0, 0, 0, 0, 0], slice(1, 4))
    lines = differences_that_matter(a, b, welch_difference(a.evaluation.returns, b.evaluation.returns))
    text = "\n".join(lines)
    assert re.match(r"B scores \d+\.\d\d ± \d\.\d\d more than A .*: significant\)", lines[0])
    assert "entropy collapse fires on A only" in text
    assert "the loss hot spots moved: A loses most balls in column 8 (67%), B in column 2 (40%)" in text
    assert "B looks more at the brick rows (1-3): 100% of its saliency, A 0%" in text
    assert "B looks less at the paddle row (9)" in text

    same = differences_that_matter(a, a, welch_difference(a.evaluation.returns, a.evaluation.returns))
    assert same[0].startswith("B scores 0.00") and "not significant" in same[0]
    assert "entropy collapse fires on both" in same[1] and len(same) == 2


# ---------------------------------------------------------------------------------------------
# The command, end to end


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    logdir = tmp_path_factory.mktemp("runs")
    for name, seed in (("a", "1"), ("b", "2")):
        result = CliRunner().invoke(cli.cli, ["train", "--preset", "smoke", "--run-name", name, "--seed", seed,
                                              "--logdir", str(logdir)])
        assert result.exit_code == 0, result.output
    return logdir / "a" / "checkpoint.pt", logdir / "b" / "checkpoint.pt"


@pytest.fixture(scope="module")
def comparison(checkpoints, tmp_path_factory):
    out = tmp_path_factory.mktemp("compare")
    result = CliRunner().invoke(cli.cli, ["compare", *map(str, checkpoints), "--out", str(out),
                                          "--episodes", str(EPISODES), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    return out, result.output


def test_compare_recomputes_to_the_hand_welch_and_prints_the_table(checkpoints, comparison):
    import torch

    from breakout_ppo.checkpoint import load_agent
    from breakout_ppo.evaluate import SETTINGS, evaluate

    out, output = comparison
    record = json.loads((out / "compare.json").read_text())
    # The same evaluation again (deterministic on CPU, where the fixture ran it), and Welch's interval by hand.
    returns = []
    for checkpoint in checkpoints:
        model, _ = load_agent(checkpoint)
        with torch.no_grad():
            returns.append(evaluate(model, episodes=EPISODES, seed=12345, **SETTINGS["default"]).returns)
    a, b = (np.asarray(r, dtype=np.float64) for r in returns)
    assert record["A"]["mean"] == pytest.approx(a.mean()) and record["B"]["mean"] == pytest.approx(b.mean())
    sa, sb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    df = (sa + sb) ** 2 / (sa**2 / (len(a) - 1) + sb**2 / (len(b) - 1))
    half_width = stats.t.ppf(0.975, df) * math.sqrt(sa + sb)
    assert record["difference"]["b_minus_a"] == pytest.approx(b.mean() - a.mean())
    assert record["difference"]["ci95"] == pytest.approx(half_width)
    assert record["difference"]["significant"] == (abs(b.mean() - a.mean()) > half_width)

    assert "mean return ± 95% CI" in output and "differences that matter:" in output
    assert f"{b.mean() - a.mean():+.2f} ± {half_width:.2f}" in output
    assert "value stuck" in output  # the diagnosis table
    assert (out / "A" / "report.html").exists() and (out / "B" / "report.html").exists()


def test_compare_logs_to_tensorboard(comparison):
    out, _ = comparison
    record = json.loads((out / "compare.json").read_text())
    events = EventAccumulator(str(out), size_guidance={"images": 0, "histograms": 0, "tensors": 0})
    events.Reload()
    tags = events.Tags()
    assert {"compare/differences", "compare/failure_heatmaps", "compare/saliency"} <= set(tags["images"])
    assert {"compare/A/returns", "compare/B/returns"} <= set(tags["histograms"])
    (difference,) = events.Scalars("compare/difference")
    assert difference.value == pytest.approx(record["difference"]["b_minus_a"], abs=1e-5)
    assert events.Scalars("compare/A/mean_return")[0].value == pytest.approx(record["A"]["mean"], abs=1e-5)
    assert "compare/summary/text_summary" in tags["tensors"]


def test_compare_page_is_self_contained_and_plays_in_chromium(comparison, tmp_path):
    import base64

    import cv2

    out, _ = comparison
    page = (out / "compare.html").read_text()
    assert not re.search(r'(src|href)\s*=\s*"(https?:)?//', page) and "<script" not in page and "<link" not in page
    record = json.loads((out / "compare.json").read_text())
    for sentence in record["differences_that_matter"]:
        assert html.escape(sentence, quote=True) in page  # a finding's sentence may hold "<" or "&"
    media = re.findall(r'src="data:([a-z]+/[a-z0-9]+);base64,([A-Za-z0-9+/=]+)"', page)
    assert [m for m, _ in media].count("video/mp4") == 2 and [m for m, _ in media].count("image/png") == 5
    for mime, data in media:
        if mime == "image/png":
            assert cv2.imdecode(np.frombuffer(base64.b64decode(data), np.uint8), cv2.IMREAD_COLOR) is not None

    chromium = chromium_or_skip()
    probe = probe_page(chromium, out / "compare.html")
    assert len(probe["videos"]) == 2
    for video in probe["videos"]:
        assert video["readyState"] >= 2 and (video["width"], video["height"]) == (800, 450), video
    assert all(i["complete"] and i["width"] > 50 for i in probe["images"])
    shot = cv2.imread(str(screenshot(chromium, out / "compare.html", tmp_path / "compare.png", height=1600)))
    assert shot is not None and shot.std() > 20


@pytest.mark.parametrize("which", ["missing", "corrupt"])
def test_a_bad_checkpoint_is_a_one_line_error(checkpoints, tmp_path, which):
    bad = tmp_path / "bad.pt"
    if which == "corrupt":
        bad.write_bytes(b"not a checkpoint" * 64)
    result = CliRunner().invoke(cli.cli, ["compare", str(checkpoints[0]), str(bad), "--out", str(tmp_path / "o")])
    assert result.exit_code == 1 and result.output.startswith("Error: ") and result.output.count("\n") == 1
    assert str(bad) in result.output and ("checkpoint not found" in result.output) == (which == "missing")
    assert not (tmp_path / "o").exists()  # refused before any work
