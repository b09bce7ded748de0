"""A deliberately broken agent: the default preset trained with the entropy term cut out of the loss.

*** THIS SCRIPT TRAINS WITH A BUG ON PURPOSE. ***

It monkeypatches `breakout_ppo.ppo.ppo_loss` so that the loss it returns omits
`- ent_coef * entropy` (the entropy is still computed and logged, so the charts look normal), and it
BYPASSES the train-time preflight (`breakout_ppo.preflight.check_entropy_term`), which exists to
refuse exactly this bug. The preflight still runs and its DEAD verdict is printed; only its veto is
overridden. The point is a reference patient for `python cli.py inspect`: the diagnosis should name
the dead entropy term (and whatever else the missing bonus does to the agent), where a healthy run
(`python cli.py train --run-name healthy`) gets a clean bill.

    OMP_NUM_THREADS=1 python benchmarks/broken_agent.py                 # trains runs/broken/, inspects it
    OMP_NUM_THREADS=1 python benchmarks/broken_agent.py --inspect-only  # inspect again, still broken

After training, the script inspects the run *in the same patched process* (`runs/broken/inspect/`,
diagnosis printed): the dead entropy term is a property of the update code, not of the checkpoint,
so `python cli.py inspect runs/broken/checkpoint.pt` on the fixed code reports the term live and
only the checkpoint's own symptoms (if any) remain.

What it showed (default preset, 14M steps, seeds 1 and 2, 1000 inspect episodes): the diagnosis
fires the dead entropy term and entropy collapse (policy entropy before a lost ball 0.075 and 0.058
of its maximum, against 0.29 and 0.35 for the healthy runs) and nothing else. The returns alone do
not give the bug away: seed 1 scored 25.4 (healthy 41.6), seed 2 87.2 (healthy 35.9); the
evaluation samples the policy, and a sharper policy can score higher.

`--ent-coef` sets the coefficient the run *claims* to use (it goes into config.json and the HParams
like any other); with the patch it has no effect on the parameters, which is the bug's signature.
Never import this module from the package: the patch is applied only inside `main()`.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

import breakout_ppo.ppo as ppo
import breakout_ppo.train as training
from breakout_ppo.config import preset


def loss_without_entropy(real_loss):
    """The bug: the entropy bonus is computed and reported in the metrics, but not optimised."""
    def loss(model, obs, actions, old_logprobs, old_values, advantages, returns, config):
        # The metrics (entropy included) come out the same whatever the coefficient; the loss does not.
        return real_loss(model, obs, actions, old_logprobs, old_values, advantages, returns,
                         config.replace(ent_coef=0.0))
    return loss


def progress_every(seconds: float):
    """A `train` progress callback that prints a line at most every `seconds`."""
    last = [0.0]

    def report(step, sps, recent_return):
        if time.perf_counter() - last[0] >= seconds:
            last[0] = time.perf_counter()
            print(f"{step:,} steps, {sps:,.0f} SPS, recent training return {recent_return:.1f}", file=sys.stderr)

    return report


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run-name", default="broken", help="Directory under --logdir (default: broken).")
    parser.add_argument("--logdir", type=Path, default=ROOT / "runs")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--ent-coef", type=float, default=None,
                        help="The coefficient the run claims (default: the preset's).")
    parser.add_argument("--total-steps", type=int, default=None, help="Default: the preset's 14M.")
    parser.add_argument("--episodes", type=int, default=1000, help="Episodes of the inspection's failure heatmap.")
    parser.add_argument("--inspect-only", action="store_true", help="Skip training: inspect the run already there.")
    args = parser.parse_args(argv)

    overrides = {k: v for k, v in (("seed", args.seed), ("ent_coef", args.ent_coef),
                                   ("total_steps", args.total_steps)) if v is not None}
    try:
        config = preset("default", **overrides)
    except ValueError as error:
        parser.error(str(error))
    if args.episodes < 1:
        parser.error("--episodes must be positive")
    run_dir = args.logdir / args.run_name
    checkpoint = run_dir / "checkpoint.pt"
    if args.inspect_only and not checkpoint.exists():
        parser.error(f"{checkpoint} not found: train it first (without --inspect-only)")
    if not args.inspect_only and checkpoint.exists():
        parser.error(f"{run_dir} already holds a run; choose another --run-name, or pass --inspect-only")

    # The bug, for the rest of this process: training *and* the inspection run the broken update.
    ppo.ppo_loss = loss_without_entropy(ppo.ppo_loss)
    if not args.inspect_only:
        train_without_preflight(config, run_dir)

    from instruments.inspection import inspect_agent

    inspection = inspect_agent(checkpoint, run_dir / "inspect", episodes=args.episodes, tensorboard_dir=run_dir)
    print(f"inspection in {inspection.out_dir}: heatmap mean return {inspection.heatmap_summary['mean_return']:.2f}")
    for line in inspection.diagnosis.to_lines():
        print(line)


def train_without_preflight(config, run_dir: Path) -> None:
    """Train with the preflight's veto overridden: it runs, prints its DEAD verdict, and is ignored."""
    real_check = training.check_entropy_term

    def overridden_preflight(config, **where):
        check = real_check(config, **where)
        print(f"preflight (veto overridden on purpose): {check}", file=sys.stderr)
        return dataclasses.replace(check, passed=True)

    training.check_entropy_term = overridden_preflight
    print(f"training a BROKEN agent (entropy term removed from the loss, ent_coef {config.ent_coef} claimed) "
          f"into {run_dir}", file=sys.stderr)
    result = training.train(config, run_dir, progress=progress_every(10.0))
    recent = result.recent_returns[-10:]
    print(f"done: {result.global_step:,} steps, checkpoint {result.last_checkpoint}, "
          f"recent training return {sum(recent) / max(1, len(recent)):.1f}", file=sys.stderr)


if __name__ == "__main__":
    main()
