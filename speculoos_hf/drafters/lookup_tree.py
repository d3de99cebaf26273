"""Token trees from prompt lookup and the suffix cache: the most frequent few continuations of each row's matched
suffix as branches (SuffixDecoding, Oliaro et al. 2025, verifies such trees). The occurrences of the match are
merged into a trie: a node is a continuation prefix, counted by the occurrences that follow it; a node is kept
while its share of the occurrences is at least the lookup's threshold, each node keeps its `branches` most frequent
children (ties: the most recent), and each row keeps its `budget` most frequent nodes. The first child of every node
is the continuation the chain's copy follows, so a tree's first path is the chain's copy. Every node is
deterministic (a function of the committed tokens): verified with a one-hot q, exact whatever it copies.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..loop.state import DecodeState
from ..trees.tree import TokenTree, TreePlan
from .base import RoundOutcome
from .prompt_lookup import PromptLookupDrafter
from .suffix_match import PRIOR_TOKENS, Continuations, Copies, MatchRule, chain_copies, matched_continuations


@dataclass(frozen=True)
class CopyTrees:
    """Each row's trie of copies, padded to one node budget: node n of row b is `tokens[b, n]` below
    `parents[b, n]` (-1: the root), real where `valid[b, n]`; `confidence[b, n]`: the estimated chance that the
    path to it is right (its share of the occurrences, discounted for a short match as `acceptance_estimate`)."""

    tokens: np.ndarray  # [B, N] int64
    parents: np.ndarray  # [B, N] int64
    valid: np.ndarray  # [B, N] bool
    confidence: np.ndarray  # [B, N] float32


@dataclass
class _Nodes:
    """The trie's nodes as they are found, level by level (numpy columns)."""

    row: list
    parent: list
    token: list
    count: list
    recency: list
    depth: list

    def add(self, **columns) -> None:
        for name, values in columns.items():
            getattr(self, name).append(values)

    def arrays(self) -> dict:
        return {name: np.concatenate(getattr(self, name)) if getattr(self, name) else np.zeros(0, dtype=np.int64)
                for name in ("row", "parent", "token", "count", "recency", "depth")}


def continuation_trees(c: Continuations, B: int, threshold: float, budget: int, branches: int) -> CopyTrees:
    """The tries of `c`'s continuations (module docstring): at most `budget` nodes per row, `branches` per node."""
    nodes = _trie(c, B, threshold, branches)
    order = np.lexsort((nodes["depth"], -nodes["recency"], -nodes["count"], nodes["row"]))  # parents first
    row = nodes["row"][order]
    starts = np.searchsorted(row, np.arange(B))
    pos = np.arange(len(order)) - starts[row]  # [n] the node's index in its row's tree
    keep = pos < budget
    where = np.full(len(order), -1)
    where[order] = pos  # trie id -> index in its row
    N = int(min(budget, np.bincount(row, minlength=B).max(initial=0)))
    out = CopyTrees(np.zeros((B, N), np.int64), np.full((B, N), -1, np.int64), np.zeros((B, N), bool),
                    np.zeros((B, N), np.float32))
    at = (row[keep], pos[keep])
    parent = nodes["parent"][order][keep]
    out.tokens[at], out.valid[at] = nodes["token"][order][keep], True
    out.parents[at] = np.where(parent >= 0, where[np.maximum(parent, 0)], -1)
    denom = np.maximum(np.bincount(c.row, minlength=B), 1)
    depth, m = nodes["depth"][order][keep], c.match[row[keep]]
    steps = m[:, None] + np.arange(int(depth.max(initial=1)))[None, :]  # [n, D] match length before each token
    goes_on = np.cumprod(steps / (steps + PRIOR_TOKENS), axis=1)[np.arange(len(m)), depth - 1]
    out.confidence[at] = nodes["count"][order][keep] / denom[row[keep]] * goes_on
    return out


def _trie(c: Continuations, B: int, threshold: float, branches: int) -> dict:
    """The trie's nodes (ids in order of discovery): per level, the occurrences still following a kept node
    grouped by (node, next token); a group is kept while its share >= threshold and it ranks < `branches` among
    its siblings (by count, then recency)."""
    M, W = c.tokens.shape
    denom = np.bincount(c.row, minlength=B)
    node = np.full(M, -1)  # each occurrence's node so far (-1: the root)
    alive = np.ones(M, dtype=bool)
    found, next_id = _Nodes([], [], [], [], [], []), 0
    for j in range(W):
        idx = np.flatnonzero(alive & (c.tokens[:, j] >= 0) & (c.caps[c.row] > j))
        alive[:] = False
        if not len(idx):
            break
        parent = np.where(node[idx] >= 0, node[idx], -(c.row[idx] + 1))  # the root differs per row
        key, inverse, count = np.unique(np.stack([parent, c.tokens[idx, j]]), axis=1, return_inverse=True,
                                        return_counts=True)
        inverse = inverse.reshape(-1)
        recency = np.full(len(count), -1)
        np.maximum.at(recency, inverse, c.rank[idx])
        row = np.zeros(len(count), dtype=np.int64)
        row[inverse] = c.row[idx]
        keep = (count / denom[row] >= threshold) & (_sibling_rank(key[0], count, recency) < branches)
        ids = np.where(keep, next_id + np.cumsum(keep) - 1, -1)
        node[idx], alive[idx] = ids[inverse], keep[inverse]
        found.add(row=row[keep], parent=np.maximum(key[0][keep], -1), token=key[1][keep], count=count[keep],
                  recency=recency[keep], depth=np.full(int(keep.sum()), j + 1))
        next_id += int(keep.sum())
    return found.arrays()


def _sibling_rank(parent: np.ndarray, count: np.ndarray, recency: np.ndarray) -> np.ndarray:
    """Each group's rank among the groups with the same parent: by count, then recency (both descending)."""
    order = np.lexsort((-recency, -count, parent))
    first = np.searchsorted(parent[order], parent[order])
    rank = np.empty(len(order), dtype=np.int64)
    rank[order] = np.arange(len(order)) - first
    return rank


def with_first_branch(c: Continuations, rows: np.ndarray, copies: Copies) -> Continuations:
    """`c` with each row in `rows` [B] bool also continued by its copy in `copies`, counted as many times as its
    other occurrences (at least once) and as the most recent: the trie's first path."""
    at = np.flatnonzero(rows)
    if not len(at):
        return c
    times = np.maximum(np.bincount(c.row, minlength=len(rows))[at], 1)  # [A]
    row = np.repeat(at, times)  # [R]
    W = max(c.tokens.shape[1], copies.tokens.shape[1])
    j = np.arange(W)[None, :]
    padded = np.full((len(rows), W), -1, dtype=np.int64)
    padded[:, : copies.tokens.shape[1]] = np.where(j[:, : copies.tokens.shape[1]] < copies.counts[:, None],
                                                   copies.tokens, -1)
    old = np.full((len(c.row), W), -1, dtype=np.int64)
    old[:, : c.tokens.shape[1]] = c.tokens
    top = int(c.rank.max(initial=0)) + 1
    return Continuations(np.concatenate([old, padded[row]]), np.concatenate([c.row, row]),
                         np.concatenate([c.rank, np.full(len(row), top)]), np.maximum(c.caps, copies.counts),
                         np.where(rows, np.maximum(c.match, copies.match), c.match),
                         None if c.src is None else np.concatenate([c.src, copies.origin_src[row]]),
                         None if c.col is None else np.concatenate([c.col, copies.origin[row] - 1]))


class TreeLookupDrafter(PromptLookupDrafter):
    """A `PromptLookupDrafter` that also offers its continuations as trees (`propose_tree`); chains as ever."""

    def tree_reason(self) -> str | None:
        return None

    def propose_tree(self, state: DecodeState, plan: TreePlan) -> TokenTree:
        """Each row's trie of up to `plan.copy_nodes` copied tokens, `plan.copy_depth` deep at most; a row whose copy
        resumes from its anchor (copy_anchor.py) has that copy as its first path."""
        self._ingest(state)
        rule = MatchRule(self.max_ngram_size, self.min_ngram_size, self.threshold, self.multiple)
        own, sources = self._sources(state)
        depth = min(plan.copy_depth, self.num_tokens)
        found = matched_continuations(own, sources, rule, depth)
        if self.anchored:  # the chain's copy tells where it comes from: the anchors' books need it
            steered, used = self._steered(own, chain_copies(found, rule.threshold), depth)
            found = with_first_branch(found, used, steered)
        trees = continuation_trees(found, state.batch_size, self.threshold, plan.copy_nodes, plan.branches)
        return TokenTree(torch.from_numpy(trees.tokens).to(state.seq.device), torch.from_numpy(trees.parents),
                         torch.from_numpy(trees.valid), confidence=torch.from_numpy(trees.confidence))

    def commit_tree(self, state: DecodeState, outcome: RoundOutcome, path: torch.Tensor) -> None:
        """The index grows with the committed tokens, whichever path they came from."""
        self.commit(state, outcome)
