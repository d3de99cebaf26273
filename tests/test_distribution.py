"""Exactness of speculative sampling, proven statistically against distributions computed exactly.

A tiny target with a 4-token vocabulary: every continuation of T tokens is enumerated and its target-only
probability computed with the same logits processors generate() applies. Thousands of speculative samples
(one batched generate call) are compared with a G-test at a fixed significance level, with fixed seeds, so
the outcome is deterministic. Each case also shows the test's power: the same test on a known-wrong sampler
(draft-only samples, or a rule that accepts every draft) must reject. The method's helpers are in gtest.py, the
models in conftest.py (gtest_model, gtest_draft, the gtest_pair fixture).
"""

from __future__ import annotations

import pytest

import speculoos_hf.loop.decoding as decoding
from gtest import ALPHA, N, PROMPT, T, V, _always_accept, _generate, _model, _processors, exact_distribution, g_test
from speculoos_hf import enable_speculative

CASES = {
    "plain_T1": dict(settings={}, K=4),
    "temperature": dict(settings=dict(temperature=0.6), K=3),
    "top_k": dict(settings=dict(top_k=2), K=3),
    "top_p": dict(settings=dict(top_p=0.7), K=3),
    "repetition_penalty": dict(settings=dict(repetition_penalty=1.8), K=3),
    "K1": dict(settings={}, K=1),
    "K5_temperature_top_p": dict(settings=dict(temperature=1.3, top_p=0.9), K=5),
    "eos_in_block": dict(settings={}, K=4, eos=2),
    "adaptive_lookahead": dict(settings=dict(temperature=0.8), K=5, extra=dict(draft_confidence_threshold=0.7)),
}


@pytest.mark.parametrize("name", list(CASES))
def test_speculative_matches_exact_distribution(name, gtest_pair, monkeypatch):
    target, draft = gtest_pair
    case = CASES[name]
    settings, K, eos = case["settings"], case["K"], case.get("eos")
    procs = _processors(**settings)
    expected = exact_distribution(target, PROMPT, procs, eos)
    gen_kwargs = dict(settings, eos_token_id=eos) if eos is not None else dict(settings)

    extra = case.get("extra", {})
    (spec,) = _generate(target, [PROMPT], N, seed=1, draft_model=draft, num_draft_tokens=K, **gen_kwargs, **extra)
    stats = target.speculative_stats
    assert 0.05 < stats.acceptance_rate < 0.98, "the draft must be neither useless nor perfect for a meaningful test"
    if extra:  # the threshold really shortened some rounds
        row_rounds = sum(r.target_forward_passes for r in stats.per_row)
        assert stats.draft_tokens_proposed < K * row_rounds
    p_spec = g_test(spec, expected)
    assert p_spec > ALPHA, f"{name}: speculative samples deviate from the exact target distribution (p={p_spec:.2e})"

    # power 1: samples from the draft alone must be rejected by the same test
    (draft_only,) = _generate(enable_speculative(draft), [PROMPT], N, seed=2, **gen_kwargs)
    p_draft = g_test(draft_only, expected)
    assert p_draft < ALPHA, f"{name}: the test cannot tell draft-only samples apart (p={p_draft:.2e})"

    # power 2: a rule that accepts every draft must be rejected too
    monkeypatch.setattr(decoding, "speculative_verify", _always_accept)
    (broken,) = _generate(target, [PROMPT], N, seed=3, draft_model=draft, num_draft_tokens=K, **gen_kwargs, **extra)
    p_broken = g_test(broken, expected)
    assert p_broken < ALPHA, f"{name}: the test cannot detect an always-accept rule (p={p_broken:.2e})"

    if eos is not None:  # EOS really happened inside draft blocks
        assert any(len(o) < T for o in spec)


def test_batched_rows_with_different_prompt_lengths(gtest_pair, monkeypatch):
    """One left-padded batch, prompts of lengths 1, 3 and 6: each row group has its own exact distribution."""
    target, draft = gtest_pair
    prompts = [[2], [1, 3, 0], [3, 3, 1, 0, 2, 1]]
    settings = dict(temperature=0.8, repetition_penalty=1.3)
    procs = _processors(**settings)
    groups = _generate(target, prompts, N // 2, seed=4, draft_model=draft, num_draft_tokens=4, **settings)
    per_row = target.speculative_stats.per_row
    assert len(per_row) == 3 * (N // 2)
    for prompt, samples in zip(prompts, groups):
        p = g_test(samples, exact_distribution(target, prompt, procs))
        assert p > ALPHA, f"prompt {prompt}: batched speculative samples deviate (p={p:.2e})"

    monkeypatch.setattr(decoding, "speculative_verify", _always_accept)
    groups = _generate(target, prompts, N // 2, seed=5, draft_model=draft, num_draft_tokens=4, **settings)
    worst = max(g_test(s, exact_distribution(target, pr, procs)) for pr, s in zip(prompts, groups))
    assert worst < ALPHA, "the batched test cannot detect an always-accept rule"


class _LenOnly:
    """Stands for a tokenizer shared by both models: generate() only needs its length for the vocabulary check."""

    def __init__(self, n: int):
        self.n = n

    def __len__(self) -> int:
        return self.n


@pytest.mark.parametrize("draft_ids", [V, V + 3], ids=["draft_lacks_pad_id", "draft_has_ids_target_lacks"])
def test_vocab_size_mismatch_stays_exact(draft_ids, gtest_pair, monkeypatch):
    """Padded-embedding pairs: ids only one model has get probability 0 there; the output is still exactly p."""
    target, _ = gtest_pair
    draft = _model(7, n_ids=draft_ids)
    expected = exact_distribution(target, PROMPT, _processors(temperature=0.9))
    kwargs = dict(draft_model=draft, num_draft_tokens=3, temperature=0.9, tokenizer=_LenOnly(V))
    (spec,) = _generate(target, [PROMPT], N, seed=6, **kwargs)
    assert 0.05 < target.speculative_stats.acceptance_rate < 0.98
    p = g_test(spec, expected)
    assert p > ALPHA, f"vocab {draft_ids} vs {V + 1}: speculative samples deviate (p={p:.2e})"
    monkeypatch.setattr(decoding, "speculative_verify", _always_accept)
    (broken,) = _generate(target, [PROMPT], N, seed=7, **kwargs)
    if draft_ids == V:  # the always-accept rule keeps the draft's choices: detectable
        assert g_test(broken, expected) < ALPHA
    else:  # ...and it would even emit ids the target does not have
        assert any(t >= V for o in broken for t in o) or g_test(broken, expected) < ALPHA
