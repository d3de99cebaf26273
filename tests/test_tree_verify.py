"""Token trees and their verification at the rule level: the tree's books (tree.py), the greedy rule, and recursive
rejection sampling (Jeon et al. 2024) proven exact by G-tests with power checks over many batched rounds whose
target distributions are known exactly (toy tables by prefix, V = 4): trees sampled without replacement,
deterministic branches (copies: q one-hot), copies mixed with sampled siblings, processors' masks (top-k tables with
zeros), and per-row trees padded to one node budget."""

from __future__ import annotations

import pytest
import torch
from scipy.stats import power_divergence

from speculoos_hf.trees.tree import TokenTree, TreeShape
from speculoos_hf.trees.tree_verify import _verdict, tree_greedy_verify, tree_sample_verify
from speculoos_hf.loop.verify import greedy_verify, sample_from_weights, speculative_verify

V = 4
F64 = torch.float64


# ------------------------------------------------------------------------------------------------ the tree's books


def test_shape_from_branching_and_books():
    shape = TreeShape.from_branching((2, 2, 1))
    assert shape.parents == (-1, -1, 0, 0, 1, 1, 2, 3, 4, 5)
    assert shape.ranks == (0, 1, 0, 1, 0, 1, 0, 0, 0, 0)
    assert shape.depths == (1, 1, 2, 2, 2, 2, 3, 3, 3, 3) and shape.depth == 3
    tokens = torch.arange(10)[None]
    valid = torch.ones(1, 10, dtype=torch.bool)
    valid[0, 1] = False  # node 1 is padding: so are its children 4, 5 and grandchildren 8, 9
    tree = TokenTree.from_shape(shape, tokens, valid)
    assert tree.valid[0].tolist() == [1, 0, 1, 1, 0, 0, 1, 1, 0, 0]
    assert tree.depth[0].tolist() == [1, 1, 2, 2, 2, 2, 3, 3, 3, 3]
    # pass indices: root 0, node n at n + 1; node 6's path is root, 0, 2, 6
    assert tree.ancestors[0, 7].nonzero().flatten().tolist() == [0, 1, 3, 7]
    assert tree.children[0, 0].tolist() == [1, 0] and tree.children[0, 1].tolist() == [3, 4]
    assert tree.children[0, 2].tolist() == [0, 0]  # padding has no children
    assert tree.path_tokens()[0, 7].tolist() == [0, 2, 6]
    seen = tree.attention()[0]
    assert seen[7].nonzero().flatten().tolist() == [0, 1, 3, 7]
    assert seen[:, 2].nonzero().flatten().tolist() == [2]  # padding node 1 (pass index 2): seen by itself alone
    with pytest.raises(ValueError):
        TreeShape((-1, 1), (0, 0))  # a parent after its child


def test_greedy_rule_deepest_matching_path():
    shape = TreeShape.from_branching((2, 2))  # nodes 0,1 at depth 1; 2,3 under 0; 4,5 under 1
    tokens = torch.tensor([[5, 6, 1, 2, 3, 4], [5, 6, 1, 2, 3, 4], [5, 6, 1, 2, 3, 4]])
    tree = TokenTree.from_shape(shape, tokens, torch.ones(3, 6, dtype=torch.bool))
    # target argmax by pass index: root, node0..node5
    target = torch.tensor([[6, 0, 4, 9, 9, 9, 9],  # root -> 6 (node 1), node 1 -> 4 (node 5), then 9
                           [5, 2, 0, 7, 7, 7, 7],  # root -> 5 (node 0), node 0 -> 2 (node 3), then 7
                           [8, 0, 0, 0, 0, 0, 0]])  # nothing matches: the target's 8
    v = tree_greedy_verify(tree, target)
    assert v.accepted.tolist() == [2, 2, 0]
    assert v.path.tolist() == [[1, 5], [0, 3], [-1, -1]]
    assert v.candidates[:2].tolist() == [[6, 4, 9], [5, 2, 7]] and int(v.candidates[2, 0]) == 8


def test_chain_tree_equals_the_chain_rules():
    """A chain as a tree: the same verdicts as greedy_verify and speculative_verify with the same randomness."""
    g = torch.Generator().manual_seed(0)
    B, K, Vb = 256, 4, 6
    q = torch.softmax(2 * torch.randn(B, K, Vb, generator=g), -1)
    p = torch.softmax(2 * torch.randn(B, K + 1, Vb, generator=g), -1)
    drafts = torch.multinomial(q.reshape(-1, Vb), 1, generator=g).view(B, K)
    u, e = torch.rand(B, K, generator=g), torch.empty(B, Vb).exponential_(generator=g)
    tree = TokenTree.from_shape(TreeShape.chain(K), drafts, torch.ones(B, K, dtype=torch.bool), q)
    n, nxt = speculative_verify(drafts, q, p, u, e)
    v = tree_sample_verify(tree, p, u, e)
    assert torch.equal(v.accepted, n) and torch.equal(v.candidates.gather(1, n[:, None]).squeeze(1), nxt)
    assert torch.equal(v.path, torch.where(torch.arange(K) < n[:, None], torch.arange(K), -1))
    copies = TokenTree.from_shape(TreeShape.chain(K), drafts, torch.ones(B, K, dtype=torch.bool))  # q one-hot
    n_d, nxt_d = speculative_verify(drafts, None, p, u, e)
    v_d = tree_sample_verify(copies, p, u, e)
    assert torch.equal(v_d.accepted, n_d) and torch.equal(v_d.candidates.gather(1, n_d[:, None]).squeeze(1), nxt_d)
    target = p.argmax(-1)
    n_g, nxt_g = greedy_verify(drafts, target)
    v_g = tree_greedy_verify(tree, target)
    assert torch.equal(v_g.accepted, n_g) and torch.equal(v_g.candidates.gather(1, n_g[:, None]).squeeze(1), nxt_g)


# ------------------------------------------------------------------------------ toy models with exact distributions


def _index(prefix: torch.Tensor) -> torch.Tensor:
    """[R, l] -> [R] each prefix as a base-V number."""
    idx = torch.zeros(prefix.shape[0], dtype=torch.long)
    for j in range(prefix.shape[1]):
        idx = idx * V + prefix[:, j]
    return idx


def _tables(levels: int, seed: int, scale: float, top_k: int | None = None) -> list[torch.Tensor]:
    """table[l][index(prefix)]: the next-token distribution after l tokens; with top_k, zeros outside each row's
    top_k (a processor's mask)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for level in range(levels):
        t = torch.softmax(scale * torch.randn(V**level, V, generator=g, dtype=F64), -1)
        if top_k is not None:
            kth = t.topk(top_k, dim=-1).values[:, -1:]
            t = torch.where(t >= kth, t, 0.0)
            t = t / t.sum(-1, keepdim=True)
        out.append(t)
    return out


def _at(tables, prefix: torch.Tensor) -> torch.Tensor:
    """[R, V] the distributions after the prefixes [R, l]."""
    return tables[prefix.shape[1]][_index(prefix)]


def _draft_tree(shape: TreeShape, draft, R: int, g, copy=None, pad_share: float = 0.0) -> TokenTree:
    """R rows of trees of `shape`: each node's token drawn from the draft table at its parent's path, without
    replacement among its earlier siblings (q_i: the table with those tokens removed). `copy` (a table): every
    rank-0 node is a deterministic copy instead (its argmax, q one-hot), the later siblings drawn excluding it;
    `copy="all"`: every node deterministic (the rank-r node is the draft's r-th likeliest token, probs None).
    pad_share: each node is padding with this chance (trees differ per row)."""
    N = shape.size
    tokens = torch.zeros(R, N, dtype=torch.long)
    probs = torch.zeros(R, N, V, dtype=F64)
    valid = torch.ones(R, N, dtype=torch.bool)
    path = {-1: torch.zeros(R, 0, dtype=torch.long)}
    removed: dict[int, torch.Tensor] = {}
    for n, (parent, rank) in enumerate(zip(shape.parents, shape.ranks)):
        q = _at(draft, path[parent])  # [R, V]
        taken = removed.setdefault(parent, torch.zeros(R, V, dtype=torch.bool))
        if copy == "all":
            token = q.topk(rank + 1, dim=-1).indices[:, rank]
            q_n = torch.nn.functional.one_hot(token, V).to(F64)
        elif copy is not None and rank == 0:
            token = _at(copy, path[parent]).argmax(-1)
            q_n = torch.nn.functional.one_hot(token, V).to(F64)
        else:  # past the end of q's support: q_n = 0 and any token (a candidate that does not exist)
            left = torch.where(taken, 0.0, q)
            mass = left.sum(-1, keepdim=True)
            q_n = left / mass.clamp(min=1e-300)
            token = torch.multinomial(torch.where(mass > 1e-12, q_n, 1.0), 1, generator=g).squeeze(1)
        removed[parent] = taken | torch.nn.functional.one_hot(token, V).bool()
        tokens[:, n], probs[:, n] = token, q_n
        path[n] = torch.cat([path[parent], token[:, None]], 1)
    if pad_share:
        valid &= torch.rand(R, N, generator=g) >= pad_share
    return TokenTree.from_shape(shape, tokens, valid, None if copy == "all" else probs)


def _target_at_nodes(tree: TokenTree, target) -> torch.Tensor:
    """[R, N + 1, V] the target's distribution after each pass index's path."""
    paths, depth = tree.path_tokens(), tree.pass_depth()
    out = torch.empty(tree.batch_size, tree.size + 1, V, dtype=F64)
    for i in range(tree.size + 1):
        for d in depth[:, i].unique().tolist():
            rows = depth[:, i] == d
            out[rows, i] = _at(target, paths[rows, i, :d])
    return out


def _round_then_target(tree: TokenTree, target, L: int, g, verify=tree_sample_verify) -> torch.Tensor:
    """One verified round per row, then target sampling up to L tokens: [R, L] sequences."""
    R = tree.batch_size
    p = _target_at_nodes(tree, target)
    u = torch.rand(R, tree.size, generator=g, dtype=F64)
    e = torch.empty(R, V, dtype=F64).exponential_(generator=g)
    verdict = verify(tree, p, u, e)
    seq = torch.zeros(R, L, dtype=torch.long)
    width = min(L, verdict.candidates.shape[1])
    seq[:, :width] = verdict.candidates[:, :width]
    for j in range(L):
        fresh = torch.multinomial(_at(target, seq[:, :j]), 1, generator=g).squeeze(1)
        seq[:, j] = torch.where(j > verdict.accepted, fresh, seq[:, j])
    return seq


def _target_joint(target, L: int) -> torch.Tensor:
    """P(sequence) under the target for all V^L sequences, in base-V order."""
    S = torch.cartesian_prod(*[torch.arange(V)] * L) if L > 1 else torch.arange(V)[:, None]
    prob = torch.ones(S.shape[0], dtype=F64)
    for j in range(L):
        prob = prob * _at(target, S[:, :j]).gather(1, S[:, j : j + 1]).squeeze(1)
    return prob


def _p_value(seq: torch.Tensor, target) -> float:
    exact = _target_joint(target, seq.shape[1])
    counts = torch.bincount(_index(seq), minlength=exact.numel()).double()
    if (counts[exact == 0] > 0).any():
        return 0.0
    keep = exact > 0
    expected = exact[keep] * counts.sum() / exact[keep].sum()
    return float(power_divergence(counts[keep].numpy(), expected.numpy(), lambda_="log-likelihood").pvalue)


# ------------------------------------------------------------------------------------------------ broken rules


def _iid_residual(tree, p, u, e):
    """Broken: each sibling checked against the target itself, not the residual left by the earlier ones."""
    B = p.shape[0]
    rows = torch.arange(B)
    current = torch.zeros(B, dtype=torch.long)
    walking = torch.ones(B, dtype=torch.bool)
    for _ in range(tree.max_depth):
        moved = torch.zeros(B, dtype=torch.bool)
        for r in range(tree.children.shape[-1]):
            child = tree.children[rows, current, r]
            node = (child - 1).clamp(min=0)
            tok = tree.tokens[rows, node]
            q_tok = 1.0 if tree.probs is None else tree.probs[rows, node, tok]
            ok = walking & ~moved & (child > 0) & (u[rows, node] * q_tok < p[rows, current, tok])
            current, moved = torch.where(ok, child, current), moved | ok
        walking &= moved
    return _verdict(tree, current, sample_from_weights(p[rows, current], e))


def _lying_q(tree, p, u, e):
    """Broken: siblings sampled without replacement verified as if each were drawn from the draft's whole q
    (SpecInfer's i.i.d. rule applied to the wrong q)."""
    probs = tree.probs.clone()
    rank0 = torch.zeros_like(probs)
    for n in range(tree.size):
        parent = tree.parents[:, n]
        first = (tree.parents == parent[:, None]).float().argmax(1)  # each node's first sibling: its q is the whole q
        rank0[:, n] = probs[torch.arange(tree.batch_size), first]
    return tree_sample_verify(TokenTree(tree.tokens, tree.parents, tree.valid, rank0), p, u, e)


def _first_path(tree, p, u, e):
    """Broken: the rank-0 path always accepted, the next token from the target there."""
    B = p.shape[0]
    rows, current = torch.arange(B), torch.zeros(B, dtype=torch.long)
    for _ in range(tree.max_depth):
        child = tree.children[rows, current, 0]
        current = torch.where(child > 0, child, current)
    return _verdict(tree, current, sample_from_weights(p[rows, current], e))


# ------------------------------------------------------------------------------------------------ G-tests

R = 30_000  # rounds per case: p < 1e-90 for every broken rule, so the power margin is wide
ALPHA = 1e-3
CASES = {  # (branching, draft/target top-k mask, copies, padding share)
    "sampled_w/o_replacement": ((3, 2, 1), None, None, 0.0),
    "copies_one_hot": ((3, 2, 1), None, "all", 0.0),
    "copy_then_samples": ((3, 2, 1), None, "copy", 0.0),
    "top_k_masks": ((3, 2, 1), 2, None, 0.0),
    "per_row_padded_trees": ((3, 2, 1), None, "copy", 0.3),
}


@pytest.mark.parametrize("name", list(CASES))
def test_recursive_rejection_sampling_is_exact(name):
    """R batched rounds of the rule itself, continued by the target to L = depth + 1 tokens: a G-test against the
    target's exact joint over V^L sequences; broken rules on the same trees must be rejected."""
    branching, top_k, copy, pad = CASES[name]
    shape = TreeShape.from_branching(branching)
    L = shape.depth + 1
    target = _tables(L + 1, seed=1, scale=1.5, top_k=top_k)
    draft = _tables(L, seed=2, scale=1.5, top_k=top_k)
    copy_table = _tables(L, seed=3, scale=1.5) if copy == "copy" else copy
    g = torch.Generator().manual_seed(4)
    tree = _draft_tree(shape, draft, R, g, copy=copy_table, pad_share=pad)
    if top_k is not None:  # the masks left fewer candidates than the branching: nodes with q_i(c) = 0
        assert (tree.probs.gather(2, tree.tokens[..., None]) == 0).any()
    seq = _round_then_target(tree, target, L, g)
    p = _p_value(seq, target)
    assert p > ALPHA, f"{name}: tree verification deviates from the target (p={p:.2e})"
    brokens = [_first_path, _iid_residual] + ([_lying_q] if copy is None else [])  # _lying_q needs sampled q
    for broken in brokens:
        p_broken = _p_value(_round_then_target(tree, target, L, g, verify=broken), target)
        assert p_broken < ALPHA, f"{name}: the test cannot detect {broken.__name__} (p={p_broken:.2e})"


def test_tree_accepts_more_than_its_first_path():
    """The runner-up candidates pay: more accepted tokens per round than the rank-0 chain with the same drafts."""
    shape = TreeShape.from_branching((3, 2, 1))
    target, draft = _tables(5, 1, 1.5), _tables(4, 2, 1.5)
    g = torch.Generator().manual_seed(5)
    tree = _draft_tree(shape, draft, 20_000, g)
    p = _target_at_nodes(tree, target)
    u, e = torch.rand(20_000, shape.size, generator=g, dtype=F64), torch.empty(20_000, V, dtype=F64).exponential_()
    chain_valid = tree.valid & torch.tensor([r == 0 for r in shape.ranks])
    chain = TokenTree(tree.tokens, tree.parents, chain_valid, tree.probs)
    tree_n = tree_sample_verify(tree, p, u, e).accepted.double().mean()
    chain_n = tree_sample_verify(chain, p, u, e).accepted.double().mean()
    assert tree_n > chain_n + 0.1, (tree_n, chain_n)
