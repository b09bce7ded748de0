"""Saliency methods against hand-written computations: weight rows of a linear model, per-frame
autograd, completeness of Integrated Gradients, a brute-force occlusion loop, Spearman by hand and
by scipy, and the parameter-randomisation check on a method that ignores the weights."""

import math

import pytest
import torch
from torch import nn

from breakout_ppo.env import BatchedBreakout
from breakout_ppo.model import ActorCritic
from instruments.measure.saliency import (
    gradient_saliency,
    integrated_gradients,
    layers_from_output,
    occlusion_saliency,
    parameter_randomisation_check,
    rank_with_ties,
    reduce_channels,
    smoothgrad,
    spearman,
)


def rollout_frames(n=16, steps=6, seed=0):
    """Frames as a rollout keeps them: copies taken under inference mode (inference tensors)."""
    env = BatchedBreakout(n, seed=seed)
    g = torch.Generator().manual_seed(seed)
    with torch.inference_mode():
        env.reset()
        for _ in range(steps):
            obs, *_ = env.step(torch.randint(3, (n,), generator=g))
        frames = obs.clone()
    assert frames.is_inference()
    return frames


class LinearActorCritic(nn.Module):
    """logits = W x + b, value = v . x + c: every gradient is a weight row, known by hand."""

    def __init__(self, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.W = nn.Parameter(torch.randn(3, 400, generator=g))
        self.b = nn.Parameter(torch.randn(3, generator=g))
        self.v = nn.Parameter(torch.randn(400, generator=g))

    def forward(self, obs):
        flat = obs.flatten(1)
        return flat @ self.W.T + self.b, flat @ self.v + 0.5


def model(arch="mlp", seed=0):
    torch.manual_seed(seed)
    m = ActorCritic(arch, hidden=32, shared_layers=0)
    # Policy head at gain 1 (not PPO's 0.01) so logits differ by O(1) and comparisons are not all ~0.
    nn.init.orthogonal_(m.actor.head.weight, 1.0)
    # Non-zero biases: with the init's zero biases a ReLU net is positively homogeneous,
    # f(a x) = a f(x), which would make Integrated Gradients from the zero frame exact in one step.
    with torch.no_grad():
        for layer in m.modules():
            if isinstance(layer, (nn.Linear, nn.Conv2d)):
                layer.bias.normal_(0.0, 0.3)
    return m


def per_frame_autograd(m, frames, target, actions=None):
    """The reference: one frame at a time, torch.autograd.grad on a fresh leaf."""
    grads = []
    for i in range(len(frames)):
        x = frames[i : i + 1].clone().requires_grad_(True)
        logits, value = m(x)
        out = value[0] if target == "value" else logits[0, actions[i]]
        (g,) = torch.autograd.grad(out, x)
        grads.append(g[0])
    return torch.stack(grads)


# ---------------------------------------------------------------------------------------------
# Vanilla gradient


def test_gradient_of_a_linear_model_is_its_weight_row():
    m, x = LinearActorCritic(), rollout_frames()
    actions = torch.tensor([0, 1, 2, 1] * 4)
    expected = m.W.detach()[actions].view(-1, 4, 10, 10)
    torch.testing.assert_close(gradient_saliency(m, x, action=actions), expected)
    torch.testing.assert_close(gradient_saliency(m, x, action=2), m.W.detach()[2].view(1, 4, 10, 10).expand_as(x))
    torch.testing.assert_close(gradient_saliency(m, x, target="value"), m.v.detach().view(1, 4, 10, 10).expand_as(x))
    # No action given: each frame's argmax.
    argmax = (x.flatten(1) @ m.W.detach().T + m.b.detach()).argmax(1)
    torch.testing.assert_close(gradient_saliency(m, x), m.W.detach()[argmax].view(-1, 4, 10, 10))


@pytest.mark.parametrize("arch", ["mlp", "cnn"])
def test_gradient_matches_per_frame_autograd(arch):
    m, x = model(arch), rollout_frames()
    with torch.no_grad():
        plain = x.clone()  # outside inference mode: an ordinary tensor for the reference
        argmax = m(plain)[0].argmax(1)
    given = torch.randint(3, (len(x),), generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(gradient_saliency(m, x), per_frame_autograd(m, plain, "action", argmax))
    torch.testing.assert_close(gradient_saliency(m, x, action=given), per_frame_autograd(m, plain, "action", given))
    torch.testing.assert_close(gradient_saliency(m, x, target="value"), per_frame_autograd(m, plain, "value"))
    # Chunked backward passes give the same.
    torch.testing.assert_close(gradient_saliency(m, x, action=given, batch_size=5),
                               gradient_saliency(m, x, action=given))


def test_inference_tensors_work_even_inside_inference_mode():
    m, x = model(), rollout_frames()
    with torch.inference_mode():
        inside = gradient_saliency(m, x)
        ig_inside = integrated_gradients(m, x, steps=8)
        chosen = m(x)[0].argmax(1)  # actions from the rollout are inference tensors too
    outside = gradient_saliency(m, x.clone())
    torch.testing.assert_close(inside, outside)
    torch.testing.assert_close(gradient_saliency(m, x, action=chosen), outside)
    torch.testing.assert_close(smoothgrad(m, x, action=chosen, samples=2), smoothgrad(m, x.clone(), samples=2))
    torch.testing.assert_close(ig_inside, integrated_gradients(m, x, steps=8))
    assert not inside.is_inference()
    assert outside.abs().sum() > 0
    # The model's parameters got no .grad along the way.
    assert all(p.grad is None for p in m.parameters())


# ---------------------------------------------------------------------------------------------
# SmoothGrad


def test_smoothgrad_of_linear_model_is_weight_row_and_without_noise_is_the_gradient():
    lin, x = LinearActorCritic(), rollout_frames(8)
    torch.testing.assert_close(smoothgrad(lin, x, action=1, samples=7),
                               lin.W.detach()[1].view(1, 4, 10, 10).expand_as(x))
    m = model("cnn")
    torch.testing.assert_close(smoothgrad(m, x, noise=0.0, samples=3), gradient_saliency(m, x))


class QuadraticModel(nn.Module):
    """logit_k = sum(A_k * x^2): gradient 2 A_k x, whose mean under zero-mean noise is 2 A_k x."""

    def __init__(self):
        super().__init__()
        self.A = nn.Parameter(torch.randn(3, 4, 10, 10, generator=torch.Generator().manual_seed(3)))

    def forward(self, obs):
        logits = (obs.unsqueeze(1) ** 2 * self.A).flatten(2).sum(-1)
        return logits, logits[:, 0]


def test_smoothgrad_is_the_expected_gradient_under_noise():
    m, x = QuadraticModel(), rollout_frames(4)
    got = smoothgrad(m, x, action=2, samples=4000, noise=0.2, batch_size=1000)
    expected = 2 * m.A.detach()[2] * x
    # Per cell, the estimate's standard error is 2 |A| * 0.2 / sqrt(4000) (the frames span [0, 1]).
    standard_error = 2 * m.A.detach()[2].abs() * 0.2 / math.sqrt(4000)
    assert ((got - expected).abs() <= 5 * standard_error + 1e-6).all()
    # Noise really was added: a single sample differs from the clean gradient.
    assert not torch.allclose(smoothgrad(m, x, action=2, samples=1), expected)
    # Same seed, same map; another seed, another map.
    torch.testing.assert_close(smoothgrad(m, x, samples=5, seed=4), smoothgrad(m, x, samples=5, seed=4))
    assert not torch.allclose(smoothgrad(m, x, samples=5, seed=4), smoothgrad(m, x, samples=5, seed=5))


# ---------------------------------------------------------------------------------------------
# Integrated Gradients


def test_integrated_gradients_of_linear_model_is_input_times_weight():
    m, x = LinearActorCritic(), rollout_frames(8)
    for rule in ("trapezoid", "riemann_left", "riemann_right", "riemann_middle"):
        got = integrated_gradients(m, x, action=0, steps=3, rule=rule)
        torch.testing.assert_close(got, x * m.W.detach()[0].view(4, 10, 10))


@pytest.mark.parametrize("arch", ["mlp", "cnn"])
@pytest.mark.parametrize("target", ["action", "value"])
def test_integrated_gradients_completeness(arch, target):
    m, x = model(arch, seed=2), rollout_frames(12)
    with torch.no_grad():
        plain = x.clone()
        baseline = torch.zeros_like(plain)
        if target == "value":
            gap = m(plain)[1] - m(baseline)[1]
        else:
            a = m(plain)[0].argmax(1, keepdim=True)
            gap = (m(plain)[0].gather(1, a) - m(baseline)[0].gather(1, a)).squeeze(1)
    assert gap.abs().min() > 0.01  # something to attribute
    for rule in ("riemann_middle", "trapezoid", "riemann_right"):
        errors = {}
        for steps in (1, 512):
            attributions = integrated_gradients(m, x, target=target, steps=steps, rule=rule)
            errors[steps] = (attributions.flatten(1).sum(1).double() - gap.double()).abs()
        # ReLU nets make the integrand piecewise constant: the error falls as 1 / steps, not faster.
        assert (errors[512] <= 1e-2 * gap.abs()).all(), (rule, errors[512] / gap.abs())
        assert errors[1].max() > 10 * errors[512].max()  # a curved path: one step is not enough


def test_integrated_gradients_completeness_from_another_baseline():
    m, x = model("mlp", seed=3), rollout_frames(6)
    baseline = rollout_frames(6, seed=9)[0]  # one real frame as the reference point
    with torch.no_grad():
        gap = m(x.clone())[1] - m(baseline.clone().unsqueeze(0))[1]
    attributions = integrated_gradients(m, x, target="value", baseline=baseline, steps=512, rule="riemann_middle")
    torch.testing.assert_close(attributions.flatten(1).sum(1), gap, atol=2e-3, rtol=2e-3)
    # Cells where frame and baseline agree get nothing.
    same = x == baseline
    assert (attributions[same] == 0).all()


# ---------------------------------------------------------------------------------------------
# Occlusion


def brute_force_occlusion(m, frames, action, perturbation, cells):
    """One perturbed frame at a time, in plain loops."""
    n = len(frames)
    shape = (n, 4, 10, 10) if cells == "channel" else (n, 1, 10, 10)
    logit, kl, value = (torch.zeros(shape) for _ in range(3))
    with torch.no_grad():
        for i in range(n):
            x = frames[i : i + 1].clone()
            logits0, value0 = m(x)
            p0 = torch.softmax(logits0[0], -1)
            channels = range(4) if cells == "channel" else [slice(None)]
            for ci, c in enumerate(channels):
                for r in range(10):
                    for col in range(10):
                        y = x.clone()
                        y[0, c, r, col] = (1 - y[0, c, r, col]) if perturbation == "flip" else 0.0
                        logits1, value1 = m(y)
                        p1 = torch.softmax(logits1[0], -1)
                        logit[i, ci, r, col] = logits0[0, action[i]] - logits1[0, action[i]]
                        kl[i, ci, r, col] = (p0 * (p0.log() - p1.log())).sum()
                        value[i, ci, r, col] = value0[0] - value1[0]
    return logit, kl, value


@pytest.mark.parametrize("arch", ["mlp", "cnn"])
@pytest.mark.parametrize("perturbation", ["flip", "zero"])
@pytest.mark.parametrize("cells", ["channel", "cell"])
def test_occlusion_equals_brute_force_loop(arch, perturbation, cells):
    m, x = model(arch, seed=4), rollout_frames(3)
    with torch.no_grad():
        action = m(x.clone())[0].argmax(1)
    got = occlusion_saliency(m, x, perturbation=perturbation, cells=cells, batch_size=333)
    expected = brute_force_occlusion(m, x.clone(), action, perturbation, cells)
    for name, g, e in zip(("logit", "kl", "value"), got, expected):
        torch.testing.assert_close(g, e, atol=1e-5, rtol=1e-4, msg=name)
    assert (got.kl >= -1e-6).all()
    if perturbation == "zero" and cells == "channel":
        empty = x == 0
        assert (got.logit[empty] == 0).all() and (got.value[empty] == 0).all()


def test_occlusion_given_action_and_linear_model():
    m, x = LinearActorCritic(), rollout_frames(4)
    got = occlusion_saliency(m, x, action=1)
    # Flipping x to 1 - x changes W1 . x by W1 * (1 - 2x): the drop is W1 * (2x - 1).
    torch.testing.assert_close(got.logit, m.W.detach()[1].view(4, 10, 10) * (2 * x - 1))
    torch.testing.assert_close(got.value, m.v.detach().view(4, 10, 10) * (2 * x - 1))


# ---------------------------------------------------------------------------------------------
# Channel reduction, Spearman


def test_reduce_channels():
    s = torch.zeros(1, 4, 10, 10)
    s[0, :, 2, 3] = torch.tensor([1.0, -3.0, 0.5, 0.0])
    assert reduce_channels(s).shape == (1, 10, 10)
    assert reduce_channels(s)[0, 2, 3] == 3.0
    assert reduce_channels(s, "abs_sum")[0, 2, 3] == 4.5
    assert reduce_channels(s, "sum")[0, 2, 3] == -1.5
    with pytest.raises(ValueError, match="abs_max"):
        reduce_channels(s, "mean")


def test_spearman_by_hand():
    # Ranks with ties averaged: [10, 20, 20, 5] -> [2, 3.5, 3.5, 1].
    torch.testing.assert_close(rank_with_ties(torch.tensor([[10.0, 20.0, 20.0, 5.0]])),
                               torch.tensor([[2.0, 3.5, 3.5, 1.0]], dtype=torch.float64))
    a = torch.tensor([[1.0, 2.0, 3.0, 4.0, 5.0], [1.0, 2.0, 3.0, 4.0, 5.0], [3.0, 3.0, 3.0, 3.0, 3.0]])
    b = torch.tensor([[2.0, 4.0, 6.0, 8.0, 100.0], [5.0, 4.0, 3.0, 2.0, 1.0], [1.0, 2.0, 3.0, 4.0, 5.0]])
    rho = spearman(a, b)
    assert rho[0] == pytest.approx(1.0) and rho[1] == pytest.approx(-1.0) and torch.isnan(rho[2])
    # No ties: 1 - 6 sum d^2 / (n (n^2 - 1)); ranks [1,2,3,4,5] vs [2,1,4,3,5]: sum d^2 = 4.
    assert spearman(a[:1], torch.tensor([[2.0, 1.0, 4.0, 3.0, 5.0]]))[0] == pytest.approx(1 - 6 * 4 / (5 * 24))


def test_spearman_matches_scipy():
    stats = pytest.importorskip("scipy.stats")
    g = torch.Generator().manual_seed(0)
    a = torch.randint(0, 6, (20, 50), generator=g).float()  # many ties
    b = a + torch.randint(0, 4, (20, 50), generator=g).float()
    ours = spearman(a, b)
    for i in range(20):
        assert ours[i].item() == pytest.approx(stats.spearmanr(a[i].numpy(), b[i].numpy())[0], abs=1e-12)


# ---------------------------------------------------------------------------------------------
# Parameter-randomisation sanity check


def train_ball_follower(steps=250, seed=0):
    """A small MLP taught, by supervised learning, what the frame says: move towards the ball
    (left / stay / right from the ball's and the paddle's columns) and the ball's height as value.
    Its weights are structured by data, unlike a fresh init, so its maps have something to lose."""
    torch.manual_seed(seed)
    m = ActorCritic("mlp", hidden=32, shared_layers=0)
    env = BatchedBreakout(512, seed=seed)
    g = torch.Generator().manual_seed(seed)
    frames = []
    with torch.inference_mode():
        env.reset()
        for _ in range(8):
            obs, *_ = env.step(torch.randint(3, (512,), generator=g))
            frames.append(obs.clone())
    x = torch.cat(frames).clone()
    paddle = x[:, 0, 9].argmax(1)
    ball_col = x[:, 1].amax(1).argmax(1)
    ball_row = x[:, 1].amax(2).argmax(1)
    label = torch.where(ball_col < paddle, 1, torch.where(ball_col > paddle, 2, 0))
    value_target = ball_row.float() / 9
    optimizer = torch.optim.Adam(m.parameters(), lr=1e-2)
    for _ in range(steps):
        logits, value = m(x)
        loss = nn.functional.cross_entropy(logits, label) + ((value - value_target) ** 2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        accuracy = (m(x)[0].argmax(1) == label).float().mean().item()
    return m, x[:32], accuracy


@pytest.fixture(scope="module")
def trained():
    return train_ball_follower()


def test_layers_from_output_peels_both_towers_together():
    for arch, first in (("mlp", "1"), ("cnn", "0")):
        assert layers_from_output(ActorCritic(arch, 16, shared_layers=0), rollout_frames(2)) == [
            ["actor.head", "critic.head"], ["actor.torso.3", "critic.torso.3"],
            [f"actor.torso.{first}", f"critic.torso.{first}"]]


def test_sanity_check_flags_a_method_that_ignores_the_weights(trained):
    m, x, _ = trained
    result = parameter_randomisation_check(m, x, lambda model, frames: frames.clone())
    assert not result.passed
    torch.testing.assert_close(result.correlations, torch.ones(3, dtype=torch.float32))
    assert "FAILS" in str(result)


def test_sanity_check_passes_vanilla_gradients_on_a_trained_model(trained):
    m, x, accuracy = trained
    assert accuracy > 0.9  # the model did learn the rule: its weights are not a fresh init
    before = {k: v.clone() for k, v in m.state_dict().items()}
    with torch.no_grad():
        actions = m(x)[0].argmax(1)

    def vanilla(model, frames):
        return gradient_saliency(model, frames, action=actions)

    result = parameter_randomisation_check(m, x, vanilla, seed=1)
    assert result.passed, str(result)
    assert result.per_frame.shape == (3, len(x))
    assert result.correlations[-1] < 0.5
    # The model itself was not touched.
    for k, v in m.state_dict().items():
        assert torch.equal(v, before[k]), k
    # Explicit steps (actor only, top down) give the same verdict; unknown names are refused.
    explicit = parameter_randomisation_check(m, x, vanilla, layers=["actor.head", "actor.torso.3", "actor.torso.1"])
    assert explicit.passed and explicit.steps == [["actor.head"], ["actor.torso.3"], ["actor.torso.1"]]
    # Randomising only the critic leaves the action's map exactly as it was.
    critic_only = parameter_randomisation_check(m, x, vanilla, layers=[["critic.head", "critic.torso.3"]])
    assert not critic_only.passed and critic_only.correlations[0] == pytest.approx(1.0)
    # Gradient x input is zero wherever the binary frame is: its map's shape is the frame's.
    times_input = parameter_randomisation_check(m, x, lambda model, frames: vanilla(model, frames) * frames)
    assert not times_input.passed
    with pytest.raises(ValueError, match="actor.torso.9"):
        parameter_randomisation_check(m, x, vanilla, layers=["actor.torso.9"])
