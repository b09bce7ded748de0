"""The failure heatmap against counts made by hand: a plain per-step loop over episodes, on our env
and on the `minatar` package itself."""

from collections import Counter

import numpy as np
import pytest
import torch

from breakout_ppo.env import GRID, MINATAR_ACTIONS, PADDLE_ROW, BatchedBreakout
from breakout_ppo.model import ActorCritic
from instruments.measure.heatmap import (
    FailureHeatmap,
    failure_heatmap,
    policy_from_model,
    save_heatmap_png,
)
from instruments.measure.scripted import follow_ball_policy, random_policy

K = 8


def count_by_hand(episodes, last_k):
    """`episodes`: per slot a dict with `frames` [(ball_y, ball_x, paddle_x), ...] (the frames the
    agent acted on) and `lost`. Returns the heatmap's arrays, counted one episode at a time."""
    ball = np.zeros((last_k, GRID, GRID), dtype=np.int64)
    paddle = np.zeros((last_k, GRID), dtype=np.int64)
    offset = np.zeros((last_k, 2 * GRID - 1), dtype=np.int64)
    ball_all = np.zeros((GRID, GRID), dtype=np.int64)
    paddle_all = np.zeros(GRID, dtype=np.int64)
    offset_all = np.zeros(2 * GRID - 1, dtype=np.int64)
    for episode in episodes:
        frames = episode["frames"]
        for y, x, p in frames:
            ball_all[y, x] += 1
            paddle_all[p] += 1
            offset_all[x - p + GRID - 1] += 1
        if episode["lost"]:
            for age, (y, x, p) in enumerate(reversed(frames[-last_k:])):
                ball[age, y, x] += 1
                paddle[age, p] += 1
                offset[age, x - p + GRID - 1] += 1
    return dict(ball_before_loss=ball, paddle_before_loss=paddle, offset_before_loss=offset,
                ball_all_frames=ball_all, paddle_all_frames=paddle_all, offset_all_frames=offset_all)


def assert_matches(heatmap: FailureHeatmap, episodes):
    expected = count_by_hand(episodes, heatmap.last_k)
    for name, value in expected.items():
        np.testing.assert_array_equal(getattr(heatmap, name), value, err_msg=name)
    np.testing.assert_array_equal(heatmap.lost, [e["lost"] for e in episodes])
    np.testing.assert_array_equal(heatmap.truncated, [e["truncated"] for e in episodes])
    np.testing.assert_array_equal(heatmap.lengths, [len(e["frames"]) for e in episodes])
    np.testing.assert_array_equal(heatmap.bricks_left, [e["bricks_left"] for e in episodes])
    np.testing.assert_array_equal(heatmap.refills, [e["refills"] for e in episodes])
    np.testing.assert_allclose(heatmap.returns, [e["return"] for e in episodes])


def play_on_our_env(policy, n, seed, sticky, cap):
    """Every slot's first episode, recorded with `get_state()` one step at a time."""
    env = BatchedBreakout(n, sticky_action_prob=sticky, max_episode_steps=cap, seed=seed)
    obs = env.reset()
    episodes = [dict(frames=[], lost=False, truncated=False, refills=0, bricks_left=None, **{"return": 0.0})
                for _ in range(n)]
    finished = [False] * n
    while not all(finished):
        state = env.get_state()
        ball_y, ball_x, paddle_x = state.ball_y.tolist(), state.ball_x.tolist(), state.paddle_x.tolist()
        obs, reward, terminated, truncated, info = env.step(policy(obs))
        for i in range(n):
            if finished[i]:
                continue
            e = episodes[i]
            e["frames"].append((ball_y[i], ball_x[i], paddle_x[i]))
            e["return"] += float(reward[i])
            e["refills"] += int(info.events.refill[i])
            if bool(info.done[i]):
                finished[i] = True
                e["lost"], e["truncated"] = bool(terminated[i]), bool(truncated[i])
                e["bricks_left"] = bin(int(info.final_state.bricks[i])).count("1")
    return episodes


def test_counts_equal_a_per_episode_count_on_our_env():
    # Sticky actions, a step cap that truncates some episodes, long enough for some refills.
    n, seed, cap = 16, 4, 600
    heatmap = failure_heatmap(follow_ball_policy(noise=0.02, seed=7), episodes=n, last_k=K, max_episode_steps=cap,
                              seed=seed, compact_every=None)
    episodes = play_on_our_env(follow_ball_policy(noise=0.02, seed=7), n, seed, sticky=0.1, cap=cap)
    outcomes = Counter((e["lost"], e["truncated"]) for e in episodes)
    assert outcomes[(True, False)] > 0 and outcomes[(False, True)] > 0, f"need losses and truncations: {outcomes}"
    assert any(e["refills"] and e["lost"] for e in episodes), "no lost episode had refilled the wall"
    assert_matches(heatmap, episodes)


def play_on_minatar(policy, start_right, cap):
    """The same episodes on `minatar` itself, one Python env each, no sticky actions (so that the
    episodes are fixed by their start side and the policy), positions read from MinAtar's game."""
    from minatar import Environment

    episodes = []
    for right in start_right:
        env = Environment("breakout", sticky_action_prob=0.0)
        env.reset()
        game = env.env
        game.ball_x, game.ball_dir = (9, 3) if right else (0, 2)
        game.last_x = game.ball_x
        e = dict(frames=[], lost=False, truncated=False, refills=0, **{"return": 0.0})
        while True:
            e["frames"].append((game.ball_y, game.ball_x, game.pos))
            frame = torch.from_numpy(env.state().transpose(2, 0, 1).astype(np.float32)).unsqueeze(0)
            bricks_before = game.brick_map.sum()
            reward, terminal = env.act(MINATAR_ACTIONS[int(policy(frame)[0])])
            e["return"] += reward
            e["refills"] += int(bricks_before == 0 and game.brick_map.sum() > 0)
            if terminal or len(e["frames"]) == cap:
                e["lost"], e["truncated"] = bool(terminal), not terminal
                e["bricks_left"] = int(game.brick_map.sum())
                break
        episodes.append(e)
    return episodes


def test_counts_equal_a_count_on_minatar_through_batch_compaction():
    # Without sticky actions an episode is fixed by its start side and the (deterministic) policy.
    # Here games starting on the left lose the ball at step 90, those starting on the right are
    # truncated at 120, after the batch was compacted to them at step 92 (seed 4: 5 of 16).
    n, seed, cap = 16, 4, 120
    chase = follow_ball_policy()
    cells = torch.arange(GRID * GRID, dtype=torch.float32)
    sizes = []

    def policy(obs):
        """Chase the ball, but now and then play an action picked by a hash of the frame."""
        sizes.append(obs.shape[0])
        ball = (obs[:, 1].flatten(1) * cells).sum(1).long()
        paddle = obs[:, 0, PADDLE_ROW].argmax(1)
        bricks = obs[:, 3].sum((1, 2)).long()
        return torch.where((ball * 7 + paddle * 3 + bricks) % 5 == 0, (ball + paddle) % 3, chase(obs))

    heatmap = failure_heatmap(policy, episodes=n, last_k=K, max_episode_steps=cap, sticky_action_prob=0.0,
                              seed=seed, compact_every=4)
    start = BatchedBreakout(n, sticky_action_prob=0.0, seed=seed)
    start.reset()  # what failure_heatmap does: the same seed gives the same start sides
    start_right = (start.get_state().ball_x == GRID - 1).tolist()
    episodes = play_on_minatar(policy, start_right, cap)
    assert {(e["lost"], e["truncated"]) for e in episodes} == {(True, False), (False, True)}
    assert min(sizes) < n, "the batch was never compacted: this test would not cover compaction"
    assert_matches(heatmap, episodes)


def test_every_lost_episode_contributes_its_last_k_frames():
    heatmap = failure_heatmap(random_policy(seed=1), episodes=200, last_k=K, seed=5)
    lengths = heatmap.lengths[heatmap.lost]
    assert heatmap.losses == 200 and lengths.min() < K, "want episodes shorter than K too"
    for age in range(K):
        lost_with_that_frame = int((lengths > age).sum())  # an episode of length L has frames 0..L-1 before the loss
        assert heatmap.ball_before_loss[age].sum() == lost_with_that_frame
        assert heatmap.paddle_before_loss[age].sum() == lost_with_that_frame
        assert heatmap.offset_before_loss[age].sum() == lost_with_that_frame
    assert heatmap.ball_before_loss.sum() == np.minimum(lengths, K).sum()
    # The last frame before a loss: the ball is in row 8, about to fall past the paddle's row.
    assert heatmap.ball_before_loss[0, PADDLE_ROW - 1].sum() == heatmap.losses
    assert heatmap.ball_before_loss[:, PADDLE_ROW].sum() == 0
    # All frames of all episodes, once each.
    assert heatmap.ball_all_frames.sum() == heatmap.paddle_all_frames.sum() == heatmap.frames == lengths.sum()


def test_truncated_episodes_are_not_losses():
    # The ball starts in row 3 and needs 6 steps to fall past the paddle: a 5-step cap loses none.
    heatmap = failure_heatmap(random_policy(), episodes=64, max_episode_steps=5)
    assert heatmap.losses == 0 and heatmap.truncations == 64
    assert (heatmap.lengths == 5).all()
    for counts in (heatmap.ball_before_loss, heatmap.paddle_before_loss, heatmap.offset_before_loss):
        assert counts.sum() == 0
    assert heatmap.frames == 64 * 5

    # A mix: only the lost episodes are counted before a loss.
    heatmap = failure_heatmap(follow_ball_policy(noise=0.05), episodes=64, max_episode_steps=30, seed=2)
    assert 0 < heatmap.losses < 64 and heatmap.losses + heatmap.truncations == 64
    assert not (heatmap.lost & heatmap.truncated).any()
    assert (heatmap.lengths[heatmap.truncated] == 30).all() and (heatmap.lengths[heatmap.lost] <= 30).all()
    assert heatmap.ball_before_loss[0].sum() == heatmap.losses


@pytest.mark.parametrize("compact_every", [None, 8])
def test_one_episode_per_slot(compact_every):
    # Random play: most episodes end within 20 steps, a few last much longer; each slot counts once.
    heatmap = failure_heatmap(random_policy(seed=3), episodes=100, seed=4, compact_every=compact_every)
    assert heatmap.episodes == len(heatmap.returns) == len(heatmap.lengths) == 100
    assert (heatmap.lost ^ heatmap.truncated).all(), "every slot ends exactly once, lost or truncated"
    assert heatmap.lengths.min() < 10 < heatmap.lengths.max(), "want short and long episodes together"
    assert heatmap.frames == heatmap.ball_all_frames.sum()


def test_compacted_env_plays_on_exactly_as_the_original():
    n, cap = 12, 50
    generator = torch.Generator().manual_seed(0)
    env = BatchedBreakout(n, sticky_action_prob=0.0, max_episode_steps=cap, seed=1)
    env.reset()
    for _ in range(20):
        env.step(torch.randint(3, (n,), generator=generator))
    rows = torch.tensor([1, 4, 5, 10])
    smaller = env.select(rows, seed=99)
    torch.testing.assert_close(smaller.observe(), env.observe()[rows])
    for _ in range(40):
        actions = torch.randint(3, (n,), generator=generator)
        _, reward, terminated, truncated, info = env.step(actions)
        _, small_reward, small_terminated, small_truncated, small_info = smaller.step(actions[rows])
        # Compare only until a game ends: after that each env draws its own start side.
        for small_field, field in zip(small_info.final_state, info.final_state):
            torch.testing.assert_close(small_field, field[rows])
        torch.testing.assert_close(small_reward, reward[rows])
        torch.testing.assert_close(small_info.episode_length, info.episode_length[rows])
        torch.testing.assert_close(small_info.episode_return, info.episode_return[rows])
        torch.testing.assert_close(small_truncated, truncated[rows])
        torch.testing.assert_close(small_terminated, terminated[rows])
        if bool(info.done[rows].any()):
            break


def test_policy_from_model_and_png(tmp_path):
    torch.manual_seed(0)
    model = ActorCritic("mlp", 16, shared_layers=0).eval()
    for greedy in (False, True):
        heatmap = failure_heatmap(policy_from_model(model, greedy=greedy), episodes=32, max_episode_steps=200)
        assert heatmap.episodes == 32 and heatmap.losses + heatmap.truncations == 32
    path = save_heatmap_png(heatmap, tmp_path / "heatmap.png")
    assert path.stat().st_size > 10_000
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
