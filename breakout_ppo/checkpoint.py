"""Checkpoints: everything a run needs to continue bit for bit, saved atomically, loaded safely.

A checkpoint is a dict of tensors and plain values written with `torch.save` and read with
`torch.load(weights_only=True)` only, so a file that smuggles code in a pickle is refused, never run.
Random-number states are stored as tensors (numpy's legacy state tuple would not load there).

A run of K processes (torchrun) saves one file, on rank 0: the weights and optimizer every rank
shares, rank 0's envs and random streams where a one-process run keeps its own (so `evaluate`,
`inspect` and `compare` read it like any other), the other ranks' under `other_ranks`, the shared
minibatch-order stream under `rng.minibatch_order`, and `world_size`. A file without `world_size`
is from one process.
"""

from __future__ import annotations

import os
import pickle
import shutil
import warnings
from pathlib import Path

import torch

from breakout_ppo.config import Config
from breakout_ppo.model import ActorCritic

FORMAT = "breakout-ppo-checkpoint"
FORMAT_VERSION = 1


class CheckpointError(Exception):
    """A checkpoint file that cannot be used; the message is one line meant for the user."""


def rank_state(env, sampler: torch.Generator) -> dict:
    """What one process alone holds: its envs' games and counters and its random streams (CPU tensors)."""
    return {
        "env": env.save_state(),
        "rng": {
            "torch": torch.get_rng_state(),
            "env": env.generator.get_state(),
            "sampler": sampler.get_state(),
        },
    }


def save_checkpoint(path, *, model, optimizer, config: Config, ranks: list[dict], global_step: int, update: int,
                    minibatch_order: torch.Generator | None = None) -> Path:
    """Write the checkpoint to a temporary file beside `path`, then rename it into place, so a
    crash mid-write never leaves a truncated file under the real name.

    `ranks`: every process's `rank_state`, in rank order (one for a run without torchrun);
    `minibatch_order`: the stream all ranks share, when there are several."""
    path = Path(path)
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "kind": "training",
        "config": config.to_dict(),
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "env": ranks[0]["env"],
        "global_step": int(global_step),
        "update": int(update),
        "rng": dict(ranks[0]["rng"]),
        "world_size": len(ranks),
    }
    if len(ranks) > 1:
        payload["rng"]["minibatch_order"] = minibatch_order.get_state()
        payload["other_ranks"] = ranks[1:]
    return _atomic_save(payload, path)


def save_model(path, weights: dict, config: Config, global_step: int, elapsed_seconds: float) -> Path:
    """A model-only file for evaluation and inspection (cannot be resumed from)."""
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "kind": "model",
        "config": config.to_dict(),
        "model": weights,
        "global_step": int(global_step),
        "elapsed_seconds": float(elapsed_seconds),
    }
    return _atomic_save(payload, Path(path))


def _atomic_save(payload: dict, path: Path) -> Path:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        torch.save(payload, tmp)
        os.replace(tmp, path)
    except (OSError, RuntimeError) as error:  # torch's writer reports a full disk as a RuntimeError
        raise CheckpointError(f"could not save {path}: {_write_failure(error, path)}") from None
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _write_failure(error: Exception, path: Path) -> str:
    """Why a write failed, in words: torch's own message for a full disk is `basic_ios::clear`."""
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    try:
        if shutil.disk_usage(path.parent).free < 1 << 20:
            return "No space left on device"
    except OSError:
        pass
    return str(error).strip().splitlines()[0][:200] if str(error).strip() else type(error).__name__


def load_checkpoint(path, map_location="cpu", resumable=False) -> dict:
    """Read and check a checkpoint; raise CheckpointError with a one-line reason otherwise.

    `resumable=True` also demands the training state (optimizer, env, RNGs), not just a model."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}")
    if not path.is_file():
        raise CheckpointError(f"checkpoint is not a file: {path}")
    try:
        with warnings.catch_warnings():
            # A foreign pickle makes torch warn before it refuses; the refusal is what we report.
            warnings.simplefilter("ignore")
            payload = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else "unpickling failed"
        raise CheckpointError(f"refusing to load {path}: it is not a plain-data checkpoint ({reason[:200]})") from None
    except Exception as error:  # noqa: BLE001  arbitrary bytes fail in arbitrary ways inside torch.load
        raise CheckpointError(f"cannot read {path}: the file is truncated or corrupt ({type(error).__name__})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a breakout-ppo checkpoint")
    if payload.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{path} has checkpoint format version {payload.get('format_version')}, this code reads {FORMAT_VERSION}"
        )
    needed = {"config", "model"}
    if resumable:
        if payload.get("kind") != "training":
            raise CheckpointError(f"{path} holds only a model; resume needs a training checkpoint (checkpoint.pt)")
        needed |= {"optimizer", "env", "global_step", "update", "rng"}
    missing = needed - set(payload)
    if missing:
        raise CheckpointError(f"{path} is incomplete: missing {', '.join(sorted(missing))}")
    if resumable and saved_world_size(payload) > 1 and len(payload.get("other_ranks", ())) != saved_world_size(payload) - 1:
        raise CheckpointError(f"{path} is incomplete: it records {saved_world_size(payload)} processes but holds the "
                              f"state of {1 + len(payload.get('other_ranks', ()))}")
    return payload


def config_from_checkpoint(payload: dict, path="checkpoint") -> Config:
    try:
        return Config.from_saved(payload["config"]).validate()
    except (TypeError, ValueError) as error:
        raise CheckpointError(f"{path} holds an invalid config: {error}") from None


def model_from_checkpoint(payload: dict, config: Config, path="checkpoint") -> ActorCritic:
    model = ActorCritic.from_config(config)
    weights = payload["model"]
    mismatch = weights_mismatch(model.state_dict(), weights) if isinstance(weights, dict) else "not a dict of tensors"
    if mismatch:
        raise CheckpointError(f"{path}: its model weights do not fit its config (arch {config.arch}, hidden "
                              f"{config.hidden}, shared_layers {config.shared_layers}): {mismatch}")
    for name, tensor in weights.items():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            bad = int((~torch.isfinite(tensor)).sum())
            raise CheckpointError(f"{path}: its model weights are not finite ({bad} of {tensor.numel()} values "
                                  f"of {name} are NaN or inf): the run diverged before this was saved")
    model.load_state_dict(weights)
    # A shared layer is saved under both towers' names; loading would keep one silently, so two
    # that differ mean the weights came from separate towers, whatever the config says.
    for name, tensor in payload["model"].items():
        twin = name.replace("actor.", "critic.", 1)
        if name.startswith("actor.torso.") and model.get_parameter(name) is model.get_parameter(twin) \
                and not torch.equal(tensor, payload["model"][twin]):
            raise CheckpointError(f"{path}: the config shares {name.removeprefix('actor.')} between actor and critic "
                                  f"but the weights hold two different ones")
    return model


def weights_mismatch(expected: dict, saved: dict) -> str | None:
    """The first ways `saved` differs from `expected` in names and shapes, in words; None if it fits."""
    problems = []
    missing = [name for name in expected if name not in saved]
    unexpected = [name for name in saved if name not in expected]
    if missing:
        problems.append(f"missing {', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''}")
    if unexpected:
        problems.append(f"unexpected {', '.join(unexpected[:3])}{' ...' if len(unexpected) > 3 else ''}")
    for name, tensor in expected.items():
        if name in saved and (not isinstance(saved[name], torch.Tensor) or saved[name].shape != tensor.shape):
            found = tuple(saved[name].shape) if isinstance(saved[name], torch.Tensor) else type(saved[name]).__name__
            problems.append(f"{name} is {found} in the file, {tuple(tensor.shape)} for the config")
            if len(problems) >= 3:
                break
    return "; ".join(problems) or None


def load_agent(path, device="cpu"):
    """Public API: `(model, config)` from a checkpoint, the model in eval mode on `device`."""
    payload = load_checkpoint(path)
    config = config_from_checkpoint(payload, path)
    model = model_from_checkpoint(payload, config, path).to(device).eval()
    return model, config


def restore_env(env, payload: dict) -> None:
    """Put the saved game states, episode counters and env RNG back into `env` (`payload` is the
    checkpoint, or one rank's part of it: `saved_rank_state`)."""
    env.load_state(payload["env"])  # checkpoints from before partial-wall starts have no partial_start
    env.generator.set_state(payload["rng"]["env"])


def saved_device_type(payload: dict) -> str:
    """"cpu" or "cuda": the device whose random generators the checkpoint's streams came from. A CPU
    generator's state is the Mersenne Twister's (5056 bytes), a CUDA one's a seed and an offset."""
    return "cpu" if payload["rng"]["sampler"].numel() == _CPU_GENERATOR_STATE_BYTES else "cuda"


_CPU_GENERATOR_STATE_BYTES = torch.Generator().get_state().numel()


def saved_world_size(payload: dict) -> int:
    """How many processes trained the checkpoint (files from before torchrun support: one)."""
    return int(payload.get("world_size", 1))


def saved_rank_state(payload: dict, rank: int) -> dict:
    """Rank `rank`'s own part of a checkpoint: `{"env": ..., "rng": ...}`, as `rank_state` made it."""
    return payload if rank == 0 else payload["other_ranks"][rank - 1]
