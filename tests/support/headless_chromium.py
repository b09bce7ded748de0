"""Open a page in headless Chromium, as a reader would: does every video load and every image
decode, and what does the page look like (a screenshot)?

No Python browser driver: Chromium's own `--dump-dom` returns the DOM after a probe script,
injected into a copy of the page, has written what it measured into it; `--screenshot` takes the
picture. Both run under `--virtual-time-budget`, which lets the page load its media first.

`chromium_or_skip()` skips a test when Chromium is not installed, and fails it instead under
`CI=true`: CI (.ci/run) installs Chromium, so a missing one there is a broken CI, not a skip.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

CANDIDATES = ("chromium", "chromium-browser", "google-chrome")
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--hide-scrollbars", "--mute-audio")

# Waits for each <video> to reach readyState >= 2 (HAVE_CURRENT_DATA: a frame is decoded), paints
# that frame on a canvas and measures its mean brightness, checks every <img> decoded, and writes
# all of it as JSON into <pre id="browser-probe">.
PROBE = """
<script>
(async () => {
  const waitForData = (v) => new Promise((resolve) => {
    if (v.readyState >= 2) return resolve("ready");
    v.addEventListener("loadeddata", () => resolve("loadeddata"));
    v.addEventListener("error", () => resolve("error " + (v.error ? v.error.code + " " + v.error.message : "")));
    setTimeout(() => resolve("timeout"), 15000);
  });
  const videos = [];
  for (const v of document.querySelectorAll("video")) {
    const event = await waitForData(v);
    let brightness = null;
    try {
      const canvas = document.createElement("canvas");
      canvas.width = v.videoWidth; canvas.height = v.videoHeight;
      const context = canvas.getContext("2d");
      context.drawImage(v, 0, 0);
      const pixels = context.getImageData(0, 0, canvas.width, canvas.height).data;
      let sum = 0;
      for (let i = 0; i < pixels.length; i += 4) sum += pixels[i] + pixels[i + 1] + pixels[i + 2];
      brightness = sum / (3 * pixels.length / 4);
    } catch (e) { brightness = "canvas: " + e.name; }
    videos.push({event, readyState: v.readyState, duration: v.duration, width: v.videoWidth,
                 height: v.videoHeight, brightness});
  }
  const images = [...document.images].map((i) => ({complete: i.complete, width: i.naturalWidth,
                                                   height: i.naturalHeight}));
  const out = document.createElement("pre");
  out.id = "browser-probe";
  out.textContent = JSON.stringify({videos, images});
  document.body.appendChild(out);
})();
</script>
"""


def find_chromium() -> str | None:
    for name in CANDIDATES:
        path = shutil.which(name)
        if path:
            return path
    return None


def chromium_or_skip() -> str:
    path = find_chromium()
    if path is None:
        reason = ("headless Chromium is not installed (`apt-get install chromium`), so the page was not opened "
                  "in a browser")
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true but {reason}: .ci/run should have installed it")
        pytest.skip(reason)
    return path


def _run(chromium: str, args: list[str], timeout: float = 120) -> subprocess.CompletedProcess:
    with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile:
        return subprocess.run([chromium, *FLAGS, f"--user-data-dir={profile}", *args], capture_output=True,
                              text=True, timeout=timeout)


def probe_page(chromium: str, page: Path) -> dict:
    """Load `page` (a copy with the probe script) and return what the probe measured."""
    html = page.read_text()
    probed = page.with_name(page.stem + ".probe.html")
    probed.write_text(html.replace("</body>", PROBE + "</body>", 1))
    try:
        result = _run(chromium, ["--virtual-time-budget=20000", "--dump-dom", probed.resolve().as_uri()])
    finally:
        probed.unlink(missing_ok=True)
    match = re.search(r'<pre id="browser-probe">(.*?)</pre>', result.stdout, re.S)
    assert match, f"the probe wrote nothing (exit {result.returncode}): {result.stderr[-2000:]}"
    return json.loads(match.group(1).replace("&quot;", '"').replace("&amp;", "&"))


def screenshot(chromium: str, page: Path, png: Path, width: int = 1280, height: int = 2400) -> Path:
    """A PNG of the top `height` pixels of `page` at `width`."""
    result = _run(chromium, [f"--window-size={width},{height}", "--virtual-time-budget=10000",
                             f"--screenshot={png}", page.resolve().as_uri()])
    assert png.is_file(), f"no screenshot (exit {result.returncode}): {result.stderr[-2000:]}"
    return png
