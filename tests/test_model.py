"""The networks: `FrameLinear` computes what a plain `nn.Linear` computes on every frame MinAtar can
produce, because the cells it skips are 0 in all of them (checked on MinAtar's own frames)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from breakout_ppo.env import GRID, LIVE_FRAME_CELLS, NUM_CHANNELS
from breakout_ppo.model import ActorCritic, FrameLinear
from support.minatar_reference import Survivor, minimal_actions, reference_frame, reference_game

FRAME_CELLS = NUM_CHANNELS * GRID * GRID


def minatar_frames(steps=40_000, seed=0):
    """Frames of MinAtar Breakout played by the differential test's look-ahead survivor, which
    clears walls (so the frames include refills) and gives up on a ball now and then."""
    game = reference_game(seed)
    to_minatar = minimal_actions(game)
    survivor = Survivor(seed, give_up=0.05)
    frames, refills = [], 0
    for step in range(steps):
        frames.append(reference_frame(game).reshape(-1))
        bricks_before = game.env.brick_map.sum()
        _, terminal = game.act(to_minatar[survivor([game], step)[0]])
        refills += game.env.brick_map.sum() > bricks_before
        if terminal:
            game.reset()
            survivor.plans.clear()
    return torch.from_numpy(np.stack(frames)), refills


@pytest.fixture(scope="module")
def frames():
    frames, refills = minatar_frames()
    assert refills >= 20  # the walls were cleared and rebuilt, not just the first one chipped at
    return frames


def test_no_minatar_frame_lights_a_cell_outside_the_live_run(frames):
    outside = torch.ones(FRAME_CELLS, dtype=torch.bool)
    outside[LIVE_FRAME_CELLS] = False
    assert frames[:, outside].sum() == 0
    lit = frames.amax(dim=0)
    # The run is tight: its first cell (paddle at the left wall) and last (bottom-right brick) light up.
    assert lit[LIVE_FRAME_CELLS.start] == 1 and lit[LIVE_FRAME_CELLS.stop - 1] == 1


def test_frame_linear_equals_the_plain_layer_on_minatar_frames(frames):
    torch.manual_seed(0)
    plain = nn.Linear(FRAME_CELLS, 64)
    sliced = FrameLinear(64)
    sliced.load_state_dict(plain.state_dict())  # same parameter names and shapes as the plain layer
    x = frames[::7]
    torch.testing.assert_close(sliced(x), plain(x), rtol=1e-5, atol=1e-5)
    # Gradients too: the skipped columns get exactly 0, as the plain layer's do on these frames.
    sliced(x).square().sum().backward()
    plain(x).square().sum().backward()
    torch.testing.assert_close(sliced.weight.grad, plain.weight.grad, rtol=1e-4, atol=1e-4)
    dead = torch.ones(FRAME_CELLS, dtype=torch.bool)
    dead[LIVE_FRAME_CELLS] = False
    assert torch.count_nonzero(sliced.weight.grad[:, dead]) == 0


def test_mlp_keeps_the_full_first_layer_and_its_initialisation():
    torch.manual_seed(3)
    model = ActorCritic("mlp", 64, shared_layers=0)
    first = model.actor.torso[1]
    assert isinstance(first, FrameLinear) and first.weight.shape == (64, FRAME_CELLS)
    # Orthogonal init over all 400 inputs, as a plain layer would get: rows of norm sqrt(2).
    torch.testing.assert_close(first.weight.norm(dim=1), torch.full((64,), 2**0.5))


@pytest.mark.parametrize("shared_layers", [1, 2])
@pytest.mark.parametrize("arch", ["mlp", "cnn"])
def test_shared_layers_are_one_module_each_run_once_under_both_names(arch, shared_layers):
    torch.manual_seed(0)
    model = ActorCritic(arch, 32, shared_layers=shared_layers)
    depth = model.shared_depth  # torso modules of the first `shared_layers` layers
    assert depth == {1: 3 if arch == "mlp" else 2, 2: len(model.actor.torso)}[shared_layers]
    for actor_layer, critic_layer in zip(model.actor.torso[:depth], model.critic.torso[:depth]):
        assert actor_layer is critic_layer
    for actor_layer, critic_layer in zip(model.actor.torso[depth:], model.critic.torso[depth:]):
        if next(actor_layer.parameters(), None) is not None:
            assert actor_layer is not critic_layer  # layers past the shared ones stay apart
    assert model.actor.head is not model.critic.head
    calls = []
    handles = [layer.register_forward_hook(lambda *_: calls.append(1)) for layer in model.actor.torso[:depth]]
    try:
        x = (torch.rand(6, NUM_CHANNELS, GRID, GRID) < 0.2).float()
        logits, value = model(x)
    finally:
        for handle in handles:
            handle.remove()
    assert len(calls) == depth  # each shared module runs once per forward
    # The same function as running each tower on its own (through the shared layers twice).
    torch.testing.assert_close(logits, model.actor(x))
    torch.testing.assert_close(value, model.critic(x).squeeze(-1))
    # One set of parameters for what is shared: the optimiser sees each once.
    separate = ActorCritic(arch, 32, shared_layers=0)
    shared = sum(p.numel() for p in separate.actor.torso[:depth].parameters())
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in separate.parameters()) - shared


def test_sharing_more_layers_than_the_torso_has_is_refused():
    with pytest.raises(ValueError, match="shared_layers must be 0, 1 or 2"):
        ActorCritic("mlp", 32, shared_layers=3)


def test_the_shared_layer_learns_from_both_losses():
    torch.manual_seed(0)
    model = ActorCritic("mlp", 32, shared_layers=1)
    x = (torch.rand(16, NUM_CHANNELS, GRID, GRID) < 0.2).float()

    def first_layer_grad(loss_of):
        model.zero_grad()
        loss_of(*model(x)).backward()
        return model.actor.torso[1].weight.grad.clone()

    from_actor = first_layer_grad(lambda logits, value: logits.square().sum())
    from_critic = first_layer_grad(lambda logits, value: value.square().sum())
    both = first_layer_grad(lambda logits, value: logits.square().sum() + value.square().sum())
    assert from_actor.abs().sum() > 0 and from_critic.abs().sum() > 0
    torch.testing.assert_close(both, from_actor + from_critic)
    # One set of first-layer parameters: the optimiser sees each once.
    assert len(list(model.parameters())) == len(list(ActorCritic("mlp", 32, shared_layers=0).parameters())) - 2
