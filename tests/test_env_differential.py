"""Our batched Breakout against the `minatar` package, transition by transition.

Many MinAtar games step alongside one `BatchedBreakout` whose slots hold the same games. Whenever a
MinAtar episode ends, its reset state is copied into our slot (our env auto-resets on its own
start side, so the slot is overwritten with `set_state`). Every step compares the frame the step
produced (`info.final_obs`), the current frame of games that go on (`obs`, the in-place buffer),
the hidden state (ball direction, strike), reward, terminal flag, the quirk events and the episode
statistics, exactly.

Breakout's quirks are counted from MinAtar's side (from its state before and after each `act`, see
`minatar_reference.detect_events`), so that the tests can insist that each quirk was exercised.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import pytest
import torch

from breakout_ppo.env import BatchedBreakout, BreakoutState
from support.minatar_reference import (
    DOWN_LEFT,
    DOWN_RIGHT,
    EVENT_NAMES,
    LEFT,
    NOOP,
    OUR_EVENT_NAMES,
    RIGHT,
    UP_LEFT,
    UP_RIGHT,
    crafted_game,
    five_sigma,
    minatar_start_states,
    minimal_actions,
    reference_frames,
    reference_game,
    reference_step,
    Survivor,
    state_from_games,
    write_slot,
)



# ---------------------------------------------------------------------------------------------
# The lockstep runner


@dataclass
class LockstepReport:
    transitions: int = 0
    episodes: int = 0
    longest_episode: int = 0
    counts: Counter = field(default_factory=Counter)  # reference-side quirk events, summed
    history: list = field(default_factory=list)  # if kept: per step, per game, the set of events
    # Sticky actions: steps whose request differed from the previous executed action (the only
    # steps where a repeat shows), and how many of them repeated it; the same for first steps
    # of episodes after the first (the previous action then belongs to the previous episode).
    sticky_chances: int = 0
    sticky_repeats: int = 0
    sticky_chances_after_reset: int = 0
    sticky_repeats_after_reset: int = 0
    start_sides: Counter = field(default_factory=Counter)  # ball column of our auto-reset states


def assert_same(ours: torch.Tensor, theirs, what: str, step: int):
    """Exact equality, with the first few mismatching games named in the message."""
    ours = ours.cpu()
    theirs = torch.as_tensor(theirs).to(ours.dtype)
    if torch.equal(ours, theirs):
        return
    assert ours.shape == theirs.shape, f"{what}: shape {tuple(ours.shape)}, minatar {tuple(theirs.shape)}"
    games = (ours != theirs).reshape(ours.shape[0], -1).any(1).nonzero().flatten().tolist()
    game = games[0]
    # Name the differing entries of the first such game: (channel, row, column) for a frame.
    cells = (ours[game] != theirs[game]).nonzero().tolist()[:6]
    entries = ", ".join(f"{tuple(c)}: ours {ours[game][tuple(c)].item()} minatar {theirs[game][tuple(c)].item()}"
                        for c in cells) or f"ours {ours[game].item()} minatar {theirs[game].item()}"
    raise AssertionError(f"{what} differs from minatar at step {step} in games {games[:10]} (of {len(games)}); "
                         f"game {game}: {entries}")


def run_lockstep(games, choose_actions, steps: int, seed: int = 0, sticky_action_prob: float = 0.0,
                 keep_history: bool = False, device="cpu") -> LockstepReport:
    """Step `games` (MinAtar, no sticky actions) and one `BatchedBreakout` together for `steps` steps.

    `choose_actions(games, step)` returns the requested actions (our indices, int (N,)). Our env
    plays them with `sticky_action_prob`; the MinAtar games then play the action our env reports
    it executed, after checking that it is the request or MinAtar's own record of the previous
    executed action.
    """
    n = len(games)
    codes = minimal_actions(games[0])
    starts = minatar_start_states()
    env = BatchedBreakout(n, device=device, sticky_action_prob=sticky_action_prob, seed=seed)
    env.reset()
    obs = env.set_state(state_from_games(games))
    assert_same(obs, reference_frames(games), "first frame", 0)
    report = LockstepReport()
    # Our own tallies of each running episode, to check the episode statistics in `info`.
    episode_return = torch.zeros(n)
    episode_length = torch.zeros(n, dtype=torch.int64)
    episode_refills = torch.zeros(n, dtype=torch.int64)
    after_reset = np.zeros(n, dtype=bool)

    for step in range(1, steps + 1):
        requests = np.asarray(choose_actions(games, step), dtype=np.int64)
        previous = np.array([codes.index(game.last_action) for game in games])

        obs, reward, terminated, truncated, info = env.step(torch.from_numpy(requests))
        obs = obs.cpu()  # a copy, taken before set_state below redraws the buffer
        executed = info.executed_action.cpu().numpy()
        if sticky_action_prob == 0:
            assert_same(info.executed_action, requests, "executed_action (sticky actions are off)", step)
        else:
            neither = (executed != requests) & (executed != previous)
            assert not neither.any(), (f"step {step}: games {np.flatnonzero(neither)[:10]} executed neither the "
                                       f"request nor the previous executed action")
        chances = requests != previous
        repeats = chances & (executed == previous)
        report.sticky_chances += int(chances.sum())
        report.sticky_repeats += int(repeats.sum())
        report.sticky_chances_after_reset += int((chances & after_reset).sum())
        report.sticky_repeats_after_reset += int((repeats & after_reset).sum())

        rewards, terminals = np.zeros(n, dtype=np.float32), np.zeros(n, dtype=bool)
        events = {name: np.zeros(n, dtype=bool) for name in EVENT_NAMES}
        for i, game in enumerate(games):
            rewards[i], terminals[i], happened = reference_step(game, int(executed[i]))
            for name, value in happened.items():
                events[name][i] = value
        final_frames = reference_frames(games)
        final_state = state_from_games(games)

        # The frame and the full state each game reached, before any reset.
        assert_same(info.final_obs, final_frames, "final_obs", step)
        for name, ours, theirs in zip(final_state._fields, info.final_state, final_state):
            assert_same(ours, theirs, f"final_state.{name}", step)
        assert_same(reward, rewards, "reward", step)
        assert_same(terminated, terminals, "terminated", step)
        assert not truncated.any(), "no step cap was set, yet an episode was truncated"
        assert_same(info.done, terminals, "done", step)
        for name in OUR_EVENT_NAMES:
            assert_same(getattr(info.events, name), events[name], f"events.{name}", step)
        # Games that go on: the in-place observation buffer holds their next frame.
        going_on = torch.from_numpy(~terminals)
        assert_same(obs[going_on], final_frames[going_on], "obs of a game that goes on", step)

        # Episode statistics, tallied here from MinAtar's rewards and refills.
        episode_return += torch.from_numpy(rewards)
        episode_length += 1
        episode_refills += torch.from_numpy(events["refill"])
        done = torch.from_numpy(terminals)
        assert_same(info.episode_return.cpu()[done], episode_return[done], "episode_return", step)
        assert_same(info.episode_length.cpu()[done], episode_length[done], "episode_length", step)
        assert_same(info.episode_refills.cpu()[done], episode_refills[done], "episode_refills", step)

        report.transitions += n
        report.episodes += int(terminals.sum())
        report.longest_episode = max(report.longest_episode, int(episode_length.max()))
        report.counts.update({name: int(flags.sum()) for name, flags in events.items()})
        if keep_history:
            report.history.append([{name for name in EVENT_NAMES if events[name][i]} for i in range(n)])
        episode_return[done], episode_length[done], episode_refills[done] = 0.0, 0, 0
        after_reset = terminals

        if terminals.any():
            ended = np.flatnonzero(terminals)
            for i in ended:
                games[i].reset()
            # Our auto-reset: one of MinAtar's two start states (its own side), keeping the sticky
            # action like MinAtar's reset does.
            state = env.get_state().to("cpu")
            left_or_right = (state.ball_x[ended] == starts.ball_x[1]).long()
            report.start_sides.update(state.ball_x[ended].tolist())
            for name, ours, start in zip(BreakoutState._fields[:-1], state[:-1], starts[:-1]):
                assert_same(ours[ended], start[left_or_right], f"auto-reset state.{name}", step)
            assert_same(state.last_action[ended], [codes.index(games[i].last_action) for i in ended],
                        "last_action after auto-reset", step)
            # Then MinAtar's reset state (its side) is copied into our slot.
            for i in ended:
                write_slot(state, int(i), games[i])
            env.set_state(state)
            assert_same(env.observe(), reference_frames(games), "frame after set_state", step)
    return report


# ---------------------------------------------------------------------------------------------
# Action sequences


def random_actions(seed: int):
    rng = np.random.default_rng(seed)
    return lambda games, step: rng.integers(0, 3, len(games))


def adversarial_actions(seed: int):
    """Per game, one of: always left, always right, always no-op, left/right alternating, and long
    repeats of one random action (switching on average every 20 steps). Pins the paddle to the
    walls and keeps it bouncing off them."""
    rng = np.random.default_rng(seed)
    repeated = {}

    def choose(games, step):
        actions = np.empty(len(games), dtype=np.int64)
        for i in range(len(games)):
            scheme = i % 5
            if scheme == 0:
                actions[i] = LEFT
            elif scheme == 1:
                actions[i] = RIGHT
            elif scheme == 2:
                actions[i] = NOOP
            elif scheme == 3:
                actions[i] = LEFT if step % 2 else RIGHT
            else:
                if i not in repeated or rng.random() < 1 / 20:
                    repeated[i] = rng.integers(0, 3)
                actions[i] = repeated[i]
        return actions

    return choose


def fresh_games(n: int, seed: int):
    return [reference_game(seed * 10_000 + i) for i in range(n)]


# ---------------------------------------------------------------------------------------------
# Long lockstep runs: 166,400 transitions in all, 102,400 of them with the survivor


def test_random_play_matches_minatar():
    report = run_lockstep(fresh_games(128, seed=1), random_actions(seed=1), steps=250, seed=1)
    # Random play loses the ball within a few bounces: many short episodes, both bounce kinds.
    assert report.episodes >= 1000, report
    assert len(report.start_sides) == 2, f"our auto-reset used one start side only: {report.start_sides}"
    for event in ("brick_broken", "same_column_bounce", "adjacent_column_bounce", "side_wall"):
        assert report.counts[event] >= 100, report


def test_adversarial_play_matches_minatar():
    report = run_lockstep(fresh_games(128, seed=2), adversarial_actions(seed=2), steps=250, seed=2)
    assert report.episodes >= 1000, report
    assert report.counts["same_column_bounce"] >= 100 and report.counts["adjacent_column_bounce"] >= 1, report


def test_survivor_play_matches_minatar_through_refills():
    report = run_lockstep(fresh_games(128, seed=3), Survivor(seed=3, give_up=1 / 50), steps=800, seed=3)
    assert report.transitions >= 100_000
    # The quirks that only long games reach, each many times.
    assert report.counts["refill"] >= 50, report
    assert report.counts["strike_pass"] >= 25, report
    assert report.counts["same_column_bounce"] >= 1000 and report.counts["adjacent_column_bounce"] >= 1000, report
    assert report.counts["corner"] >= 100 and report.counts["side_wall_and_brick"] >= 100, report
    # Episodes end too (the survivor gives up now and then), some right on a refill.
    assert report.episodes >= 50 and report.counts["refill_and_lost"] >= 1, report
    assert report.longest_episode >= 600, report


# ---------------------------------------------------------------------------------------------
# Sticky actions


def requests_other_than_the_previous_action(seed: int):
    """Requests that always differ from the previous executed action (MinAtar's own record of it,
    `Environment.last_action`): then every step shows whether the sticky draw fired."""
    rng = np.random.default_rng(seed)

    def choose(games, step):
        codes = minimal_actions(games[0])
        previous = np.array([codes.index(game.last_action) for game in games])
        return (previous + rng.integers(1, 3, len(games))) % 3

    return choose


def test_sticky_actions_repeat_the_previous_executed_action_with_probability_p():
    p = 0.1
    report = run_lockstep(fresh_games(256, seed=4), requests_other_than_the_previous_action(seed=4), steps=200,
                          seed=4, sticky_action_prob=p)
    # Every step was a chance (the request always differed); the runner checked each executed
    # action against the request and MinAtar's previous action, and played it on MinAtar.
    assert report.sticky_chances == report.transitions == 256 * 200
    frequency = report.sticky_repeats / report.sticky_chances
    assert abs(frequency - p) <= five_sigma(p, report.sticky_chances), (frequency, report.sticky_chances)
    # The first step of an episode repeats the previous episode's last action just as often:
    # MinAtar's reset keeps `last_action`, and so does our auto-reset.
    assert report.sticky_chances_after_reset >= 2000, report.sticky_chances_after_reset
    frequency = report.sticky_repeats_after_reset / report.sticky_chances_after_reset
    assert abs(frequency - p) <= five_sigma(p, report.sticky_chances_after_reset), (
        frequency, report.sticky_chances_after_reset)


def test_minatar_sticky_semantics_that_the_tests_assume():
    # The runner's model of MinAtar's sticky actions, checked on MinAtar's own `Environment` with
    # a seeded generator: the executed action (`last_action` after `act`, and the paddle's move)
    # is the request or the previous executed action, the latter with probability p; `reset`
    # keeps `last_action`.
    p, steps = 0.1, 20_000
    game = reference_game(seed=5, sticky_action_prob=p)
    codes = minimal_actions(game)
    move = {codes[NOOP]: 0, codes[LEFT]: -1, codes[RIGHT]: 1}
    rng = np.random.default_rng(5)
    repeats = resets_seen = 0
    for _ in range(steps):
        previous = game.last_action
        request = rng.choice([code for code in codes if code != previous])
        paddle = game.env.pos
        _, terminal = game.act(request)
        executed = game.last_action
        assert executed in (request, previous)
        assert game.env.pos == min(max(paddle + move[executed], 0), 9), "the paddle did not play the executed action"
        repeats += executed == previous
        if terminal:
            game.reset()
            assert game.last_action == executed, "MinAtar's reset changed last_action"
            resets_seen += 1
    assert resets_seen >= 100
    assert abs(repeats / steps - p) <= five_sigma(p, steps), repeats / steps


# ---------------------------------------------------------------------------------------------
# Crafted states: one per quirk of MinAtar's rules


def wall_without(*holes):
    """Full brick rows 1-3 except the given (row, column) cells."""
    return [(row, column) for row in (1, 2, 3) for column in range(10) if (row, column) not in holes]


ALL_ACTIONS = (NOOP, LEFT, RIGHT)

# name: (crafted_game arguments, {action: {step: the exact set of reference events at that step}}).
# The events are what MinAtar's rules (read off its source) do; the lockstep run then checks that
# MinAtar itself agrees (so each state really exercises its quirk) and that our env matches it.
QUIRKS = {
    "strike set: the ball passes into bricks, no reward, the bricks stay; the top wall clears strike": (
        dict(ball=(4, 3), direction=UP_RIGHT, strike=True),
        {a: {1: {"strike_pass"}, 2: {"strike_pass"}, 3: {"strike_pass"}, 4: set(), 5: {"top_wall"},
             6: {"brick_broken"}} for a in ALL_ACTIONS},
    ),
    "a break sets strike, so the next brick is passed into": (
        dict(ball=(2, 5), direction=UP_RIGHT, bricks=wall_without((2, 5), (2, 6))),
        {a: {1: {"brick_broken"}, 2: {"strike_pass"}, 3: set()} for a in ALL_ACTIONS},
    ),
    "the bounce off a broken brick lands inside another brick": (
        dict(ball=(2, 5), direction=UP_RIGHT, bricks=wall_without((2, 5))),
        {a: {1: {"brick_broken"}, 2: {"strike_pass"}} for a in ALL_ACTIONS},
    ),
    "the top wall clears strike: the next brick breaks": (
        dict(ball=(0, 5), direction=UP_LEFT, strike=True),
        {a: {1: {"top_wall"}, 2: {"brick_broken"}} for a in ALL_ACTIONS},
    ),
    "top wall, then a brick from row 0, then the top wall again": (
        dict(ball=(0, 5), direction=UP_RIGHT),
        {a: {1: {"top_wall"}, 2: {"brick_broken"}, 3: {"top_wall"}} for a in ALL_ACTIONS},
    ),
    "refill on the bottom row, then the bounce (or the loss)": (
        dict(ball=(8, 4), direction=DOWN_RIGHT, paddle=4, bricks="none"),
        {NOOP: {1: {"refill", "same_column_bounce"}},
         LEFT: {1: {"refill", "lost", "refill_and_lost"}},
         RIGHT: {1: {"refill", "adjacent_column_bounce"}}},
    ),
    "bottom row: the paddle after its move decides; same column first, then the landing column": (
        dict(ball=(8, 4), direction=DOWN_RIGHT, paddle=5),
        {NOOP: {1: {"adjacent_column_bounce"}}, LEFT: {1: {"same_column_bounce"}}, RIGHT: {1: {"lost"}}},
    ),
    "left wall and paddle in one step: the clamped ball lands in its own column": (
        dict(ball=(8, 0), direction=DOWN_LEFT, paddle=0),
        {NOOP: {1: {"side_wall", "same_column_bounce"}}, LEFT: {1: {"side_wall", "same_column_bounce"}},
         RIGHT: {1: {"side_wall", "lost"}}},
    ),
    "right wall and paddle in one step": (
        dict(ball=(8, 9), direction=DOWN_RIGHT, paddle=8),
        {NOOP: {1: {"side_wall", "lost"}}, LEFT: {1: {"side_wall", "lost"}},
         RIGHT: {1: {"side_wall", "same_column_bounce"}}},
    ),
    "paddle pushed against the left wall stays there": (
        dict(ball=(8, 1), direction=DOWN_LEFT, paddle=0),
        {NOOP: {1: {"adjacent_column_bounce"}}, LEFT: {1: {"adjacent_column_bounce"}},
         RIGHT: {1: {"same_column_bounce"}}},
    ),
    "paddle pushed against the right wall stays there": (
        dict(ball=(8, 8), direction=DOWN_RIGHT, paddle=9),
        {NOOP: {1: {"adjacent_column_bounce"}}, LEFT: {1: {"same_column_bounce"}},
         RIGHT: {1: {"adjacent_column_bounce"}}},
    ),
    "top-left corner: side and top wall in one step, the ball stays in its cell": (
        dict(ball=(0, 0), direction=UP_LEFT),
        {a: {1: {"side_wall", "top_wall", "corner"}, 2: {"brick_broken"}} for a in ALL_ACTIONS},
    ),
    "top-right corner": (
        dict(ball=(0, 9), direction=UP_RIGHT),
        {a: {1: {"side_wall", "top_wall", "corner"}, 2: {"brick_broken"}} for a in ALL_ACTIONS},
    ),
    "side wall and a brick in one step": (
        dict(ball=(4, 0), direction=UP_LEFT),
        {a: {1: {"side_wall", "brick_broken", "side_wall_and_brick"}} for a in ALL_ACTIONS},
    ),
    "side wall and a strike pass-through in one step": (
        dict(ball=(4, 9), direction=UP_RIGHT, strike=True),
        {a: {1: {"side_wall", "strike_pass", "side_wall_and_brick"}} for a in ALL_ACTIONS},
    ),
    "breaking the last brick refills nothing until the ball reaches the bottom row": (
        dict(ball=(4, 3), direction=UP_RIGHT, paddle=4, bricks=[(3, 4)]),
        {NOOP: {1: {"brick_broken"}, 2: set(), 5: set(), 6: {"refill", "lost", "refill_and_lost"}},
         RIGHT: {1: {"brick_broken"}, 6: {"refill", "adjacent_column_bounce"}}},
    ),
    "the ball passes into the last brick and leaves it: the brick stays, no refill": (
        dict(ball=(4, 3), direction=UP_RIGHT, paddle=4, bricks=[(3, 4)], strike=True),
        {NOOP: {1: {"strike_pass"}, 2: set(), 5: {"top_wall"}, 7: {"side_wall"}, 14: {"lost"}}},
    ),
}


def test_crafted_quirk_states_match_minatar():
    names = list(QUIRKS)
    games = [crafted_game(**QUIRKS[name][0]) for name in names for _ in ALL_ACTIONS]
    actions = np.tile(ALL_ACTIONS, len(names))
    report = run_lockstep(games, lambda games, step: actions, steps=15, keep_history=True)
    for q, name in enumerate(names):
        for action, expected_by_step in QUIRKS[name][1].items():
            slot = q * len(ALL_ACTIONS) + ALL_ACTIONS.index(action)
            for step, expected in expected_by_step.items():
                assert report.history[step - 1][slot] == expected, (
                    f"{name!r}, action {action}, step {step}: minatar's events {report.history[step - 1][slot]}")


def test_strike_pass_through_keeps_the_brick_and_moves_the_ball_into_it():
    # The quirk spelled out on our env's own output: strike is set, the ball (row 4, column 3,
    # moving up-right) is about to enter the brick at row 3, column 4.
    game = crafted_game(ball=(4, 3), direction=UP_RIGHT, strike=True)
    env = BatchedBreakout(1, sticky_action_prob=0.0)
    env.set_state(state_from_games([game]))
    bricks_before = env.observe()[0, 3].sum()
    obs, reward, terminated, _, info = env.step(torch.tensor([NOOP]))
    assert reward.item() == 0 and not terminated.item()
    assert obs[0, 1, 3, 4] == 1, "the ball is in the brick's cell"
    assert obs[0, 3, 3, 4] == 1 and obs[0, 3].sum() == bricks_before, "the brick stays"
    assert info.events.strike_pass.item() and not info.events.brick_broken.item()
    # And MinAtar says the same.
    minatar_reward, _, _ = reference_step(game, NOOP)
    assert minatar_reward == 0
    assert torch.equal(obs, reference_frames([game]))


# ---------------------------------------------------------------------------------------------
# CUDA


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU")
def test_play_on_cuda_matches_minatar():
    report = run_lockstep(fresh_games(128, seed=6), Survivor(seed=6, give_up=1 / 10), steps=300, seed=6,
                          device="cuda")
    assert report.episodes >= 50 and report.counts["adjacent_column_bounce"] >= 100, report
    sticky = run_lockstep(fresh_games(128, seed=7), requests_other_than_the_previous_action(seed=7), steps=100,
                          seed=7, sticky_action_prob=0.1, device="cuda")
    assert sticky.sticky_repeats > 0, sticky
