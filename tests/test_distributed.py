"""Data-parallel training on K processes (torchrun, gloo on CPU): the update equals one process's
on the union of the ranks' minibatches; ranks stay identical; rank 0 writes one run; resume, stop
and a lost rank behave.

The worker side of these tests is this file run as a script (`python tests/test_distributed.py
MODE OUT`) with the env:// variables torchrun would set, so each test starts real processes; every
subprocess has a timeout, so a desync fails the test instead of hanging it.
"""

from __future__ import annotations

import contextlib
import copy
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
CLI = ROOT / "cli.py"
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
TIMEOUT = 120


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rank_env(rank: int, size: int, port: int) -> dict:
    return {**os.environ, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(size),
            "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "OMP_NUM_THREADS": "1",
            "BREAKOUT_PPO_DIST_TIMEOUT": "30", "PYTHONPATH": str(ROOT)}


def start_ranks(args: list, size=2, cwd=None, **env) -> list[subprocess.Popen]:
    port = free_port()
    return [subprocess.Popen([sys.executable, *map(str, args)], env={**rank_env(rank, size, port), **env}, cwd=cwd,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for rank in range(size)]


def finish(processes, timeout=TIMEOUT) -> list[tuple[int, str]]:
    results = []
    try:
        for p in processes:
            _, err = p.communicate(timeout=timeout)
            results.append((p.returncode, err))
    finally:
        for p in processes:
            if p.poll() is None:
                p.kill()
    return results


def group_threads() -> list[str] | None:
    """The names of this process's threads that belong to a process group (gloo's worker and
    transport threads, the TCP store's server); None where /proc cannot tell (not Linux)."""
    try:
        names = [(task / "comm").read_text().strip() for task in Path("/proc/self/task").iterdir()]
    except OSError:
        return None
    return [name for name in names if "gloo" in name or "tcpstore" in name]


def torchrun(args, cwd, timeout=TIMEOUT) -> subprocess.CompletedProcess:
    return subprocess.run([*TORCHRUN, str(CLI), *map(str, args)], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "OMP_NUM_THREADS": "1"})


# --- The update: two ranks against the plain loop on the union of their minibatches -------------

def shared_rollout():
    """A smoke rollout of 8 envs, the second half's rewards raised by 3: the two ranks' advantage
    statistics differ, so normalising each rank's half by itself would give another update."""
    from breakout_ppo.config import preset
    from breakout_ppo.env import BatchedBreakout
    from breakout_ppo.model import ActorCritic
    from breakout_ppo.ppo import collect_rollout

    config = preset("smoke", num_envs=8)
    torch.manual_seed(0)
    model = ActorCritic.from_config(config)
    env = BatchedBreakout(config.num_envs, sticky_action_prob=config.sticky_action_prob, seed=0)
    rollout, _, _ = collect_rollout(model, env, env.reset(), config, torch.Generator().manual_seed(0))
    rewards = rollout.rewards.clone()
    rewards[:, 4:] += 3.0
    return config, model, rollout._replace(rewards=rewards)


def env_slice(rollout, rank, size):
    n = rollout.rewards.shape[1] // size
    return type(rollout)(*(x[..., rank * n:(rank + 1) * n] if x.dim() == 1 else x[:, rank * n:(rank + 1) * n]
                           for x in rollout))


def reference_update(model, rollout, config, size, global_normalisation=True):
    """The plain loop: each epoch one permutation of local indices, the same on every rank; the
    global minibatch is the union of each rank's rows at those indices; one Adam step on it."""
    from breakout_ppo.ppo import compute_gae, ppo_loss

    model = copy.deepcopy(model)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.learning_rate, eps=1e-5)
    parts = []
    for rank in range(size):
        local = env_slice(rollout, rank, size)
        advantages, returns = compute_gae(local, config.gamma, config.gae_lambda)
        parts.append([x.reshape(-1, *x.shape[2:]) for x in
                      (local.obs, local.actions, local.logprobs, local.values, advantages, returns)])
    generator = torch.Generator().manual_seed(123)
    local_rows = parts[0][0].shape[0]
    for _ in range(config.update_epochs):
        order = torch.randperm(local_rows, generator=generator)
        for idx in order.split(local_rows // config.num_minibatches):
            rows = [[x[idx] for x in part] for part in parts]
            if config.norm_adv:
                if global_normalisation:
                    everything = torch.cat([r[4] for r in rows])
                    mean, std = everything.mean(), everything.std()
                    for r in rows:
                        r[4] = (r[4] - mean) / (std + 1e-8)
                else:
                    for r in rows:
                        r[4] = (r[4] - r[4].mean()) / (r[4].std() + 1e-8)
            minibatch = [torch.cat(column) for column in zip(*rows)]
            loss, _ = ppo_loss(model, *minibatch, config)
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.max_grad_norm)
            optimizer.step()
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def worker_update(out: Path):
    """One rank: its half of the envs through the real `ppo_update`, parameters saved."""
    import torch.distributed as dist

    from breakout_ppo.distributed import join
    from breakout_ppo.ppo import ppo_update

    ranks = join("cpu")
    config, model, rollout = shared_rollout()
    optimizer = torch.optim.Adam(model.parameters(), lr=config.learning_rate, eps=1e-5)
    ppo_update(model, optimizer, env_slice(rollout, ranks.rank, ranks.size), config,
               torch.Generator().manual_seed(123), ranks)
    assert dist.get_backend() == "gloo"
    torch.save(torch.cat([p.detach().flatten() for p in model.parameters()]), out / f"rank{ranks.rank}.pt")


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    """Two worker processes, started once (each start costs seconds): each runs its half of the
    update below, then a smoke training of 8 envs in `run/`, recording it."""
    out = tmp_path_factory.mktemp("two_ranks")
    results = finish(start_ranks([__file__, out]))
    assert all(code == 0 for code, _ in results), results
    return out


def test_two_ranks_update_as_one_process_does_on_the_union_of_their_minibatches(two_ranks):
    tmp_path = two_ranks / "update"
    config, model, rollout = shared_rollout()
    expected = reference_update(model, rollout, config, size=2)
    local_only = reference_update(model, rollout, config, size=2, global_normalisation=False)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    assert torch.equal(ranks[0], ranks[1])
    torch.testing.assert_close(ranks[0], expected, rtol=1e-5, atol=2e-6)
    # The test has teeth: normalising each rank's advantages by themselves lands elsewhere.
    assert (local_only - expected).abs().max() > 100 * 2e-6


def test_a_split_that_does_not_divide_is_one_line():
    from breakout_ppo.config import preset
    from breakout_ppo.distributed import Ranks

    two = Ranks(rank=0, size=2)
    assert two.split_error(preset("smoke")) is None
    assert "num_envs 7 does not split evenly over 2 processes" in two.split_error(preset("smoke", num_envs=7))
    # 6 envs split 2 ways, but a minibatch of 6 x 5 / 2 = 15 rows does not.
    message = two.split_error(preset("smoke", num_envs=6, num_steps=5, num_minibatches=2))
    assert "minibatch of 15" in message and "\n" not in message


def test_a_destroyed_group_leaves_no_thread_behind(two_ranks):
    # The workers made their optimizers after joining (Adam imports torch._dynamo, which imports
    # torch.distributed.nn.functional): the group must still die with destroy_process_group, its
    # threads joined, or they run into interpreter exit, where one could abort the process.
    left = [(two_ranks / f"threads{rank}.txt").read_text() for rank in range(2)]
    if "?" in left:
        pytest.skip("no /proc/self/task to list threads")
    assert left == ["", ""]


def test_ranks_started_with_other_flags_all_refuse_in_one_line(two_ranks):
    for rank in range(2):
        message = (two_ranks / f"flags{rank}.txt").read_text()
        assert message == ("process 1 was started with other flags than process 0 (seed): every process of a "
                           "run needs the same flags")


# --- A real run of two ranks ---------------------------------------------------------------------

def recording_train(out: Path, run_dir: Path, num_envs: int, rank: int):
    """`train` on the smoke preset, recording the first rollout and the final parameters."""
    import breakout_ppo.train as training
    from breakout_ppo.config import preset

    record = {}
    real_collect, real_update = training.collect_rollout, training.ppo_update

    def collect(*args, **kwargs):
        rollout, obs, episodes = real_collect(*args, **kwargs)
        record.setdefault("first_rollout", (rollout.obs.clone(), rollout.actions.clone(), rollout.rewards.clone()))
        return rollout, obs, episodes

    def update(model, *args, **kwargs):
        metrics = real_update(model, *args, **kwargs)
        record["parameters"] = torch.cat([p.detach().flatten() for p in model.parameters()])
        return metrics

    training.collect_rollout, training.ppo_update = collect, update
    try:
        training.train(preset("smoke", num_envs=num_envs), run_dir)
    finally:
        training.collect_rollout, training.ppo_update = real_collect, real_update
    torch.save(record, out / f"rank{rank}.pt")


def test_two_ranks_stay_identical_draw_different_streams_and_rank_0_draws_a_lone_runs(two_ranks, tmp_path):
    ranks = [torch.load(two_ranks / f"rank{r}.pt") for r in range(2)]
    assert torch.equal(ranks[0]["parameters"], ranks[1]["parameters"])
    assert not torch.equal(ranks[0]["first_rollout"][0], ranks[1]["first_rollout"][0])
    assert not torch.equal(ranks[0]["first_rollout"][1], ranks[1]["first_rollout"][1])
    # Rank 0 of 2 with 8 envs holds 4 envs drawn exactly as a single process with 4 envs draws them.
    recording_train(tmp_path, tmp_path / "alone", num_envs=4, rank="alone")
    alone = torch.load(tmp_path / "rankalone.pt")
    assert all(torch.equal(a, b) for a, b in zip(alone["first_rollout"], ranks[0]["first_rollout"]))
    # Only rank 0 wrote: one event file in the one run directory.
    assert len(list((two_ranks / "run").glob("events.out.tfevents.*"))) == 1


# --- End to end under torchrun -------------------------------------------------------------------

def test_torchrun_trains_one_run_that_evaluates_and_resumes_bit_for_bit(two_ranks, tmp_path):
    from breakout_ppo.checkpoint import load_agent, load_checkpoint
    from breakout_ppo.config import preset
    from breakout_ppo.evaluate import evaluate
    from breakout_ppo.train import TrainingError, train

    # The workers' whole smoke run: one file, rank 0's envs where a lone run keeps them, no `module.`.
    run = two_ranks / "run"
    payload = load_checkpoint(run / "checkpoint.pt", resumable=True)
    assert payload["world_size"] == 2 and len(payload["other_ranks"]) == 1
    assert not any(name.startswith("module.") for name in payload["model"])
    model, config = load_agent(run / "checkpoint.pt")
    assert evaluate(model, episodes=2, max_episode_steps=200).mean >= 0

    # The same run under torchrun, stopped half way, then resumed: where the whole run got, bit for bit.
    flags = ["train", "--preset", "smoke", "--logdir", tmp_path, "--device", "cpu"]
    half = torchrun([*flags, "--run-name", "half", "--stop-at-step", "512"], cwd=tmp_path)
    assert half.returncode == 0, half.stderr
    assert sum(line.startswith("stopped at 512 steps") for line in half.stderr.splitlines()) == 1  # rank 0 reports
    resumed = torchrun([*flags, "--resume", tmp_path / "half" / "checkpoint.pt"], cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert sum(line.startswith("done:") for line in resumed.stderr.splitlines()) == 1
    assert len(list((tmp_path / "half").glob("events.out.tfevents.*"))) == 2  # the run's, and its resumption's
    assert sorted(path.name for path in tmp_path.iterdir()) == ["half"]
    again = load_checkpoint(tmp_path / "half" / "checkpoint.pt", resumable=True)
    assert again["global_step"] == payload["global_step"] == 1024
    for key in ("model", "env"):
        for name, tensor in payload[key].items():
            if isinstance(tensor, dict):
                assert all(torch.equal(t, again[key][name][k]) for k, t in tensor.items()), (key, name)
            else:
                assert torch.equal(tensor, again[key][name]), (key, name)
    for rank_part, again_part in zip([payload, *payload["other_ranks"]], [again, *again["other_ranks"]]):
        assert all(torch.equal(rank_part["rng"][k], again_part["rng"][k]) for k in ("torch", "env", "sampler"))

    # Another number of processes is refused in one line.
    try:
        train(preset("smoke", total_steps=2048), tmp_path / "one", resume=run / "checkpoint.pt")
        raise AssertionError("resumed a 2-process checkpoint in one process")
    except TrainingError as error:
        assert "trained by 2 processes, this run has 1" in str(error) and "\n" not in str(error)


def test_ctrl_c_under_torchrun_stops_every_rank_at_one_update_and_rank_0_saves(tmp_path):
    process = subprocess.Popen([*TORCHRUN, str(CLI), "train", "--preset", "smoke", "--total-steps", "400000",
                                "--logdir", tmp_path, "--run-name", "run", "--device", "cpu"],
                               cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        deadline = time.time() + 60
        while not (tmp_path / "run" / "config.json").exists() and time.time() < deadline and process.poll() is None:
            time.sleep(0.2)
        time.sleep(1.0)
        os.killpg(process.pid, signal.SIGINT)  # what Ctrl-C in a terminal does: every process gets it
        _, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert "stopped by SIGINT" in err, err
    from breakout_ppo.checkpoint import load_checkpoint

    payload = load_checkpoint(tmp_path / "run" / "checkpoint.pt", resumable=True)
    assert payload["world_size"] == 2 and 0 < payload["global_step"] < 400000


def test_when_one_rank_dies_the_survivor_exits_with_one_line(tmp_path):
    processes = start_ranks([CLI, "train", "--preset", "smoke", "--total-steps", "400000", "--logdir", tmp_path,
                             "--run-name", "run", "--device", "cpu"], cwd=tmp_path)
    try:
        deadline = time.time() + 60
        while not (tmp_path / "run" / "config.json").exists() and time.time() < deadline:
            assert all(p.poll() is None for p in processes), finish(processes)
            time.sleep(0.2)
        time.sleep(1.0)
        processes[1].kill()
        start = time.time()
        (code, err), _ = finish(processes, timeout=60)
    finally:
        for p in processes:
            if p.poll() is None:
                p.kill()
    assert code == 1 and time.time() - start < 40
    lines = [line for line in err.splitlines() if line.startswith("Error:")]
    assert len(lines) == 1 and "process 0 of 2" in lines[0] and "lost the others" in lines[0], err
    assert "Traceback" not in err, err


# --- Leaving the group ---------------------------------------------------------------------------

def worker_leave(out: Path, mode: str):
    """Rank 1 leaves at once; rank 0 comes later. `normal`: rank 1 leaves as after a finished run,
    rank 0 looks for a while whether rank 1 got out before it came, then leaves. `error`: rank 1
    leaves on its way out of an error; rank 0 comes only once rank 1 is out (a peer that hung)."""
    from breakout_ppo.distributed import ProcessGroupError, join, leave

    ranks = join("cpu")
    assert ranks.owns_group and ranks.max(ranks.rank) == 1  # both in the group, past one collective
    torch.optim.Adam(torch.nn.Linear(1, 1).parameters())  # as training does: torch._dynamo imported after join
    left = out / "rank1-left"
    if ranks.rank == 1:
        if mode == "normal":
            try:
                pass
            finally:
                leave(ranks)
            (out / "threads1.txt").write_text(" ".join(group_threads() or []))
        else:
            with contextlib.suppress(ProcessGroupError):
                try:
                    raise ProcessGroupError("process 1 of 2 lost the others")
                finally:
                    leave(ranks)
        left.write_text("")
        return
    if mode == "normal":
        deadline = time.time() + 3
        while not left.exists() and time.time() < deadline:
            time.sleep(0.05)
        (out / "rank1-out-before-rank0-came").write_text(str(left.exists()))
        leave(ranks)
        (out / "threads0.txt").write_text(" ".join(group_threads() or []))
    else:
        while not left.exists():  # forever, but for the test's timeout: rank 1 must not wait for rank 0
            time.sleep(0.05)
        with contextlib.suppress(ProcessGroupError):
            try:
                raise ProcessGroupError("process 0 of 2 lost the others")
            finally:
                leave(ranks)


def test_on_the_normal_way_out_no_rank_tears_the_group_down_before_the_others_come(tmp_path):
    results = finish(start_ranks([__file__, "leave-normal", tmp_path]))
    assert all(code == 0 for code, _ in results), results
    assert (tmp_path / "rank1-left").exists()
    assert (tmp_path / "rank1-out-before-rank0-came").read_text() == "False"
    # Left means gone: no thread of the group runs on into interpreter exit (see the fixture's test).
    assert [(tmp_path / f"threads{rank}.txt").read_text() for rank in range(2)] == ["", ""]


def test_on_the_way_out_of_an_error_a_rank_leaves_without_waiting_for_the_others(tmp_path):
    # A barrier here would wait for rank 0 for the whole timeout, far past the test's: it must not be there.
    results = finish(start_ranks([__file__, "leave-error", tmp_path], BREAKOUT_PPO_DIST_TIMEOUT="600"))
    assert all(code == 0 for code, _ in results), results
    assert (tmp_path / "rank1-left").exists()


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="NCCL needs one GPU per rank: two CUDA GPUs")
def test_torchrun_on_two_gpus_trains_with_nccl(tmp_path):
    done = torchrun(["train", "--preset", "smoke", "--logdir", tmp_path, "--run-name", "run", "--device", "cuda"],
                    cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    from breakout_ppo.checkpoint import load_checkpoint

    payload = load_checkpoint(tmp_path / "run" / "checkpoint.pt", resumable=True)
    assert payload["world_size"] == 2 and payload["global_step"] == 1024


if __name__ == "__main__" and sys.argv[1] in ("leave-normal", "leave-error"):  # one rank of a leaving test
    torch.set_num_threads(1)
    worker_leave(Path(sys.argv[2]), sys.argv[1].removeprefix("leave-"))
elif __name__ == "__main__":  # one rank of the `two_ranks` fixture
    out = Path(sys.argv[1])
    torch.set_num_threads(1)
    (out / "update").mkdir(exist_ok=True)
    worker_update(out / "update")
    recording_train(out, out / "run", num_envs=8, rank=int(os.environ["RANK"]))  # in the group the update joined
    from breakout_ppo.config import preset
    from breakout_ppo.distributed import Ranks

    rank = int(os.environ["RANK"])  # as if each machine's command line had another --seed:
    (out / f"flags{rank}.txt").write_text(Ranks(rank, 2).first_error(None, preset("smoke", seed=rank)) or "")
    # Both ranks out of every collective before either tears the group down.
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()
    # What is left of the group: nothing, once `join` keeps torch.distributed.nn.functional from
    # holding it (its threads used to run on into interpreter exit and abort it now and then).
    threads = group_threads()
    (out / f"threads{rank}.txt").write_text("?" if threads is None else " ".join(threads))
