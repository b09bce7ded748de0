"""Data-parallel training over the processes `torchrun` starts: one run, K ranks, one result.

Why a module of its own: the PPO loop should read like the paper whether it runs in one process or
in sixteen, so everything the ranks say to each other happens here, behind `Ranks`, whose methods
are no-ops (returning their input, untouched) when there is one process. A run without torchrun
therefore computes exactly what it computed before this module existed.

What data parallel means here (the README's "Training on several processes or GPUs"):
- `num_envs` and the minibatch size stay global; each rank steps `num_envs / K` envs and takes
  `minibatch / K` rows of each minibatch, its rows chosen by one permutation of its local indices
  that every rank draws from the same shared-seed generator (`Streams.minibatch_order`);
- gradients are averaged over ranks (`average_gradients`) and advantages normalised with the global
  minibatch's mean and std (`mean_std`), so an update equals one process's update on the union of
  the ranks' minibatches, up to float summation order;
- weights start identical (same seed, then a broadcast from rank 0), env and action streams differ
  per rank (`rank_seed`), rank 0 keeps a single process's streams;
- flags (stop, NaN) and errors are agreed on by all ranks at fixed points, so no rank waits in a
  collective the others skipped; a lost peer surfaces as `ProcessGroupError`, one line.

Collectives on tensors that live on the training device go through the default group (NCCL on
CUDA, gloo on CPU); Python objects (checkpoint state, errors: CPU tensors and strings) go through a
gloo side group, which under gloo is the default group itself.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import socket
import sys
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

TIMEOUT_SECONDS = float(os.environ.get("BREAKOUT_PPO_DIST_TIMEOUT", 300))
"""How long a collective (and the rendezvous in `init_process_group`) waits for the other ranks
before failing: the bound on how long survivors hang when a peer dies without closing its sockets."""


class ProcessGroupError(Exception):
    """This rank lost contact with the others (a peer died or hung); the message is one line."""


def launched_by_torchrun() -> bool:
    """torchrun (and any env:// launcher) sets RANK and WORLD_SIZE for each process it starts."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def launched_rank() -> int:
    """This process's rank as the launcher set it; 0 without a launcher."""
    return int(os.environ.get("RANK", 0))


def rank_seed(stream: str, seed: int, rank: int) -> int:
    """The seed of rank `rank`'s copy of a random stream: rank 0 keeps `seed`, so a run of one process
    draws what it always drew; rank r > 0 gets a 63-bit seed hashed from (stream, seed, r)."""
    if rank == 0:
        return seed
    digest = hashlib.sha256(f"breakout-ppo/{stream}/{seed}/{rank}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


@dataclass(frozen=True)
class Streams:
    """A rank's random streams. `env_seed` seeds its envs, `sampler` draws its actions; the
    minibatch order must be the same on every rank, the actions must differ, so with K > 1 they
    are two generators. With one process they are the one generator they always were."""

    env_seed: int
    sampler: torch.Generator
    minibatch_order: torch.Generator


@dataclass(frozen=True, eq=False)
class Ranks:
    """The processes of one training, as seen from one of them. `Ranks()` is a world of one."""

    rank: int = 0
    size: int = 1
    device: torch.device = torch.device("cpu")
    objects_group: object = None
    """Group for Python objects (gloo); None is the default group."""
    owns_group: bool = False

    @property
    def is_writer(self) -> bool:
        """Rank 0 alone writes events, config.json, checkpoints and the progress line."""
        return self.rank == 0

    # --- Splitting the experiment -------------------------------------------------------------

    def split_error(self, config) -> str | None:
        """Why `config` does not split evenly over the ranks, in one line; None if it does."""
        if config.num_envs % self.size:
            return (f"num_envs {config.num_envs} does not split evenly over {self.size} processes: "
                    f"give a multiple of {self.size}")
        if config.minibatch_size % self.size:
            return (f"the minibatch of {config.minibatch_size} (num_envs * num_steps / num_minibatches) does not "
                    f"split evenly over {self.size} processes: change num_envs, num_steps or num_minibatches")
        return None

    def local_num_envs(self, config) -> int:
        return config.num_envs // self.size

    def streams(self, seed: int, device) -> Streams:
        sampler = torch.Generator(device).manual_seed(rank_seed("actions", seed + 1, self.rank))
        if self.size == 1:
            return Streams(seed, sampler, sampler)
        order = torch.Generator(device).manual_seed(rank_seed("minibatch-order", seed, 1))  # same on all ranks
        return Streams(rank_seed("env", seed, self.rank), sampler, order)

    # --- Collectives on the training device -----------------------------------------------------

    def broadcast_weights(self, model) -> None:
        """Make every rank's weights rank 0's (they start equal by seed; this makes sure)."""
        if self.size == 1:
            return
        with self._collective("broadcast weights"):
            for tensor in model.state_dict().values():
                dist.broadcast(tensor, src=0)

    def average_gradients(self, model) -> None:
        """Replace each rank's gradient by the mean over ranks, in one flat all-reduce."""
        if self.size == 1:
            return
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        flat = torch.cat([g.reshape(-1) for g in grads])
        with self._collective("gradient all-reduce"):
            dist.all_reduce(flat)
        flat /= self.size
        offset = 0
        for g in grads:
            g.copy_(flat[offset:offset + g.numel()].view_as(g))
            offset += g.numel()

    def mean_std(self, x: torch.Tensor):
        """Mean and standard deviation (n - 1) of `x` over all ranks' rows, from one all-reduce of
        (count, sum, sum of squares) in float64, where cancellation costs nothing at float32's
        precision; with one process exactly `x.mean(), x.std()`."""
        if self.size == 1:
            return x.mean(), x.std()
        x64 = x.double()
        moments = torch.stack([torch.tensor(float(x.numel()), dtype=torch.float64, device=x.device),
                               x64.sum(), (x64 * x64).sum()])
        with self._collective("advantage statistics"):
            dist.all_reduce(moments)
        count, total, squares = moments
        mean = total / count
        variance = (squares - count * mean * mean) / (count - 1)
        return mean.to(x.dtype), variance.clamp_min(0).sqrt().to(x.dtype)

    def sum(self, tensors):
        """Each tensor (scalars, e.g. a NamedTuple of sums) summed over ranks, in one all-reduce."""
        if self.size == 1:
            return tensors
        flat = torch.stack([torch.as_tensor(t, dtype=torch.float64, device=self.device) for t in tensors])
        with self._collective("sum"):
            dist.all_reduce(flat)
        summed = [value.to(torch.as_tensor(t).dtype) for value, t in zip(flat, tensors)]
        return type(tensors)(*summed) if hasattr(tensors, "_fields") else summed

    def mean(self, values: dict) -> dict:
        """A dict of scalar tensors averaged over ranks."""
        if self.size == 1:
            return values
        summed = self.sum(list(values.values()))
        return {key: value / self.size for key, value in zip(values, summed)}

    def max(self, value: int) -> int:
        """The largest of the ranks' integers: a flag (0/1) or a signal number raised on any rank."""
        if self.size == 1:
            return value
        tensor = torch.tensor(int(value), dtype=torch.int64, device=self.device)
        with self._collective("flag"):
            dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
        return int(tensor)

    # --- Python objects, through the gloo group -------------------------------------------------

    def first_error(self, message: str | None, config=None) -> str | None:
        """Every rank's verdict in, the first rank's error (by rank) out: all ranks then go on or
        stop together, whichever rank found the problem. With `config`, a rank started with other
        flags than rank 0 (a typo on one machine's command line) is an error too."""
        if self.size == 1:
            return message
        verdicts = [None] * self.size
        with self._collective("agreement"):
            dist.all_gather_object(verdicts, (message, None if config is None else config.to_dict()),
                                   group=self.objects_group)
        error = next((verdict for verdict, _ in verdicts if verdict is not None), None)
        if error is not None or config is None:
            return error
        first = verdicts[0][1]
        for rank, (_, flags) in enumerate(verdicts):
            differing = [name for name in first if flags.get(name) != first[name]]
            if differing:
                return (f"process {rank} was started with other flags than process 0 ({', '.join(differing)}): "
                        f"every process of a run needs the same flags")
        return None

    def gather_to_writer(self, obj) -> list | None:
        """Every rank's `obj` (CPU tensors and plain values), in rank order, on rank 0; None elsewhere."""
        if self.size == 1:
            return [obj]
        gathered = [None] * self.size if self.is_writer else None
        with self._collective("gather to rank 0"):
            dist.gather_object(obj, gathered, dst=0, group=self.objects_group)
        return gathered

    @contextlib.contextmanager
    def _collective(self, what: str):
        try:
            yield
        except RuntimeError as error:  # DistBackendError, DistNetworkError, gloo's "Connection closed"
            reason = next((line.strip() for line in str(error).splitlines() if line.strip()), type(error).__name__)
            raise ProcessGroupError(
                f"process {self.rank} of {self.size} on {socket.gethostname()} lost the others during the {what} "
                f"({reason[:160]}): another process of this training died or hung; the last checkpoint stands"
            ) from None


def _import_group_capturing_modules() -> None:
    """Import, before the default group exists, the module that would otherwise hold it forever.

    `torch.distributed.nn.functional` binds `group.WORLD` as the default argument of ten functions
    when it is first imported: `None` before `init_process_group`, the default ProcessGroup itself
    after. torch._dynamo imports it, and the first Adam optimizer imports torch._dynamo, so in
    training it was imported after the group was made and its defaults held the group for the life
    of the interpreter. `destroy_process_group` then freed nothing: gloo's worker threads (and rank
    0's store server, outside torchrun) ran on into interpreter finalisation, and a worker thread
    that dropped its last reference to a finished collective after finalisation began (a barrier
    still holding the all-gather before it, whose tensors Python made) had to take the GIL to free
    those tensors; Python ends such a thread with pthread_exit, whose unwinding through the work's
    noexcept destructor is std::terminate: "terminate called without an active exception",
    SIGABRT, after every file was written. Imported first, the defaults hold None, the group dies
    in `destroy_process_group` with its threads joined, and the interpreter exits alone."""
    import torch.distributed.nn.functional  # noqa: F401


def join(device) -> Ranks:
    """Join the process group when launched by torchrun (gloo on CPU; NCCL on CUDA, one GPU per
    local rank), else a world of one. On CUDA the returned `device` is this rank's GPU."""
    device = torch.device(device)
    if not launched_by_torchrun():
        return Ranks(device=device)
    if dist.is_initialized():  # the caller set the group up itself (tests do)
        owns = False
    else:
        owns = True
        if device.type == "cuda":
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
            torch.cuda.set_device(device)
        backend = "nccl" if device.type == "cuda" else "gloo"
        _import_group_capturing_modules()
        try:
            dist.init_process_group(backend, timeout=timedelta(seconds=TIMEOUT_SECONDS),
                                    device_id=device if backend == "nccl" else None)
        except (RuntimeError, ValueError) as error:
            reason = next((line.strip() for line in str(error).splitlines() if line.strip()), type(error).__name__)
            raise ProcessGroupError(f"process {launched_rank()} could not join the others ({reason[:200]})") from None
    if dist.get_world_size() > 1 and dist.get_backend() == "nccl" and device.type == "cuda":
        objects_group = dist.new_group(backend="gloo", timeout=timedelta(seconds=TIMEOUT_SECONDS))
    else:
        objects_group = None
    return Ranks(rank=dist.get_rank(), size=dist.get_world_size(), device=device,
                 objects_group=objects_group, owns_group=owns)


def leave(ranks: Ranks) -> None:
    """Leave the process group `join` set up (a no-op for a world of one or a group it did not make).

    Called from the caller's `finally`. On the normal way out (no exception on its way up) every
    rank first meets the others at a barrier, so none tears the group down while another is still
    in a collective. The barrier waits at most `TIMEOUT_SECONDS`, through the gloo group
    (`monitored_barrier` takes a timeout; under NCCL the side group), so a peer that died or hung
    at the very end delays the exit, never blocks it; a
    failed barrier is let go, the run's work being done. On the way out of an error (a lost peer,
    an error all ranks agreed on, a second Ctrl-C) there is no barrier: a survivor must exit at
    once with its one line, and its peers may never come."""
    if not (ranks.owns_group and dist.is_initialized()):
        return
    if ranks.size > 1 and sys.exc_info()[0] is None:  # in a `finally`, the exception on its way up, if any
        with contextlib.suppress(Exception):
            dist.monitored_barrier(group=ranks.objects_group, timeout=timedelta(seconds=TIMEOUT_SECONDS))
    with contextlib.suppress(Exception):  # after a lost peer, tearing down may fail too: nothing to save
        dist.destroy_process_group()
