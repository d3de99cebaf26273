"""Which tree a round drafts, if any: a small cost rule over the cost model's measurements.

The draft model's tree: with c(d, r) the chance that the rank-r candidate at depth d is accepted once the earlier
ranks were rejected (rank 0: the cost model's acceptance by position, alpha_d; runner-ups: measured here over tree
rounds, shared by all depths), a node's chance to be on the accepted path is its parent's times
prod_{s<r} (1 - c(d, s)) * c(d, r), and a tree's expected accepted drafts are the sum over its nodes. For a node
budget N the best tree takes the N likeliest nodes (Sequoia, Chen et al. 2024, with a positional acceptance
vector); its round costs the draft's forwards (its root's, then one per depth over that depth's nodes to expand,
each priced as the target's pass over as many tokens per row, relative to a one-token pass) and one target pass
over N + 1 tokens per row. The tree is drafted where some budget's expected tokens per second beat the chain's
with the pacer's k by `TREE_MARGIN`; where passes are not flat the chain wins by itself.

Prompt lookup and the suffix cache: each row's trie of copies is cut where a wider pass stops paying
(`gain.best_copy` over the nodes' confidences, in the trie's order, which keeps parents first).

Every choice uses earlier rounds' measurements only, never this round's drafts' fate: exact whatever it picks.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass, field
from functools import cache, cached_property

import torch

from .candidate_rule import CandidateRule
from .tree import TokenTree, TreePlan, TreeShape

TREE_MARGIN = 1.03  # a tree must beat the chain by this factor (noise in the timings)
MAX_TREE_NODES = 48  # the draft model's largest tree
MAX_BRANCHES = 4  # children per node at most
COPY_NODES = 64  # the largest trie of copies offered before it is cut


@dataclass
class RunnerUps:
    """c(r) for ranks r >= 1: accepted over tried at rank r, the earlier ranks rejected (all depths), with `prior`
    counting as `pseudo` trials, forgotten at rate `forget` per round."""

    prior: float = 0.3
    pseudo: float = 4.0
    forget: float = 0.98
    hits: list[float] = field(default_factory=lambda: [0.0] * MAX_BRANCHES)
    trials: list[float] = field(default_factory=lambda: [0.0] * MAX_BRANCHES)

    def rate(self, r: int) -> float:
        r = min(r, MAX_BRANCHES - 1)
        return (self.hits[r] + self.pseudo * self.prior) / (self.trials[r] + self.pseudo)

    def observe(self, tried: list[int], accepted: list[int]) -> None:
        """Per rank: candidates tried and accepted this round (all rows)."""
        for r in range(1, MAX_BRANCHES):
            self.hits[r] = self.forget * self.hits[r] + accepted[r]
            self.trials[r] = self.forget * self.trials[r] + tried[r]


def best_tree(alpha: list[float], runner_up, nodes: int, depth: int, branches: int = MAX_BRANCHES
              ) -> tuple[TreeShape, float]:
    """The `nodes` likeliest nodes (module docstring) at most `depth` deep and `branches` wide: (shape, expected
    accepted drafts). alpha[d]: rank 0's acceptance at depth d + 1; runner_up(r): c(r) for r >= 1."""
    order = likeliest_nodes(alpha, runner_up, nodes, depth, branches)
    return order.shape(order.size), order.value(order.size)


@dataclass(frozen=True)
class NodeOrder:
    """Nodes in the order the likeliest-nodes search takes them: its first n nodes are the best tree of n nodes
    (the search never looks at its budget but to stop), so one search serves every budget up to its own."""

    parents: tuple[int, ...]
    ranks: tuple[int, ...]
    values: tuple[float, ...]  # each node's chance to be on the accepted path

    @property
    def size(self) -> int:
        return len(self.parents)

    def shape(self, n: int) -> TreeShape:
        return TreeShape(self.parents[:n], self.ranks[:n])

    def value(self, n: int) -> float:
        """The first n nodes' expected accepted drafts."""
        return sum(self.values[:n])

    @cached_property
    def expanding(self) -> list[tuple[int, ...]]:
        """[n]: in the tree of the first n nodes, how many nodes have children, depth by depth from 1 (the nodes
        the draft feeds, one forward per depth)."""
        depths: list[int] = []
        fed, counts, out = set(), [], [()]
        for parent in self.parents:
            depths.append(1 if parent < 0 else depths[parent] + 1)
            if parent >= 0 and parent not in fed:
                fed.add(parent)
                if depths[parent] > len(counts):
                    counts.append(0)
                counts[depths[parent] - 1] += 1
            out.append(tuple(counts))
        return out


def likeliest_nodes(alpha: list[float], runner_up, nodes: int, depth: int, branches: int = MAX_BRANCHES
                    ) -> NodeOrder:
    """The `nodes` likeliest nodes (module docstring) at most `depth` deep and `branches` wide, likeliest first."""
    def chance(d: int, r: int) -> float:  # rank r accepted at depth d (0-based), its node's parent reached
        c = [alpha[min(d, len(alpha) - 1)]] + [runner_up(s) for s in range(1, r + 1)]
        return math.prod(1.0 - x for x in c[:r]) * c[r]

    heap = [(-chance(0, 0), 0, -1, 0, 0)]  # (-value, tie, parent, depth index, rank)
    parents, ranks, values, tie = [], [], [], 1
    while heap and len(parents) < nodes:
        neg, _, parent, d, r = heapq.heappop(heap)
        n = len(parents)
        parents.append(parent), ranks.append(r), values.append(-neg)
        if d + 1 < depth:
            heapq.heappush(heap, (neg * chance(d + 1, 0), tie, n, d + 1, 0))
            tie += 1
        if r + 1 < branches:
            base = values[parent] if parent >= 0 else 1.0
            heapq.heappush(heap, (-base * chance(d, r + 1), tie, parent, d, r + 1))
            tie += 1
    return NodeOrder(tuple(parents), tuple(ranks), tuple(values))


class TreePlanner:
    """Picks each round's tree (module docstring), or none (the chain), and learns from the tree rounds.

    kind:  "model", "lookup" or "hybrid" (what the drafter drafts with).
    fixed: the user's tree (`draft_tree=`: a branching per depth or a `TreeShape`), drafted in every round with
           drafts, cut to the round's k.
    """

    def __init__(self, kind: str, fixed: tuple[int, ...] | TreeShape | None = None):
        self.kind = kind
        self.fixed = fixed
        self.runner_ups = RunnerUps()
        self.candidates = CandidateRule()  # sampling: top or drawn candidates, measured at the roots
        self.last: dict = {}
        self._search_key: tuple | None = None  # what `_search` was searched for (`_likeliest`)
        self._search: NodeOrder | None = None

    def plan(self, k: int, batch: int, cost_model, model_k: int | None = None) -> TreePlan | None:
        """The next round's tree for a round the pacer gave k drafts (k >= 1), or None: the chain. `model_k`: the
        draft model's own k beside copies (a hybrid's copies may run longer; 0: the model is not offered)."""
        if self.fixed is not None:
            given = self.fixed if isinstance(self.fixed, TreeShape) else TreeShape.from_branching(self.fixed)
            shape = _cut(given, k)
            likeliest = not isinstance(self.fixed, TreeShape)  # a branching is a budget; a TreeShape, a topology
            return self._with_copies(shape if self.kind != "lookup" else None, k, shape.size, max(given.fan_out()),
                                     likeliest)
        if cost_model is None or cost_model.target_time(batch, batch) is None:
            return None  # nothing timed: the chain
        model_k = k if model_k is None else min(model_k, k)
        if self.kind == "lookup" or (self.kind == "hybrid" and model_k == 0):
            return TreePlan(None, COPY_NODES, k, MAX_BRANCHES - 1)
        shape = self._best_shape(model_k, batch, cost_model)
        return None if shape is None else self._with_copies(shape, k, shape.size, MAX_BRANCHES - 1)

    def _with_copies(self, shape: TreeShape | None, k: int, copy_nodes: int, branches: int,
                     likeliest: bool = True) -> TreePlan:
        copies = copy_nodes if self.kind in ("lookup", "hybrid") else 0
        return TreePlan(shape, copies, k, branches, likeliest, self.candidates.top)

    def plan_alone(self, depth: int, batch: int, cost_model) -> TreePlan | None:
        """Where the pacer drafts nothing (no chain beats the target alone): the draft model's tree, if some tree
        of at most `depth` beats the target alone by the cost model's `min_gain` (the chain's value counts first
        candidates only, and a stretch without drafts is not priced again until it ends; a tree's runner-ups may
        pay where the chain does not). None: a plain round."""
        if self.fixed is not None or self.kind != "model" or depth < 1 or cost_model is None:
            return None
        one = cost_model.target_time(batch, batch)
        if not one or cost_model.draft_time(batch) is None:
            return None  # nothing timed, or a clock too coarse to price anything
        shape = self._best_shape(depth, batch, cost_model, cost_model.min_gain / one, smallest=1)
        return None if shape is None else TreePlan(shape, likeliest=True, top=self.candidates.top)

    def _best_shape(self, k: int, batch: int, cm, floor: float | None = None, smallest: int | None = None
                    ) -> TreeShape | None:
        """The draft model's best tree at most k deep against the chain of k (module docstring), or against
        `floor` (tokens per second per row to beat) from `smallest` nodes on; None: none beats it."""
        alpha = cm.acceptance()
        pass_time = cache(lambda width: cm.target_time(width * batch, batch))  # tokens per row -> s
        one = pass_time(1)
        step = cm.draft_time(batch) or 0.0
        chain = cm.expected_tokens(k) / (k * step + pass_time(k + 1))
        order = self._likeliest(alpha, k)
        best, best_rate = None, chain * TREE_MARGIN if floor is None else floor
        start = k + 1 if smallest is None else smallest
        for nodes in range(start, MAX_TREE_NODES + 1, max(1, k // 2)):
            n = min(nodes, order.size)
            forwards = 1.0 + sum(pass_time(fed) / one for fed in order.expanding[n])
            rate = (1.0 + order.value(n)) / (forwards * step + pass_time(n + 1))
            if rate > best_rate:
                best, best_rate = n, rate
        self.last = {"chain_rate": chain, "tree_rate": best_rate if best is not None else None,
                     "tree_nodes": best or 0}
        return None if best is None else order.shape(best)

    def _likeliest(self, alpha: list[float], k: int) -> NodeOrder:
        """The likeliest `MAX_TREE_NODES` nodes at most k deep, searched again only when what they depend on moved
        (k, rank 0's acceptance at depths 1..k, the runner-ups' rates): last round's search otherwise."""
        key = (k, tuple(alpha[min(d, len(alpha) - 1)] for d in range(k)),
               tuple(self.runner_ups.rate(r) for r in range(1, MAX_BRANCHES)))
        if key != self._search_key:
            self._search_key, self._search = key, likeliest_nodes(alpha, self.runner_ups.rate, MAX_TREE_NODES, k)
        return self._search

    def cut_copies(self, tree: TokenTree, pass_time: torch.Tensor, ratio: float = 1.0) -> TokenTree:
        """A lookup tree cut per row where a wider pass stops paying (`gain.best_copy` over its nodes in order,
        each node's chance given its parent's scaled by `ratio`, the copies' measured acceptance over their
        confidences'). pass_time [W + 1] CPU: seconds of a pass over m + 1 tokens per row."""
        from ..pacing.gain import best_copy

        if tree.confidence is None or not tree.size:
            return tree
        conf = tree.confidence.to(torch.float64)  # [B, N]
        parent = torch.where(tree.parents >= 0, conf.gather(1, tree.parents.clamp(min=0)), 1.0)  # [B, N]
        given = (conf / parent.clamp(min=1e-12) * ratio).clamp(max=1.0)  # [B, N] its chance after its parent
        lineage = tree.ancestors[:, 1:, 1:].to(torch.float64)  # [B, N, N] ancestors-or-self
        calibrated = torch.exp(lineage @ torch.log(given.clamp(min=1e-30))[:, :, None]).squeeze(-1)  # [B, N]
        keep = best_copy(calibrated * tree.valid, tree.valid.sum(1).tolist(), pass_time).length  # [B]
        return tree.first_nodes(keep)

    def observe(self, tree: TokenTree, path: torch.Tensor, accepted: list[int]) -> None:
        """A tree round's outcome: per rank, candidates tried and accepted along each row's walk. path [B, D] host."""
        if tree.size == 0:
            return
        children = tree.children  # [B, N+1, R] host pass indices, 0: none
        B, R = tree.batch_size, children.shape[2]
        rank = torch.zeros(B, tree.size + 2, dtype=torch.long)  # by pass index (a spare column takes "none")
        rank.scatter_(1, torch.where(children > 0, children, tree.size + 1).flatten(1),
                      torch.arange(R).repeat(tree.size + 1).expand(B, -1).contiguous())
        fan = (children > 0).sum(-1)  # [B, N+1]
        a = torch.tensor(accepted)  # [B]
        at = torch.zeros(B, dtype=torch.long)  # pass index reached
        tried, hits = [0] * MAX_BRANCHES, [0] * MAX_BRANCHES
        for d in range(path.shape[1] + 1):
            step = path[:, d].clamp(min=0) + 1 if d < path.shape[1] else at  # [B] the child accepted at depth d
            moved = d < a  # [B]
            r = rank.gather(1, step[:, None]).squeeze(1)  # [B]
            count = torch.where(moved, r + 1, torch.where(d == a, fan.gather(1, at[:, None]).squeeze(1), 0))
            for s in range(MAX_BRANCHES):
                tried[s] += int((count > s).sum())
                hits[s] += int((moved & (r.clamp(max=MAX_BRANCHES - 1) == s)).sum())
            at = torch.where(moved, step, at)
        self.runner_ups.observe(tried, hits)


def _cut(shape: TreeShape, depth: int) -> TreeShape:
    """`shape`'s nodes at most `depth` deep."""
    keep = [n for n, d in enumerate(shape.depths) if d <= depth]
    index = {n: i for i, n in enumerate(keep)}
    return TreeShape(tuple(index.get(shape.parents[n], -1) for n in keep), tuple(shape.ranks[n] for n in keep))
