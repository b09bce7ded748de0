"""The diagnosis: what is wrong with an agent, as named findings with a figure and a threshold each.

    diagnosis = diagnose(model, config, heatmap=heatmap)   # `heatmap` from instruments.measure.heatmap
    print(diagnosis.to_markdown())
    json.dumps(diagnosis.to_dict())

Every finding is measured, not guessed: most on a fresh batched rollout of the agent's own sampled
play (`play_fresh_rollout`), the failure hot spots on the failure heatmap, the dead entropy term by
running the code's real update step (`breakout_ppo.preflight`), since a checkpoint cannot show it.

| name              | figure                                                     | fires when |
|-------------------|------------------------------------------------------------|------------|
| value_stuck       | explained variance of the discounted return by V(s)        | < 0 (*)    |
| entropy_collapse  | mean policy entropy / log 3 on the frames before a loss    | < 0.15     |
| tunnel_vision     | share of the ball's visits on cells the policy is blind to | > 0.3      |
| failure_hot_spots | effective number of loss columns (exp of their entropy)    | < 3.4      |
| first_wall_barrier| share of episodes lost within 3 bricks of the first refill | > 0.43     |
| lane              | share of losses down the one commonest path (last 4 cells) | > 0.45 (**)|
| dead_entropy_term | largest parameter change from ent_coef 0 -> 0.1            | < 1e-6     |
| dead_units        | share of ReLU units never positive on the rollout          | > 0.4      |

(*) or std of V(s) / std of the return < 0.3 (a flat V). (**) judged only on an agent with a mean
return of 7.5 or more.

The thresholds are module constants; each docstring says why that value. "Healthy" and "broken"
there are the default preset, seed 1, 14M steps, trained as is (`python cli.py train`) and with
the entropy term cut out of the optimised loss (`benchmarks/broken_agent.py`). "The diagnosis
corpus" is `benchmarks/diagnosis_corpus.py`: real agents with a label each, thresholds fitted on
seeds 1-6 and judged on held-out seeds 7-8 (docs/studies/2026-12-07-diagnosis-corpus.md).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from torch import nn

from breakout_ppo import ppo
from breakout_ppo.config import Config
from breakout_ppo.env import GRID, NUM_ACTIONS, NUM_BRICK_CELLS, BatchedBreakout
from breakout_ppo.preflight import EntropyCheck, check_entropy_term
from instruments.measure.heatmap import FailureHeatmap
from instruments.measure.hooks import Taps
from instruments.measure.saliency import gradient_saliency, reduce_channels

# ---------------------------------------------------------------------------------------------
# Thresholds

VALUE_EXPLAINED = 0.0
"""value_stuck fires when V(s) explains less than this share of the discounted return's variance
(explained variance 1 - var(G - V) / var(G), on the same frames), or when it is flat (below).
Below 0 V predicts the return worse than the return's own mean would: a critic that tracks
nothing, however much it moves. That bound is the reason for 0, not a fit; on the diagnosis corpus
(docs/studies/2026-12-07-diagnosis-corpus.md, measured as `inspect` does) the critics trained with
`--vf-coef 0` measured -0.97 to 0.06, every other agent with live units 0.12 or more (policies blind
to rows 0-6 0.12-0.17, the youngest healthy ones 0.32-0.46). The one critic above 0 (0.06) is flat
(0.16 of the return's spread) and fires by VALUE_SPREAD_RATIO; those the spread misses (0.36-0.88
of it) fire by this bound (-0.97 to -0.18)."""

VALUE_SPREAD_RATIO = 0.3
"""value_stuck also fires when std(V) / std(G) is below this: a flat value. A critic that tracks the
return moves about as much as the return does (measured: healthy 0.81 and 0.95, broken 0.96 and
0.95, seeds 1 and 2); one that outputs the same value everywhere has ratio 0, and explained
variance near 0 on either side. Below 0.3 the value moves less than a third as much as the return
it predicts, so even perfectly correlated it explains at most about half the return's variance
(2r - r^2 = 0.51). On the diagnosis corpus: critics trained with `--vf-coef 0` 0.16-0.88 (their
heads follow the shared torso's features), every other agent with live units 0.34 or more; a
critic whose V moves without following the return (0.36-0.88, explained variance below 0) is what
VALUE_EXPLAINED is for."""

ENTROPY_FRACTION = 0.15
"""entropy_collapse fires below this fraction of the maximum entropy (log 3 nats) on the frames
just before a lost ball: there the agent is wrong, and a policy still certain of its action has
stopped exploring where it most needs to. 0.15 of log 3 is a policy putting 97% on one action.
Measured: healthy 0.29 and 0.35, broken 0.075 and 0.058 (seeds 1 and 2); 0.15 is halfway between
0.075 and 0.29 on a log scale. Runs of 3M steps keep 0.21-0.27 even with ent_coef 0: the collapse
takes the full schedule without the bonus. On the diagnosis corpus: the bonus with the wrong sign
0.073-0.126, every other agent 0.205 or more (entropy cut at 1.5M steps 0.26-0.41: not collapsed
yet); 0.15 lies between."""

BLIND_BALL_SHARE = 0.3
"""tunnel_vision fires when more than this share of the ball's visits fall on cells the policy is
blind to (mean saliency under BLIND_CELL_SHARE of the map's total). Measured on the diagnosis corpus
(docs/studies/2026-12-07-diagnosis-corpus.md): 0.62-0.63 on policies trained without sight of rows
0-6, 0 on every other agent; 0.3 is the middle of that gap. (Why not a ratio of areas, the cells
holding 90% of the saliency against those holding 90% of the ball's visits: the saliency on the
cells a policy does see spreads as widely as the ball does, so it could not tell a blind policy.)"""

BLIND_CELL_SHARE = 0.001
"""A cell with less than a tenth of an even share (1/100) of the mean saliency counts as unseen."""

LOSS_COLUMN_COUNT = 3.4
"""failure_hot_spots fires when the effective number of columns the ball is lost in (exp of the
entropy of the loss columns, 1..10) is below this: the losses then come from about three columns
or fewer, one place the agent misses again and again (a paddle that cannot pass column 6: 1.45).
No label of the diagnosis corpus (docs/studies/2026-12-07-diagnosis-corpus.md, 1000 episodes each,
as `inspect`) has it as its own sign; it fires beside lane on the one-lane patients whose corner
holds three quarters of their losses or more (2.17-2.92; those whose other losses spread, 3.89-6.29,
are named by lane alone). Every agent it judges that must not fire it: 3.58 or more (policies blind
to rows 0-6 3.58-5.51, critics that cannot learn 5.12-8.79, agents labelled healthy 6.5 or more).
3.4 lies between 2.92 and 3.58. An agent stuck on the first wall at 23 points for 17M steps, whose
balls go down one lane to the bottom-left corner, measured 2.16 (docs/results.md)."""

EARLY_LOSS_BRICKS, EARLY_LOSS_SHARE = 1, 0.5
"""failure_hot_spots is judged only when fewer than half of the lost balls (EARLY_LOSS_SHARE) end an
episode of EARLY_LOSS_BRICKS brick or none. A ball lost before the agent has broken two bricks
falls on its first or second descent, whose landing columns the start fixes (the ball starts in a
corner, moving diagonally down), so when most losses are of that kind the columns are the start's,
not the agent's: a random policy measures 3.0 that way. On the diagnosis corpus
(docs/studies/2026-12-07-diagnosis-corpus.md) networks of dead units lose 0.69-0.94 of their balls
so, critics that rarely return the first ball 0.51-0.77 (one of them 2.83 loss columns, the start's
landing columns 5 and 7); every other agent 0.36 or less (the other critics 0.17-0.36, policies
blind to rows 0-6 0.06-0.18, everything that plays 0.05 or less)."""

MIN_LOSSES = 20
"""Fewer lost balls than this make where they were lost a small-sample figure: failure_hot_spots does
not judge the heatmap's entropy, and `judge/compare.py` does not compare two agents' loss columns."""

DEAD_UNIT_SHARE = 0.4
"""dead_units fires when more than this share of all ReLU units are never positive on the rollout:
the network computes with little more than half its width. Fewer are not yet a fault: the 14M-step
agents have 1-4% (healthy 4 and 7 of 256, broken 2 and 9), but briefly trained ones (a few
hundred thousand steps at the default step size) measured 12-31%: units silent on the early walls
those agents reach, which wake again on the states that come later in training. On the diagnosis
corpus, measured as `inspect` does (256 games): step size 0.1 0.95-1.0, 0.03 without the bonus
0.49-1.0, every other agent 0.17 or less. 0.4 lies between the young agents' 0.31 and 0.49 (a
quarter of the rollout wakes fewer units: judge on inspect's 256 games)."""

FIRST_WALL_SHARE = 0.43
"""first_wall_barrier fires when more than this share of all episodes end with the ball lost within
NEARLY_CLEARED bricks of the first refill (27-33 bricks broken): the agent gets to the last tenth of
the wall, or just past its refill, and loses the ball there, episode after episode. A plateau loses
its balls on both sides of the refill, so both count. On the diagnosis corpus
(docs/studies/2026-12-07-diagnosis-corpus.md, 1000 episodes each, as `inspect`): the plateaued agents
at the wall's end 0.48-0.69 (the old configuration's seeds 1 and 3 at 3M steps 0.59; the full-wall
seed 3 at 6M, 8M and 10.17M steps 0.69, 0.50, 0.48); every agent labelled otherwise 0.35 or less
(entropy cut at 1.5M steps 0.21-0.33, one-lane patients 0.02-0.35, still learning the first wall at
3M steps 0.01-0.29, healthy at 4M steps 0.12-0.22, young 0.01-0.04). 0.43 lies between 0.35 and 0.48.
A plateau in the middle of the wall is not this: one at 22 points for 3M steps measures 0.26-0.31,
as agents still learning there do."""

NEARLY_CLEARED = 3
"""Bricks (of 30) from the first refill, either side, that count as "where the first wall ends"."""

LANE_FRAMES = 4
"""lane follows the ball over the last 4 frames before a loss (rows 5-8): one diagonal path."""

LANE_MIN_RETURN = 7.5
"""lane is judged only on an agent whose mean return is at least this (a quarter of a wall). One that
scores less loses the ball within its first few bounces, and those paths are fixed by the start
(two start lanes, then the few bounces a paddle parked in one place gives), so its losses crowd on
one path whatever it has learnt: on the diagnosis corpus the policies blind to rows 0-6 (mean
return 3.2-3.7, the paddle in columns 4-5 on most frames) measured 0.39-0.63 and networks of dead
units 0.42-0.59 (256 episodes each); their failures are named by their own findings, not by this
one. The agents of the corpus that score 7.5 or more play dozens of bounces an episode."""

LANE_SHARE = 0.45
"""lane fires when more than this share of the losses come down the one commonest path: at each of
the last LANE_FRAMES frames, the share of the losses with the ball in that frame's commonest cell,
the smallest of them. Half the losses down one path, of the dozens a playing agent's ball takes,
is a lane it has not learnt (a random policy's two start lanes give 0.5 too, but LANE_MIN_RETURN
leaves it unjudged). On the diagnosis corpus (docs/studies/2026-12-07-diagnosis-corpus.md, 1000
episodes each, as `inspect`): the one-lane patients 0.43-0.84 (trained where the paddle returns no
ball from columns 8-9, they lose their balls down the diagonal into that corner) and the 64-wide
shared-torso seed 3 on two threads 0.50 (half its balls down (5,3)-(8,0) with the paddle 2+ columns
away); of the agents it judges and that must not fire it, 0.43 at most (healthy 0.12-0.30, entropy
cut 0.13-0.43). 0.45 lies above all of those and under every patient but the weakest (0.43, 44% of
its balls into its corner): there the two overlap. Plateaued agents may fire it (the full-wall seed 3, 0.50-0.55:
its plateau loses half its balls down one diagonal into column 0), and so may a collapsed policy
(0.54)."""

PRELOSS_FRAMES = 8
"""Frames before a lost ball that count as "the agent failing", as in the failure heatmap."""

RETURN_HORIZON = 256
"""Rollout steps kept after the last frame whose discounted return is measured: 0.99^256 < 0.08,
so the bootstrap from V at the rollout's end, which would flatter a stuck value, weighs little."""


# ---------------------------------------------------------------------------------------------
# The record


@dataclass(frozen=True)
class Finding:
    name: str
    """One of FINDING_NAMES: "value_stuck", "entropy_collapse", ..."""
    title: str
    """Human words, e.g. "value stuck"."""
    fired: bool
    value: float
    """The measured figure (NaN when it could not be measured: too few losses, no return spread)."""
    threshold: float
    comparison: str
    """"<" or ">": the finding fires when `value <comparison> threshold` (value stuck also fires on a
    flat V: `details["spread_ratio"]` under VALUE_SPREAD_RATIO, which its evidence says)."""
    advice: str
    """One sentence: what to do about it."""
    details: dict = field(default_factory=dict)
    """JSON-able extra figures (top cells, per-layer counts, ...)."""

    @property
    def verdict(self) -> str:
        if self.fired:
            return "FIRED"
        return "not judged" if math.isnan(self.value) else "ok"

    @property
    def shown_advice(self) -> str:
        """The advice as the terminal and the pages show it: a statement only where it fired (on a
        healthy agent, "The critic ignores the state" would read as a finding)."""
        return self.advice if self.fired else f"If it fires: {self.advice}"


FINDING_NAMES = ("value_stuck", "entropy_collapse", "tunnel_vision", "failure_hot_spots", "first_wall_barrier",
                 "lane", "dead_entropy_term", "dead_units")


def _json_safe(x):
    """NaN and infinities become None, so the file is strict JSON (browsers' JSON.parse included)."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_safe(v) for v in x]
    return x


@dataclass
class Diagnosis:
    findings: list[Finding]

    @property
    def fired(self) -> list[Finding]:
        return [f for f in self.findings if f.fired]

    def to_dict(self) -> dict:
        """{"findings": [asdict(finding), ...]}, strict JSON: an unmeasured value is null."""
        return {"findings": [_json_safe(asdict(f)) for f in self.findings]}

    @classmethod
    def from_dict(cls, d: dict) -> "Diagnosis":
        findings = []
        for f in d["findings"]:
            f = dict(f)
            f["value"] = math.nan if f["value"] is None else float(f["value"])
            findings.append(Finding(**f))
        return cls(findings)

    def to_markdown(self) -> str:
        """A table, fired findings first, for TensorBoard's text tab and the terminal."""
        fired = len(self.fired)
        lines = [f"**{fired} of {len(self.findings)} findings fired**", "",
                 "| finding | value | threshold | verdict | advice |", "|---|---|---|---|---|"]
        for f in sorted(self.findings, key=lambda f: not f.fired):
            verdict = "**FIRED**" if f.fired else f.verdict
            lines.append(f"| {f.title} | {format_value(f.value)} | {f.comparison} {format_value(f.threshold)} "
                         f"| {verdict} | {f.shown_advice} |")
        return "\n".join(lines)

    def to_lines(self) -> list[str]:
        """One line a finding for the terminal: title, value, threshold, verdict, advice."""
        titles = [f.title for f in self.findings]
        rules = [f"(fires {f.comparison} {format_value(f.threshold)})" for f in self.findings]
        title_width, rule_width = max(map(len, titles)), max(map(len, rules))
        return [f"{'!!' if f.fired else '  '} {title:<{title_width}} {format_value(f.value):>8} {rule:<{rule_width}} "
                f"{f.verdict + ':':<11} {f.shown_advice}" for f, title, rule in zip(self.findings, titles, rules)]


def format_value(x: float) -> str:
    if math.isnan(x):
        return "n/a"
    return f"{x:.3g}"


def format_number(x, digits: int = 3) -> str:
    """Figures for people: NaN/None as n/a, integers without decimals, others to `digits` significant."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    if isinstance(x, bool):
        return str(x)
    if isinstance(x, int) or (isinstance(x, float) and x.is_integer() and abs(x) < 1e15):
        return f"{int(x):,}"
    if isinstance(x, float):
        return f"{x:.{digits}g}"
    return str(x)


# ---------------------------------------------------------------------------------------------
# The agent's own play


@dataclass
class FreshRollout:
    """Frames of the agent's sampled play, flattened over (steps, envs), with what was measured."""

    obs: torch.Tensor
    """float32 (M, 4, 10, 10): every frame acted on."""
    actions: torch.Tensor
    """int64 (M,): the policy's chosen action."""
    entropy: torch.Tensor
    """float32 (M,): the policy's entropy on the frame, in nats."""
    before_loss: torch.Tensor
    """bool (M,): the ball is lost within PRELOSS_FRAMES steps of this frame."""
    values: torch.Tensor
    """float32 (K,): V(s) on the frames whose discounted return is measured (the first rows)."""
    returns: torch.Tensor
    """float32 (K,): their discounted return."""
    losses: int
    """Balls lost during the rollout."""


@torch.no_grad()
def play_fresh_rollout(model, config: Config, num_envs: int = 256, warmup_steps: int = 256, steps: int = 768,
                       seed: int = 0, device="cpu") -> FreshRollout:
    """Play `num_envs` games with the agent's sampled policy and keep what the findings need.

    The first `warmup_steps` steps are played and dropped, so that the games are spread over
    early and late walls rather than all just reset. Of the `steps` recorded, the first
    `steps - RETURN_HORIZON` get a discounted return (gamma from the config, lambda 1, computed by
    `ppo.compute_gae`, so truncation and loss are treated as in training).
    """
    if steps <= RETURN_HORIZON:
        raise ValueError(f"steps must exceed the return horizon {RETURN_HORIZON}, got {steps}")
    device = torch.device(device)
    env = BatchedBreakout(num_envs, device=device, sticky_action_prob=config.sticky_action_prob,
                          max_episode_steps=config.max_episode_steps, seed=seed)
    generator = torch.Generator(device).manual_seed(seed)
    obs = env.reset()
    for _ in range(warmup_steps):
        obs, *_ = env.step(ppo.sample_actions(model(obs)[0], generator))
    rollout, _, _ = ppo.collect_rollout(model, env, obs, config.replace(num_steps=steps), generator)

    # Steps until the ball is lost, per env, scanning backwards (a truncation ends the count).
    before_loss = torch.zeros_like(rollout.terminated)
    until_loss = torch.full((num_envs,), PRELOSS_FRAMES, device=device)
    for t in reversed(range(steps)):
        until_loss = torch.where(rollout.terminated[t], 0, torch.where(rollout.truncated[t], PRELOSS_FRAMES,
                                                                         until_loss + 1))
        before_loss[t] = until_loss < PRELOSS_FRAMES

    _, returns = ppo.compute_gae(rollout, config.gamma, 1.0)
    measured = steps - RETURN_HORIZON
    obs = rollout.obs.flatten(0, 1)
    entropy = torch.cat([policy_entropy(model(batch)[0]) for batch in obs.split(65536)])
    return FreshRollout(obs=obs, actions=rollout.actions.flatten(), entropy=entropy,
                        before_loss=before_loss.flatten(), values=rollout.values[:measured].flatten(),
                        returns=returns[:measured].flatten(), losses=int(rollout.terminated.sum()))


# ---------------------------------------------------------------------------------------------
# Measures


def policy_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Entropy in nats of each row's categorical distribution."""
    log_probs = torch.log_softmax(logits, dim=-1)
    return -(log_probs.exp() * log_probs).sum(-1)


def cell_share(mass: np.ndarray, fraction: float = 0.9) -> float:
    """Share of cells that, taken largest first, hold `fraction` of the total (0..1]."""
    flat = np.sort(np.asarray(mass, dtype=np.float64).ravel())[::-1]
    total = flat.sum()
    if total <= 0:
        return 0.0
    needed = int(np.searchsorted(np.cumsum(flat), fraction * total) + 1)
    return min(needed, flat.size) / flat.size


def effective_count(counts: np.ndarray) -> float:
    """exp(entropy) of a count distribution: how many equally likely outcomes it is worth."""
    p = np.asarray(counts, dtype=np.float64).ravel()
    p = p[p > 0] / p.sum()
    return float(np.exp(-(p * np.log(p)).sum()))


def top_cells(grid: np.ndarray, k: int = 5) -> list[dict]:
    """The k largest cells of a (10, 10) grid, as [{"row", "column", "share"}] of the total."""
    total = float(grid.sum()) or 1.0
    order = np.argsort(grid.ravel())[::-1][:k]
    return [{"row": int(i // GRID), "column": int(i % GRID), "share": round(float(grid.ravel()[i]) / total, 4)}
            for i in order if grid.ravel()[i] > 0]


def explained_variance(predicted: torch.Tensor, target: torch.Tensor) -> float:
    return float(ppo.explained_variance(predicted.double(), target.double()))


# ---------------------------------------------------------------------------------------------
# Findings, one function each


def not_judged_because(reason: str | None) -> dict:
    """The details entry a finding with no value carries: why not, in words ({} when judged)."""
    return {"not_judged_because": reason} if reason else {}


def value_stuck(rollout: FreshRollout) -> Finding:
    """V(s) does not follow the discounted return: it explains too little of its variance."""
    return_std, value_std = float(rollout.returns.std()), float(rollout.values.std())
    judged = return_std > 1e-6  # no spread to track: not judged
    explained = explained_variance(rollout.values, rollout.returns) if judged else math.nan
    return value_stuck_finding(explained, value_std, return_std, int(rollout.returns.numel()))


def value_stuck_finding(explained: float, value_std: float, return_std: float, frames: int) -> Finding:
    """value_stuck from its figures (the corpus benchmark rejudges cached figures with it)."""
    ratio = value_std / return_std if return_std > 1e-6 else math.nan
    return Finding(
        name="value_stuck", title="value stuck", fired=explained < VALUE_EXPLAINED or ratio < VALUE_SPREAD_RATIO,
        value=explained,
        threshold=VALUE_EXPLAINED, comparison="<",
        advice="The critic ignores the state: check the value loss reaches the critic (vf_coef, value clipping, "
               "the returns it regresses on) before tuning the policy.",
        details={"value_std": value_std, "return_std": return_std, "spread_ratio": ratio,
                 "explained_variance": explained, "frames": frames,
                 **not_judged_because(None if explained == explained else "the return did not vary on the rollout")})


def entropy_collapse(rollout: FreshRollout) -> Finding:
    """The policy is near-deterministic on the frames where it is about to lose the ball."""
    maximum = math.log(NUM_ACTIONS)
    failing = rollout.entropy[rollout.before_loss]
    fraction = float(failing.mean()) / maximum if failing.numel() else math.nan
    return Finding(
        name="entropy_collapse", title="entropy collapse", fired=fraction < ENTROPY_FRACTION, value=fraction,
        threshold=ENTROPY_FRACTION, comparison="<",
        advice="The policy is near-certain even where it still loses the ball, so it no longer explores there: "
               "check the entropy bonus is optimised (dead entropy term), and raise ent_coef if returns stall.",
        details={"entropy_before_loss_nats": float(failing.mean()) if failing.numel() else None,
                 "entropy_all_frames_nats": float(rollout.entropy.mean()),
                 "max_entropy_nats": maximum, "frames_before_loss": int(failing.numel()),
                 "losses": rollout.losses,
                 **not_judged_because(None if failing.numel() else "no ball was lost on the rollout")})


def tunnel_vision(model, rollout: FreshRollout, frames: int = 2048) -> Finding:
    """The ball goes where the policy does not look: the share of its visits on cells whose mean
    saliency is nearly 0."""
    index = torch.linspace(0, rollout.obs.shape[0] - 1, min(frames, rollout.obs.shape[0])).long()
    obs = rollout.obs[index]
    saliency = reduce_channels(gradient_saliency(model, obs, action=rollout.actions[index])).mean(0).cpu().numpy()
    ball = obs[:, 1].mean(0).cpu().numpy()  # channel 1: where the ball is
    total = float(saliency.sum())
    blind = saliency < BLIND_CELL_SHARE * total
    # A policy whose output ignores every cell (all units dead) is dead_units' case, not this one.
    share = float(ball[blind].sum() / ball.sum()) if ball.sum() > 0 and total > 0 else math.nan
    looked_at, travelled = cell_share(saliency), cell_share(ball)
    return Finding(
        name="tunnel_vision", title="tunnel vision", fired=share > BLIND_BALL_SHARE, value=share,
        threshold=BLIND_BALL_SHARE, comparison=">",
        advice="The ball spends much of its time where the policy does not look: see the blind cells on "
               "saliency_mean.png and check the inputs (preprocessing, first layer) reach the whole board.",
        details={"blind_cells": [[int(r), int(c)] for r, c in zip(*np.nonzero(blind & (ball > 0)))],
                 "ball_share_per_row": [round(float(x), 4) for x in ball.sum(1) / max(float(ball.sum()), 1e-12)],
                 "saliency_cell_share_90": looked_at, "ball_cell_share_90": travelled,
                 "area_ratio": looked_at / travelled if travelled > 0 else None,
                 "top_saliency_cells": top_cells(saliency), "frames": int(len(index)),
                 **not_judged_because(None if share == share else "the ball never showed on the rollout"
                                      if ball.sum() == 0 else "the policy's saliency is 0 on every cell")})


def too_few_losses(heatmap: FailureHeatmap) -> str | None:
    """Why a finding of the heatmap is not judged on too few lost balls (MIN_LOSSES), or None."""
    if heatmap.losses < MIN_LOSSES:
        return f"{heatmap.losses} lost balls, under the {MIN_LOSSES} it needs"
    return None


def failure_hot_spots(heatmap: FailureHeatmap) -> Finding:
    """The lost balls fall in few columns: one place the agent systematically misses. Judged when
    there are MIN_LOSSES losses and most come after the agent broke two bricks (EARLY_LOSS_SHARE)."""
    loss_columns = heatmap.ball_before_loss[0].sum(axis=0)  # frame age 0: the ball is in row 8
    early = (float((heatmap.returns[heatmap.lost] <= EARLY_LOSS_BRICKS).mean())
             if heatmap.losses else math.nan)
    gate = too_few_losses(heatmap) or (
        f"{early:.0%} of the lost balls were lost before a second brick broke, on the first descents, "
        f"whose columns the start fixes" if early >= EARLY_LOSS_SHARE else None)
    columns = effective_count(loss_columns) if gate is None else math.nan
    path = heatmap.ball_before_loss.sum(axis=0)
    return Finding(
        name="failure_hot_spots", title="failure hot spots", fired=columns < LOSS_COLUMN_COUNT, value=columns,
        threshold=LOSS_COLUMN_COUNT, comparison="<",
        advice="Most balls are lost in the same place: read failure_heatmap.png for the lane that leads there "
               "and train longer or on more of those states.",
        details={"losses": heatmap.losses, "episodes": heatmap.episodes,
                 "loss_column_counts": [int(c) for c in loss_columns], "lost_within_one_brick": early,
                 "top_cells_before_loss": top_cells(path),
                 "effective_cells_before_loss": effective_count(path) if heatmap.losses else None,
                 **not_judged_because(gate)})


def first_wall_barrier(heatmap: FailureHeatmap) -> Finding:
    """The episodes end where the first wall ends: the share of all episodes whose ball is lost
    within NEARLY_CLEARED bricks of the first refill, on either side of it (27-33 bricks broken: the
    last bricks of the first wall, or the first of the refilled one)."""
    broken = NUM_BRICK_CELLS * heatmap.refills + (NUM_BRICK_CELLS - heatmap.bricks_left)  # bricks broken in the episode
    around = heatmap.lost & (np.abs(broken - NUM_BRICK_CELLS) <= NEARLY_CLEARED)
    gate = too_few_losses(heatmap)
    share = float(around.sum()) / heatmap.episodes if gate is None else math.nan
    first_wall = heatmap.lost & (heatmap.refills == 0)
    after_refill = heatmap.lost & (heatmap.refills == 1)
    return Finding(
        name="first_wall_barrier", title="first-wall barrier", fired=share > FIRST_WALL_SHARE,
        value=share, threshold=FIRST_WALL_SHARE, comparison=">",
        advice="The agent clears most of the first wall and then loses the ball: it has not learnt the last "
               "bricks or the refill. Train on partial walls and random ball starts (the defaults), or longer.",
        details={"episodes": heatmap.episodes, "lost_around_first_refill": int(around.sum()),
                 "lost_nearly_cleared": int((first_wall & (heatmap.bricks_left <= NEARLY_CLEARED)).sum()),
                 "lost_just_after_refill": int((after_refill
                                                 & (heatmap.bricks_left >= NUM_BRICK_CELLS - NEARLY_CLEARED)).sum()),
                 "losses_before_first_refill": int(first_wall.sum()),
                 "bricks_left_at_first_wall_losses": np.bincount(heatmap.bricks_left[first_wall],
                                                                 minlength=NUM_BRICK_CELLS + 1).tolist(),
                 **not_judged_because(gate)})


def lane(heatmap: FailureHeatmap) -> Finding:
    """Most balls are lost down one path: the same cell, frame after frame, before the loss. Judged
    only on an agent that plays: a mean return of LANE_MIN_RETURN or more."""
    gate = too_few_losses(heatmap) or (
        f"mean return {format_number(heatmap.mean_return)}, under {LANE_MIN_RETURN}: the agent loses the ball "
        f"within its first bounces, whose paths the start fixes" if heatmap.mean_return < LANE_MIN_RETURN else None)
    frames = heatmap.ball_before_loss[:LANE_FRAMES].reshape(LANE_FRAMES, -1)
    top = frames.argmax(1)
    shares = frames.max(1) / max(heatmap.losses, 1)
    share = float(shares.min()) if gate is None else math.nan
    offsets = heatmap.offset_before_loss[0]  # frame age 0: ball column - paddle column, + 9
    far = float(offsets[np.abs(np.arange(len(offsets)) - (GRID - 1)) >= 2].sum() / max(offsets.sum(), 1))
    return Finding(
        name="lane", title="one lane", fired=share > LANE_SHARE, value=share,
        threshold=LANE_SHARE, comparison=">",
        advice="Most balls are lost down the same path: see its cells on failure_heatmap.png and where the "
               "paddle waits then; train longer or on starts that send the ball down it.",
        details={"lane_cells": [[int(i // GRID), int(i % GRID)] for i in top],
                 "share_per_frame": [round(float(x), 4) for x in shares],
                 "paddle_two_or_more_columns_away": far, "losses": heatmap.losses,
                 "mean_return": heatmap.mean_return, **not_judged_because(gate)})


def dead_entropy_term(config: Config, check: EntropyCheck | None = None) -> Finding:
    """The update's parameters do not depend on ent_coef: the train-time preflight as a finding
    (`check` is its result when the caller has already run it)."""
    check = check_entropy_term(config) if check is None else check
    return Finding(
        # A config whose update blows the parameters up cannot be judged by the probe (see its text).
        name="dead_entropy_term", title="dead entropy term", fired=not check.passed and not check.non_finite,
        value=check.max_parameter_difference, threshold=check.threshold, comparison="<",
        advice="The update computes the entropy bonus but does not optimise it, so every ent_coef has no "
               "effect: make the optimised loss subtract ent_coef * entropy.",
        details={"probe": str(check)})


def relu_layers(model: nn.Module) -> list[str]:
    return [name for name, module in model.named_modules() if isinstance(module, nn.ReLU)]


@torch.no_grad()
def dead_units(model, rollout: FreshRollout, batch_size: int = 16384) -> Finding:
    """ReLU units that are never positive on any frame of the rollout (for a conv layer, a channel
    that is never positive at any position)."""
    layers = relu_layers(model)
    with Taps(model, activations=layers, keep="stats") as taps:
        for batch in rollout.obs.split(batch_size):
            model(batch)
    per_layer, dead_total, units_total = {}, 0, 0
    for name in layers:
        positive = taps.activation_stats[name].fraction_positive
        alive = positive.flatten(1).amax(1) if positive.dim() > 1 else positive  # a channel: any position
        dead = int((alive == 0).sum())
        per_layer[name] = {"dead": dead, "units": int(alive.numel())}
        dead_total, units_total = dead_total + dead, units_total + int(alive.numel())
    share = dead_total / units_total if units_total else math.nan
    return Finding(
        name="dead_units", title="dead units", fired=share > DEAD_UNIT_SHARE, value=share,
        threshold=DEAD_UNIT_SHARE, comparison=">",
        advice="Many ReLU units never fire and no longer learn: lower the learning rate or max_grad_norm, "
               "or re-initialise them.",
        details={"layers": per_layer, "dead": dead_total, "units": units_total,
                 **not_judged_because(None if units_total else "the model has no ReLU units to watch")})


# ---------------------------------------------------------------------------------------------
# The evidence: what made each finding's figure, in one line for the terminal and the pages


def _rows(cells) -> str:
    """[[row, column], ...] as "rows 0-6 (63 cells)" style text."""
    rows = sorted({r for r, _ in cells})
    if not rows:
        return "no cells"
    span = f"row {rows[0]}" if len(rows) == 1 else f"rows {rows[0]}-{rows[-1]}" if rows == list(
        range(rows[0], rows[-1] + 1)) else "rows " + ", ".join(map(str, rows))
    return f"{span} ({len(cells)} cells)"


def evidence(f: Finding) -> str:
    """The figures behind `f`'s value, read from its details: what a reader checks on the pictures;
    for a finding not judged, why not."""
    d = f.details
    if f.verdict == "not judged":  # the gate it did not pass, as its finding wrote it
        return f"not judged: {d.get('not_judged_because') or 'nothing to measure it on'}"
    if f.name == "value_stuck":
        flat = d["spread_ratio"] is not None and d["spread_ratio"] < VALUE_SPREAD_RATIO
        return (f"V explains {format_number(d['explained_variance'], 2)} of the return's variance on "
                f"{format_number(d['frames'])} frames; std of V {format_number(d['value_std'])} against std of the "
                f"return {format_number(d['return_std'])}"
                + (f" ({format_number(d['spread_ratio'], 2)} of it, under {VALUE_SPREAD_RATIO}: a flat V)"
                   if flat else ""))
    if f.name == "entropy_collapse":
        return (f"entropy {format_number(d['entropy_before_loss_nats'])} of {format_number(d['max_entropy_nats'])} "
                f"nats on the {format_number(d['frames_before_loss'])} frames before {d['losses']} lost balls "
                f"(all frames: {format_number(d['entropy_all_frames_nats'])})")
    if f.name == "tunnel_vision":
        return f"the ball's visits on cells the policy does not look at: {_rows(d.get('blind_cells', []))}"
    if f.name == "failure_hot_spots":
        return f"balls lost per column 0-9: {d['loss_column_counts']}"
    if f.name == "first_wall_barrier":
        return (f"{d['lost_around_first_refill']} of {d['episodes']} episodes lost within {NEARLY_CLEARED} bricks of "
                f"the first refill: {d['lost_nearly_cleared']} with at most {NEARLY_CLEARED} bricks of the first wall "
                f"standing, {d['lost_just_after_refill']} just after the refill")
    if f.name == "lane":
        cells = " ".join(f"({r},{c})" for r, c in d["lane_cells"])
        return (f"ball in cells {cells} (row, column; the last frame first) on "
                f"{', '.join(f'{x:.0%}' for x in d['share_per_frame'])} of {d['losses']} losses; paddle 2+ "
                f"columns away at the loss on {d['paddle_two_or_more_columns_away']:.0%}")
    if f.name == "dead_entropy_term":
        return d.get("probe", "")
    if f.name == "dead_units":
        layers = ", ".join(f"{name} {v['dead']}/{v['units']}" for name, v in d["layers"].items())
        return f"never positive on the rollout: {layers}"
    return ""


# ---------------------------------------------------------------------------------------------
# All of them


def diagnose(model, config: Config, heatmap: FailureHeatmap, seed: int = 0, device="cpu",
             rollout: FreshRollout | None = None, entropy_check: EntropyCheck | None = None) -> Diagnosis:
    """Every finding for the agent `model` trained with `config`.

    `heatmap` is the agent's failure heatmap (inspect has one already); `rollout` defaults to a
    fresh `play_fresh_rollout` with `seed`; `entropy_check` to running the preflight on `config`.
    The model is only called, never changed.
    """
    if rollout is None:
        rollout = play_fresh_rollout(model, config, seed=seed, device=device)
    return Diagnosis([
        value_stuck(rollout),
        entropy_collapse(rollout),
        tunnel_vision(model, rollout),
        failure_hot_spots(heatmap),
        first_wall_barrier(heatmap),
        lane(heatmap),
        dead_entropy_term(config, entropy_check),
        dead_units(model, rollout),
    ])
