"""num_draft_tokens=None (the default): a cost model picks k each round. Exact whatever it picks (greedy equality,
G-test with power), and a draft that is never right gets switched off rather than slowing generation down."""

from __future__ import annotations

import functools
import itertools

import pytest
import torch

import speculoos_hf.loop.decoding as decoding
from conftest import GTEST_PAD, GTEST_V, left_pad_batch, make_prompt, on_flat_machine, tiny_model, tiny_pair
from gtest import ALPHA, N, PROMPT, _always_accept, _generate, _processors, exact_distribution, g_test
from speculoos_hf import enable_speculative
from speculoos_hf.drafters.base import Proposal
from speculoos_hf.pacing.lookahead import CostModelLookahead


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_auto_k_greedy_equals_target_batched(arch):
    """The cost model times with the flat profile: on a busy machine's wall clock it may rightly draft nothing."""
    target, draft = tiny_pair(arch)
    ids, mask = left_pad_batch([make_prompt(n, seed=n)[0] for n in (2, 7, 4)])
    ref = target.generate(ids, attention_mask=mask, do_sample=False, max_new_tokens=40)
    with on_flat_machine():
        out = target.generate(ids, attention_mask=mask, do_sample=False, max_new_tokens=40, draft_model=draft)
    assert torch.equal(out, ref)
    stats = target.speculative_stats
    assert stats.draft_tokens_accepted > 0 and stats.num_draft_tokens >= 4


def test_useless_draft_is_switched_off():
    """A draft from another random model: acceptance ~0, so after a few rounds most rounds draft nothing."""
    target = enable_speculative(tiny_model("llama", seed=0))
    bad = tiny_model("llama", seed=99)
    ids = make_prompt(5, seed=3)
    out = target.generate(ids, do_sample=False, max_new_tokens=120, draft_model=bad)
    stats = target.speculative_stats
    assert torch.equal(out, target.generate(ids, do_sample=False, max_new_tokens=120))
    assert stats.acceptance_rate < 0.2
    assert stats.draft_tokens_proposed < 0.3 * stats.new_tokens  # speculation was off for most of the run
    assert stats.rounds_without_drafts >= stats.target_forward_passes // 2
    assert 1 in stats.cost_model["target_pass_s_measured"]  # what it measured is on the stats
    target.generate(ids, do_sample=False, max_new_tokens=5, draft_model=bad, num_draft_tokens=2)
    assert target.speculative_stats.cost_model is None  # a given K: no cost model


def test_auto_k_sampling_exact(gtest_pair, monkeypatch):
    """Exact whatever k each round gets. With 12,000 rows per pass the cost model rightly keeps speculation off (a
    pass that wide is compute-bound), so the rounds' k follow a schedule that varies round by round as the
    policy's would, through the same `choose_k` seam."""
    target, draft = gtest_pair
    schedule = itertools.cycle([3, 0, 1, 4, 2])

    def scheduled(self, batch=None, limit=None, remaining=None, rows=None):
        return max(0, min(next(schedule), self.max_k, limit if limit is not None else self.max_k))

    monkeypatch.setattr(CostModelLookahead, "choose_k", scheduled)
    expected = exact_distribution(target, PROMPT, _processors(temperature=0.8))
    (spec,) = _generate(target, [PROMPT], N, seed=21, draft_model=draft, temperature=0.8)
    assert target.speculative_stats.draft_tokens_proposed > 0
    assert g_test(spec, expected) > ALPHA

    def always_accept(draft_tokens, draft_probs, target_probs, uniform, exp_noise, num_proposed=None):
        B, K = draft_tokens.shape
        n = torch.full((B,), K, dtype=torch.long)
        return n, torch.argmax(target_probs[:, K] / exp_noise, dim=-1)

    monkeypatch.setattr(decoding, "speculative_verify", always_accept)
    (broken,) = _generate(target, [PROMPT], N, seed=22, draft_model=draft, temperature=0.8)
    assert g_test(broken, expected) < ALPHA


def test_int8_draft_quantization_is_prepared_once_and_exact(pair):
    target, draft = pair
    ids = make_prompt(6, seed=8)
    ref = target.generate(ids, do_sample=False, max_new_tokens=20)
    from speculoos_hf.drafters.prepared import _COPIES

    for _ in range(2):
        out = target.generate(ids, do_sample=False, max_new_tokens=20, draft_model=draft, num_draft_tokens=3,
                              draft_quantization="int8")
        assert torch.equal(out, ref)
    assert len(_COPIES[draft]) == 1 and _COPIES[draft]["int8"] is not draft
    assert target.speculative_stats.draft_tokens_proposed > 0
    with pytest.raises(ValueError, match="draft_quantization"):
        target.generate(ids, max_new_tokens=2, draft_model=draft, draft_quantization="int4")


def fast_draft_profile(monkeypatch, pass_s=0.1, step_s=0.02):
    """A synthetic cost profile: every target pass costs `pass_s` whatever its width, a draft step `step_s`, a
    catch-up nothing, so the cost model drafts (whatever this machine's timings) and per-row gains decide limits."""
    monkeypatch.setattr(CostModelLookahead, "target_time", lambda self, tokens, batch=None: pass_s)
    monkeypatch.setattr(CostModelLookahead, "draft_time", lambda self, batch: step_s)
    monkeypatch.setattr(CostModelLookahead, "catch_up_time", lambda self, tokens: 0.0)
    monkeypatch.setattr(CostModelLookahead, "target_timed", lambda self, batch: True)  # every pass is known


def with_row_limits(monkeypatch) -> None:
    """generate()'s cost model with per-row limits on (off by default: they save nothing in a batch's round)."""
    monkeypatch.setattr(CostModelLookahead, "__init__",
                        functools.partialmethod(CostModelLookahead.__init__, per_row_limits=True))


def count_limited(monkeypatch) -> list:
    """Records each per-row limit applied to a proposal (the loop's `Proposal.limited`)."""
    seen, original = [], Proposal.limited

    def limited(self, per_row):
        seen.append(list(per_row))
        return original(self, per_row)

    monkeypatch.setattr(Proposal, "limited", limited)
    return seen


def test_per_row_limits_greedy_equals_target_batch4(monkeypatch):
    """Batch 4, float32: rounds where some rows draft k and others nothing (forced limits, cycling) give the
    target's own greedy output token for token."""
    target, draft = tiny_pair("llama")
    fast_draft_profile(monkeypatch)
    patterns = itertools.cycle([[1, 0, 1, 0], [0, 1, 0, 1], [1, 1, 0, 0], [0, 0, 0, 1]])

    def forced(self, k, rows, batch=None):
        return [k * on for on in next(patterns)][: len(rows)] if k and len(rows) > 1 else None

    monkeypatch.setattr(CostModelLookahead, "row_limits", forced)
    seen = count_limited(monkeypatch)
    ids, mask = left_pad_batch([make_prompt(n, seed=n)[0] for n in (3, 8, 5, 2)])
    ref = target.generate(ids, attention_mask=mask, do_sample=False, max_new_tokens=30)
    out = target.generate(ids, attention_mask=mask, do_sample=False, max_new_tokens=30, draft_model=draft,
                          draft_tree=False)  # chains: per-row limits cut proposals (a tree round drops rows' trees)
    assert torch.equal(out, ref)
    stats = target.speculative_stats
    assert len(seen) >= 5 and stats.draft_tokens_proposed > 0
    assert min(r.draft_tokens_proposed for r in stats.per_row) < max(r.draft_tokens_proposed for r in stats.per_row)


def test_per_row_k_from_acceptance_greedy_equals_target(gtest_pair, monkeypatch):
    """The cost model's own per-row limits (a synthetic profile in which a row's drafts must be accepted often to
    pay) keep greedy output exact over a batch of 16 prompts, some rows drafting while others do not."""
    target, draft = gtest_pair
    fast_draft_profile(monkeypatch, step_s=0.02)
    with_row_limits(monkeypatch)
    seen = count_limited(monkeypatch)
    ids = torch.randint(0, GTEST_V, (16, 6), generator=torch.Generator().manual_seed(0))
    ref = target.generate(ids, do_sample=False, max_new_tokens=60, pad_token_id=GTEST_PAD)
    out = target.generate(ids, do_sample=False, max_new_tokens=60, pad_token_id=GTEST_PAD, draft_model=draft,
                          draft_tree=False)  # chains: per-row limits cut proposals
    assert torch.equal(out, ref)
    assert target.speculative_stats.draft_tokens_proposed > 0
    assert any(0 in limits and max(limits) > 0 for limits in seen)


def test_auto_k_sampling_exact_with_per_row_k(gtest_pair, monkeypatch):
    """A G-test at batch N where the cost model really drafts (a synthetic profile in which drafting pays) and
    per-row limits stop some rows' drafts while others draft; power: the same run with a broken rule rejects."""
    target, draft = gtest_pair
    fast_draft_profile(monkeypatch, step_s=0.04)
    with_row_limits(monkeypatch)
    seen = count_limited(monkeypatch)
    expected = exact_distribution(target, PROMPT, _processors(temperature=0.8))
    (spec,) = _generate(target, [PROMPT], N, seed=31, draft_model=draft, temperature=0.8, draft_tree=False)
    assert target.speculative_stats.draft_tokens_proposed > 0
    assert any(0 in limits and max(limits) > 0 for limits in seen)
    assert g_test(spec, expected) > ALPHA

    monkeypatch.setattr(decoding, "speculative_verify", _always_accept)
    (broken,) = _generate(target, [PROMPT], N, seed=32, draft_model=draft, temperature=0.8, draft_tree=False)
    assert g_test(broken, expected) < ALPHA
