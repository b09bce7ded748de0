"""Taps: recorded activations, gradients, policy and value against manual computations; no hook
survives the block, also after an exception; in-place ReLU works."""

import pytest
import torch
from torch import nn

from breakout_ppo.env import BatchedBreakout
from breakout_ppo.model import ActorCritic
from instruments.measure.hooks import Taps, layer_names

HOOK_DICTS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks",
              "_forward_hooks_with_kwargs", "_forward_hooks_always_called", "_forward_pre_hooks_with_kwargs")


def hook_count(model: nn.Module) -> int:
    return sum(len(getattr(m, d, {})) for m in model.modules() for d in HOOK_DICTS)


def frames(n=32, seed=0):
    """Real game frames: a few random steps into n games."""
    env = BatchedBreakout(n, seed=seed)
    env.reset()
    g = torch.Generator().manual_seed(seed)
    for _ in range(5):
        obs, *_ = env.step(torch.randint(3, (n,), generator=g))
    return obs.clone()


def make_model(arch="mlp", seed=0, inplace=False):
    torch.manual_seed(seed)
    model = ActorCritic(arch, hidden=32, shared_layers=0)
    if inplace:
        for tower in (model.actor, model.critic):
            for i, layer in enumerate(tower.torso):
                if isinstance(layer, nn.ReLU):
                    tower.torso[i] = nn.ReLU(inplace=True)
    return model


def manual_torso(model, x):
    """Every torso layer's output of both towers, by name, with out-of-place ReLUs."""
    outs = {}
    for tower_name in ("actor", "critic"):
        tower = getattr(model, tower_name)
        h = x
        for i, layer in enumerate(tower.torso):
            h = torch.relu(h) if isinstance(layer, nn.ReLU) else layer(h)
            outs[f"{tower_name}.torso.{i}"] = h
        outs[f"{tower_name}.head"] = tower.head(h)
    return outs


@pytest.mark.parametrize("arch", ["mlp", "cnn"])
@pytest.mark.parametrize("inplace", [False, True])
def test_activations_match_manual_forward(arch, inplace):
    model, x = make_model(arch, inplace=inplace), frames()
    names = [n for n in layer_names(model) if ".torso." in n or n.endswith(".head")]
    with Taps(model, activations=names) as taps:
        model(x)
    expected = manual_torso(model, x)
    assert set(taps.activations) == set(names)
    for name in names:
        torch.testing.assert_close(taps.activations[name], expected[name], msg=name)
        assert not taps.activations[name].requires_grad
    # The trap: the Linear before an in-place ReLU must still show its negative pre-activations.
    first_linear = "actor.torso.1" if arch == "mlp" else "actor.torso.0"
    assert (taps.activations[first_linear] < 0).any()


@pytest.mark.parametrize("inplace", [False, True])
def test_gradients_match_autograd(inplace):
    model, x = make_model("mlp", inplace=inplace), frames()
    names = ["actor.torso.1", "actor.torso.2", "actor.torso.3", "critic.torso.4", "critic.head"]

    def loss_of(logits, value):
        return torch.log_softmax(logits, -1)[:, 1].mean() + (value**2).mean()

    with Taps(model, gradients=names) as taps:
        loss_of(*model(x)).backward()

    outs = manual_torso(make_model("mlp", inplace=False), x)  # same seed: same weights
    loss = loss_of(outs["actor.head"], outs["critic.head"].squeeze(-1))
    grads = torch.autograd.grad(loss, [outs[n] for n in names])
    for name, g in zip(names, grads):
        torch.testing.assert_close(taps.gradients[name], g, msg=name)
        torch.testing.assert_close(taps.grad_stats[name].norm, g.norm())
        torch.testing.assert_close(taps.grad_stats[name].mean_abs, g.abs().mean())
        assert taps.grad_stats[name].calls == 1
    assert taps.activations == {}  # gradients only: no activation kept


def test_full_backward_hooks_do_break_on_inplace_relu():
    """Why Taps use tensor hooks: the module-level alternative raises on this model."""
    model = make_model("mlp", inplace=True)
    handle = model.actor.torso[1].register_full_backward_hook(lambda *args: None)
    try:
        with pytest.raises(RuntimeError, match="inplace"):
            model(frames())[0].sum().backward()
    finally:
        handle.remove()


def test_policy_and_value_match_forward():
    model, x = make_model("cnn"), frames()
    with Taps(model, policy_and_value=True) as taps:
        logits, value = model(x)
    torch.testing.assert_close(taps.probs, torch.softmax(logits, -1))
    torch.testing.assert_close(taps.value, value)
    torch.testing.assert_close(taps.probs.sum(-1), torch.ones(len(x)))


def test_no_hooks_after_exit_or_exception():
    model, x = make_model("mlp", inplace=True), frames()
    names = layer_names(model)
    assert hook_count(model) == 0
    with Taps(model, activations=names, gradients=names, policy_and_value=True):
        assert hook_count(model) == len(names) + 1
        model(x)[0].sum().backward()
    assert hook_count(model) == 0

    class Boom(Exception):
        pass

    with pytest.raises(Boom):
        with Taps(model, activations=names, gradients=names, policy_and_value=True):
            model(x)
            raise Boom
    assert hook_count(model) == 0

    # An exception raised by a hook itself, mid-forward.
    bad = nn.Sequential(nn.Linear(4, 4), nn.ReLU())
    with pytest.raises(TypeError, match="logits, value"):
        with Taps(bad, activations=["0"], policy_and_value=True):
            bad(torch.zeros(2, 4))
    assert hook_count(bad) == 0

    # The model computes the same as before it was ever tapped.
    torch.testing.assert_close(model(x)[0], make_model("mlp", inplace=True)(x)[0])


def test_backward_after_exit_records_nothing():
    model, x = make_model(), frames()
    with Taps(model, gradients=["actor.head"]) as taps:
        logits, _ = model(x)
    logits.sum().backward()
    assert taps.grad_stats["actor.head"].calls == 0 and taps.gradients == {}


def test_unknown_name_lists_valid_names_and_leaves_no_hooks():
    model = make_model()
    with pytest.raises(ValueError) as error:
        Taps(model, activations=["actor.torso.1", "actor.trunk.9"])
    message = str(error.value)
    assert "'actor.trunk.9'" in message and "actor.torso.1" in message and "critic.head" in message
    with pytest.raises(ValueError, match="valid names"):
        Taps(model, gradients=["nope"])
    assert hook_count(model) == 0


def test_compiled_wrapper_is_refused():
    model = make_model()
    compiled = torch.compile(model)  # lazy: nothing is compiled until it is called
    with pytest.raises(TypeError, match="_orig_mod"):
        Taps(compiled, activations=["actor.head"])


def test_reentering_is_refused_and_hooks_stay_balanced():
    model = make_model()
    taps = Taps(model, activations=["actor.head"])
    with taps:
        with pytest.raises(RuntimeError, match="already attached"):
            taps.__enter__()
    assert hook_count(model) == 0


def test_keep_last_keeps_only_the_last_call():
    model = make_model()
    a, b = frames(8, seed=1), frames(8, seed=2)
    with Taps(model, activations=["actor.torso.3"], policy_and_value=True) as taps:
        model(a)
        model(b)
    torch.testing.assert_close(taps.activations["actor.torso.3"], manual_torso(model, b)["actor.torso.3"])
    torch.testing.assert_close(taps.value, model(b)[1])


def test_keep_stats_equals_moments_of_all_rows_and_keeps_no_tensors():
    model = make_model()
    batches = [frames(n, seed=s) for n, s in ((5, 1), (17, 2), (9, 3))]
    names = ["actor.torso.1", "critic.torso.3"]
    with torch.inference_mode():  # stats begun on inference tensors ...
        with Taps(model, activations=names, policy_and_value=True, keep="stats") as taps:
            model(batches[0])
    with taps:  # ... and continued outside inference mode
        for x in batches[1:]:
            model(x)
    assert taps.activations == {} and taps.logits is None and taps.probs is None
    everything = torch.cat(batches)
    with torch.no_grad():
        outs = manual_torso(model, everything)
        logits, value = model(everything)
    for name in names:
        stats = taps.activation_stats[name]
        assert stats.count == len(everything)
        torch.testing.assert_close(stats.mean, outs[name].mean(0))
        torch.testing.assert_close(stats.var, outs[name].var(0, unbiased=False))
        torch.testing.assert_close(stats.fraction_positive, (outs[name] > 0).float().mean(0))
    torch.testing.assert_close(taps.probs_stats.mean, torch.softmax(logits, -1).mean(0))
    torch.testing.assert_close(taps.value_stats.mean, value.mean().reshape(()))


def test_grad_stats_run_over_backward_calls():
    model, x = make_model(), frames()
    norms = []
    with Taps(model, gradients=["critic.head"], keep="stats") as taps:
        for scale in (1.0, 3.0, 2.0):
            value = model(x)[1]
            (scale * value.sum()).backward()
            norms.append(scale * len(x) ** 0.5)  # d(scale * sum v) / d v = scale everywhere
    stats = taps.grad_stats["critic.head"]
    assert stats.calls == 3 and taps.gradients == {}
    torch.testing.assert_close(stats.norm, torch.tensor(norms[-1]))
    torch.testing.assert_close(stats.norm_max, torch.tensor(max(norms)))
    torch.testing.assert_close(stats.mean_norm, torch.tensor(sum(norms) / 3))
    torch.testing.assert_close(stats.mean_abs, torch.tensor(2.0))


def test_inference_mode_forward_records_activations_without_gradient_hooks():
    model, x = make_model(), frames()
    with Taps(model, activations=["actor.head"], gradients=["actor.head"], policy_and_value=True) as taps:
        with torch.inference_mode():
            logits, value = model(x)
    torch.testing.assert_close(taps.activations["actor.head"], logits)
    assert taps.grad_stats["actor.head"].calls == 0


def test_running_moments_are_stable_far_from_zero():
    """Units with a large mean and a small spread: the variance must not cancel away."""
    from instruments.measure.hooks import RunningMoments

    g = torch.Generator().manual_seed(0)
    batches = [1e4 + 0.01 * torch.randn(n, 5, generator=g) for n in (1, 300, 77, 1000)]
    stats = RunningMoments()
    for b in batches:
        stats.update(b)
    everything = torch.cat(batches).double()
    torch.testing.assert_close(stats.mean.double(), everything.mean(0), rtol=1e-7, atol=0)
    torch.testing.assert_close(stats.var.double(), everything.var(0, unbiased=False), rtol=2e-2, atol=0)
    assert stats.count == 1378 and (stats.fraction_positive == 1).all()
