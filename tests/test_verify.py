"""The accept/reject rule in isolation: hand-checked cases, its exact acceptance probability, and torch.compile."""

from __future__ import annotations

import pytest
import torch

from speculoos_hf.verify import greedy_verify, place_next_token, speculative_verify


def _dists(B, K, V, seed):
    g = torch.Generator().manual_seed(seed)
    q = torch.softmax(2 * torch.randn(B, K, V, generator=g), -1)  # [B, K, V]
    p = torch.softmax(2 * torch.randn(B, K + 1, V, generator=g), -1)  # [B, K+1, V]
    drafts = torch.multinomial(q.reshape(B * K, V), 1, generator=g).view(B, K)  # [B, K]
    u = torch.rand(B, K, generator=g)
    e = torch.empty(B, V).exponential_(generator=g)
    return drafts, q, p, u, e


def test_identical_distributions_accept_everything():
    drafts, q, _, u, e = _dists(64, 4, 10, 0)
    p = torch.cat([q, q[:, :1]], dim=1)
    n, nxt = speculative_verify(drafts, q, p, u, e)
    assert torch.equal(n, torch.full((64,), 4))
    # bonus token drawn from p_K: never a zero-probability id
    assert (p[torch.arange(64), 4, nxt] > 0).all()


def test_zero_target_probability_always_rejected_and_replacement_avoids_it():
    B, K, V = 32, 3, 6
    drafts, q, p, u, e = _dists(B, K, V, 1)
    p = p.clone()
    p[torch.arange(B), 0, drafts[:, 0]] = 0.0  # the first draft is impossible for the target
    p = p / p.sum(-1, keepdim=True)
    n, nxt = speculative_verify(drafts, q, p, u, e)
    assert (n == 0).all()
    assert (nxt != drafts[:, 0]).all()
    assert (p[torch.arange(B), 0, nxt] > q[torch.arange(B), 0, nxt]).all()  # residual support is where p > q


def test_acceptance_probability_is_min_one_p_over_q():
    """Over many uniforms, draft 1 is accepted with probability min(1, p/q) exactly (binomial tolerance)."""
    B, K, V = 1, 1, 5
    drafts, q, p, _, _ = _dists(B, K, V, 2)
    R = 40_000
    g = torch.Generator().manual_seed(3)
    u = torch.rand(R, K, generator=g)
    e = torch.empty(R, V).exponential_(generator=g)
    n, nxt = speculative_verify(drafts.expand(R, K), q.expand(R, K, V), p.expand(R, K + 1, V), u, e)
    d = drafts[0, 0]
    expected = min(1.0, (p[0, 0, d] / q[0, 0, d]).item())
    rate = n.float().mean().item()
    assert abs(rate - expected) < 4 * (expected * (1 - expected) / R) ** 0.5 + 1e-6
    # with drafts really drawn from q, the token emitted at position 0 is distributed as p_0
    sampled = torch.multinomial(q[0, 0], R, replacement=True, generator=g)[:, None]  # [R, 1]
    n, nxt = speculative_verify(sampled, q.expand(R, K, V), p.expand(R, K + 1, V), u, e)
    first = torch.where(n > 0, sampled[:, 0], nxt)
    freq = torch.bincount(first, minlength=V).float() / R
    assert torch.allclose(freq, p[0, 0], atol=4 * (0.25 / R) ** 0.5)


def test_greedy_verify_longest_matching_prefix():
    drafts = torch.tensor([[1, 2, 3], [1, 9, 3], [7, 7, 7], [4, 5, 6]])
    target = torch.tensor([[1, 2, 3, 8], [1, 2, 3, 8], [0, 7, 7, 7], [4, 5, 6, 2]])
    n, nxt = greedy_verify(drafts, target)
    assert n.tolist() == [3, 1, 0, 3]
    assert nxt.tolist() == [8, 2, 0, 2]
    # positions after the next token are filler, never kept
    assert place_next_token(drafts, n, nxt).tolist() == [[1, 2, 3, 8], [1, 2, 3, 0], [0, 7, 7, 0], [4, 5, 6, 2]]


def test_compiled_verification_matches_eager():
    """The rule is pure tensor code: it compiles as one graph (no host sync, no graph break) with equal results."""
    compiled = torch.compile(speculative_verify, fullgraph=True, dynamic=False)
    compiled_greedy = torch.compile(greedy_verify, fullgraph=True, dynamic=False)
    for seed in range(3):
        drafts, q, p, u, e = _dists(8, 4, 50, seed)
        n_eager, t_eager = speculative_verify(drafts, q, p, u, e)
        n_comp, t_comp = compiled(drafts, q, p, u, e)
        assert torch.equal(n_eager, n_comp) and torch.equal(t_eager, t_comp)
        target = p.argmax(-1)
        assert all(torch.equal(a, b) for a, b in zip(greedy_verify(drafts, target), compiled_greedy(drafts, target)))


@pytest.mark.parametrize("K", [1, 4])
def test_shapes(K):
    drafts, q, p, u, e = _dists(3, K, 7, 4)
    n, nxt = speculative_verify(drafts, q, p, u, e)
    assert n.shape == (3,) and nxt.shape == (3,) and ((0 <= n) & (n <= K)).all()
