"""Exactness of sampling with token trees through generate(), proven by G-tests with power checks (gtest.py): the
tiny 4-token target, every continuation's exact probability, thousands of samples in one batched call. Trees from
the draft model (sampled without replacement), from prompt lookup (copies, q one-hot) and from both (the hybrid),
at batch 1 and in a left-padded batch, with top-k / top-p (candidates past q's support), the repetition penalty and
a user's own logits processor (prefix-dependent), and rows finishing at different rounds (EOS). Both candidate
rules of the draft model's sampled trees (top candidates, drawn ones) are tested on their own. Power: the same test
on a broken tree rule (the first path always accepted) must reject."""

from __future__ import annotations

import pytest
import torch
from transformers import LogitsProcessor, LogitsProcessorList

import speculoos_hf.trees.tree_round as tree_round
from gtest import ALPHA, PROMPT, T, _generate, _processors, exact_distribution, g_test
from speculoos_hf.trees.candidate_rule import CandidateRule
from speculoos_hf.trees.tree import TreeShape
from speculoos_hf.trees.tree_verify import _verdict
from speculoos_hf.loop.verify import sample_from_weights


class LastTokenPenalty(LogitsProcessor):
    """A user's own processor whose effect depends on the prefix: the latest token's logit is lowered."""

    def __call__(self, input_ids, scores):
        return scores.scatter_add(1, input_ids[:, -1:], torch.full_like(scores[:, :1], -1.5))


def _first_path(tree, p, u, e):
    """Broken: the first candidates' path always accepted, the next token from the target there."""
    B = p.shape[0]
    rows, current = torch.arange(B), torch.zeros(B, dtype=torch.long)
    children = tree.children.to(p.device)
    for _ in range(tree.max_depth):
        child = children[rows, current, 0]
        current = torch.where(child > 0, child, current)
    return _verdict(tree, current, sample_from_weights(p[rows, current], e))


N = 4_000  # samples per test (a third of gtest.N: the broken rule's p stays below 1e-40)
MODEL = dict(num_draft_tokens=3, draft_tree=(3, 2, 1))  # a budget per depth: each row's likeliest nodes fill it
FIXED = dict(num_draft_tokens=3, draft_tree=TreeShape.from_branching((3, 2, 1)))  # a topology: drafted as given
LOOKUP = dict(prompt_lookup_num_tokens=4, draft_tree=(2, 2, 1, 1))
HYBRID = dict(num_draft_tokens=3, prompt_lookup_num_tokens=4, draft_tree=(2, 1, 1))
CASES = {  # (drafter options, sampling settings, eos, user processor)
    "model_top_k_temperature": (MODEL, dict(top_k=2, temperature=0.8), None, False),
    "model_top_p_repetition": (MODEL, dict(top_p=0.8, repetition_penalty=1.5), None, False),
    "model_eos_user_processor": (MODEL, dict(temperature=1.2), 2, True),
    "fixed_topology_top_p": (FIXED, dict(top_p=0.9), None, False),
    "lookup": (LOOKUP, dict(temperature=0.7), None, False),
    "hybrid_eos": (HYBRID, dict(top_k=3), 1, False),
}


def _run(gtest_pair, case, prompts, seed, n_each):
    target, draft = gtest_pair
    options, settings, eos, user = CASES[case]
    kw = dict(options, **settings)
    if "num_draft_tokens" in options:
        kw["draft_model"] = draft
    if eos is not None:
        kw["eos_token_id"] = eos
    if user:
        kw["logits_processor"] = LogitsProcessorList([LastTokenPenalty()])
    return _generate(target, prompts, n_each, seed=seed, **kw)


def _expected(gtest_pair, case, prompt):
    target, _ = gtest_pair
    _, settings, eos, user = CASES[case]
    procs = _processors(**settings)
    if user:
        procs.insert(0, LastTokenPenalty())  # the user's list comes before the warpers, as generate() orders them
    return exact_distribution(target, prompt, procs, eos)


@pytest.mark.parametrize("case", list(CASES))
def test_tree_sampling_matches_exact_distribution(gtest_pair, case, monkeypatch):
    (samples,) = _run(gtest_pair, case, [PROMPT], seed=1, n_each=N)
    stats = gtest_pair[0].speculative_stats
    assert stats.draft_tokens_accepted > 0.05 * stats.new_tokens, "the trees must be accepted often enough to matter"
    expected = _expected(gtest_pair, case, PROMPT)
    p = g_test(samples, expected)
    assert p > ALPHA, f"{case}: tree sampling deviates from the exact target distribution (p={p:.2e})"
    if CASES[case][2] is not None:
        assert any(len(o) < T for o in samples), "rows must finish at different rounds"
    monkeypatch.setattr(tree_round, "tree_sample_verify", _first_path)
    (broken,) = _run(gtest_pair, case, [PROMPT], seed=2, n_each=N)
    p_broken = g_test(broken, expected)
    assert p_broken < ALPHA, f"{case}: the test cannot detect an always-accept tree rule"


@pytest.mark.parametrize("case", ["model_eos_user_processor", "lookup"])
def test_tree_sampling_in_a_left_padded_batch(gtest_pair, case, monkeypatch):
    """Prompts of lengths 1, 3 and 6 in one batch: each group has its own exact distribution."""
    prompts = [[2], [1, 3, 0], [3, 3, 1, 0, 3, 1]]
    groups = _run(gtest_pair, case, prompts, seed=3, n_each=N // 2)
    for prompt, samples in zip(prompts, groups):
        p = g_test(samples, _expected(gtest_pair, case, prompt))
        assert p > ALPHA, f"{case}, prompt {prompt}: batched tree samples deviate (p={p:.2e})"
    monkeypatch.setattr(tree_round, "tree_sample_verify", _first_path)
    groups = _run(gtest_pair, case, prompts, seed=4, n_each=N // 2)
    worst = max(g_test(s, _expected(gtest_pair, case, pr)) for pr, s in zip(prompts, groups))
    assert worst < ALPHA, f"{case}: the batched test cannot detect an always-accept tree rule"


@pytest.mark.parametrize("rule", ["top", "drawn"])
@pytest.mark.parametrize("case", ["model_top_k_temperature", "model_eos_user_processor", "hybrid_eos"])
def test_each_candidate_rule_is_exact(gtest_pair, case, rule, monkeypatch):
    """The draft model's nodes as its top candidates (deterministic, one-hot q) or drawn without replacement in every
    round, whatever the measured choice would be (candidate_rule.py): exact either way, and the test has power."""
    monkeypatch.setattr(CandidateRule, "top", property(lambda self: rule == "top"))
    (samples,) = _run(gtest_pair, case, [PROMPT], seed=5, n_each=N)
    stats = gtest_pair[0].speculative_stats
    assert stats.draft_tokens_accepted > 0.05 * stats.new_tokens
    expected = _expected(gtest_pair, case, PROMPT)
    p = g_test(samples, expected)
    assert p > ALPHA, f"{case}, {rule} candidates: tree sampling deviates from the exact distribution (p={p:.2e})"
    monkeypatch.setattr(tree_round, "tree_sample_verify", _first_path)
    (broken,) = _run(gtest_pair, case, [PROMPT], seed=6, n_each=N)
    assert g_test(broken, expected) < ALPHA, f"{case}, {rule}: the test cannot detect an always-accept tree rule"


def test_top_candidates_in_a_left_padded_batch(gtest_pair, monkeypatch):
    """Top candidates in every round, prompts of lengths 1, 3 and 6 in one batch: each group exact."""
    monkeypatch.setattr(CandidateRule, "top", property(lambda self: True))
    prompts = [[2], [1, 3, 0], [3, 3, 1, 0, 3, 1]]
    groups = _run(gtest_pair, "model_eos_user_processor", prompts, seed=7, n_each=N // 2)
    for prompt, samples in zip(prompts, groups):
        p = g_test(samples, _expected(gtest_pair, "model_eos_user_processor", prompt))
        assert p > ALPHA, f"prompt {prompt}: batched top-candidate tree samples deviate (p={p:.2e})"
