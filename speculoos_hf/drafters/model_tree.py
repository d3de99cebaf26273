"""Token trees from a draft model: at every node the tree's shape expands, the draft's b continuations (greedy, and
sampling where the plan asks for top candidates: the b likeliest, deterministic; otherwise drawn without
replacement: Gumbel-top-b, one after the other from q with the earlier ones removed), one draft forward per depth
over all of that depth's nodes to expand (SpecInfer, Miao et al. 2024; Sequoia, Chen et al. 2024). A drawn node
reports the q_i it was drawn from, a top one none (one-hot), which is all recursive rejection sampling
(tree_verify.py) needs to stay exact; which of the two pays is measured (trees/candidate_rule.py). After the round
the draft keeps the accepted path's fed nodes in its cache and the others become holes, as rejected chain drafts do.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..glue.processors import apply_processors
from ..loop.state import DecodeState
from ..trees.likeliest_fill import Growth, Levels
from ..trees.tree import TokenTree, TreePlan, TreeShape, node_prefixes
from ..trees.tree_models import tree_reason
from .base import RoundOutcome
from .model import ModelDrafter


@dataclass(frozen=True)
class _FedTree:
    """The tree nodes a proposal fed to the draft cache after its pending chunk, in feeding order from `first_slot`:
    `slots[b, n]` is row b's node n's slot after `first_slot` (-1: not fed; the last column, -1, stands for "no
    node"); every row fed `count` nodes."""

    first_slot: int
    slots: torch.Tensor  # [B, N + 1] host long
    count: int

    @classmethod
    def of(cls, first_slot: int, nodes: torch.Tensor, size: int) -> "_FedTree":
        """`nodes` [B, F] host: each row's fed nodes in feeding order."""
        B, F = nodes.shape
        slots = torch.full((B, size + 1), -1, dtype=torch.long)
        slots.scatter_(1, nodes, torch.arange(F).expand(B, F).contiguous())
        return cls(first_slot, slots, F)


class TreeModelDrafter(ModelDrafter):
    """A `ModelDrafter` that also drafts trees (`propose_tree`, `commit_tree`); its chains are the same as ever."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._fed_tree: _FedTree | None = None
        self._root_q: torch.Tensor | None = None  # [B, V] sampling: the draft's q at each row's root, last tree

    def tree_reason(self) -> str | None:
        """Why this draft cannot draft a tree in one forward per depth (None: it can). Asked after `start`."""
        return tree_reason(self.model, self.runner.kv)

    def propose_tree(self, state: DecodeState, plan: TreePlan) -> TokenTree:
        """A tree of `plan.shape` (or of its budget, filled with the likeliest paths) below each row's last token."""
        return self.draft_tree(state, plan.shape, likeliest=plan.likeliest, top=plan.top)

    def root_distribution(self) -> torch.Tensor | None:
        """[B, V] the draft's q at each row's root in the last sampled tree (None: greedy, or none drafted)."""
        return self._root_q

    def draft_tree(self, state: DecodeState, shape: TreeShape, exclude: torch.Tensor | None = None,
                   likeliest: bool = False, top: bool = False) -> TokenTree:
        """A tree of `shape` in every row below its last committed token; `likeliest`: each row's tree of the
        shape's budget filled with the draft's likeliest paths (likeliest_fill.py); `top`: sampling, the top
        candidates, not drawn ones. `exclude` [B, E] (device, -1: none): tokens the root's children never take (a
        hybrid offers them as copies beside them)."""
        drawn = self.ctx.do_sample and not top
        if likeliest:
            return self._likeliest_tree(state, Levels.of(shape), exclude, drawn)
        logits = self.runner.feed(*self._pending(state))  # [B, V_draft] after the last committed token
        first = self.runner.take_fed().first_slot
        B, N = state.batch_size, shape.size
        fan = shape.fan_out()  # children per pass index
        tokens = torch.zeros(B, N, dtype=torch.long, device=state.seq.device)
        probs = torch.zeros(B, N, self.ctx.vocab_size, device=self.ctx.device) if drawn else None
        paths = torch.zeros(B, N + 1, shape.depth, dtype=torch.long, device=tokens.device)  # by pass index
        expanding, fed = [-1], []
        for depth in range(shape.depth):
            scores = self._scores(state, logits, paths[:, [n + 1 for n in expanding], :depth], depth)  # [B, m, V]
            kids, q = _children(scores, max(fan[n + 1] for n in expanding), exclude if depth == 0 else None,
                                drawn)  # [B, m, c], [B, m, c, V] or None
            level = shape.at_depth(depth + 1)
            j = [expanding.index(shape.parents[n]) for n in level]
            r = [shape.ranks[n] for n in level]
            tokens[:, level] = kids[:, j, r]
            if probs is not None:
                probs[:, level] = q[:, j, r]
            paths[:, [n + 1 for n in level]] = paths[:, [shape.parents[n] + 1 for n in level]]
            paths[:, [n + 1 for n in level], depth] = tokens[:, level]
            expanding = [n for n in level if fan[n + 1]]
            if expanding:
                logits = self._feed_nodes(shape, tokens, expanding, fed, first)  # [B, m, V_draft]
                fed += expanding
        self._fed_tree = _FedTree.of(first, torch.tensor(fed, dtype=torch.long).expand(B, len(fed)), N)
        return TokenTree.from_shape(shape, tokens, torch.ones(B, N, dtype=torch.bool), probs)

    def commit_tree(self, state: DecodeState, outcome: RoundOutcome, path: torch.Tensor) -> None:
        """Keep the accepted path's fed nodes that were committed (`path` [B, D] host: node by depth, -1 beyond);
        the other fed nodes become holes."""
        fed, self._fed_tree = self._fed_tree, None
        if fed is None:
            return
        cached = torch.tensor([outcome.cached_drafts(i) for i in range(state.batch_size)])  # [B]
        N = fed.slots.shape[1] - 1
        slot = fed.slots.gather(1, torch.where(path >= 0, path, N))  # [B, D] each path node's fed slot, -1: none
        keep = ((slot >= 0) & (torch.arange(path.shape[1])[None, :] < cached[:, None])).long().cumprod(1).bool()
        kept = torch.zeros(state.batch_size, fed.count + 1, dtype=torch.bool)  # a spare column takes the rest
        kept.scatter_(1, torch.where(keep, slot, fed.count), True)
        self.runner.kv.keep_marked(fed.first_slot, kept[:, :-1])
        own = keep.sum(1).tolist()
        self.cached_len = [outcome.old_lengths[i] + own[i] for i in range(state.batch_size)]

    def _likeliest_tree(self, state: DecodeState, levels: Levels, exclude: torch.Tensor | None, drawn: bool
                        ) -> TokenTree:
        """Each row's tree of `levels`' budget, depth by depth: the expanded nodes' candidates, the likeliest kept,
        one draft forward over the next expanded nodes (likeliest_fill.py)."""
        logits = self.runner.feed(*self._pending(state))  # [B, V_draft] after the last committed token
        first = self.runner.take_fed().first_slot
        B = state.batch_size
        grow = Growth(B, levels, state.seq.device, self.ctx.vocab_size if drawn else None)
        front = torch.zeros(B, 1, dtype=torch.long, device=state.seq.device)  # [B, m] pass indices: the root
        fed = front[:, :0]  # [B, F] pass indices fed so far
        for depth in range(levels.depth):
            scores = self._scores(state, logits, grow.paths_at(front), depth)  # [B, m, V]
            kids, q = _children(scores, levels.branches, exclude if depth == 0 else None, drawn)
            level = grow.add_level(front, kids, q, torch.log_softmax(scores.float(), dim=-1))  # [B, L]
            if not levels.expanded[depth]:
                break
            front = grow.front(level)  # [B, E]
            ids = self.vocab.draft_ids(grow.tokens.gather(1, front - 1).reshape(-1)).view(front.shape)
            logits = self.runner.kv.forward_tree(ids, torch.ones(front.shape, dtype=torch.bool),
                                                 torch.full(front.shape, depth), grow.sees(front, fed), since=first)
            fed = torch.cat([fed, front], dim=1)
        tree = grow.finish()  # the topology on the host: the sync
        self._fed_tree = _FedTree.of(first, (fed - 1).cpu(), levels.size)
        return tree

    # -- steps ------------------------------------------------------------------------------------------------------

    def _scores(self, state: DecodeState, logits: torch.Tensor, paths: torch.Tensor, depth: int) -> torch.Tensor:
        """Processed scores [B, m, V] at m nodes of one depth (logits [B, m, V_draft], or [B, V_draft] at the root),
        each with its own prefix: the committed tokens and its path `paths` [B, m, depth]. At the root (sampling)
        the draft's q is kept for the candidate rule (`root_distribution`)."""
        B, m = paths.shape[:2]
        raw = self.vocab.scores(logits.reshape(B * m, -1), self.ctx)  # [B*m, V]
        if len(self.ctx.processors):
            seqs, lengths = node_prefixes(state.seq, state.lengths, paths, torch.full((B, m), depth))
            rows = [r for r in state.rows for _ in range(m)]
            raw = apply_processors(self.ctx.processors, seqs, lengths, raw, rows)
        scores = raw.view(B, m, -1)
        if depth == 0:
            self._root_q = _softmax(scores[:, 0]) if self.ctx.do_sample else None
        return scores

    def _feed_nodes(self, shape: TreeShape, tokens: torch.Tensor, nodes: list[int], fed: list[int],
                    first: int) -> torch.Tensor:
        """One draft forward over `nodes` (one depth), each seeing its fed ancestors and itself. [B, m, V_draft]"""
        B, m = tokens.shape[0], len(nodes)
        sees = shape.lineage[nodes][:, fed + nodes]  # [m, fed + m] its ancestors (all fed: they have children), itself
        steps = torch.full((B, m), shape.depths[nodes[0]] - 1)  # the first node sits right after the root
        ids = self.vocab.draft_ids(tokens[:, nodes].reshape(-1)).view(B, m)
        return self.runner.kv.forward_tree(ids, torch.ones(B, m, dtype=torch.bool), steps,
                                           sees.expand(B, *sees.shape), since=first)


def _children(scores: torch.Tensor, count: int, exclude: torch.Tensor | None, drawn: bool
              ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The first `count` children of each node: tokens [B, m, c] and, `drawn`, the q_i each was drawn from
    [B, m, c, V] (q without `exclude` [B] and the earlier ranks' tokens, renormalised; 0 past q's support);
    otherwise the top `count`, deterministic (None)."""
    if exclude is not None:  # [B, E] -1: nothing
        banned = torch.zeros(scores.shape[0], scores.shape[-1], device=scores.device)  # [B, V]
        banned.scatter_add_(1, exclude.clamp(min=0), (exclude >= 0).to(banned.dtype))
        scores = scores.masked_fill(banned[:, None, :] > 0, float("-inf"))  # [B, m, V]
    if not drawn:
        return scores.topk(count, dim=-1).indices, None
    q = _softmax(scores)  # [B, m, V]
    race = q / torch.empty_like(q).exponential_()  # Gumbel-top-c: a draw without replacement
    kids = race.topk(count, dim=-1).indices  # [B, m, c]
    q_i = q[:, :, None, :].repeat(1, 1, count, 1)  # [B, m, c, V]
    for r in range(1, count):
        q_i[:, :, r].scatter_(-1, kids[:, :, :r], 0.0)  # without the earlier ranks' tokens
    return kids, q_i / q_i.sum(-1, keepdim=True).clamp(min=torch.finfo(q.dtype).tiny)


def _softmax(scores: torch.Tensor) -> torch.Tensor:
    """q over the last dimension; all zeros where every score is -inf (a node with no candidate)."""
    nothing = scores.amax(dim=-1, keepdim=True) == float("-inf")
    return torch.softmax(scores.masked_fill(nothing, 0.0), dim=-1).masked_fill(nothing, 0.0)
