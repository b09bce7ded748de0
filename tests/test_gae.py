"""GAE(lambda) against hand computation and against a plain per-env loop written from the paper."""

import torch

from breakout_ppo.ppo import Rollout, compute_gae


def make_rollout(rewards, values, terminated, truncated, truncation_values, last_value):
    T, N = len(rewards), len(rewards[0])
    as_f = lambda x: torch.tensor(x, dtype=torch.float32)  # noqa: E731
    return Rollout(
        obs=torch.zeros(T, N, 4, 10, 10),
        actions=torch.zeros(T, N, dtype=torch.int64),
        logprobs=torch.zeros(T, N),
        values=as_f(values),
        rewards=as_f(rewards),
        terminated=torch.tensor(terminated),
        truncated=torch.tensor(truncated),
        truncation_values=as_f(truncation_values),
        last_value=as_f(last_value),
    )


def test_termination_and_truncation_by_hand():
    # One env, 4 steps: the episode is lost at t=1, a new one is cut off by the cap at t=2,
    # a third runs past the end of the rollout.
    g, lam = 0.9, 0.5
    r = [1.0, 2.0, 3.0, 4.0]
    v = [0.5, 0.6, 0.7, 0.8]
    term = [False, True, False, False]
    trunc = [False, False, True, False]
    v_final_at_cut = 10.0  # V of the frame the cap cut off at t=2
    last = 0.3  # V of the frame after t=3

    rollout = make_rollout([[x] for x in r], [[x] for x in v], [[x] for x in term], [[x] for x in trunc],
                           [[0.0], [0.0], [v_final_at_cut], [0.0]], [last])
    adv, ret = compute_gae(rollout, g, lam)

    d3 = 4.0 + g * last - 0.8  # bootstrap from the value after the rollout
    d2 = 3.0 + g * v_final_at_cut - 0.7  # truncated: bootstrap from V(final frame), not from v[3]
    d1 = 2.0 + g * 0.0 - 0.6  # terminated: the future is worth nothing
    d0 = 1.0 + g * 0.6 - 0.5
    a3 = d3
    a2 = d2  # the trace stops at the truncation: t=3 is another episode
    a1 = d1  # and at the termination
    a0 = d0 + g * lam * a1
    expected = torch.tensor([a0, a1, a2, a3])
    torch.testing.assert_close(adv[:, 0], expected)
    torch.testing.assert_close(ret[:, 0], expected + torch.tensor(v))


def reference_gae(r, v, term, trunc, v_trunc, last, gamma, lam):
    """Per env, per step, straight from the definition: A_t = sum_k (gamma*lam)^k delta_{t+k},
    summed only while the episode lasts."""
    T, N = r.shape
    adv = torch.zeros(T, N)
    for n in range(N):
        deltas = []
        for t in range(T):
            if term[t, n]:
                future = 0.0
            elif trunc[t, n]:
                future = float(v_trunc[t, n])
            elif t + 1 < T:
                future = float(v[t + 1, n])
            else:
                future = float(last[n])
            deltas.append(float(r[t, n]) + gamma * future - float(v[t, n]))
        for t in range(T):
            total, weight = 0.0, 1.0
            for k in range(t, T):
                total += weight * deltas[k]
                if term[k, n] or trunc[k, n]:
                    break
                weight *= gamma * lam
            adv[t, n] = total
    return adv


def test_matches_definition_on_random_rollouts():
    gen = torch.Generator().manual_seed(0)
    T, N = 17, 6
    r = torch.randint(0, 2, (T, N), generator=gen).float()
    v = torch.randn(T, N, generator=gen)
    ended = torch.rand(T, N, generator=gen)
    term = ended < 0.1
    trunc = (ended >= 0.1) & (ended < 0.18)
    v_trunc = torch.where(trunc, torch.randn(T, N, generator=gen), 0.0)
    last = torch.randn(N, generator=gen)
    assert term.any() and trunc.any()
    rollout = Rollout(torch.zeros(T, N, 4, 10, 10), torch.zeros(T, N, dtype=torch.int64), torch.zeros(T, N),
                      v, r, term, trunc, v_trunc, last)
    adv, ret = compute_gae(rollout, 0.97, 0.9)
    torch.testing.assert_close(adv, reference_gae(r, v, term, trunc, v_trunc, last, 0.97, 0.9))
    torch.testing.assert_close(ret, adv + v)
