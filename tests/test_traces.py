"""record_episode: the recorded frames replay on a fresh env, the probabilities and values are the
model's, the saliency is the chosen action's gradient, and the same seed gives the same trace."""

import numpy as np
import pytest
import torch
from torch import nn

from breakout_ppo.env import BatchedBreakout
from breakout_ppo.model import ActorCritic
from instruments.measure.traces import Trace, record_episode

COLUMNS = torch.arange(10, dtype=torch.float32)


class BallChaser(nn.Module):
    """A differentiable hand-made policy: logits (0, s (p - b), s (b - p)) from the paddle's and the
    ball's columns p and b read as sum(column * cell), so it moves towards the ball and plays
    episodes of tens to hundreds of steps. Its input gradients are known by hand."""

    def __init__(self, sharpness=5.0):
        super().__init__()
        self.sharpness = sharpness
        self.unused = nn.Parameter(torch.zeros(()))  # gives the module a device

    def forward(self, obs):
        paddle = (obs[:, 0, 9] * COLUMNS).sum(-1)
        ball = (obs[:, 1] * COLUMNS).sum((-2, -1))
        gap = self.sharpness * (ball - paddle)
        logits = torch.stack([torch.zeros_like(gap), -gap, gap], dim=-1)
        value = obs[:, 3].sum((-2, -1)) / 30 + 0 * self.unused
        return logits, value


def replay(env, trace, other_games=0):
    """Reset `env` and play the trace's executed actions in its first game; check every frame and
    reward on the way, and return whether that game's episode ended on the last step."""
    obs = env.reset()
    done = False
    for t in range(len(trace)):
        assert not done, f"the episode had already ended before step {t}"
        np.testing.assert_array_equal(obs[0].numpy(), trace.frames[t], err_msg=f"frame {t}")
        actions = torch.full((env.num_envs,), other_games)
        actions[0] = int(trace.actions[t])
        obs, reward, terminated, truncated, info = env.step(actions)
        assert info.executed_action[0] == trace.actions[t]  # sticky draws do not depend on the actions
        assert reward[0].item() == trace.rewards[t], f"reward {t}"
        done = bool(info.done[0])
    return done


@pytest.mark.parametrize("seed", [1, 2, 7])  # episodes of 26, 48 and 144 steps, the last with rewards
def test_frames_replay_and_the_episode_ends_where_the_trace_does(seed):
    trace = record_episode(BallChaser(), seed=seed, max_steps=2000, check_every=7)
    assert isinstance(trace, Trace) and 20 < len(trace) < 2000
    assert seed != 7 or trace.rewards.sum() > 0
    assert replay(BatchedBreakout(1, seed=seed), trace), "the trace must end with the episode"
    # Frames are copies, not views of one buffer: the ball moves on every step.
    assert all((trace.frames[t] != trace.frames[t + 1]).any() for t in range(len(trace) - 1))
    assert trace.frames.dtype == np.float32 and trace.frames.shape == (len(trace), 4, 10, 10)
    assert trace.actions.dtype == np.int64 and trace.probs.shape == (len(trace), 3)
    assert trace.values.shape == trace.rewards.shape == (len(trace),)
    assert trace.saliency.shape == (len(trace), 10, 10) and trace.saliency.dtype == np.float32


def test_first_game_of_a_given_batch():
    env = BatchedBreakout(4, seed=5)
    trace = record_episode(BallChaser(), seed=5, env=env, max_steps=2000, saliency=False)
    assert trace.saliency is None and len(trace) > 20
    assert replay(BatchedBreakout(4, seed=5), trace)


def test_probs_and_values_are_the_models():
    torch.manual_seed(0)
    model = ActorCritic("cnn", hidden=32, shared_layers=0)
    nn.init.orthogonal_(model.actor.head.weight, 1.0)  # a policy that is not near uniform
    trace = record_episode(model, seed=3, max_steps=500)
    with torch.no_grad():
        logits, value = model(torch.from_numpy(trace.frames))
    np.testing.assert_allclose(trace.probs, torch.softmax(logits, -1).numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(trace.values, value.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(trace.probs.sum(1), 1.0, rtol=1e-6)
    assert replay(BatchedBreakout(1, seed=3), trace)


def test_saliency_is_the_gradient_of_the_chosen_logit():
    # Greedy without sticky actions: the executed action is the chosen one, the argmax.
    torch.manual_seed(1)
    model = ActorCritic("mlp", hidden=32, shared_layers=0)
    nn.init.orthogonal_(model.actor.head.weight, 1.0)
    trace = record_episode(model, seed=4, max_steps=300, greedy=True, sticky_action_prob=0.0)
    np.testing.assert_array_equal(trace.actions, trace.probs.argmax(1))
    for t in range(len(trace)):
        x = torch.from_numpy(trace.frames[t : t + 1]).requires_grad_(True)
        (grad,) = torch.autograd.grad(model(x)[0][0, trace.actions[t]], x)
        np.testing.assert_allclose(trace.saliency[t], grad[0].abs().amax(0).numpy(), rtol=1e-5, atol=1e-7)


def test_saliency_of_a_hand_made_policy_by_hand():
    sharpness = 5.0
    trace = record_episode(BallChaser(sharpness), seed=0, max_steps=200, greedy=True, sticky_action_prob=0.0)
    # d(logit right)/d(ball cell in column c) = s c and d/d(paddle cell in column c) = -s c: the
    # max |.| over channels is s c in every row; "left" is the mirror image; "no-op" is flat 0.
    by_column = np.broadcast_to(sharpness * np.arange(10, dtype=np.float32), (10, 10))
    for t, action in enumerate(trace.actions):
        expected = np.zeros((10, 10), np.float32) if action == 0 else by_column
        np.testing.assert_allclose(trace.saliency[t], expected, err_msg=f"step {t}, action {action}")
    assert {0, 1, 2} <= set(trace.actions.tolist())


def test_same_seed_same_trace_other_seed_other_trace():
    torch.manual_seed(2)
    model = ActorCritic("mlp", hidden=32, shared_layers=0)
    nn.init.orthogonal_(model.actor.head.weight, 1.0)
    a, b = (record_episode(model, seed=11, max_steps=300) for _ in range(2))
    for field in ("frames", "actions", "probs", "values", "rewards", "saliency"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field), err_msg=field)
    others = [record_episode(model, seed=s, max_steps=300, saliency=False) for s in (12, 13, 14)]
    assert any(len(o) != len(a) or (o.actions != a.actions).any() or (o.frames != a.frames).any() for o in others)


def test_max_steps_cuts_a_prefix():
    full = record_episode(BallChaser(), seed=1, max_steps=2000)
    assert len(full) > 10
    prefix = record_episode(BallChaser(), seed=1, max_steps=10)
    assert len(prefix) == 10
    for field in ("frames", "actions", "probs", "values", "rewards", "saliency"):
        np.testing.assert_array_equal(getattr(prefix, field), getattr(full, field)[:10], err_msg=field)
    with pytest.raises(ValueError, match="max_steps"):
        record_episode(BallChaser(), max_steps=0)


@pytest.mark.parametrize("check_every", [1, 3, 64, 5000])
def test_how_often_the_end_is_checked_does_not_change_the_trace(check_every):
    reference = record_episode(BallChaser(), seed=2, max_steps=3000, check_every=1)
    trace = record_episode(BallChaser(), seed=2, max_steps=3000, check_every=check_every)
    assert len(trace) == len(reference)
    np.testing.assert_array_equal(trace.frames, reference.frames)
    np.testing.assert_array_equal(trace.actions, reference.actions)
