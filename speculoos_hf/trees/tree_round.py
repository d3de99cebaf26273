"""Rounds over token trees, beside decoding.py's chain round: the drafter proposes a tree per row (tree.py), one
target pass scores every node (a 4D mask: each node sees the committed context, its ancestors and itself; each
node's position is its depth after x0), the exact rule keeps one root path per row (tree_verify.py), the stops
apply to it as to a chain's accepted drafts, the target keeps the path's KV slots and the rest become holes, and the
drafter rolls back to the path.

`tree_steps` gives the loop its round function: the chain's where trees cannot apply (the target or the draft
cannot take a custom mask, see tree_models.py; recurrent state; a drafter without trees; block verification;
draft_tree=False), else one that asks the pacer for k as the chain does, then the planner (tree_planner.py) for a
tree, and runs the chain's round where the planner says the chain pays.

Host syncs: the stop decision's, as in a chain round (the accepted path is copied to the host without waiting: that
sync completes it), and, for a tree of the draft's likeliest nodes, its topology once drafting is done.
"""

from __future__ import annotations

from dataclasses import replace

import torch

from ..loop import decoding as chain
from ..drafters.base import Proposal, RoundOutcome
from ..loop.kv_slots import KVSlots
from ..loop.logits import pad_vocab
from ..glue.processors import apply_processors
from ..loop.state import DecodeContext, DecodeState
from ..loop.stops import apply_stops
from .tree import TokenTree, TreePlan, node_prefixes
from .tree_models import tree_reason
from .tree_planner import TreePlanner
from ..loop.trace import RoundClock
from .tree_verify import TreeVerdict, tree_greedy_verify, tree_sample_verify


def tree_steps(target, tgt: KVSlots, drafter, options, chain_round):
    """The round function for this call: `chain_round` itself where trees cannot apply, else `TreeSteps`. Called
    after the drafter's `start` (a draft model's cache exists then)."""
    planner = _planner(target, tgt, drafter, options)
    return chain_round if planner is None else TreeSteps(chain_round, planner)


def chain_reason(target, tgt: KVSlots, drafter, options) -> str | None:
    """Why this call's rounds stay chains (None: trees may be drafted)."""
    if options.draft_tree is False:
        return "draft_tree=False"
    if options.block_verification:
        return "block verification verifies chains"
    if not callable(getattr(drafter, "propose_tree", None)):
        return "the drafter offers no trees"
    return tree_reason(target, tgt) or drafter.tree_reason()


def _planner(target, tgt: KVSlots, drafter, options) -> TreePlanner | None:
    if chain_reason(target, tgt, drafter, options) is not None:
        return None
    fixed = None if isinstance(options.draft_tree, str) else options.draft_tree  # a shape given: every round
    if fixed is None and not options.auto_k:
        return None  # a given K and no shape: the chains asked for
    kind = "lookup" if options.lookup_only else ("hybrid" if options.prompt_lookup_num_tokens else "model")
    return TreePlanner(kind, fixed)


class TreeSteps:
    """Each round: the pacer's k as for a chain, then the planner's tree, or the chain's round with that k."""

    def __init__(self, chain_round, planner: TreePlanner):
        self.chain_round = chain_round
        self.planner = planner

    def __call__(self, run, tgt: KVSlots, drafter, pacer) -> None:
        state = run.state
        ends = run.out.ends_of(state.rows)
        remaining = max(e - n for e, n in zip(ends, state.lengths))
        k, limits = pacer.choose_k(state.rows, remaining=remaining)
        plan = None
        lockstep_copies = run.stops.lockstep and self.planner.kind != "model"  # per-row tries: unequal depths
        if k > 0 and not run.plain_first and not lockstep_copies:
            costs = _copy_costs(pacer, state.batch_size, k) if self.planner.kind == "hybrid" else None
            plan = self.planner.plan(k, state.batch_size, pacer.cost_model(), None if costs is None else costs.model_k)
        elif k == 0 and not run.plain_first:
            plan = _tree_instead_of_plain(self.planner, pacer, state.batch_size, remaining - 1)
        if plan is None:
            return self.chain_round(run, tgt, drafter, _Chosen(pacer, k, limits))
        tree_round(run, tgt, drafter, pacer, plan, self.planner, limits)


def _tree_instead_of_plain(planner: TreePlanner, pacer, batch: int, remaining: int) -> TreePlan | None:
    """Where the pacer switched drafting off (its chains do not pay), the planner's tree if it beats the target
    alone; never where the pacer asks for a plain round to time the target (it is still speculating then)."""
    cm = pacer.cost_model()
    if cm is None or cm.speculating:
        return None
    return planner.plan_alone(min(cm.max_k, remaining), batch, cm)


class _Chosen:
    """A pacer whose next `choose_k` answer is already known (asked once by `TreeSteps`); the rest is the pacer's."""

    def __init__(self, pacer, k: int, limits):
        self._pacer, self._answer = pacer, (k, limits)

    def choose_k(self, rows, remaining):
        return self._answer

    def __getattr__(self, name):
        return getattr(self._pacer, name)


def tree_round(run, tgt: KVSlots, drafter, pacer, plan: TreePlan, planner: TreePlanner,
               limits: list[int] | None = None) -> None:
    """One round over trees: propose, score, verify, apply stops, commit, keep the path, retire finished rows.
    `limits`: the pacer's per-row caps (0: the row's drafts do not pay; its tree is dropped)."""
    ctx, state, stats = run.ctx, run.state, run.stats
    clock = RoundClock()  # the round trace's laps (stats.trace)
    ends = run.out.ends_of(state.rows)
    forwards = drafter.forward_passes
    with pacer.drafting():
        tree = drafter.propose_tree(state, plan)
        alone = plan.shape is None and planner.fixed is None  # copies alone, sized by the cost model
        costs = _copy_costs(pacer, state.batch_size, tree.size) if alone else None
        if costs is not None:  # each row's trie cut where a wider pass stops paying
            tree = planner.cut_copies(tree, costs.pass_time, costs.copy_ratio)
        if limits is not None:  # from earlier rounds only: exact
            tree = tree.first_nodes(torch.tensor([tree.size if n > 0 else 0 for n in limits]))
    clock.lap("draft_s")
    if tgt.held_tokens:  # a prompt held for the first pass: a tree's pass reads it in a forward of its own first
        with pacer.prefilling(rows=state.batch_size, prompt_length=tgt.held_tokens + 1):
            tgt.flush()
        stats.prefill_passes = 1
    first_slot = tgt.num_slots
    stats.target_cache_slots = max(stats.target_cache_slots, first_slot + tree.size + 1)
    with pacer.scoring():
        scores = score_tree(tgt, ctx, state, tree)  # [B, N+1, V]
    clock.lap("target_s")
    verdict = verify_tree(ctx, tree, scores)
    path = verdict.path.to("cpu", non_blocking=True)  # [B, D] complete once the stop decision has synced
    _measure_candidates(ctx, planner, drafter, plan, scores)
    clock.lap("verify_s")
    outcome = apply_stops(run.stops, state, verdict.accepted, verdict.candidates, ends)
    clock.lap("sync_s")
    first = _model_chain(tree, path, 0 if plan.shape is None else getattr(drafter, "copied_nodes", 0))  # [B, D]
    view = _as_chain(tree, first, drafter.forward_passes - forwards, copies_alone=plan.shape is None)
    pacer.after_round(view, replace(outcome, accepted=_first_ranks(first, path, outcome.accepted)))
    planner.observe(tree, path, outcome.accepted)
    chain.commit(state, outcome, stats, run.streamer, replace(view, num_proposed=_depths(tree)))
    tgt.keep_marked(first_slot, kept_slots(tree, path, outcome))
    drafter.commit_tree(state, outcome, path)
    chain.retire_finished(state, run.stops, outcome, run.out, tgt, drafter)
    stats.trace.append(clock.record(view, outcome.accepted, tree=True))


def _measure_candidates(ctx: DecodeContext, planner: TreePlanner, drafter, plan: TreePlan,
                        scores: torch.Tensor) -> None:
    """Sampling, a tree with the draft model's nodes: both candidate rules' acceptance at the roots, for the next
    rounds' choice (candidate_rule.py)."""
    root_q = getattr(drafter, "root_distribution", lambda: None)() if ctx.do_sample and plan.shape else None
    if root_q is not None:
        width = len(plan.shape.at_depth(1))
        planner.candidates.observe(torch.softmax(scores[:, 0].float(), dim=-1), root_q.float(), width)


def score_tree(tgt: KVSlots, ctx: DecodeContext, state: DecodeState, tree: TokenTree) -> torch.Tensor:
    """One target forward over [x0, the tree's nodes], each node with its ancestors; processors applied at every
    node with its own prefix (the committed tokens and its path). Returns processed scores [B, N+1, V]."""
    B, N = tree.batch_size, tree.size
    C = state.lengths_tensor()  # [B]
    x0 = state.seq.gather(1, (C - 1)[:, None])  # [B, 1]
    valid = torch.cat([torch.ones(B, 1, dtype=torch.bool), tree.valid], dim=1)  # [B, N+1] host
    logits = tgt.forward_tree(torch.cat([x0, tree.tokens], 1), valid, tree.pass_depth(), tree.attention(),
                              since=tgt.num_slots)
    logits = pad_vocab(logits.to(ctx.device), ctx.vocab_size)  # [B, N+1, V]
    if not len(ctx.processors):
        return logits
    seqs, lengths = node_prefixes(state.seq, state.lengths, tree.path_tokens(), tree.pass_depth())
    Vt = logits.shape[-1]
    if not _users_processors(ctx):  # the library's own: all nodes at once, grouped by prefix length
        rows = [r for r in state.rows for _ in range(N + 1)]
        flat = logits.reshape(B * (N + 1), Vt)
        return apply_processors(ctx.processors, seqs, lengths, flat, rows).view(B, N + 1, Vt)
    # the user's own see the batch's rows in their order, one node of each row per call (as a chain shows them)
    seqs, lengths = seqs.view(B, N + 1, -1), torch.tensor(lengths).view(B, N + 1)
    columns = [apply_processors(ctx.processors, seqs[:, i], lengths[:, i].tolist(), logits[:, i], state.rows)
               for i in range(N + 1)]
    return torch.stack(columns, dim=1)  # [B, N+1, V]


def _users_processors(ctx: DecodeContext) -> bool:
    """Some logits processor is the user's own (not built by transformers)."""
    return any(not type(p).__module__.startswith("transformers.") for p in ctx.processors.processors)


def verify_tree(ctx: DecodeContext, tree: TokenTree, scores: torch.Tensor) -> TreeVerdict:
    """The exact rule on the device: greedy, the deepest matching path; sampling, recursive rejection sampling."""
    if not ctx.do_sample:
        return tree_greedy_verify(tree, scores.argmax(dim=-1))
    B, V = scores.shape[0], scores.shape[-1]
    uniform = torch.rand(B, tree.size, device=scores.device)  # [B, N] one per node
    exp_noise = torch.empty(B, V, device=scores.device).exponential_()  # [B, V]
    return tree_sample_verify(tree, torch.softmax(scores, dim=-1), uniform, exp_noise)


def kept_slots(tree: TokenTree, path: torch.Tensor, outcome: RoundOutcome) -> torch.Tensor:
    """[B, N+1] host bool: the target keeps x0 and the path's first `cached_drafts` nodes (the last committed token
    is fed next round)."""
    B, D = path.shape
    keep = torch.zeros(B, tree.size + 2, dtype=torch.bool)  # a spare column takes the nodes not kept
    cached = torch.tensor([outcome.cached_drafts(i) for i in range(B)])[:, None]  # [B, 1]
    column = torch.where((torch.arange(D)[None, :] < cached) & (path >= 0), path + 1, tree.size + 1)  # [B, D]
    keep.scatter_(1, column, True)
    keep[:, 0] = True
    return keep[:, : tree.size + 1]


def _copy_costs(pacer, batch: int, nodes: int):
    """The copy pacer's `RoundCosts` for passes over up to nodes + 1 tokens per row (None: no such pacer, or
    nothing timed yet)."""
    round_costs = getattr(pacer, "round_costs", None)
    return round_costs(batch, nodes) if callable(round_costs) else None


def _depths(tree: TokenTree) -> list[int]:
    """Each row's deepest node (host ints): a tree round's drafts proposed, as the stats count them."""
    return (tree.depth * tree.valid).amax(1).tolist() if tree.size else [0] * tree.batch_size


def _first_ranks(first: torch.Tensor, path: torch.Tensor, accepted: list[int]) -> list[int]:
    """Per row, how many of the accepted path's nodes are on `first` (the chain of first candidates, [B, D] host)
    from the root on: what that chain would have had accepted (the cost model's acceptance by position)."""
    D = path.shape[1]
    same = (path == first) & (torch.arange(D)[None, :] < torch.tensor(accepted)[:, None])  # [B, D]
    return same.long().cumprod(dim=1).sum(dim=1).tolist()


def _as_chain(tree: TokenTree, first: torch.Tensor, forwards: int, copies_alone: bool) -> Proposal:
    """The round as the pacer sees a chain: a pass over N + 1 tokens per row, `forwards` draft forwards, and the
    chain of first candidates `first` ([B, D] nodes, -1 beyond: its length per row; copies alone: its
    confidences, which calibrate the copies' estimates as a chain's copy does)."""
    confidence = None
    if copies_alone and tree.confidence is not None:
        confidence = torch.where(first >= 0, tree.confidence.gather(1, first.clamp(min=0)), 0.0)  # [B, D]
    return Proposal(tree.tokens, None, (first >= 0).sum(1).tolist(), forwards=forwards, confidence=confidence)


def _model_chain(tree: TokenTree, path: torch.Tensor, copied: int) -> torch.Tensor:
    """[B, D] host: the chain the cost model hears of, the first candidates from the root; beside a hybrid's
    `copied` nodes (they come first), the model's own, and none in rows whose path took a copy (the model's
    likeliest token there was left out as that copy's: the round says nothing of its chain)."""
    first = _first_chain(tree, copied)
    if copied:
        took_copy = (path[:, 0] >= 0) & (path[:, 0] < copied)  # [B]
        first = torch.where(took_copy[:, None], -1, first)
    return first


def _first_chain(tree: TokenTree, skip: int = 0) -> torch.Tensor:
    """[B, D] host: the chain of first candidates from the root, node by depth (-1 beyond its end); at the root,
    the first child past the first `skip` nodes (a hybrid's copies come first: the model's own chain)."""
    first = tree.children[:, :, 0].clone()  # [B, N+1] pass indices
    if skip:
        kids = tree.children[:, 0]  # [B, R] the root's children in candidate order (index order)
        own = torch.where(kids > skip, kids, tree.size + 1).amin(1)  # [B]
        first[:, 0] = torch.where(own <= tree.size, own, 0)
    at = torch.zeros(tree.batch_size, dtype=torch.long)
    out = torch.full((tree.batch_size, tree.max_depth), -1, dtype=torch.long)
    for d in range(tree.max_depth):
        nxt = first.gather(1, at[:, None]).squeeze(1)  # [B]
        out[:, d] = torch.where(nxt > 0, nxt - 1, -1)
        at = torch.where(nxt > 0, nxt, at)
    return out
