"""Makes the fixture of `test_a_checkpoint_from_before_the_env_split_resumes_bit_for_bit`.

`pre_split_checkpoint.pt` is a training checkpoint written by the code as it was before
`breakout_ppo/env.py` became the package `breakout_ppo/env/` (commit 5e3b71f): the smoke preset
with a 16-unit model (to keep the file small), stopped after 2 of its 4 updates.
`pre_split_checkpoint.json` holds the digest of where that same old code got to by resuming the
checkpoint for the last 2 updates. Run once, against the old code, from the repository root:

    git worktree add /tmp/before 5e3b71f
    PYTHONPATH=/tmp/before python tests/data/make_pre_split_checkpoint.py tests/data

The digest is of float32 training on a CPU: another torch version (or CPU kernels) may round
differently, which is why the JSON records the torch version.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

CONFIG = dict(hidden=16, total_steps=4 * 8 * 32, checkpoint_every=100)  # overrides of the smoke preset
STOP_AFTER_UPDATES = 2


def digest(payload: dict) -> str:
    """SHA-256 of everything a resumed run carries on: weights, optimizer moments, the env's games,
    counters and RNG, the sampler's RNG, the step counts."""
    h = hashlib.sha256()

    def add(name, tensor):
        tensor = torch.as_tensor(tensor).detach().cpu().contiguous()
        h.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}:".encode())
        h.update(tensor.view(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")

    for name, tensor in payload["model"].items():
        add(f"model.{name}", tensor)
    for index, state in sorted(payload["optimizer"]["state"].items()):
        for key, value in sorted(state.items()):
            add(f"optimizer.{index}.{key}", value)
    for name, tensor in payload["env"]["state"].items():
        add(f"env.state.{name}", tensor)
    for name, tensor in payload["env"].items():
        if name != "state":
            add(f"env.{name}", tensor)
    for name in ("env", "sampler"):
        add(f"rng.{name}", payload["rng"][name])
    h.update(f"{payload['global_step']}:{payload['update']}".encode())
    return h.hexdigest()


def main(out_dir: str) -> None:
    import breakout_ppo.env
    from breakout_ppo.checkpoint import load_checkpoint
    from breakout_ppo.config import preset
    from breakout_ppo.train import train

    if Path(breakout_ppo.env.__file__).name != "env.py":
        sys.exit(f"run this against the code from before the env split, not {breakout_ppo.env.__file__}")
    out = Path(out_dir)
    config = preset("smoke", **CONFIG)
    with tempfile.TemporaryDirectory() as tmp:
        first = train(config, Path(tmp) / "first", stop_at_step=STOP_AFTER_UPDATES * config.batch_size)
        fixture = out / "pre_split_checkpoint.pt"
        fixture.write_bytes(Path(first.last_checkpoint).read_bytes())
        rest = train(config, Path(tmp) / "rest", resume=fixture)
        resumed = load_checkpoint(rest.last_checkpoint, resumable=True)
        straight = load_checkpoint(train(config, Path(tmp) / "straight").last_checkpoint, resumable=True)
    if digest(resumed) != digest(straight):
        sys.exit("the old code does not resume bit for bit here: no fixture to make")
    root = Path(breakout_ppo.env.__file__).parent.parent
    commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    record = dict(made_by_commit=commit, torch=torch.__version__,
                  config=CONFIG, resumed_updates=rest.updates, digest_after_resume=digest(resumed))
    (out / "pre_split_checkpoint.json").write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(record, indent=2))


if __name__ == "__main__":
    main(sys.argv[1])
