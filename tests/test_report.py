"""The shareable page: `inspect` writes report.html, `report runs/<run>` adds the learning curves.

One smoke-trained, inspected run serves every test. The pages are checked as files (self-contained,
the diagnosis in them, every embedded image and the video decode) and in headless Chromium (the
video element loads a frame, the images decode, a screenshot shows the page)."""

import base64
import json
import re
import shutil

import av
import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from breakout_ppo import cli
from support.headless_chromium import chromium_or_skip, probe_page, screenshot

EPISODES = 16
DATA_URI = re.compile(r'src="data:([a-z]+/[a-z0-9]+);base64,([A-Za-z0-9+/=]+)"')


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A smoke-trained run, inspected into its own inspect/ directory (as `inspect` does by default)."""
    logdir = tmp_path_factory.mktemp("runs")
    runner = CliRunner()
    result = runner.invoke(cli.cli, ["train", "--preset", "smoke", "--run-name", "r", "--logdir", str(logdir)])
    assert result.exit_code == 0, result.output
    result = runner.invoke(cli.cli, ["inspect", str(logdir / "r" / "checkpoint.pt"), "--episodes", str(EPISODES)])
    assert result.exit_code == 0, result.output
    assert "report.html" in result.output
    return logdir / "r"


def embedded(html: str) -> list[tuple[str, bytes]]:
    """Every data-URI `src` of a page as (mime type, bytes)."""
    return [(mime, base64.b64decode(data)) for mime, data in DATA_URI.findall(html)]


def assert_self_contained(html: str):
    """Nothing is fetched: no http(s) src/href, no external style sheet or script."""
    assert not re.search(r'(src|href)\s*=\s*"(https?:)?//', html)
    assert "<link" not in html and "<script" not in html and "@import" not in html and "url(" not in html


def decode_png(data: bytes) -> np.ndarray:
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    assert image is not None and image.shape[0] > 50 and image.shape[1] > 50
    return image


def count_frames(mp4: bytes, tmp_path) -> int:
    path = tmp_path / "embedded.mp4"
    path.write_bytes(mp4)
    with av.open(str(path)) as container:
        return sum(1 for _ in container.decode(video=0))


def test_inspect_writes_a_self_contained_page_with_diagnosis_images_and_video(run_dir, tmp_path):
    inspect_dir = run_dir / "inspect"
    page = (inspect_dir / "report.html").read_text()
    assert_self_contained(page)

    # The diagnosis comes first, every finding in it, the fired ones marked.
    diagnosis = json.loads((inspect_dir / "diagnosis.json").read_text())
    assert page.index('id="diagnosis"') < page.index('id="video"') < page.index('id="failures"')
    for finding in diagnosis["findings"]:
        assert finding["title"] in page and finding["advice"] in page
    fired = sum(f["fired"] for f in diagnosis["findings"])
    assert page.count('class="finding fired"') == fired
    assert f"{fired} of {len(diagnosis['findings'])} findings fired" in page

    # Every image decodes; the video is rollout.mp4 itself and decodes to one frame a step.
    media = embedded(page)
    pngs = [data for mime, data in media if mime == "image/png"]
    videos = [data for mime, data in media if mime == "video/mp4"]
    assert len(pngs) == 4 and len(videos) == 1  # contact sheet, failure heatmap, saliency, traces
    for png in pngs:
        decode_png(png)
    assert videos[0] == (inspect_dir / "rollout.mp4").read_bytes()
    summary = json.loads((inspect_dir / "summary.json").read_text())
    assert count_frames(videos[0], tmp_path) == summary["episode"]["length"]

    # Evaluation figures with a CI, and the checkpoint's config.
    returns = summary["returns"]
    assert returns["episodes"] == EPISODES
    assert f"{returns['mean']:.2f} ± {returns['ci95']:.2f}" in page
    assert "<code>learning_rate</code>" in page and "<code>ent_coef</code>" in page


def test_run_report_plots_the_learning_curves_and_holds_the_latest_inspection(run_dir):
    result = CliRunner().invoke(cli.cli, ["report", str(run_dir)])
    assert result.exit_code == 0, result.output
    page = (run_dir / "report.html").read_text()
    assert_self_contained(page)
    assert page.index('id="diagnosis"') < page.index('id="training"') < page.index('id="video"')
    media = embedded(page)
    assert sum(mime == "video/mp4" for mime, _ in media) == 1
    curves = decode_png(media[0][1])  # the learning curves come first
    assert curves.shape[1] > 1000
    assert "updates logged" in page and "environment steps</td><td>1,024" in page


def test_both_pages_load_in_headless_chromium(run_dir, tmp_path):
    chromium = chromium_or_skip()
    summary = json.loads((run_dir / "inspect" / "summary.json").read_text())
    if not (run_dir / "report.html").exists():
        assert CliRunner().invoke(cli.cli, ["report", str(run_dir)]).exit_code == 0
    for page in (run_dir / "inspect" / "report.html", run_dir / "report.html"):
        probe = probe_page(chromium, page)
        (video,) = probe["videos"]
        # readyState 2 = HAVE_CURRENT_DATA: the browser decoded a frame of the H.264 video.
        assert video["event"] in ("loadeddata", "ready") and video["readyState"] >= 2, video
        assert (video["width"], video["height"]) == (800, 450)
        assert video["duration"] == pytest.approx(summary["episode"]["length"] / 10, abs=0.11)
        assert video["brightness"] > 5, video  # the painted frame is the game, not black
        assert probe["images"] and all(i["complete"] and i["width"] > 50 for i in probe["images"]), probe["images"]

    shot = screenshot(chromium, run_dir / "inspect" / "report.html", tmp_path / "report.png", height=1600)
    image = decode_png(shot.read_bytes())
    assert image.std() > 20  # not blank: text, figures and the video's first frame
    assert len(np.unique(image.reshape(-1, 3)[::97], axis=0)) > 50


def test_report_rebuilds_the_page_of_an_inspection_directory(run_dir):
    (run_dir / "inspect" / "report.html").unlink()
    result = CliRunner().invoke(cli.cli, ["report", str(run_dir / "inspect")])
    assert result.exit_code == 0, result.output
    assert 'id="diagnosis"' in (run_dir / "inspect" / "report.html").read_text()


def test_a_run_without_inspection_says_how_to_make_one(run_dir, tmp_path):
    bare = tmp_path / "bare"
    bare.mkdir()
    for file in run_dir.iterdir():
        if file.name.startswith("events.out.tfevents") or file.name == "config.json":
            shutil.copy(file, bare)
    result = CliRunner().invoke(cli.cli, ["report", str(bare)])
    assert result.exit_code == 0, result.output
    page = (bare / "report.html").read_text()
    assert "no inspection yet" in page and f"python cli.py report {bare} --inspect" in page
    assert 'id="training"' in page and 'id="video"' not in page


def test_an_inspection_from_before_the_diagnosis_still_makes_a_page(run_dir, tmp_path):
    from instruments.show.pages import write_inspection_report

    old = tmp_path / "old"
    shutil.copytree(run_dir / "inspect", old)
    (old / "diagnosis.json").unlink()
    summary = json.loads((old / "summary.json").read_text())
    del summary["returns"], summary["config"]
    (old / "summary.json").write_text(json.dumps(summary))
    page = write_inspection_report(old).read_text()
    assert "no diagnosis.json" in page and "no CI stored" in page
    assert "<code>learning_rate</code>" in page  # read from the checkpoint instead


@pytest.mark.parametrize("case", ["missing", "not a run", "corrupt summary", "corrupt checkpoint"])
def test_bad_input_is_a_one_line_error(run_dir, tmp_path, case):
    args = {"missing": [str(tmp_path / "nowhere")], "not a run": [str(tmp_path)]}.get(case)
    if case == "corrupt summary":
        (tmp_path / "summary.json").write_text("{not json")
        args = [str(tmp_path)]
    if case == "corrupt checkpoint":
        broken = tmp_path / "broken"
        shutil.copytree(run_dir, broken, ignore=shutil.ignore_patterns("inspect"))
        (broken / "checkpoint.pt").write_bytes(b"\x00garbage" * 100)
        args = [str(broken), "--inspect"]
    result = CliRunner().invoke(cli.cli, ["report", *args])
    assert result.exit_code == 1, result.output
    assert result.output.startswith("Error: ") and result.output.count("\n") == 1, result.output
    assert "Traceback" not in result.output
