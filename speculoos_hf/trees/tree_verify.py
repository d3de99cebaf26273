"""Exact acceptance over a token tree (tree.py): which root path a row keeps, and the target's token after it.

Greedy: the deepest node whose every ancestor (itself included) is the target's argmax after its parent; the
next token is the target's argmax at that node. With a chain this is the longest matching prefix.

Sampling: recursive rejection sampling (Jeon et al. 2024, "Recursive Speculative Decoding: Accelerating LLM
Inference via Sampling Without Replacement"), the multi-candidate rule that also underlies SpecInfer's multi-step
speculative sampling (Miao et al. 2024). At the current node (first the root) with target distribution p, the
children c_1, c_2, ... are tried in candidate order; child c_i was drawn from q_i given the earlier candidates (the
draft's q with the earlier siblings' tokens removed when sampled without replacement; one-hot for a deterministic
branch such as a copy). Candidate c_i is accepted with probability min(1, p_i(c_i) / q_i(c_i)), where p_1 = p; on
rejection p_{i+1} = norm(max(0, p_i - q_i)). An accepted child becomes the current node (its own target
distribution, a fresh p) and the walk goes on; when every child is rejected, or the node has none, the next token is
drawn from the current residual. Each step is a Leviathan/Chen accept/reject step whose target is the residual
left by the earlier candidates, so by induction the token emitted at every depth has exactly the target's
distribution given the path so far, whatever the drafts are, provided each candidate was drawn from the q_i it
reports independently of the verification's randomness. A one-hot q_i accepts c_i with probability p_i(c_i) and
removes c_i from the residual (rejection sampling without replacement over deterministic branches); with one
candidate per node this is the token-wise rule of verify.py. A candidate with q_i(c_i) = 0 does not exist (a draw
without replacement past the end of q's support, which a drafter may fill with any token): it is skipped, its
subtree unreached.

Residuals are kept unnormalised: with P = Z p_i, accepting when u Z q_i(c) < P(c) and updating P to max(0, P - Z q_i)
is the same rule without a division. Pure batched tensor code on the device; loops run over depths and sibling
ranks only (host ints from the tree's books), never over rows or the vocabulary, and there is no host sync.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .tree import TokenTree
from ..loop.verify import place_next_token, sample_from_weights


@dataclass
class TreeVerdict:
    """What verification decided for each row. Shapes [B], [B, D], [B, D + 1]."""

    accepted: torch.Tensor  # [B] nodes on the accepted path (its depth)
    path: torch.Tensor  # [B, D] the accepted path's nodes by depth, -1 beyond `accepted`
    candidates: torch.Tensor  # [B, D + 1] the path's tokens, then the target's token (the rest: any value)


def tree_greedy_verify(tree: TokenTree, target_tokens: torch.Tensor) -> TreeVerdict:
    """Greedy rule. `target_tokens` [B, N + 1]: the target's argmax at each pass index (0: the root)."""
    device = target_tokens.device
    parents, valid = tree.parents.to(device), tree.valid.to(device)  # [B, N]
    after_parent = target_tokens.gather(1, parents + 1)  # [B, N] the target's token after each node's parent
    match = valid & (tree.tokens == after_parent)  # [B, N]
    below = tree.ancestors[:, 1:, 1:].to(device)  # [B, N, N] node ancestors-or-self
    ok = ~(below & ~match[:, None, :]).any(-1)  # [B, N] the whole path to the node matches
    best = _deepest(ok, tree.depth.to(device))  # [B] pass index, 0: the root
    return _verdict(tree, best, target_tokens.gather(1, best[:, None]).squeeze(1))


def tree_sample_verify(tree: TokenTree, target_probs: torch.Tensor, uniform: torch.Tensor,
                       exp_noise: torch.Tensor) -> TreeVerdict:
    """Recursive rejection sampling (module docstring). target_probs [B, N + 1, V] (after the same processors as
    the drafts), uniform [B, N] U(0, 1), one per node; exp_noise [B, V] Exp(1) for the final draw."""
    device = target_probs.device
    B, V = target_probs.shape[0], target_probs.shape[-1]
    children = tree.children.to(device)  # [B, N+1, R]
    rows = torch.arange(B, device=device)
    current = torch.zeros(B, dtype=torch.long, device=device)  # [B] pass index of the node reached
    residual = target_probs[:, 0]  # [B, V] unnormalised
    walking = torch.ones(B, dtype=torch.bool, device=device)  # [B] every depth so far accepted a child
    for _ in range(tree.max_depth):
        moved = torch.zeros(B, dtype=torch.bool, device=device)
        for r in range(children.shape[-1]):
            child = children[rows, current, r]  # [B] the r-th candidate below the current node (0: none)
            node = (child - 1).clamp(min=0)  # [B]
            token = tree.tokens.gather(1, node[:, None]).squeeze(1)  # [B]
            q = None if tree.probs is None else tree.probs[rows, node]  # [B, V]
            q_token = 1.0 if q is None else q.gather(1, token[:, None]).squeeze(1)  # [B] q_i(c)
            live = walking & ~moved & (child > 0) & (q_token > 0)  # [B]   q_i(c) = 0: no such candidate, skipped
            total = residual.sum(-1)  # [B] Z
            p_token = residual.gather(1, token[:, None]).squeeze(1)  # [B] P(c)
            accept = live & (uniform.gather(1, node[:, None]).squeeze(1) * total * q_token < p_token)  # [B]
            reject = live & ~accept
            if q is None:  # one-hot: the candidate's token leaves the residual
                rest = residual.scatter(1, token[:, None], 0.0)
            else:
                rest = (residual - total[:, None] * q).clamp(min=0.0)  # [B, V] max(0, P - Z q_i)
            residual = torch.where(reject[:, None], rest, residual)
            fresh = target_probs[rows, child]  # [B, V] the child's own target distribution
            residual = torch.where(accept[:, None], fresh, residual)
            current = torch.where(accept, child, current)
            moved = moved | accept
        walking = walking & moved
    return _verdict(tree, current, sample_from_weights(residual, exp_noise))


def _deepest(ok: torch.Tensor, depth: torch.Tensor) -> torch.Tensor:
    """[B] pass index of the deepest node with `ok` [B, N] (ties: the first), 0 (the root) when none."""
    N = ok.shape[1]
    if N == 0:
        return torch.zeros(ok.shape[0], dtype=torch.long, device=ok.device)
    order = torch.arange(N, device=ok.device)[None, :]  # [1, N]
    score = torch.where(ok, depth * (N + 1) + (N - order), -1)  # [B, N]
    best = score.argmax(dim=1)  # [B]
    return torch.where(ok.any(1), best + 1, 0)


def _verdict(tree: TokenTree, reached: torch.Tensor, next_token: torch.Tensor) -> TreeVerdict:
    """The verdict for rows that reached pass index `reached` [B] and draw `next_token` [B] after it."""
    device = reached.device
    D = tree.max_depth
    B, N = tree.parents.shape
    on_path = tree.ancestors.to(device)[torch.arange(B, device=device), reached][:, 1:]  # [B, N] nodes on its path
    depth = tree.depth.to(device)  # [B, N]
    column = torch.where(on_path, depth - 1, D)  # [B, N]
    path = torch.full((B, D + 1), -1, dtype=torch.long, device=device)
    path.scatter_(1, column, torch.arange(N, device=device).expand(B, N).contiguous())
    path = path[:, :D]  # [B, D]
    accepted = on_path.sum(1)  # [B]
    tokens = tree.tokens.gather(1, path.clamp(min=0))  # [B, D]
    return TreeVerdict(accepted, path, place_next_token(tokens, accepted, next_token))
