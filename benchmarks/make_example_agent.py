"""Make the example agent shipped as package data from a finished run: its model alone (well under
1 MB), and beside it a JSON of its config, where it came from and its evaluation.

    python cli.py train --run-name example-default-seed1          # the default preset, seed 1
    python benchmarks/make_example_agent.py runs/example-default-seed1/checkpoint.pt

`python cli.py inspect --example` then shows it (breakout_ppo/data/README.md).
"""

from __future__ import annotations

import argparse
import json
import subprocess
from pathlib import Path

import torch

from breakout_ppo.checkpoint import load_agent, load_checkpoint, save_model
from breakout_ppo.evaluate import SETTINGS, evaluate

DATA = Path(__file__).resolve().parent.parent / "breakout_ppo" / "data"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--episodes", type=int, default=1024)
    parser.add_argument("--trained-at", default=None, metavar="COMMIT",
                        help="The commit the run was trained with (a checkpoint does not record it).")
    args = parser.parse_args()
    payload = load_checkpoint(args.checkpoint)
    model, config = load_agent(args.checkpoint)
    path = save_model(DATA / "example_agent.pt", model.state_dict(), config, payload["global_step"],
                      float(payload.get("elapsed_seconds", 0.0)))
    evaluation = {policy: evaluate(model, episodes=args.episodes, greedy=policy == "greedy", seed=12345,
                                   **SETTINGS["default"]).summary()
                  for policy in ("sampled", "greedy")}
    made_at = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    record = {
        "what": "the default preset, seed 1, trained to the end of its schedule by `python cli.py train`",
        "global_step": payload["global_step"],
        "trained_at_commit": args.trained_at,
        "made_at_commit": made_at,
        "torch": torch.__version__,
        "config": config.to_dict(),
        "evaluation": {"episodes": args.episodes, "seed": 12345, "setting": "default (sticky 0.1, 10,000-step cap)",
                       **evaluation},
        "bytes": path.stat().st_size,
    }
    (DATA / "example_agent.json").write_text(json.dumps(record, indent=2) + "\n")
    for policy, s in evaluation.items():
        print(f"{policy:8} mean {s['mean']:.2f} ± {s['ci95']:.2f} over {s['episodes']} episodes")
    print(f"wrote {path} ({path.stat().st_size / 1e3:.0f} kB) and example_agent.json")


if __name__ == "__main__":
    main()
