"""Dynamic trees (trees/likeliest_fill.py): a shape's budget per depth, filled row by row with the draft's likeliest
paths, the chain of first candidates always in; exact greedy output and more tokens per pass than the fixed
topology of the same budget. (Sampling exactness: tests/test_tree_distribution.py, whose tuple shapes are filled
so.)"""

from __future__ import annotations

import torch

from conftest import make_prompt, tiny_pair
from speculoos_hf.trees.likeliest_fill import Growth, Levels
from speculoos_hf.trees.tree import TreeShape


def test_levels_of_a_shape():
    levels = Levels.of(TreeShape.from_branching((3, 2, 1, 1)))
    assert (levels.sizes, levels.expanded, levels.branches, levels.size) == ((3, 6, 6, 6), (3, 6, 6, 0), 3, 21)
    spine_deep = TreeShape((-1, 0, 1, -1, 0), (0, 0, 0, 1, 1))  # a chain of 3 and runner-ups at depths 1 and 2
    assert (Levels.of(spine_deep).sizes, Levels.of(spine_deep).expanded) == ((2, 2, 1), (1, 1, 0))


def _log(values: list[list[float]], vocab: int = 8) -> torch.Tensor:
    """Log-probabilities [B, m, V] whose likeliest tokens are 0, 1, ... with the given log q's (the rest -20)."""
    out = torch.full((len(values), len(values[0]) if isinstance(values[0][0], list) else 1, vocab), -20.0)
    for b, row in enumerate(values):
        for e, logs in enumerate(row if isinstance(row[0], list) else [row]):
            out[b, e, : len(logs)] = torch.tensor(logs)
    return out


def test_each_row_keeps_its_likeliest_paths_and_the_first_candidates_chain():
    """Budget: 2 nodes at depth 1 (both expanded, 2 candidates each), 2 at depth 2. Row 0's runner-up at depth 1 is
    unlikely: both depth-2 nodes go below its first candidate; row 1's runner-up is nearly as likely as its first
    candidate and certain of its child: it takes one, beside the first candidates' chain (kept though row 1's first
    candidate's child is less likely)."""
    levels = Levels(sizes=(2, 2), expanded=(2, 0), branches=2)
    grow = Growth(2, levels, "cpu", None)
    root = torch.zeros(2, 1, dtype=torch.long)
    logq = _log([[-0.1, -2.5], [-0.7, -0.8]])  # [B, 1, V]
    level = grow.add_level(root, logq.topk(2, -1).indices, None, logq)
    assert level.tolist() == [[1, 2], [1, 2]]
    front = grow.front(level)
    assert front.tolist() == [[1, 2], [1, 2]]
    logq = _log([[[-1.0, -1.2], [-0.05, -3.0]], [[-2.0, -2.1], [-0.01, -5.0]]])  # [B, 2, V]
    grow.add_level(front, logq.topk(2, -1).indices, None, logq)
    tree = grow.finish()
    assert tree.parents.tolist() == [[-1, -1, 0, 0], [-1, -1, 0, 1]]
    assert tree.tokens[:, 2:].tolist() == [[0, 1], [0, 0]]
    assert tree.valid.all()


def test_front_expands_the_likeliest_nodes_first_chain_included():
    levels = Levels(sizes=(3, 2), expanded=(2, 0), branches=3)
    grow = Growth(1, levels, "cpu", None)
    logq = _log([[-1.5, -0.9, -1.0]])  # ranked: tokens 1, 2, 0 (the first candidate is token 1)
    level = grow.add_level(torch.zeros(1, 1, dtype=torch.long), logq.topk(3, -1).indices, None, logq)
    assert grow.front(level).tolist() == [[1, 2]]  # the first candidate (spine) and the next likeliest
    assert grow.sees(grow.front(level), torch.zeros(1, 0, dtype=torch.long)).tolist() == [[[True, False],
                                                                                            [False, True]]]


def test_greedy_dynamic_trees_equal_the_target_and_beat_the_fixed_topology():
    """Same budget (3, 2, 1, 1) and draft forwards: per-row likeliest nodes take no more target passes than the
    fixed topology, and the output is the target's own in a batch."""
    target, draft = tiny_pair("llama", noise=0.15)
    ids = make_prompt(6, seed=5, batch=4)
    ref = target.generate(ids, do_sample=False, max_new_tokens=40)
    passes = {}
    fixed = TreeShape.from_branching((3, 2, 1, 1))
    for name, tree in (("fixed", fixed), ("likeliest", (3, 2, 1, 1))):
        out = target.generate(ids, do_sample=False, max_new_tokens=40, draft_model=draft, num_draft_tokens=4,
                              draft_tree=tree)
        assert torch.equal(out, ref), name
        passes[name] = target.speculative_stats.target_forward_passes
    assert passes["likeliest"] <= passes["fixed"], passes
