"""generate(..., block_verification=True): the block rule of Sun et al. (2024) end to end. G-tests with power against
the exact target distribution, and at least as many accepted tokens as the token-wise rule on the same models."""

from __future__ import annotations

import pytest

import speculoos_hf.loop.decoding as decoding
from gtest import ALPHA, N, PROMPT, _always_accept, _generate, _processors, exact_distribution, g_test


CASES = {
    "plain_K4": dict(settings={}, kw=dict(num_draft_tokens=4)),
    "temperature_top_p_K3": dict(settings=dict(temperature=0.7, top_p=0.9), kw=dict(num_draft_tokens=3)),
    "eos_in_block": dict(settings={}, kw=dict(num_draft_tokens=4), eos=2),
    "hybrid_with_lookup": dict(settings=dict(temperature=0.9), kw=dict(num_draft_tokens=3, prompt_lookup_num_tokens=3)),
}


@pytest.mark.parametrize("name", list(CASES))
def test_block_verification_exact(gtest_pair, name, monkeypatch):
    target, draft = gtest_pair
    case = CASES[name]
    eos = case.get("eos")
    settings = dict(case["settings"], **({"eos_token_id": eos} if eos is not None else {}))
    kw = dict(case["kw"], draft_model=draft, block_verification=True)
    expected = exact_distribution(target, PROMPT, _processors(**case["settings"]), eos)
    (spec,) = _generate(target, [PROMPT], N, seed=31, **settings, **kw)
    assert 0.05 < target.speculative_stats.acceptance_rate < 0.98
    p = g_test(spec, expected)
    assert p > ALPHA, f"{name}: block-verified samples deviate (p={p:.2e})"
    monkeypatch.setattr(decoding, "block_verify", _always_accept)
    (broken,) = _generate(target, [PROMPT], N, seed=32, **settings, **kw)
    assert g_test(broken, expected) < ALPHA, f"{name}: the test cannot detect an always-accept rule"


def test_block_verification_batched_prompts_exact(gtest_pair):
    target, draft = gtest_pair
    prompts = [[2], [1, 3, 0], [3, 3, 1, 0, 2, 1]]
    groups = _generate(target, prompts, N // 2, seed=33, draft_model=draft, num_draft_tokens=4,
                       block_verification=True, temperature=0.8)
    for prompt, samples in zip(prompts, groups):
        p = g_test(samples, exact_distribution(target, prompt, _processors(temperature=0.8)))
        assert p > ALPHA, f"prompt {prompt}: batched block-verified samples deviate (p={p:.2e})"


def test_block_accepts_at_least_as_many_tokens(gtest_pair):
    target, draft = gtest_pair
    rates = {}
    for block in (False, True):
        _generate(target, [PROMPT], N, seed=34, draft_model=draft, num_draft_tokens=4, block_verification=block)
        rates[block] = target.speculative_stats.mean_accepted_length
    assert rates[True] >= rates[False] - 0.01, rates
