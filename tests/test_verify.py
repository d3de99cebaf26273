"""The accept/reject rule in isolation: hand-checked cases, its exact acceptance probability, and torch.compile."""

from __future__ import annotations

import pytest
import torch

from speculoos_hf.loop.verify import greedy_verify, place_next_token, speculative_verify


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


# ---------------------------------------------------------------------------------------------------------------
# Block verification (Sun et al. 2024), num_proposed, deterministic proposals (draft_probs=None)
# ---------------------------------------------------------------------------------------------------------------

from itertools import product  # noqa: E402

from scipy.stats import power_divergence  # noqa: E402

from speculoos_hf.loop.verify import _residual, block_path_probs, block_verify  # noqa: E402

F64 = torch.float64


def _tables(V, K, seed, scale=1.5):
    """Context-dependent toy models: table[l][index(prefix)] is the next-token distribution after l tokens."""
    g = torch.Generator().manual_seed(seed)
    target = [torch.softmax(scale * torch.randn(V**l, V, generator=g, dtype=F64), -1) for l in range(K + 2)]
    draft = [torch.softmax(scale * torch.randn(V**l, V, generator=g, dtype=F64), -1) for l in range(K + 1)]
    return target, draft


def _index(prefix, V):  # [N, l] -> [N] base-V number of each prefix
    idx = torch.zeros(prefix.shape[0], dtype=torch.long)
    for j in range(prefix.shape[1]):
        idx = idx * V + prefix[:, j]
    return idx


def _along(tables, X, upto, V):  # distributions after X[:, :j] for j < upto -> [N, upto, V]
    return torch.stack([tables[j][_index(X[:, :j], V)] for j in range(upto)], dim=1)


def _target_joint(target, V, L):
    """All V^L sequences [V^L, L] and their exact probabilities under the target."""
    S = torch.tensor(list(product(range(V), repeat=L)))
    probs = _along(target, S, L, V).gather(-1, S[..., None]).squeeze(-1).prod(-1)  # [V^L]
    return S, probs


def _completed_distribution(S, target, X, weight_x, stop_probs, residuals, V):
    """Exact distribution over length-L sequences of one round's output (X[:tau] then y) continued by the target.

    X [N, K] draft blocks with probabilities weight_x [N]; stop_probs [N, K+1] = P(tau = i | X);
    residuals [N, K+1, V] = normalised distribution of y when tau = i."""
    L = S.shape[1]
    p_S = _along(target, S, L, V).gather(-1, S[..., None]).squeeze(-1)  # [nS, L] p(S_j | S^{j-1})
    out = torch.zeros(S.shape[0], dtype=F64)
    for i in range(X.shape[1] + 1):
        match = (S[None, :, :i] == X[:, None, :i]).all(-1)  # [N, nS]
        y_prob = residuals[:, i, :][:, S[:, i]]  # [N, nS]
        tail = p_S[:, i + 1 :].prod(-1)  # [nS]
        out += (weight_x[:, None] * stop_probs[:, i : i + 1] * match * y_prob).sum(0) * tail
    return out


def _enumerate_rule(rule, V, K, seed, deterministic=False, n=None, scale=1.5):
    """Exact distribution of one round under `rule` ("block" / "token" / a broken variant) and E[accepted]."""
    target, draft = _tables(V, K, seed, scale)
    n_eff = K if n is None else n
    g = torch.Generator().manual_seed(seed + 100)
    if deterministic:  # drafts are a fixed function of the prefix: argmax of the draft table
        X = torch.zeros(1, K, dtype=torch.long)
        for j in range(K):
            X[:, j] = draft[j][_index(X[:, :j], V)].argmax(-1)
        weight_x = torch.ones(1, dtype=F64)
    else:
        X = torch.tensor(list(product(range(V), repeat=n_eff)), dtype=torch.long).reshape(V**n_eff, n_eff)  # [V^n, n]
        X = torch.cat([X, torch.randint(V, (X.shape[0], K - n_eff), generator=g)], dim=1)  # garbage beyond n
        weight_x = torch.ones(X.shape[0], dtype=F64)  # [N] probability of the proposed part of the block
        for j in range(n_eff):
            weight_x = weight_x * draft[j][_index(X[:, :j], V)].gather(-1, X[:, j : j + 1]).squeeze(-1)
    N = X.shape[0]
    P = _along(target, X, K + 1, V)  # [N, K+1, V]
    Q = None if deterministic else _along(draft, X, K, V)  # [N, K, V]
    if Q is not None and n_eff < K:  # garbage draft distributions beyond n: must not matter
        Q = Q.clone()
        Q[:, n_eff:] = torch.softmax(torch.randn(N, K - n_eff, V, generator=g, dtype=F64), -1)
    num_proposed = None if n is None else torch.full((N,), n)

    if rule in ("block", "block_no_residual_q", "block_naive_h"):
        path, stop = block_path_probs(X, Q, P, num_proposed)  # [N, K+1], [N, K]
        if rule == "block_naive_h":  # broken: stop at i with probability p_i
            stop = torch.where(stop > 0, path[:, 1:], stop)
        later_fail = torch.cat([torch.flip(torch.cumprod(torch.flip(1 - stop, [1]), 1), [1]), torch.ones(N, 1, dtype=F64)], 1)
        stop_probs = torch.cat([later_fail[:, :1], stop * later_fail[:, 1:]], dim=1)  # [N, K+1]
        scales = [path[:, i] for i in range(K + 1)]
    else:
        q_tok = torch.ones(N, K, dtype=F64) if Q is None else Q.gather(-1, X[..., None]).squeeze(-1)
        a = torch.clamp(P[:, :K].gather(-1, X[..., None]).squeeze(-1) / q_tok, max=1.0)  # [N, K]
        a = a * (torch.arange(K)[None] < n_eff)
        reach = torch.cat([torch.ones(N, 1, dtype=F64), torch.cumprod(a, 1)], 1)  # [N, K+1]
        stop_probs = reach * torch.cat([1 - a, torch.ones(N, 1, dtype=F64)], 1)  # all accepted: bonus
        scales = [None] * (K + 1)
    residuals = []
    for i in range(K + 1):
        pos = torch.full((N,), i)
        if rule == "block_no_residual_q":  # broken: next token from p_tau, ignoring q
            w = P[:, i]
        else:
            w = _residual(P, X, Q, pos, scales[i], num_proposed)
        residuals.append(w / w.sum(-1, keepdim=True).clamp(min=1e-300))
    residuals = torch.stack(residuals, 1)  # [N, K+1, V]
    S, exact = _target_joint(target, V, K + 1)
    got = _completed_distribution(S, target, X, weight_x, stop_probs, residuals, V)
    mean_accepted = (weight_x[:, None] * stop_probs * torch.arange(K + 1)).sum().item()
    return got, exact, mean_accepted


@pytest.mark.parametrize("deterministic", [False, True])
@pytest.mark.parametrize("n", [None, 0, 1, 2])
@pytest.mark.parametrize("rule", ["block", "token"])
def test_rules_are_exact_by_enumeration(rule, n, deterministic):
    """Every draft block enumerated, the uniforms integrated out: one round's output continued by the target has
    exactly the target's joint distribution (V=3, K=3: all 81 sequences), for both rules, with num_proposed and
    deterministic proposals."""
    for seed in range(3):
        got, exact, _ = _enumerate_rule(rule, V=3, K=3, seed=seed, deterministic=deterministic, n=n)
        assert torch.allclose(got, exact, atol=1e-12), (seed, (got - exact).abs().max())


@pytest.mark.parametrize("broken", ["block_no_residual_q", "block_naive_h"])
def test_enumeration_detects_broken_block_rules(broken):
    got, exact, _ = _enumerate_rule(broken, V=3, K=3, seed=0)
    assert (got - exact).abs().sum() > 1e-2


def test_block_accepts_at_least_as_many_as_tokenwise_exactly():
    gains = []
    for seed in range(12):
        for deterministic in (False, True):
            for scale in (0.5, 1.5, 3.0):
                _, _, block = _enumerate_rule("block", 3, 3, seed, deterministic, scale=scale)
                _, _, token = _enumerate_rule("token", 3, 3, seed, deterministic, scale=scale)
                assert block >= token - 1e-12
                gains.append(block - token)
    assert max(gains) > 0.02  # and strictly more in general


def test_block_paper_example():
    """Sun et al.'s example: V={a,b}, target (1/3, 2/3), draft (2/3, 1/3), K=2: E[accepted] 10/9 token-wise,
    11/9 block-wise (exact, by enumeration of the draft block)."""
    p, q = torch.tensor([1 / 3, 2 / 3], dtype=F64), torch.tensor([2 / 3, 1 / 3], dtype=F64)
    X = torch.tensor(list(product(range(2), repeat=2)))
    wx = q[X].prod(-1)
    path, stop = block_path_probs(X, q.expand(4, 2, 2), p.expand(4, 3, 2))
    p_tau2 = stop[:, 1]
    p_tau1 = stop[:, 0] * (1 - stop[:, 1])
    assert abs((wx * (2 * p_tau2 + p_tau1)).sum().item() - 11 / 9) < 1e-12
    a = torch.clamp(p[X] / q[X], max=1)
    assert abs((wx * (a[:, 0] + a[:, 0] * a[:, 1])).sum().item() - 10 / 9) < 1e-12


def _mc_round(verify, V, K, seed, R):
    """R batched rounds of the actual tensor function with random uniforms: drafts sampled from the draft tables,
    output continued by target sampling to K+1 tokens. Returns (sequences [R, K+1], num_accepted [R], tables)."""
    target, draft = _tables(V, K, seed)
    g = torch.Generator().manual_seed(seed + 7)
    X = torch.zeros(R, K, dtype=torch.long)
    for j in range(K):
        X[:, j] = torch.multinomial(draft[j][_index(X[:, :j], V)], 1, generator=g).squeeze(1)
    P, Q = _along(target, X, K + 1, V).float(), _along(draft, X, K, V).float()
    u = torch.rand(R, K, generator=g)
    e = torch.empty(R, V).exponential_(generator=g)
    n, y = verify(X, Q, P, u, e)
    seq = torch.cat([X, torch.zeros(R, 1, dtype=torch.long)], 1).scatter(1, n[:, None], y[:, None])  # [R, K+1]
    for j in range(K + 1):  # continue after the round's output with the target
        fresh = torch.multinomial(target[j][_index(seq[:, :j], V)], 1, generator=g).squeeze(1)
        seq[:, j] = torch.where(torch.arange(R) > -1, torch.where(j > n, fresh, seq[:, j]), seq[:, j])
    return seq, n, target


def _g_test(seq, target, V):
    S, exact = _target_joint(target, V, seq.shape[1])
    counts = torch.bincount(_index(seq, V), minlength=S.shape[0]).double()
    if (counts[exact == 0] > 0).any():
        return 0.0
    expected = exact * counts.sum()
    return float(power_divergence(counts.numpy(), expected.numpy() * counts.sum().item() / expected.sum().item(), lambda_="log-likelihood").pvalue)


def _draft_only(X, Q, P, u, e):  # broken: accept every draft, bonus from p_K
    K = X.shape[1]
    return torch.full((X.shape[0],), K), torch.argmax(P[:, K] / e, -1)


def _block_without_residual(X, Q, P, u, e):  # broken: block acceptance, next token from p_tau (q ignored)
    n, _ = block_verify(X, Q, P, u, e)
    p_n = P.gather(1, n[:, None, None].expand(-1, 1, P.shape[-1])).squeeze(1)
    return n, torch.argmax(p_n / e, -1)


def test_block_verify_monte_carlo_g_test_with_power():
    """200k batched rounds of `block_verify` itself (random uniforms, exponential race): G-test against the exact
    target joint over 3^4 sequences; the same test rejects broken rules (p < 1e-10); and block verification
    accepts more tokens than token-wise on the same draws."""
    V, K, R = 3, 3, 200_000
    seq, n_block, target = _mc_round(block_verify, V, K, 0, R)
    assert _g_test(seq, target, V) > 1e-3
    seq_tok, n_tok, _ = _mc_round(speculative_verify, V, K, 0, R)
    assert _g_test(seq_tok, target, V) > 1e-3
    for broken in (_draft_only, _block_without_residual):
        seq_b, _, _ = _mc_round(broken, V, K, 0, R)
        assert _g_test(seq_b, target, V) < 1e-10
    # same drafts and uniforms: mean accepted, with a 5-sigma margin on the paired difference
    diff = (n_block - n_tok).double()
    assert diff.mean() > -5 * diff.std() / R**0.5
    assert n_block.double().mean() > n_tok.double().mean()


def _garbage_beyond(n, X, Q, seed):
    g = torch.Generator().manual_seed(seed)
    X, Q = X.clone(), Q.clone()
    for b in range(X.shape[0]):
        X[b, n[b] :] = torch.randint(Q.shape[-1], (X.shape[1] - n[b],), generator=g)
        Q[b, n[b] :] = torch.rand(X.shape[1] - n[b], Q.shape[-1], generator=g)
    return X, Q


@pytest.mark.parametrize("verify", [speculative_verify, block_verify])
@pytest.mark.parametrize("deterministic", [False, True])
def test_num_proposed_equals_truncated_rows(verify, deterministic):
    """A row proposing n < K tokens behaves exactly as the same row verified with K = n (garbage beyond n ignored)."""
    B, K, V = 24, 5, 9
    drafts, q, p, u, e = _dists(B, K, V, 5)
    n = torch.arange(B) % (K + 1)
    drafts, q = _garbage_beyond(n.tolist(), drafts, q, 6)
    qq = None if deterministic else q
    acc, nxt = verify(drafts, qq, p, u, e, num_proposed=n)
    assert ((0 <= acc) & (acc <= n)).all()
    for b in range(B):
        k = int(n[b])
        ref = verify(drafts[b : b + 1, :k], None if deterministic else q[b : b + 1, :k], p[b : b + 1, : k + 1], u[b : b + 1, :k], e[b : b + 1])
        assert (acc[b].item(), nxt[b].item()) == (ref[0].item(), ref[1].item()), b
    # num_proposed == K is the default
    full = verify(drafts, qq, p, u, e, num_proposed=torch.full((B,), K))
    assert all(torch.equal(a, b) for a, b in zip(full, verify(drafts, qq, p, u, e)))


@pytest.mark.parametrize("verify", [speculative_verify, block_verify])
def test_deterministic_path_equals_one_hot_draft_probs(verify):
    B, K, V = 64, 4, 7
    drafts, _, p, u, e = _dists(B, K, V, 8)
    p = p.double()
    one_hot = torch.nn.functional.one_hot(drafts, V).double()
    n = torch.arange(B) % (K + 1)
    for num_proposed in (None, n):
        a = verify(drafts, None, p, u, e, num_proposed=num_proposed)
        b = verify(drafts, one_hot, p, u, e, num_proposed=num_proposed)
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    # q = one-hot: accepted with probability p(d), never replaced by d itself
    acc, nxt = speculative_verify(drafts, None, p, u, e)
    first_ok = u[:, 0] < p[:, 0].gather(1, drafts[:, :1]).squeeze(1)
    assert torch.equal(acc > 0, first_ok)
    rejected = acc < K
    assert (nxt[rejected] != drafts[rejected].gather(1, acc[rejected, None]).squeeze(1)).all()


def test_block_identical_distributions_accept_everything():
    drafts, q, _, u, e = _dists(64, 4, 10, 0)
    p = torch.cat([q, q[:, :1]], dim=1)
    n, nxt = block_verify(drafts, q, p, u, e)
    assert torch.equal(n, torch.full((64,), 4))
    assert (p[torch.arange(64), 4, nxt] > 0).all()


def test_greedy_verify_num_proposed():
    drafts = torch.tensor([[1, 2, 3], [1, 2, 3]])
    target = torch.tensor([[1, 2, 3, 8], [1, 2, 3, 8]])
    n, nxt = greedy_verify(drafts, target, num_proposed=torch.tensor([3, 1]))
    assert n.tolist() == [3, 1] and nxt.tolist() == [8, 2]


def test_compiled_block_verification_matches_eager():
    """fullgraph compile (no host sync, no graph break) of block_verify, with num_proposed and draft_probs=None."""
    compiled = torch.compile(block_verify, fullgraph=True, dynamic=False)
    compiled_tok = torch.compile(speculative_verify, fullgraph=True, dynamic=False)
    drafts, q, p, u, e = _dists(8, 4, 50, 0)
    n = torch.tensor([4, 3, 0, 1, 2, 4, 4, 2])
    for fn, cfn, qq in ((block_verify, compiled, q), (block_verify, compiled, None), (speculative_verify, compiled_tok, None)):
        eager = fn(drafts, qq, p, u, e, num_proposed=n)
        comp = cfn(drafts, qq, p, u, e, num_proposed=n)
        assert torch.equal(eager[0], comp[0]) and torch.equal(eager[1], comp[1])
