"""The preflight catches an update that drops the entropy bonus, and stays silent on the real one."""

import pytest
import torch

import breakout_ppo.ppo as ppo
from breakout_ppo.config import preset
from breakout_ppo.preflight import check_entropy_term
from breakout_ppo.train import TrainingError, train


def loss_without_entropy(real_loss):
    """The bug the preflight exists for: the entropy term is computed and reported, not optimised."""
    def loss(model, obs, actions, old_logprobs, old_values, advantages, returns, config):
        _, metrics = real_loss(model, obs, actions, old_logprobs, old_values, advantages, returns, config)
        without = config.replace(ent_coef=0.0)
        total, _ = real_loss(model, obs, actions, old_logprobs, old_values, advantages, returns, without)
        return total, metrics
    return loss


def test_the_real_update_passes():
    check = check_entropy_term(preset("default"))
    assert check.passed, str(check)
    assert "live" in str(check)


def test_an_update_that_drops_the_entropy_bonus_fails(monkeypatch):
    monkeypatch.setattr(ppo, "ppo_loss", loss_without_entropy(ppo.ppo_loss))
    check = check_entropy_term(preset("default"))
    assert not check.passed and check.max_parameter_difference == 0.0
    assert "DEAD" in str(check)


def test_training_refuses_to_start_on_a_dead_entropy_term(monkeypatch, tmp_path):
    monkeypatch.setattr(ppo, "ppo_loss", loss_without_entropy(ppo.ppo_loss))
    with pytest.raises(TrainingError, match="preflight failed"):
        train(preset("smoke"), tmp_path / "run")
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


def test_the_preflight_leaves_the_global_rng_alone():
    before = torch.get_rng_state()
    check_entropy_term(preset("smoke"))
    assert torch.equal(before, torch.get_rng_state())
