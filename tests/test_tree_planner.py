"""The tree planner's cost rule (tree_planner.py) and the copies' tries (drafters/lookup_tree.py), without models:
the likeliest-nodes tree, trees chosen where a pass over many tokens costs what a pass over one does (the flat
profile in benchmarks/xeon-amx-bf16/) and the chain where it does not (the AVX2 float32 profile in benchmarks/), the
runner-ups' acceptance learnt from tree rounds, and each row's trie whose first path is the chain's copy."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from speculoos_hf.drafters.lookup_tree import continuation_trees
from speculoos_hf.drafters.suffix_match import Continuations
from speculoos_hf.trees.tree import TokenTree, TreeShape
from speculoos_hf.trees import tree_planner
from speculoos_hf.trees.tree_planner import TreePlanner, best_tree, likeliest_nodes

ROOT = Path(__file__).resolve().parents[1]
FLAT = ROOT / "benchmarks" / "xeon-amx-bf16" / "xeon_amx_bf16_int8_draft.json"  # kept in the repo
AVX2_BF16 = ROOT / "benchmarks" / "epyc-avx2" / "profile_avx2_bf16.json"  # T(m) grows with m: not flat


class ProfileCosts:
    """The cost model's four answers the planner reads, from a saved profile (batch 1) and a given acceptance; a
    wider pass never cheaper than a narrower one (the cost model's monotone envelope)."""

    def __init__(self, path: Path, alpha: float):
        batch = json.loads(path.read_text())["batches"][0]
        measured = sorted((int(m), t) for m, t in batch["target_pass_s"].items())
        self.times = [(m, max(t for _, t in measured[: i + 1])) for i, (m, _) in enumerate(measured)]
        self.step = batch["draft_step_s"]
        self.alpha = alpha

    def target_time(self, tokens: int, batch: int | None = None) -> float:
        widths = [m for m, _ in self.times]
        return float(np.interp(tokens, widths, [t for _, t in self.times]))

    def draft_time(self, batch: int) -> float:
        return self.step

    def acceptance(self) -> list[float]:
        return [self.alpha] * 12

    def expected_tokens(self, k: int) -> float:
        return sum(self.alpha**j for j in range(k + 1))


def test_best_tree_takes_the_likeliest_nodes():
    shape, value = best_tree([0.9] * 4, lambda r: 0.5, nodes=4, depth=4)
    assert shape == TreeShape.chain(4)  # 0.9^4 = 0.66 beats any runner-up (0.1 * 0.5 = 0.05)
    assert math.isclose(value, 0.9 + 0.81 + 0.729 + 0.6561)
    shape, value = best_tree([0.5] * 3, lambda r: 0.5, nodes=5, depth=3)
    # root: rank 0 (0.5), rank 1 (0.25); depth 2 under rank 0: 0.25, then 0.125 (x2) ...
    assert shape.size == 5 and shape.depth <= 3 and sorted(shape.fan_out(), reverse=True)[0] >= 2
    assert math.isclose(value, 0.5 + 0.25 + 0.25 + 0.125 + 0.125)


def test_one_search_serves_every_node_budget():
    """The likeliest-nodes search's first n nodes are its best tree of n nodes (the planner searches once per
    round, not once per budget), with the nodes the draft feeds per depth counted as the tree of n nodes has them."""
    for alpha, runner_up, depth in (([0.9, 0.7, 0.5], 0.4, 5), ([0.5] * 6, 0.3, 6), ([0.8], 0.6, 3)):
        order = likeliest_nodes(alpha, lambda r: runner_up, 48, depth)
        for n in range(1, 49):
            shape, value = best_tree(alpha, lambda r: runner_up, n, depth)
            assert order.shape(min(n, order.size)) == shape and order.value(min(n, order.size)) == value
            fan = shape.fan_out()
            fed = tuple(sum(1 for m in shape.at_depth(d) if fan[m + 1]) for d in range(1, shape.depth))
            assert order.expanding[shape.size] == fed


def test_search_reused_while_its_inputs_have_not_moved(monkeypatch):
    """Rounds with the same acceptance and runner-ups reuse the last search (same plan); a changed acceptance or
    runner-up rate searches again and gives a fresh planner's decision."""
    searches = []
    search = tree_planner.likeliest_nodes
    monkeypatch.setattr(tree_planner, "likeliest_nodes", lambda *a, **kw: searches.append(a) or search(*a, **kw))
    planner, costs = TreePlanner("model"), ProfileCosts(FLAT, alpha=0.7)
    first = planner.plan(4, 1, costs)
    assert planner.plan(4, 1, costs) == first and len(searches) == 1
    costs.alpha = 0.8
    moved = planner.plan(4, 1, costs)
    assert len(searches) == 2 and moved.shape.size != first.shape.size  # 23 nodes at 0.8, 47 at 0.7
    assert moved == TreePlanner("model").plan(4, 1, costs)
    planner.runner_ups.observe([0, 8, 8, 8], [0, 8, 8, 8])
    assert planner.plan(4, 1, costs) != moved and len(searches) == 4  # the fresh planner's search, then this one


def test_trees_where_passes_are_flat_and_chains_where_not():
    planner = TreePlanner("model")
    flat = planner.plan(6, 1, ProfileCosts(FLAT, alpha=0.7))
    assert flat is not None and flat.shape.size > 6 and flat.shape.depth <= 6
    assert planner.last["tree_rate"] > planner.last["chain_rate"]
    assert planner.plan(6, 1, ProfileCosts(AVX2_BF16, alpha=0.7)) is None  # each token costs: the chain
    assert TreePlanner("model").plan(6, 1, None) is None  # nothing timed: the chain


def test_tree_instead_of_plain_rounds_where_it_beats_the_target_alone():
    """Where the pacer drafts nothing: the draft model's tree if it beats the target alone (flat passes, runner-ups
    paying), none where the target alone wins (a draft step as dear as a target pass), or for a given shape or
    copies."""
    costs = _with_gain(ProfileCosts(FLAT, alpha=0.5))
    plan = TreePlanner("model").plan_alone(6, 1, costs)
    assert plan is not None and plan.shape.size > plan.shape.depth  # runner-ups: wider than a chain
    dear = _with_gain(ProfileCosts(FLAT, alpha=0.5))
    dear.step = dear.target_time(1)
    assert TreePlanner("model").plan_alone(6, 1, dear) is None
    assert TreePlanner("model", fixed=(2, 1)).plan_alone(6, 1, costs) is None
    assert TreePlanner("lookup").plan_alone(6, 1, costs) is None


def _with_gain(costs: ProfileCosts, gain: float = 1.03) -> ProfileCosts:
    costs.min_gain = gain
    return costs


def test_fixed_shape_every_round_cut_to_k():
    plan = TreePlanner("model", fixed=(3, 2, 1, 1)).plan(2, 1, None)
    assert plan.shape.depth == 2 and plan.shape.size == 3 + 6 and plan.copy_nodes == 0
    plan = TreePlanner("hybrid", fixed=(2, 1)).plan(4, 1, None)
    assert plan.shape.size == 4 and plan.copy_nodes == 4 and plan.copy_depth == 4
    given, _ = best_tree([0.9] * 5, lambda r: 0.4, nodes=12, depth=5)  # a TreeShape as draft_tree
    plan = TreePlanner("model", fixed=given).plan(3, 1, None)
    assert plan.shape.depth == 3 and plan.shape.size == sum(d <= 3 for d in given.depths)


def test_runner_ups_learnt_from_tree_rounds():
    """Rows accept rank-1 children at the root: the planner's runner-up acceptance rises above its prior."""
    shape = TreeShape.from_branching((2, 1))  # nodes 0, 1 at depth 1; 2 under 0, 3 under 1
    tree = TokenTree.from_shape(shape, torch.zeros(8, 4, dtype=torch.long), torch.ones(8, 4, dtype=torch.bool))
    path = torch.tensor([[1, 3]] * 8)  # rank 1 at the root, then its only child
    planner = TreePlanner("model")
    before = planner.runner_ups.rate(1)
    for _ in range(5):
        planner.observe(tree, path, [2] * 8)
    assert planner.runner_ups.rate(1) > before + 0.3


def _continuations(rows: list[list[list[int]]], match: list[int], caps: list[int]) -> Continuations:
    """Hits' continuations per row (most recent last)."""
    tokens, row = [], []
    for b, hits in enumerate(rows):
        for h in hits:
            tokens.append(h)
            row.append(b)
    W = max(map(len, tokens))
    arr = np.array([t + [-1] * (W - len(t)) for t in tokens], dtype=np.int64)
    return Continuations(arr, np.array(row), np.arange(len(row)), np.array(caps), np.array(match))


def test_copies_trie_first_path_is_the_chains_copy():
    # row 0: "5 6 7" twice, "5 8" once, "9" once; row 1: one occurrence, copied whole
    c = _continuations([[[5, 6, 7], [5, 8, 1], [9, 2, 2], [5, 6, 7]], [[4, 4, 4]]], match=[2, 3], caps=[3, 3])
    trees = continuation_trees(c, 2, threshold=0.2, budget=5, branches=2)
    tree = TokenTree(torch.from_numpy(trees.tokens), torch.from_numpy(trees.parents), torch.from_numpy(trees.valid))
    first = tree.children[:, :, 0]
    assert tree.tokens[0, first[0, 0] - 1] == 5 and tree.tokens[0, first[0, first[0, 0]] - 1] == 6
    # by count (5: 3 hits; 5 6, 5 6 7: 2), then recency (9 ... is the latest single hit), then depth
    assert trees.tokens[0, : trees.valid[0].sum()].tolist() == [5, 6, 7, 9, 2]
    assert trees.tokens[1, : trees.valid[1].sum()].tolist() == [4, 4, 4] and trees.parents[1, :3].tolist() == [-1, 0, 1]
    assert trees.confidence[0, 0] > trees.confidence[0, 3] > 0  # 3/4 of the hits, then 1/4
    narrow = continuation_trees(c, 2, threshold=0.3, budget=5, branches=1)  # threshold and branches cut
    assert narrow.tokens[0, : narrow.valid[0].sum()].tolist() == [5, 6, 7]


def test_copies_cut_where_a_wider_pass_stops_paying():
    c = _continuations([[[5, 6, 7], [5, 8, 1], [9, 2, 2], [5, 6, 7]]], match=[4], caps=[3])
    trees = continuation_trees(c, 1, threshold=0.0, budget=8, branches=3)
    tree = TokenTree(torch.from_numpy(trees.tokens), torch.from_numpy(trees.parents), torch.from_numpy(trees.valid),
                     confidence=torch.from_numpy(trees.confidence))
    planner = TreePlanner("lookup")
    flat = torch.ones(9, dtype=torch.float64)
    steep = torch.arange(1, 10, dtype=torch.float64)  # each token costs a pass
    assert planner.cut_copies(tree, flat).valid.sum() == tree.valid.sum()  # free: every node
    cut = planner.cut_copies(tree, 1.0 + 0.12 * torch.arange(9, dtype=torch.float64))
    assert 0 < cut.valid.sum() < tree.valid.sum() and cut.tokens[0, 0] == 5  # the likeliest first
    assert planner.cut_copies(tree, steep).valid.sum() == 0
    assert planner.cut_copies(tree, 1.0 + 0.12 * torch.arange(9, dtype=torch.float64), ratio=0.2).valid.sum() < \
        cut.valid.sum()  # copies that fared worse than their confidences: fewer nodes


def test_hybrid_model_tree_as_deep_as_the_models_k():
    """Beside copies up to 16 tokens, the model's tree is only as deep as the model's own k; without the model,
    copies alone."""
    planner = TreePlanner("hybrid")
    costs = ProfileCosts(FLAT, alpha=0.7)
    plan = planner.plan(16, 1, costs, model_k=4)
    assert plan is not None and plan.shape.depth <= 4 and plan.copy_depth == 16
    plan = planner.plan(16, 1, costs, model_k=0)
    assert plan.shape is None and plan.copy_nodes > 0
