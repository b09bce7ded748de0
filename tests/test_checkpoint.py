"""Checkpoints: round trip, bit-for-bit resume, and every kind of bad file."""

import importlib.util
import io
import json
import pickle
import random
from pathlib import Path

import pytest
import torch

from breakout_ppo.checkpoint import (CheckpointError, config_from_checkpoint, load_agent, load_checkpoint, restore_env,
                                     save_model)
from breakout_ppo.config import preset
from breakout_ppo.env import BatchedBreakout
from breakout_ppo.model import ActorCritic
from breakout_ppo.train import train
from support.ctrl_c import interrupt_after

SMOKE_4_UPDATES = dict(total_steps=4 * 8 * 32, checkpoint_every=100)


def test_load_agent_returns_the_saved_model_and_config(tmp_path):
    config = preset("smoke", hidden=32, arch="cnn")
    model = ActorCritic.from_config(config)
    path = save_model(tmp_path / "m.pt", model.state_dict(), config, global_step=7, elapsed_seconds=1.0)
    loaded, loaded_config = load_agent(path)
    assert loaded_config == config
    frames = torch.rand(5, 4, 10, 10).round()
    for mine, theirs in zip(model(frames), loaded(frames)):
        assert torch.equal(mine, theirs)


def test_separate_towers_under_a_config_that_shares_them_are_refused(tmp_path):
    # Loading them into a shared model would keep one first layer and drop the other without a word.
    config = preset("smoke", hidden=32, shared_layers=1)
    separate = ActorCritic(config.arch, config.hidden, shared_layers=0)
    path = save_model(tmp_path / "m.pt", separate.state_dict(), config, global_step=7, elapsed_seconds=1.0)
    with pytest.raises(CheckpointError, match="shares torso.1.weight between actor and critic"):
        load_agent(path)


def test_resume_equals_an_uninterrupted_run_bit_for_bit(tmp_path):
    config = preset("smoke", **SMOKE_4_UPDATES)
    straight = train(config, tmp_path / "straight")
    assert straight.updates == 4 and not straight.interrupted

    # Ctrl-C after update 2 (the real signal path): it must save at that update boundary.
    first_half = train(config, tmp_path / "resumed", progress=interrupt_after(2))
    assert first_half.interrupted and first_half.updates == 2
    second_half = train(config, tmp_path / "resumed", resume=first_half.last_checkpoint)
    assert second_half.updates == 2 and second_half.global_step == straight.global_step

    a = load_checkpoint(straight.last_checkpoint, resumable=True)
    b = load_checkpoint(second_half.last_checkpoint, resumable=True)
    for name, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][name]), name
    for (ka, va), (kb, vb) in zip(a["optimizer"]["state"].items(), b["optimizer"]["state"].items()):
        for key in va:
            assert torch.equal(torch.as_tensor(va[key]), torch.as_tensor(vb[key])), (ka, key)
    for name, tensor in a["env"]["state"].items():
        assert torch.equal(tensor, b["env"]["state"][name]), name
    for name in ("env", "sampler"):
        assert torch.equal(a["rng"][name], b["rng"][name]), name
    assert a["update"] == b["update"] == 4
    # The presets start some episodes from partial walls: which ones is env state too.
    assert config.partial_wall_starts > 0
    assert torch.equal(a["env"]["partial_start"], b["env"]["partial_start"])
    assert a["env"]["partial_start"].any() and not a["env"]["partial_start"].all()


def test_resume_refuses_a_different_config(tmp_path):
    config = preset("smoke", **SMOKE_4_UPDATES)
    done = train(config, tmp_path / "run")
    with pytest.raises(Exception, match="different config"):
        train(config.replace(learning_rate=1e-4), tmp_path / "run", resume=done.last_checkpoint)


def test_a_model_only_snapshot_cannot_be_resumed(tmp_path):
    config = preset("smoke")
    path = save_model(tmp_path / "m.pt", ActorCritic().state_dict(), config, 0, 0.0)
    with pytest.raises(CheckpointError, match="only a model"):
        load_checkpoint(path, resumable=True)


class RunsCode:
    """Unpickling this would create a file: a checkpoint must never get that far."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def bad_files(tmp_path):
    good = save_model(tmp_path / "good.pt", ActorCritic().state_dict(), preset("smoke"), 0, 0.0)
    data = good.read_bytes()
    marker = tmp_path / "code-ran"
    files = {
        "missing": tmp_path / "nope.pt",
        "directory": tmp_path,
        "empty": tmp_path / "empty.pt",
        "truncated": tmp_path / "truncated.pt",
        "corrupt": tmp_path / "corrupt.pt",
        "foreign dict": tmp_path / "foreign.pt",
        "foreign tensor": tmp_path / "tensor.pt",
        "code in a torch file": tmp_path / "evil.pt",
        "code in a plain pickle": tmp_path / "evil.pkl",
        "wrong shapes": tmp_path / "shapes.pt",
    }
    files["empty"].write_bytes(b"")
    files["truncated"].write_bytes(data[: len(data) // 2])
    files["corrupt"].write_bytes(random.Random(0).randbytes(2048))
    torch.save({"state_dict": {"w": torch.zeros(3)}}, files["foreign dict"])
    torch.save(torch.zeros(3), files["foreign tensor"])
    torch.save({"format": "breakout-ppo-checkpoint", "payload": RunsCode(str(marker))}, files["code in a torch file"])
    files["code in a plain pickle"].write_bytes(pickle.dumps(RunsCode(str(marker))))
    save_model(files["wrong shapes"], ActorCritic(hidden=16).state_dict(), preset("smoke"), 0, 0.0)  # config says 128
    return files, marker


def test_every_bad_file_is_a_checkpoint_error_and_runs_no_code(tmp_path):
    files, marker = bad_files(tmp_path)
    for kind, path in files.items():
        with pytest.raises(CheckpointError) as error:
            load_agent(path)
        message = str(error.value)
        assert "\n" not in message and str(path.name) in message, (kind, message)
    assert not marker.exists(), "unpickling ran code from a checkpoint"


def test_a_non_finite_loss_stops_training_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    import breakout_ppo.ppo as ppo
    from breakout_ppo.train import TrainingError

    real_loss, calls = ppo.ppo_loss, [0]
    config = preset("smoke", total_steps=6 * 8 * 32, checkpoint_every=1)
    steps_per_update = config.update_epochs * config.num_minibatches

    def loss_that_blows_up_in_update_3(*args, **kwargs):
        calls[0] += 1
        loss, metrics = real_loss(*args, **kwargs)
        return (loss * float("nan") if calls[0] > 2 * steps_per_update else loss), metrics

    monkeypatch.setattr(ppo, "ppo_loss", loss_that_blows_up_in_update_3)
    # The entropy preflight runs the update too; keep its calls out of the count (tested on its own).
    import breakout_ppo.train as training
    from breakout_ppo.preflight import EntropyCheck
    monkeypatch.setattr(training, "check_entropy_term", lambda config, **where: EntropyCheck(True, 1.0))
    with pytest.raises(TrainingError, match="non-finite loss at update 3"):
        train(config, tmp_path / "run")
    payload = load_checkpoint(tmp_path / "run" / "checkpoint.pt", resumable=True)
    assert payload["update"] == 2
    assert all(torch.isfinite(t).all() for t in payload["model"].values())


def test_random_bytes_of_any_kind_are_a_checkpoint_error(tmp_path):
    # Arbitrary bytes make torch.load fail in many different ways; each must become one clear error.
    path = tmp_path / "noise.pt"
    for seed in range(200):
        rng = random.Random(seed)
        path.write_bytes(rng.randbytes(rng.randint(1, 4096)))
        with pytest.raises(CheckpointError, match="truncated or corrupt|not a plain-data|not a breakout-ppo"):
            load_agent(path)


def test_stop_at_step_keeps_the_schedule_and_resumes_bit_for_bit(tmp_path):
    config = preset("smoke", **SMOKE_4_UPDATES)
    straight = train(config, tmp_path / "straight")
    # Stopping after update 2 of 4 must not shorten the learning-rate schedule: resuming from
    # there gives the uninterrupted run's parameters exactly.
    first_half = train(config, tmp_path / "stopped", stop_at_step=2 * config.batch_size)
    assert first_half.updates == 2 and first_half.global_step == 2 * config.batch_size
    rest = train(config, tmp_path / "stopped", resume=first_half.last_checkpoint)
    assert rest.updates == 2
    a = load_checkpoint(straight.last_checkpoint, resumable=True)["model"]
    b = load_checkpoint(rest.last_checkpoint, resumable=True)["model"]
    for name, tensor in a.items():
        assert torch.equal(tensor, b[name]), name


@pytest.mark.parametrize("field, then", [("partial_wall_starts", 0.0), ("clip_value", True),
                                         ("random_ball_starts", False), ("shared_layers", 0)])
def test_a_checkpoint_from_before_a_field_existed_says_how_it_trained(field, then):
    # Its config lacks the field: it trained as the code did then (full walls, a clipped value
    # loss, the ball from MinAtar's start), whatever today's default.
    old = preset("smoke").to_dict()
    del old[field]
    assert getattr(preset("smoke"), field) != then
    assert getattr(config_from_checkpoint({"config": old}), field) == then
    assert config_from_checkpoint({"config": preset("smoke").to_dict()}) == preset("smoke")


@pytest.mark.parametrize("shared_layers, shared_modules", [(1, [1]), (2, [1, 3])])
def test_shared_layers_survive_the_round_trip(tmp_path, shared_layers, shared_modules):
    config = preset("smoke", shared_layers=shared_layers)
    model = ActorCritic.from_config(config)
    path = save_model(tmp_path / "m.pt", model.state_dict(), config, global_step=0, elapsed_seconds=0.0)
    loaded, loaded_config = load_agent(path)
    assert loaded_config == config
    for i in shared_modules:
        assert loaded.critic.torso[i] is loaded.actor.torso[i]  # still one module, not two copies
    assert (loaded.critic.torso[3] is loaded.actor.torso[3]) == (3 in shared_modules)
    frames = torch.rand(5, 4, 10, 10).round()
    for mine, theirs in zip(model(frames), loaded(frames)):
        assert torch.equal(mine, theirs)


@pytest.mark.parametrize("saved, shared_layers", [(True, 1), (False, 0)])
def test_a_config_saved_with_shared_input_layer_reads_back_as_a_count_of_shared_layers(saved, shared_layers):
    # The field's name and type until 2026-12-03: a switch for sharing the first layer.
    old = preset("smoke").to_dict()
    del old["shared_layers"]
    old["shared_input_layer"] = saved
    assert config_from_checkpoint({"config": old}) == preset("smoke", shared_layers=shared_layers)


PRE_SPLIT = Path(__file__).parent / "data"


def test_a_checkpoint_from_before_the_env_split_resumes_bit_for_bit(tmp_path):
    # The fixture was written by the code before breakout_ppo/env.py became a package, and the JSON
    # holds a digest of where that old code got to by resuming it for 2 updates: both made by
    # tests/data/make_pre_split_checkpoint.py, which says how.
    spec = importlib.util.spec_from_file_location("make_pre_split_checkpoint",
                                                  PRE_SPLIT / "make_pre_split_checkpoint.py")
    maker = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(maker)
    record = json.loads((PRE_SPLIT / "pre_split_checkpoint.json").read_text())
    fixture = PRE_SPLIT / "pre_split_checkpoint.pt"
    payload = load_checkpoint(fixture, resumable=True)
    config = config_from_checkpoint(payload)
    assert config == preset("smoke", **maker.CONFIG)

    # The env's part is integers: it reads back, and saves again, byte for byte on any machine.
    env = BatchedBreakout(config.num_envs)
    restore_env(env, payload)
    saved = env.save_state()
    assert list(saved) == list(payload["env"]) and list(saved["state"]) == list(payload["env"]["state"])

    def serialised(value):
        buffer = io.BytesIO()
        torch.save(value, buffer)
        return buffer.getvalue()

    assert serialised(saved) == serialised(payload["env"])

    # Training on from it is float32 arithmetic: bit for bit only under the torch that made the digest.
    if torch.__version__ != record["torch"]:
        pytest.skip(f"the digest was made under torch {record['torch']}, this is {torch.__version__}")
    rest = train(config, tmp_path / "rest", resume=fixture)
    assert rest.updates == record["resumed_updates"]
    assert maker.digest(load_checkpoint(rest.last_checkpoint, resumable=True)) == record["digest_after_resume"]
