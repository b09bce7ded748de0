"""The README's Python example runs as written, against a run trained the way the README says."""

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def readme_python_example() -> str:
    section = (ROOT / "README.md").read_text().split("## Use it from Python", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert len(blocks) == 1, "the section holds one Python example"
    return blocks[0]


def test_the_readme_python_example_runs(tmp_path):
    train = subprocess.run([sys.executable, str(ROOT / "cli.py"), "train", "--preset", "smoke", "--run-name", "quick"],
                           cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert train.returncode == 0, train.stderr
    run = subprocess.run([sys.executable, "-c", readme_python_example()], cwd=tmp_path, capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert re.fullmatch(r"\d+ of 64 episodes lost the ball, mean return \d+\.\d\n", run.stdout), run.stdout
