"""Token trees: each row's draft tokens arranged as a tree below its last committed token (the root), so that one
target pass scores several candidate continuations at once (SpecInfer, Miao et al. 2024; Sequoia, Chen et al. 2024).

Batch-first and padded: every row holds the same node budget N; a row with fewer candidates has padding nodes
(`valid` False), which are never accepted. Nodes are in topological order (a parent before its children) and
siblings in candidate order: the verification rule (tree_verify.py) tries a node's children in index order.

Two index spaces: node n (0..N-1) and pass index n + 1, where pass index 0 is the root, the round's first token x0,
which the target pass feeds before the nodes. A node's depth is its distance from the root (the root's children
have depth 1); in the pass it sits at position (x0's position + depth), and it attends to the committed context,
its ancestors and itself (`attention`).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import torch


@dataclass(frozen=True)
class TreeShape:
    """A topology shared by every row: node n's parent (-1: the root) and its rank among its siblings (0: the first
    candidate tried). Nodes in topological order, siblings by rank. Built by `tree_planner.best_tree`."""

    parents: tuple[int, ...]
    ranks: tuple[int, ...]

    def __post_init__(self):
        if len(self.parents) != len(self.ranks):
            raise ValueError("a tree shape needs one rank per node")
        for n, (parent, rank) in enumerate(zip(self.parents, self.ranks)):
            earlier = [r for p, r in zip(self.parents[:n], self.ranks[:n]) if p == parent]
            if not -1 <= parent < n or rank != len(earlier):
                raise ValueError(f"node {n}: parents must come first and siblings in rank order, got {self}")

    @classmethod
    def chain(cls, k: int) -> "TreeShape":
        """k drafts in a line: the chain as a tree."""
        return cls(tuple(range(-1, k - 1)), (0,) * k)

    @classmethod
    def from_branching(cls, branching: tuple[int, ...]) -> "TreeShape":
        """Every node at depth d (the root: 0) gets `branching[d]` children, breadth first."""
        parents, ranks, level = [], [], [-1]
        for b in branching:
            nxt = []
            for parent in level:
                for r in range(b):
                    nxt.append(len(parents))
                    parents.append(parent)
                    ranks.append(r)
            level = nxt
        return cls(tuple(parents), tuple(ranks))

    @property
    def size(self) -> int:
        return len(self.parents)

    @cached_property
    def depths(self) -> tuple[int, ...]:
        out: list[int] = []
        for parent in self.parents:
            out.append(1 if parent < 0 else out[parent] + 1)
        return tuple(out)

    @property
    def depth(self) -> int:
        return max(self.depths, default=0)

    @cached_property
    def lineage(self) -> torch.Tensor:
        """[N, N] bool: [n, a] is True when a is n or one of its ancestors."""
        out = torch.eye(self.size, dtype=torch.bool)
        for n, parent in enumerate(self.parents):  # topological order: the parent's row is complete
            if parent >= 0:
                out[n] |= out[parent]
        return out

    def fan_out(self) -> tuple[int, ...]:
        """Children of each pass index (0: the root, n + 1: node n). [N + 1]"""
        counts = [0] * (self.size + 1)
        for parent in self.parents:
            counts[parent + 1] += 1
        return tuple(counts)

    def at_depth(self, d: int) -> list[int]:
        """The nodes at depth d, in index order."""
        return [n for n, depth in enumerate(self.depths) if depth == d]


@dataclass(frozen=True)
class TreePlan:
    """What a tree round asks a drafter for: the draft model's tree `shape` (None: no model nodes; `likeliest`: as
    many nodes per depth as it has, each row's likeliest) and up to `copy_nodes` copied tokens per row (0: none), at
    most `copy_depth` deep and `branches` per node."""

    shape: TreeShape | None = None
    copy_nodes: int = 0
    copy_depth: int = 0
    branches: int = 3
    likeliest: bool = False  # the draft model fills `shape`'s budget with its likeliest paths (likeliest_fill.py)
    top: bool = False  # sampling: the draft model's top candidates, not drawn ones (candidate_rule.py)


@dataclass
class TokenTree:
    """Draft tokens as one tree per row (see the module docstring).

    tokens:  [B, N] long on the device, the node tokens.
    parents: [B, N] long on the host, each node's parent node (-1: the root); parents[b, n] < n.
    valid:   [B, N] bool on the host; padding nodes False (a padding node's children are padding too).
    probs:   [B, N, V] on the device, q_n: the distribution node n's token was drawn from, given its parent's
             prefix and its earlier siblings (sampled without replacement: q with those siblings' tokens removed),
             or None when every node is deterministic (q one-hot: a copy, greedy drafting). A deterministic node in
             a sampled tree has a one-hot row.
    confidence: [B, N] CPU float, or None: a drafter's estimate that the path to each node is accepted (copies).
    """

    tokens: torch.Tensor
    parents: torch.Tensor
    valid: torch.Tensor
    probs: torch.Tensor | None = None
    confidence: torch.Tensor | None = None

    def __post_init__(self):
        self.parents = self.parents.cpu().long()
        valid = self.valid.cpu().bool()  # [B, N]
        # a padding node's subtree is padding: a node is valid only if it and all its ancestors are
        self.valid = ~(self.ancestors[:, 1:, 1:] & ~valid[:, None, :]).any(-1)

    @classmethod
    def from_shape(cls, shape: TreeShape, tokens: torch.Tensor, valid: torch.Tensor,
                   probs: torch.Tensor | None = None) -> "TokenTree":
        """A tree of `shape` in every row: tokens [B, N], valid [B, N] host bool, probs [B, N, V] or None."""
        B = tokens.shape[0]
        parents = torch.tensor(shape.parents, dtype=torch.long).expand(B, shape.size)
        return cls(tokens, parents, valid, probs)

    def first_nodes(self, counts: torch.Tensor) -> "TokenTree":
        """Row b keeps its first `counts[b]` nodes ([B] host; parents come first, so it stays a tree); the others
        become padding, and columns no row keeps are dropped."""
        N = int(counts.max()) if len(counts) else 0
        valid = self.valid[:, :N] & (torch.arange(N)[None, :] < counts[:, None])
        return TokenTree(self.tokens[:, :N], self.parents[:, :N], valid,
                         None if self.probs is None else self.probs[:, :N],
                         None if self.confidence is None else self.confidence[:, :N])

    @property
    def batch_size(self) -> int:
        return self.tokens.shape[0]

    @property
    def size(self) -> int:
        """N, the node budget (padding included)."""
        return self.tokens.shape[1]

    @cached_property
    def depth(self) -> torch.Tensor:
        """[B, N] host long, each node's depth (1 for the root's children; padding nodes keep theirs)."""
        return self.ancestors[:, 1:, 1:].sum(-1)

    @property
    def max_depth(self) -> int:
        """D: the deepest valid node (host int, from host books)."""
        return int((self.depth * self.valid).max()) if self.size else 0

    @cached_property
    def ancestors(self) -> torch.Tensor:
        """[B, N + 1, N + 1] host bool over pass indices: [b, i, j] is True when j is i, or an ancestor of i (the
        root, pass index 0, is an ancestor of every node)."""
        B, N = self.parents.shape
        up = torch.cat([torch.zeros(B, 1, dtype=torch.long), self.parents + 1], dim=1)  # [B, N+1] parent pass index
        out = torch.eye(N + 1, dtype=torch.bool).expand(B, N + 1, N + 1).clone()
        hop = up.clone()  # [B, N+1] each pass index's ancestor one level up (the root's: itself)
        while bool(hop.any()):  # one level per iteration (host books: no device sync)
            out.scatter_(2, hop[:, :, None], True)
            hop = up.gather(1, hop)
        out[:, :, 0] = True
        return out

    def attention(self) -> torch.Tensor:
        """[B, N + 1, N + 1] host bool: which fed tokens (root, then nodes) each fed token attends to (its
        ancestors and itself; padding nodes only themselves and the root, and no one attends to them)."""
        real = torch.cat([torch.ones(self.batch_size, 1, dtype=torch.bool), self.valid], dim=1)  # [B, N+1]
        return self.ancestors & (real[:, None, :] | torch.eye(self.size + 1, dtype=torch.bool))

    def pass_depth(self) -> torch.Tensor:
        """[B, N + 1] host long: each fed token's distance from the root (0 for the root)."""
        return torch.cat([torch.zeros(self.batch_size, 1, dtype=torch.long), self.depth], dim=1)

    @cached_property
    def children(self) -> torch.Tensor:
        """[B, N + 1, R] host long: the valid children of each pass index, as pass indices in candidate order, 0
        where there is none; R = the widest fan-out (at least 1)."""
        B, N = self.parents.shape
        earlier = torch.ones(N, N, dtype=torch.bool).tril(-1)  # [n, m]: m < n
        same = (self.parents[:, :, None] == self.parents[:, None, :]) & self.valid[:, None, :] & earlier  # [B, N, N]
        rank = same.sum(-1)  # [B, N] among valid siblings
        R = int(rank.max()) + 1 if N and bool(self.valid.any()) else 1
        out = torch.zeros(B, N + 2, R, dtype=torch.long)  # a spare row takes the padding nodes
        row = torch.where(self.valid, self.parents + 1, N + 1)  # [B, N]
        flat = row * R + rank.clamp(max=R - 1)  # [B, N]
        out.view(B, -1).scatter_(1, flat, torch.arange(1, N + 1).expand(B, N).clone())
        return out[:, : N + 1]

    def path_tokens(self) -> torch.Tensor:
        """[B, N + 1, D] on the device: for each pass index, the tokens on the path from the root to it (its
        depth-d ancestor's token at column d - 1; junk beyond its depth)."""
        B, N = self.parents.shape
        D = int(self.depth.max()) if N else 0
        anc = self.ancestors[:, :, 1:].to(self.tokens.device)  # [B, N+1, N] node ancestors-or-self
        column = torch.where(anc, (self.depth - 1).to(self.tokens.device)[:, None, :], D)  # [B, N+1, N]
        out = torch.zeros(B, N + 1, D + 1, dtype=torch.long, device=self.tokens.device)
        out.scatter_(2, column, self.tokens[:, None, :].expand(B, N + 1, N))
        return out[:, :, :D]


def node_prefixes(seq: torch.Tensor, lengths: list[int], paths: torch.Tensor,
                  depth: torch.Tensor) -> tuple[torch.Tensor, list[int]]:
    """The sequences logits processors see at m tree nodes per row: row b's committed `seq[b, :lengths[b]]`
    followed by node j's path `paths[b, j, :depth[b, j]]`. seq [B, S], paths [B, m, D] (same device), depth [B, m]
    host. Returns (sequences [B * m, S], node by node within each row, their lengths: B * m host ints)."""
    B, m, D = paths.shape
    out = seq.repeat_interleave(m, dim=0)  # [B*m, S]
    C = torch.tensor(lengths, device=seq.device)  # [B]
    columns = (C[:, None, None] + torch.arange(D, device=seq.device)).expand(B, m, D)  # [B, m, D]
    out.scatter_(1, columns.reshape(B * m, D), paths.reshape(B * m, D))  # beyond a node's depth: never read
    return out, (torch.tensor(lengths)[:, None] + depth).flatten().tolist()


def join_trees(first: TokenTree, second: TokenTree, vocab_size: int) -> TokenTree:
    """One tree per row with `first`'s nodes, then `second`'s (both below the same root; at the root, `first`'s
    children are tried first). Sampling: a side without probs is deterministic (one-hot rows)."""
    N1 = first.size
    parents = torch.cat([first.parents, torch.where(second.parents >= 0, second.parents + N1, -1)], dim=1)
    tokens = torch.cat([first.tokens, second.tokens], dim=1)  # [B, N1 + N2]
    probs = None
    if first.probs is not None or second.probs is not None:
        probs = torch.cat([_dense(first, vocab_size, second.probs), _dense(second, vocab_size, first.probs)], dim=1)
    confidence = None
    if first.confidence is not None or second.confidence is not None:
        confidence = torch.cat([t.confidence if t.confidence is not None else torch.zeros(t.parents.shape)
                                for t in (first, second)], dim=1)
    return TokenTree(tokens, parents, torch.cat([first.valid, second.valid], dim=1), probs, confidence)


def _dense(tree: TokenTree, vocab_size: int, like: torch.Tensor) -> torch.Tensor:
    """[B, N, V] the tree's q rows: its own, or one-hot rows for a deterministic tree (dtype and device of `like`)."""
    if tree.probs is not None:
        return tree.probs
    return torch.nn.functional.one_hot(tree.tokens, vocab_size).to(like.dtype)


def draft_tree_setting(value):
    """The `draft_tree` option, checked: "auto" (None too: trees where the cost model says they pay), False (chains
    only), or the draft model's tree in every round: its branching per depth, a tuple of integers >= 1, or a
    `TreeShape`."""
    if value is None or (isinstance(value, str) and value == "auto"):
        return "auto"
    if value is False or isinstance(value, TreeShape):
        return value
    if isinstance(value, (tuple, list)) and value and all(
            isinstance(b, int) and not isinstance(b, bool) and b >= 1 for b in value):
        return tuple(value)
    raise ValueError(f'draft_tree must be "auto", False, a tuple of branching factors >= 1 per depth (as (3, 2, 1, '
                     f"1)) or a TreeShape, got {value!r}.")
