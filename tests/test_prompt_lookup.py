"""Prompt lookup and hybrid drafting: float32 greedy equality with the target alone (batched) and G-tests with power
against the exact target distribution (the method of test_distribution.py, helpers in gtest.py). The suffix matcher
itself, its cache and its own G-tests: test_suffix_lookup.py."""

from __future__ import annotations

import pytest
import torch
from transformers import LogitsProcessor, LogitsProcessorList

import speculoos_hf.loop.decoding as decoding
from conftest import gtest_model, left_pad_batch, on_flat_machine, tiny_model
from gtest import ALPHA, N, PROMPT, _always_accept, _generate, _processors, exact_distribution, g_test
from speculoos_hf import enable_speculative
from speculoos_hf.drafters.prompt_lookup import PromptLookupDrafter

PAIR = dict(logit_scale=2.0)  # the `pair` fixture: a Llama with less peaked logits, and its perturbed copy


def _repetitive_prompts(batch: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded prompts that repeat a random phrase, so n-grams recur (lengths differ per row)."""
    gen = torch.Generator().manual_seed(seed)
    prompts = []
    for i in range(batch):
        phrase = torch.randint(0, 60, (4 + i,), generator=gen)
        prompts.append(torch.cat([phrase, torch.randint(0, 60, (2,), generator=gen), phrase, phrase[:2]]))
    return left_pad_batch(prompts)


@pytest.mark.parametrize("num_tokens,ngram", [(1, 1), (3, 2), (10, 3)])
@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_prompt_lookup_greedy_equals_target_batched(arch, num_tokens, ngram):
    """The cost model times with the flat profile: on a busy machine's wall clock it may rightly copy nothing."""
    target = enable_speculative(tiny_model(arch, seed=0, logit_scale=2.0))
    ids, mask = _repetitive_prompts(3)
    ref = target.generate(ids, attention_mask=mask, do_sample=False, max_new_tokens=24)
    with on_flat_machine():
        out = target.generate(ids, attention_mask=mask, do_sample=False, max_new_tokens=24,
                              prompt_lookup_num_tokens=num_tokens, max_matching_ngram_size=ngram)
    assert torch.equal(out, ref)
    stats = target.speculative_stats
    assert stats.draft_forward_passes == 0 and stats.draft_tokens_proposed > 0
    assert stats.new_tokens == 3 * 24


class RepeatPeriod(LogitsProcessor):
    """Makes any model continue periodically (period 4): the kind of text prompt lookup is for."""

    def __call__(self, input_ids, scores):
        bonus = torch.zeros_like(scores).scatter_(1, input_ids[:, -4:-3], 50.0)
        return scores + bonus


def test_prompt_lookup_copies_what_the_target_repeats(pair):
    """On periodic text the copies are accepted: about 5 tokens per target pass, same output as the target. The cost
    model times with the flat Xeon profile (a wall clock on a busy machine could make it cut copies short)."""
    target, _ = pair
    ids = torch.tensor([[7, 3, 9, 11, 7, 3]])
    kw = dict(do_sample=False, max_new_tokens=30, logits_processor=LogitsProcessorList([RepeatPeriod()]))
    with on_flat_machine():
        out = target.generate(ids, prompt_lookup_num_tokens=5, **kw)
    assert torch.equal(out, target.generate(ids, **kw))
    stats = target.speculative_stats
    assert stats.acceptance_rate > 0.9 and stats.target_forward_passes <= 8


@pytest.mark.parametrize("K,lookup", [(3, 2), (4, 6)])
def test_hybrid_greedy_equals_target_batched(pair, K, lookup):
    target, draft = pair
    ids, mask = _repetitive_prompts(4, seed=3)
    ref = target.generate(ids, attention_mask=mask, do_sample=False, max_new_tokens=20)
    out = target.generate(ids, attention_mask=mask, do_sample=False, max_new_tokens=20, draft_model=draft,
                          num_draft_tokens=K, prompt_lookup_num_tokens=lookup)
    assert torch.equal(out, ref)
    stats = target.speculative_stats
    assert stats.draft_forward_passes > 0 and stats.draft_tokens_accepted > 0


def test_hybrid_rounds_use_both_sources(pair):
    """Rounds where the lookup has a copy leave the draft idle; its cache catches up without recomputing."""
    target, draft = pair
    ids = torch.tensor([[7, 3, 9, 11, 7, 3]])
    kw = dict(do_sample=False, max_new_tokens=30, logits_processor=LogitsProcessorList([RepeatPeriod()]))
    out = target.generate(ids, draft_model=draft, num_draft_tokens=3, prompt_lookup_num_tokens=6, **kw)
    hybrid = target.speculative_stats
    assert torch.equal(out, target.generate(ids, **kw))
    target.generate(ids, draft_model=draft, num_draft_tokens=3, **kw)
    model_only = target.speculative_stats
    assert hybrid.draft_forward_passes < model_only.draft_forward_passes
    assert hybrid.target_forward_passes < model_only.target_forward_passes
    # no recompute: the draft is fed the prompt, each committed token at most once, and its own drafts
    assert hybrid.draft_input_tokens <= ids.shape[1] + 30 + hybrid.draft_forward_passes * 2


LOOKUP_CASES = {  # prompt lookup alone: test_suffix_lookup.py
    "hybrid_plain": dict(settings={}, kw=dict(prompt_lookup_num_tokens=3, num_draft_tokens=3), draft=True),
    "hybrid_repetition_penalty": dict(settings=dict(repetition_penalty=1.5),
                                      kw=dict(prompt_lookup_num_tokens=2, num_draft_tokens=4), draft=True),
}


@pytest.mark.parametrize("name", list(LOOKUP_CASES))
def test_lookup_and_hybrid_sampling_exact(name, gtest_pair, monkeypatch):
    target, draft = gtest_pair
    if not LOOKUP_CASES[name].get("draft"):
        draft = None
    case = LOOKUP_CASES[name]
    settings, kw = case["settings"], dict(case["kw"])
    if draft is not None:
        kw["draft_model"] = draft
    expected = exact_distribution(target, PROMPT, _processors(**settings))
    (spec,) = _generate(target, [PROMPT], N, seed=11, **settings, **kw)
    stats = target.speculative_stats
    assert 0.05 < stats.acceptance_rate < 0.98 and stats.draft_tokens_proposed > N
    p = g_test(spec, expected)
    assert p > ALPHA, f"{name}: samples deviate from the exact target distribution (p={p:.2e})"

    monkeypatch.setattr(decoding, "speculative_verify", _always_accept)
    (broken,) = _generate(target, [PROMPT], N, seed=12, **settings, **kw)
    p_broken = g_test(broken, expected)
    assert p_broken < ALPHA, f"{name}: the test cannot detect an always-accept rule (p={p_broken:.2e})"


def test_hybrid_batched_prompts_exact(gtest_pair, monkeypatch):
    target, _ = gtest_pair
    draft = gtest_model(5)
    prompts = [[2], [1, 3, 0], [3, 3, 1, 0, 2, 1]]
    kw = dict(draft_model=draft, num_draft_tokens=3, prompt_lookup_num_tokens=3, temperature=0.9)
    groups = _generate(target, prompts, N // 2, seed=13, **kw)
    for prompt, samples in zip(prompts, groups):
        p = g_test(samples, exact_distribution(target, prompt, _processors(temperature=0.9)))
        assert p > ALPHA, f"prompt {prompt}: batched hybrid samples deviate (p={p:.2e})"
    monkeypatch.setattr(decoding, "speculative_verify", _always_accept)
    groups = _generate(target, prompts, N // 2, seed=14, **kw)
    worst = max(g_test(s, exact_distribution(target, pr, _processors(temperature=0.9))) for pr, s in zip(prompts, groups))
    assert worst < ALPHA


def test_drafter_object_as_draft_model(pair):
    """Any object with the drafter interface is accepted as draft_model. The cost model times with the flat profile
    (on a busy machine's wall clock it may rightly draft nothing)."""
    target, _ = pair
    ids, mask = _repetitive_prompts(2, seed=9)
    ref = target.generate(ids, attention_mask=mask, do_sample=False, max_new_tokens=12)
    with on_flat_machine():
        out = target.generate(ids, attention_mask=mask, do_sample=False, max_new_tokens=12,
                              draft_model=PromptLookupDrafter(num_tokens=4))
    assert torch.equal(out, ref)
    assert target.speculative_stats.draft_tokens_proposed > 0


def test_invalid_prompt_lookup_settings_refused(pair):
    target, _ = pair
    with pytest.raises(ValueError, match="prompt_lookup_num_tokens"):
        target.generate(torch.tensor([[1, 2]]), max_new_tokens=3, prompt_lookup_num_tokens=0)
