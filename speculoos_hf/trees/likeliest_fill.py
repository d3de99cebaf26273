"""Dynamic trees (EAGLE-2, Li et al. 2024): each row's tree filled, depth by depth, with the draft's likeliest paths
instead of one fixed topology. A shape still sets the budget (`Levels`: how many nodes each depth holds, how many of
them the draft expands, how many children each may take), so the round costs what the shape's does; which nodes
they are follows the draft's own probabilities, row by row, and the chain of first candidates (what a chain would
have drafted) is always in.

Exact: a node's children are its top c candidates (a function of the prefix), or its first c drawn without
replacement, and how many it keeps is chosen from q's sorted probabilities and from tokens drawn before them, never
from the tokens drawn at those ranks; recursive rejection sampling holds for any number of children chosen so (a
stopping rule over what was drawn before). Which nodes are expanded may follow their own drawn tokens: their
children are only tried once they are accepted.

All books live on the device; the topology reaches the host once, when the tree is complete (`finish`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .tree import TokenTree, TreeShape

SPINE = 1e4  # a bonus in every ranking for the chain of first candidates: it is always kept and always expanded


@dataclass(frozen=True)
class Levels:
    """A tree's budget depth by depth: `sizes[d]` nodes at depth d + 1, of which the draft expands `expanded[d]`
    (their children fill depth d + 2; 0 at the last depth), at most `branches` children each."""

    sizes: tuple[int, ...]
    expanded: tuple[int, ...]
    branches: int

    @classmethod
    def of(cls, shape: TreeShape) -> "Levels":
        """The budget of `shape`: its nodes and its nodes with children per depth, its widest fan-out."""
        fan = shape.fan_out()
        levels = [shape.at_depth(d) for d in range(1, shape.depth + 1)]
        return cls(tuple(len(nodes) for nodes in levels),
                   tuple(sum(1 for n in nodes if fan[n + 1]) for nodes in levels), max(fan))

    @property
    def size(self) -> int:
        return sum(self.sizes)

    @property
    def depth(self) -> int:
        return len(self.sizes)


class Growth:
    """The books of trees being filled (one per row, all on the device), by pass index (0: the root, n + 1: node n)."""

    def __init__(self, batch: int, levels: Levels, device, vocab_size: int | None):
        B, N, D = batch, levels.size, levels.depth
        self.levels = levels
        self.tokens = torch.zeros(B, N, dtype=torch.long, device=device)
        self.parents = torch.full((B, N), -1, dtype=torch.long, device=device)
        self.valid = torch.zeros(B, N, dtype=torch.bool, device=device)
        self.probs = None if vocab_size is None else torch.zeros(B, N, vocab_size, device=device)
        self.value = torch.zeros(B, N + 1, device=device)  # log-probability of each path under the draft
        self.spine = torch.zeros(B, N + 1, dtype=torch.bool, device=device)
        self.spine[:, 0] = True
        self.paths = torch.zeros(B, N + 1, D, dtype=torch.long, device=device)  # its path's tokens by depth
        self.lineage = torch.eye(N + 1, dtype=torch.bool, device=device).expand(B, N + 1, N + 1).clone()
        self.depth = 0  # depths filled so far (host int)

    def add_level(self, front: torch.Tensor, kids: torch.Tensor, q: torch.Tensor | None, logq: torch.Tensor
                  ) -> torch.Tensor:
        """The next depth from the candidates of the expanded nodes `front` [B, m] (pass indices): `kids`
        [B, m, c] in rank order, the q_i each was drawn from [B, m, c, V] (None: greedy) and the draft's
        log-probabilities at each front node [B, m, V]. Keeps per row the depth's budget of candidates with the
        likeliest paths, judged by q's sorted probabilities. Returns the new nodes' pass indices [B, L]."""
        B, m, c = kids.shape
        d, L, filled = self.depth, self.levels.sizes[self.depth], self.filled
        ranked = logq.topk(c, dim=-1).values  # [B, m, c] the r-th likeliest token's log q, whatever was drawn
        key = self.value.gather(1, front)[:, :, None] + ranked  # [B, m, c]
        first = self.spine.gather(1, front)[:, :, None] & (torch.arange(c, device=key.device) == 0)  # [B, m, c]
        order = torch.where(first, SPINE, key).flatten(1).sort(dim=1, descending=True, stable=True).indices
        pick = order[:, :L].sort(dim=1).values  # [B, L] flat e * c + r: parents in order, siblings by rank
        parent = front.gather(1, pick // c)  # [B, L] pass indices
        new = torch.arange(filled + 1, filled + L + 1, device=key.device).expand(B, L)  # [B, L]
        span, at = slice(filled, filled + L), slice(filled + 1, filled + L + 1)  # by node, by pass index
        self.tokens[:, span] = kids.flatten(1).gather(1, pick)
        self.parents[:, span] = parent - 1
        self.valid[:, span] = key.flatten(1).gather(1, pick) > float("-inf")
        if self.probs is not None:  # sampling: q given
            self.probs[:, span] = q.flatten(1, 2).gather(1, pick[:, :, None].expand(-1, -1, q.shape[-1]))
        drawn = logq.gather(2, kids).flatten(1).gather(1, pick)  # [B, L] log q of the tokens drawn
        self.value[:, at] = self.value.gather(1, parent) + drawn
        self.spine[:, at] = self.spine.gather(1, parent) & (pick % c == 0)
        path = self.paths.gather(1, parent[:, :, None].expand(-1, -1, self.paths.shape[2])).clone()  # [B, L, D]
        path[:, :, d] = self.tokens[:, span]
        self.paths[:, at] = path
        rows = self.lineage.gather(1, parent[:, :, None].expand(-1, -1, self.lineage.shape[2])).clone()
        rows.scatter_(2, new[:, :, None], True)  # [B, L, N + 1] its ancestors and itself
        self.lineage[:, at] = rows
        self.depth += 1
        return new

    def front(self, level: torch.Tensor) -> torch.Tensor:
        """Of the nodes `level` [B, L] (pass indices, one depth), the ones the draft expands: the budget's count
        with the likeliest paths, the first candidates' chain first, in index order. [B, E]"""
        E = self.levels.expanded[self.depth - 1]
        key = torch.where(self.spine.gather(1, level), SPINE, self.value.gather(1, level))  # [B, L]
        key = key.masked_fill(~self.valid.gather(1, level - 1), float("-inf"))
        chosen = key.sort(dim=1, descending=True, stable=True).indices[:, :E]
        return level.gather(1, chosen.sort(dim=1).values)

    def paths_at(self, front: torch.Tensor) -> torch.Tensor:
        """The path tokens of the nodes `front` [B, m] (pass indices): [B, m, depth so far]."""
        got = self.paths.gather(1, front[:, :, None].expand(-1, -1, self.paths.shape[2]))
        return got[:, :, : self.depth]

    def sees(self, front: torch.Tensor, fed: torch.Tensor) -> torch.Tensor:
        """[B, m, F + m]: which of the fed nodes `fed` [B, F] and of `front` [B, m] themselves (pass indices) each
        front node attends to (its ancestors and itself)."""
        columns = torch.cat([fed, front], dim=1)  # [B, F + m]
        rows = self.lineage.gather(1, front[:, :, None].expand(-1, -1, self.lineage.shape[2]))  # [B, m, N + 1]
        return rows.gather(2, columns[:, None, :].expand(-1, front.shape[1], -1))

    def finish(self) -> TokenTree:
        """The trees as a `TokenTree` (the topology copied to the host: this round's one extra host sync)."""
        return TokenTree(self.tokens, self.parents.cpu(), self.valid.cpu(), self.probs)

    @property
    def filled(self) -> int:
        """Nodes so far (host int)."""
        return sum(self.levels.sizes[: self.depth])
