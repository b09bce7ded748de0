"""Each finding fires on an agent built to have its fault and stays silent on a healthy one.

The healthy agent is a short real training run; every fault is made from it (or from the real
update code) by one deliberate change: a zeroed value head, huge logits, a first layer that sees
four cells, torso biases pushed far negative, a policy that cannot reach the right wall, the
entropy term monkeypatched out of the optimised loss.
"""

import copy
import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

import breakout_ppo.ppo as ppo
import breakout_ppo.train as training
from breakout_ppo.checkpoint import load_agent
from breakout_ppo.config import preset
from breakout_ppo.env import GRID, LEFT, NOOP, PADDLE_ROW, RIGHT
from breakout_ppo.model import ActorCritic
from breakout_ppo.preflight import EntropyCheck
from instruments.judge.diagnose import (
    DEAD_UNIT_SHARE,
    FINDING_NAMES,
    Diagnosis,
    Finding,
    cell_share,
    dead_entropy_term,
    dead_units,
    diagnose,
    effective_count,
    entropy_collapse,
    evidence,
    failure_hot_spots,
    first_wall_barrier,
    lane,
    play_fresh_rollout,
    tunnel_vision,
    value_stuck,
)
from instruments.measure.heatmap import NUM_OFFSETS, FailureHeatmap, failure_heatmap, policy_from_model
from instruments.measure.scripted import follow_ball_policy

# 40 updates of 512 games (about 12 s on a loaded core): long enough for the critic to track the
# return and for the losses to leave the two lanes the start sends the first ball down.
HEALTHY = preset("default", num_envs=512, total_steps=512 * 16 * 40, seed=1)


@pytest.fixture(scope="module")
def healthy(tmp_path_factory):
    result = training.train(HEALTHY, tmp_path_factory.mktemp("healthy"))
    model, _ = load_agent(result.last_checkpoint)
    return model


@pytest.fixture(scope="module")
def healthy_rollout(healthy):
    return small_rollout(healthy)


def small_rollout(model, seed=0):
    return play_fresh_rollout(model, HEALTHY, num_envs=128, warmup_steps=128, steps=512, seed=seed)


def altered(model, change):
    """A copy of `model` with `change(copy)` applied to its parameters, without autograd."""
    broken = copy.deepcopy(model)
    with torch.no_grad():
        change(broken)
    return broken


# ---------------------------------------------------------------------------------------------
# Measures and the record


def test_cell_share_counts_the_cells_holding_the_mass():
    assert cell_share(torch.ones(10, 10).numpy()) == pytest.approx(0.9)
    one_cell = torch.zeros(10, 10)
    one_cell[3, 4] = 5.0
    assert cell_share(one_cell.numpy()) == pytest.approx(0.01)
    assert cell_share(torch.zeros(10, 10).numpy()) == 0.0


def test_effective_count_is_the_number_of_equally_likely_outcomes():
    assert effective_count([5, 5, 0, 5]) == pytest.approx(3.0)
    assert effective_count([7, 0, 0]) == pytest.approx(1.0)


def test_a_diagnosis_round_trips_through_strict_json():
    findings = [Finding("value_stuck", "value stuck", True, 0.1, 0.3, "<", "Fix the critic.", {"ev": 0.01}),
                Finding("failure_hot_spots", "failure hot spots", False, math.nan, 2.5, "<", "Look.", {"x": [1, 2]})]
    diagnosis = Diagnosis(findings)
    text = json.dumps(diagnosis.to_dict(), allow_nan=False)  # NaN would not be strict JSON
    back = Diagnosis.from_dict(json.loads(text))
    assert back.findings[0] == findings[0]
    assert math.isnan(back.findings[1].value) and back.findings[1].verdict == "not judged"
    markdown = diagnosis.to_markdown()
    assert "1 of 2 findings fired" in markdown and "**FIRED**" in markdown
    lines = diagnosis.to_lines()
    assert lines[0].startswith("!!") and "FIRED" in lines[0] and "Fix the critic." in lines[0]
    assert not lines[1].startswith("!!") and "n/a" in lines[1]


# ---------------------------------------------------------------------------------------------
# Each finding: silent on the healthy agent, fired on its fault


@pytest.mark.slow
def test_a_healthy_agent_gets_a_clean_bill(healthy, healthy_rollout):
    heatmap = failure_heatmap(policy_from_model(healthy), episodes=256)
    diagnosis = diagnose(healthy, HEALTHY, heatmap, rollout=healthy_rollout)
    assert [f.name for f in diagnosis.findings] == list(FINDING_NAMES)
    assert not diagnosis.fired, diagnosis.to_markdown()
    for f in diagnosis.findings:  # `fired` is what the figure, the comparison and the threshold say
        assert f.fired == (f.value < f.threshold if f.comparison == "<" else f.value > f.threshold), f
    json.dumps(diagnosis.to_dict(), allow_nan=False)


@pytest.mark.slow
def test_value_stuck_fires_on_a_zeroed_value_head(healthy, healthy_rollout):
    def zero_value_head(model):
        model.critic.head.weight.zero_()

    finding = value_stuck(small_rollout(altered(healthy, zero_value_head)))
    assert finding.fired and finding.details["spread_ratio"] < 1e-3  # the bias alone: constant up to rounding
    assert abs(finding.value) < 0.1  # a constant explains nothing: explained variance about 0
    assert not value_stuck(healthy_rollout).fired


@pytest.mark.slow
def test_value_stuck_fires_on_a_value_that_moves_without_following_the_return(healthy_rollout):
    # The healthy agent's values, shuffled over the frames: as much spread as before, no relation to
    # the return. Explained variance from its definition, with numpy: below 0.
    shuffled = torch.Generator().manual_seed(0)
    values = healthy_rollout.values[torch.randperm(len(healthy_rollout.values), generator=shuffled)]
    moving = dataclasses.replace(healthy_rollout, values=values)
    g, v = healthy_rollout.returns.double().numpy(), values.double().numpy()
    explained = 1 - np.var(g - v) / np.var(g)
    finding = value_stuck(moving)
    assert explained < 0 and finding.value == pytest.approx(explained, abs=1e-6)
    assert finding.details["spread_ratio"] > 0.3 and finding.fired  # not flat: fired by the explained variance


@pytest.mark.slow
def test_entropy_collapse_fires_on_huge_logits(healthy, healthy_rollout):
    def sharpen(model):
        model.actor.head.weight.mul_(100.0)
        model.actor.head.bias.mul_(100.0)

    finding = entropy_collapse(small_rollout(altered(healthy, sharpen)))
    assert finding.fired and finding.details["frames_before_loss"] > 0
    assert not entropy_collapse(healthy_rollout).fired


@pytest.mark.slow
def test_tunnel_vision_fires_when_the_first_layer_sees_four_cells(healthy, healthy_rollout):
    def blinker(model):
        first = model.actor.torso[1].weight.view(-1, 4, GRID, GRID)  # (hidden, channel, row, column)
        seen = torch.zeros(GRID, GRID, dtype=torch.bool)
        seen[7:9, 4:6] = True
        first.mul_(seen.float())

    blinkered = altered(healthy, blinker)
    finding = tunnel_vision(blinkered, small_rollout(blinkered))
    assert finding.fired and finding.details["saliency_cell_share_90"] <= 0.04
    assert {(c["row"], c["column"]) for c in finding.details["top_saliency_cells"]} <= {(7, 4), (7, 5), (8, 4), (8, 5)}
    assert not tunnel_vision(healthy, healthy_rollout).fired


@pytest.mark.slow
def test_dead_units_fire_on_a_large_negative_bias(healthy, healthy_rollout):
    def kill(model):
        for tower in (model.actor, model.critic):
            for linear in (tower.torso[1], tower.torso[3]):
                linear.bias.sub_(100.0)

    killed = altered(healthy, kill)
    finding = dead_units(killed, small_rollout(killed))
    assert finding.fired and finding.value == 1.0 > DEAD_UNIT_SHARE
    assert finding.details["layers"]["actor.torso.2"] == {"dead": HEALTHY.hidden, "units": HEALTHY.hidden}
    assert not dead_units(healthy, healthy_rollout).fired


def test_dead_units_of_a_convolution_are_its_channels():
    model = ActorCritic("cnn", 32, shared_layers=0)
    with torch.no_grad():
        model.actor.torso[0].bias.fill_(-100.0)
    rollout = play_fresh_rollout(model, HEALTHY, num_envs=16, warmup_steps=0, steps=300)
    layers = dead_units(model, rollout).details["layers"]
    assert layers["actor.torso.1"] == {"dead": 16, "units": 16}  # 16 filters, each dead at every position
    assert layers["critic.torso.1"]["units"] == 16 and layers["critic.torso.1"]["dead"] < 16


def right_wall_blind(limit: int = 6):
    """Intercepts the ball like `follow_ball_policy`, but never moves the paddle right of `limit`."""
    follow = follow_ball_policy(intercept=True)

    def policy(obs):
        action = follow(obs)
        paddle_column = obs[:, 0, PADDLE_ROW].argmax(dim=1)
        return torch.where((action == RIGHT) & (paddle_column >= limit), NOOP, action)

    return policy


def test_failure_hot_spots_fire_on_a_policy_that_cannot_reach_the_right_wall():
    heatmap = failure_heatmap(right_wall_blind(), episodes=128, max_episode_steps=2000)
    finding = failure_hot_spots(heatmap)
    assert finding.fired, finding.details
    counts = finding.details["loss_column_counts"]
    assert sum(counts[GRID // 2:]) >= 0.9 * sum(counts)  # lost on the right, past the paddle's reach
    # A noisy player misses everywhere: no hot spot.
    spread = failure_hot_spots(failure_heatmap(follow_ball_policy(noise=0.5), episodes=128, max_episode_steps=2000))
    assert not spread.fired, spread.details


def test_failure_hot_spots_are_not_judged_on_a_handful_of_losses():
    finding = failure_hot_spots(failure_heatmap(right_wall_blind(), episodes=5, max_episode_steps=2000))
    assert not finding.fired and finding.verdict == "not judged"
    assert evidence(finding) == f"not judged: {finding.details['losses']} lost balls, under the 20 it needs"


def test_failure_hot_spots_are_not_judged_where_the_start_decides_the_losses():
    # A paddle parked in column 0 returns no ball that the start sends elsewhere: the game itself
    # says nearly every ball falls before a second brick, on the start's landing columns.
    def parked(obs):
        return torch.full((obs.shape[0],), LEFT, dtype=torch.int64)
    heatmap = failure_heatmap(parked, episodes=256, max_episode_steps=2000)
    assert (heatmap.returns[heatmap.lost] <= 1).mean() > 0.9
    assert np.count_nonzero(heatmap.ball_before_loss[0].sum(axis=0)) <= 3  # few columns: it would fire
    finding = failure_hot_spots(heatmap)
    assert not finding.fired and finding.verdict == "not judged", finding.details
    assert "first descents" in evidence(finding)
    # A player that returns balls and misses on one side is judged (and fires) as before.
    blind = failure_hot_spots(failure_heatmap(right_wall_blind(), episodes=128, max_episode_steps=2000))
    assert blind.details["lost_within_one_brick"] < 0.5 and blind.fired


def test_dead_entropy_term_fires_on_an_update_that_drops_the_bonus(monkeypatch):
    config = preset("smoke")
    assert not dead_entropy_term(config).fired
    monkeypatch.setattr(ppo, "ppo_loss", loss_without_entropy(ppo.ppo_loss))
    finding = dead_entropy_term(config)
    assert finding.fired and finding.value == 0.0


def loss_without_entropy(real_loss):
    """The bug: the entropy bonus is computed and reported, not optimised."""
    def loss(model, obs, actions, old_logprobs, old_values, advantages, returns, config):
        return real_loss(model, obs, actions, old_logprobs, old_values, advantages, returns,
                         config.replace(ent_coef=0.0))
    return loss


def test_a_run_trained_without_the_entropy_term_is_diagnosed(monkeypatch, tmp_path):
    """The issue's demo in small: drop the bonus, bypass the preflight's veto, train, diagnose."""
    monkeypatch.setattr(ppo, "ppo_loss", loss_without_entropy(ppo.ppo_loss))
    monkeypatch.setattr(training, "check_entropy_term",
                        lambda config, **where: EntropyCheck(passed=True, max_parameter_difference=math.nan))
    result = training.train(preset("smoke"), tmp_path / "broken")
    model, saved = load_agent(result.last_checkpoint)
    heatmap = failure_heatmap(policy_from_model(model), episodes=16)
    diagnosis = diagnose(model, saved, heatmap, rollout=small_rollout(model))
    assert "dead_entropy_term" in [f.name for f in diagnosis.fired]


# ---------------------------------------------------------------------------------------------
# The first-wall barrier and the lane, on heatmaps whose counts are written by hand


def counted_heatmap(bricks_left, refills, lost, ball_paths=(), returns=None):
    """A FailureHeatmap of len(lost) episodes with the given ends; `ball_paths` is one list of
    (row, column) cells per lost episode, frame age 0 first; `returns` (default 0 each) per episode."""
    n = len(lost)
    ball = np.zeros((8, GRID, GRID), dtype=np.int64)
    for path in ball_paths:
        for age, (row, column) in enumerate(path):
            ball[age, row, column] += 1
    return FailureHeatmap(
        last_k=8, max_episode_steps=10_000, sticky_action_prob=0.1,
        returns=np.zeros(n, np.float32) if returns is None else np.asarray(returns, np.float32),
        lengths=np.full(n, 100), lost=np.array(lost), truncated=~np.array(lost),
        bricks_left=np.array(bricks_left), refills=np.array(refills), ball_before_loss=ball,
        paddle_before_loss=np.zeros((8, GRID), np.int64), offset_before_loss=np.zeros((8, NUM_OFFSETS), np.int64),
        ball_all_frames=np.zeros((GRID, GRID), np.int64), paddle_all_frames=np.zeros(GRID, np.int64),
        offset_all_frames=np.zeros(NUM_OFFSETS, np.int64))


def test_first_wall_barrier_is_the_share_of_episodes_lost_where_the_first_wall_ends():
    # 100 episodes: 45 lost on the first wall with 2 bricks standing (28 broken), 10 just after
    # the refill with 29 of the new wall standing (31 broken), 20 on the first wall with 20 standing,
    # 20 on the second wall with 5 standing, 5 truncated: 55 lost within 3 bricks of the refill.
    bricks = [2] * 45 + [29] * 10 + [20] * 20 + [5] * 20 + [0] * 5
    refills = [0] * 45 + [1] * 10 + [0] * 20 + [1] * 20 + [3] * 5
    lost = [True] * 95 + [False] * 5
    finding = first_wall_barrier(counted_heatmap(bricks, refills, lost))
    assert finding.value == pytest.approx(0.55) and finding.fired
    assert finding.details["lost_nearly_cleared"] == 45 and finding.details["lost_just_after_refill"] == 10
    assert finding.details["losses_before_first_refill"] == 65
    assert finding.details["bricks_left_at_first_wall_losses"][2] == 45
    # A young agent loses its balls with most of the wall standing; a strong one on later walls.
    young = first_wall_barrier(counted_heatmap([20] * 90 + [2] * 10, [0] * 100, [True] * 100))
    assert young.value == pytest.approx(0.1) and not young.fired
    strong = first_wall_barrier(counted_heatmap([1] * 100, [3] * 100, [True] * 100))
    assert strong.value == 0 and not strong.fired
    assert first_wall_barrier(counted_heatmap([2] * 5, [0] * 5, [True] * 5)).verdict == "not judged"


def test_lane_is_the_share_of_losses_down_the_commonest_path():
    down_left = [(8, 0), (7, 1), (6, 2), (5, 3), (4, 4)]  # frame age 0 first: the ball came down-left
    down_right = [(8, 9), (7, 8), (6, 7), (5, 6), (4, 5)]
    # 70 losses down one diagonal, 30 spread: 10 down the mirrored one, 20 ending in the middle
    # after the same first cells (age 3 shared with the lane, age 0 not).
    ending_elsewhere = [(8, 5), (7, 4), (6, 3), (5, 3), (4, 4)]
    paths = [down_left] * 70 + [down_right] * 10 + [ending_elsewhere] * 20
    finding = lane(counted_heatmap([10] * 100, [0] * 100, [True] * 100, paths, returns=[20] * 100))
    assert finding.details["share_per_frame"] == [0.7, 0.7, 0.7, 0.9]
    assert finding.value == pytest.approx(0.7) and finding.fired
    assert finding.details["lane_cells"] == [[8, 0], [7, 1], [6, 2], [5, 3]]
    assert "(8,0) (7,1) (6,2) (5,3)" in evidence(finding) and "of 100 losses" in evidence(finding)
    # A third of the losses down each of two paths and the rest spread: no single lane.
    spread = [[(8, c), (7, c + 1), (6, c + 2), (5, c + 3)] for c in range(1, 5)] * 10
    two = lane(counted_heatmap([10] * 100, [0] * 100, [True] * 100, [down_left] * 30 + [down_right] * 30 + spread,
                               returns=[20] * 100))
    assert two.value == pytest.approx(0.3) and not two.fired
    # Two mirrored lanes, half each, as a random policy's start lanes: not judged at its return.
    mirrored = lane(counted_heatmap([30] * 100, [0] * 100, [True] * 100, [down_left] * 50 + [down_right] * 50,
                                    returns=[0] * 100))
    assert mirrored.verdict == "not judged" and not mirrored.fired
    # The same losses from an agent that scores 3 (a few bounces an episode, whose paths the start
    # fixes): not judged, and the evidence says why.
    weak = lane(counted_heatmap([27] * 100, [0] * 100, [True] * 100, paths, returns=[3] * 100))
    assert weak.verdict == "not judged" and not weak.fired and "mean return 3" in evidence(weak)


def test_a_fired_finding_shows_its_evidence_and_links_its_figure_on_the_page():
    from instruments.show.pages import finding_html

    bricks, refills, lost = [1] * 80 + [25] * 20, [0] * 100, [True] * 100
    fired = first_wall_barrier(counted_heatmap(bricks, refills, lost))
    assert fired.fired and evidence(fired) == ("80 of 100 episodes lost within 3 bricks of the first refill: 80 "
                                               "with at most 3 bricks of the first wall standing, 0 just after "
                                               "the refill")
    html = finding_html(fired)
    assert "evidence: 80 of 100 episodes" in html and 'href="#failures"' in html
    quiet = first_wall_barrier(counted_heatmap([25] * 100, refills, lost))
    assert not quiet.fired and "evidence:" not in finding_html(quiet)
    # A finding with no value says why on the page, as in the terminal.
    unjudged = lane(counted_heatmap([27] * 100, [0] * 100, [True] * 100, returns=[3] * 100))
    assert unjudged.verdict == "not judged" and "not judged: mean return 3, under 7.5" in finding_html(unjudged)


# ---------------------------------------------------------------------------------------------
# Real agents of the diagnosis corpus (benchmarks/diagnosis_corpus.py)

CORPUS = Path(__file__).resolve().parent.parent / "benchmarks" / "diagnosis_corpus"


@pytest.mark.slow
def test_tunnel_vision_fires_on_an_agent_trained_blind_to_rows_0_to_6_and_not_on_a_healthy_one():
    blind, config = load_agent(CORPUS / "tunnel-s4-1000k.pt")
    rollout = play_fresh_rollout(blind, config, num_envs=32, warmup_steps=64, steps=320)
    finding = tunnel_vision(blind, rollout)
    # Independent of the saliency: its first layer's weights on rows 0-6 are exactly 0, so the ball's
    # share of visits to rows 0-6, read from the frames, is blind at least.
    frames = torch.linspace(0, rollout.obs.shape[0] - 1, 2048).long()  # the frames tunnel_vision reads
    ball = rollout.obs[frames, 1]
    upper = float(ball[:, :7].sum() / ball.sum())
    assert upper > 0.5 and finding.value >= upper - 1e-6 and finding.fired
    assert {row for row, _ in finding.details["blind_cells"]} >= {4, 5, 6}  # where the ball falls through
    healthy, config = load_agent(CORPUS / "default-s3-4000k.pt")
    assert not tunnel_vision(healthy, play_fresh_rollout(healthy, config, num_envs=32, warmup_steps=64,
                                                         steps=320)).fired


@pytest.mark.slow
def test_first_wall_barrier_fires_on_a_plateaued_agent_and_not_on_a_young_one():
    stuck, config = load_agent(CORPUS / "old-s1-3000k.pt")  # training return ~23 for its last 1.5M steps
    heatmap = failure_heatmap(policy_from_model(stuck), episodes=128)
    finding = first_wall_barrier(heatmap)
    # Independent of the finding's arithmetic (bricks standing and refills): a brick pays 1, so the
    # episodes that end within 3 bricks of the first refill are those lost with a return of 27-33.
    around = heatmap.lost & (heatmap.returns >= 27) & (heatmap.returns <= 33)
    assert heatmap.mean_return < 30 and around.mean() > 0.5
    assert finding.fired and finding.value == pytest.approx(around.mean())
    young, _ = load_agent(CORPUS / "default-s1-500k.pt")
    assert not first_wall_barrier(failure_heatmap(policy_from_model(young), episodes=128)).fired


@pytest.mark.slow
def test_value_stuck_fires_on_a_critic_trained_without_value_loss_whose_value_still_moves():
    # critic-s2 (`--vf-coef 0`): its V moves (a third of the return's spread and more, so the flat
    # rule alone misses it) but predicts the return worse than a constant. Explained variance from
    # its definition, on the rollout's own frames.
    critic, config = load_agent(CORPUS / "critic-s2-1000k.pt")
    rollout = play_fresh_rollout(critic, config, num_envs=64)
    g, v = rollout.returns.double().numpy(), rollout.values.double().numpy()
    finding = value_stuck(rollout)
    assert 1 - np.var(g - v) / np.var(g) < 0 and finding.fired
    assert finding.details["spread_ratio"] > 0.3
    young, config = load_agent(CORPUS / "default-s1-500k.pt")  # the youngest healthy agent: not stuck
    assert not value_stuck(play_fresh_rollout(young, config, num_envs=64)).fired


@pytest.mark.slow
def test_lane_is_not_judged_on_an_agent_that_loses_the_ball_within_its_first_bounces():
    # tunnel-s3 (blind to rows 0-6) parks its paddle and loses most balls down one path that the
    # start and the parked paddle fix; it scores under a quarter of a wall.
    blind, config = load_agent(CORPUS / "tunnel-s3-1000k.pt")
    heatmap = failure_heatmap(policy_from_model(blind), episodes=256)
    assert heatmap.mean_return < 7.5
    finding = lane(heatmap)
    assert finding.verdict == "not judged" and not finding.fired


def loss_columns_counted_on_the_env(model, config, games=256) -> list[int]:
    """The ball's column on the frame of each losing action, one episode per game, by a loop of our
    own on the env (not the heatmap's counting)."""
    from breakout_ppo.env import BatchedBreakout

    policy = policy_from_model(model, seed=1)
    env = BatchedBreakout(games, sticky_action_prob=config.sticky_action_prob, seed=1)
    obs, done, columns = env.reset(), torch.zeros(games, dtype=torch.bool), []
    while not done.all():
        ball = obs[:, 1].flatten(1).argmax(1)
        obs, _, terminated, truncated, _ = env.step(policy(obs))
        columns += (ball[terminated & ~done] % GRID).tolist()
        done |= terminated | truncated
    return columns


@pytest.mark.slow
def test_first_wall_barrier_and_lane_fire_on_the_full_wall_seed_3_plateau():
    # fullwall-s3-6000k: the first sessions' full-wall configuration, seed 3, 6M steps, training
    # return 23 for the last 4M steps. Its lost balls, counted by a loop of our own on the env (the
    # ball's cell on the frame of the losing action): most in column 1, at the end of one diagonal.
    stuck, config = load_agent(CORPUS / "fullwall-s3-6000k.pt")
    columns = loss_columns_counted_on_the_env(stuck, config)
    assert np.bincount(columns, minlength=GRID).argmax() == 1 and columns.count(1) / len(columns) > 0.4

    heatmap = failure_heatmap(policy_from_model(stuck), episodes=512)
    path = lane(heatmap)
    assert path.fired and path.details["lane_cells"] == [[8, 1], [7, 2], [6, 3], [5, 4]]
    assert first_wall_barrier(heatmap).fired and not failure_hot_spots(heatmap).fired


@pytest.mark.slow
def test_failure_hot_spots_fire_on_an_agent_that_never_learnt_to_defend_the_right_corner():
    # ghost-s3-6000k: trained where a paddle in columns 8-9 returns no ball (benchmarks/
    # diagnosis_corpus.py, `ghost_paddle`), judged here on MinAtar's game, where it could return
    # them. Its lost balls, counted by a loop of our own on the env: most in column 9.
    agent, config = load_agent(CORPUS / "ghost-s3-6000k.pt")
    columns = loss_columns_counted_on_the_env(agent, config)
    assert np.bincount(columns, minlength=GRID).argmax() == GRID - 1 and columns.count(GRID - 1) / len(columns) > 0.6

    finding = failure_hot_spots(failure_heatmap(policy_from_model(agent), episodes=512))
    assert finding.fired and np.argmax(finding.details["loss_column_counts"]) == GRID - 1
    healthy, _ = load_agent(CORPUS / "default-s3-4000k.pt")
    assert not failure_hot_spots(failure_heatmap(policy_from_model(healthy), episodes=256)).fired
