"""Copy or ask the model by expected gain (speculoos_hf.pacing.gain), and the copy's cap where a longer target pass stops
paying: the arithmetic on synthetic confidences and pass-time curves, then greedy equality with stock generate()
and a G-test with power under forced cost profiles (the cost model's timings replaced, as in test_auto_k.py)."""

from __future__ import annotations

import math

import pytest
import torch

import speculoos_hf.loop.decoding as decoding
from conftest import left_pad_batch, make_prompt
from gtest import ALPHA, N, PROMPT, _always_accept, _generate, _processors, exact_distribution, g_test
from speculoos_hf.drafters.base import Proposal, RoundOutcome
from speculoos_hf.drafters.hybrid import HybridDrafter
from speculoos_hf.pacing.gain import (CopyRecord, RoundCosts, best_copy, best_extension, calibrated, copy_tokens,
                               prefers_copy)
from speculoos_hf.pacing.lookahead import CostModelLookahead
from speculoos_hf.glue.options import SpeculativeOptions
from speculoos_hf.pacing.pacer import CopyPacer, CostModelPacer, make_pacer
from speculoos_hf.pacing.timing import Stopwatch

PAIR = dict(logit_scale=2.0)  # the `pair` fixture: a Llama with less peaked logits, and its perturbed copy

# ----------------------------------------------------------------------------------------------- the arithmetic


def flat(width: int, t: float = 0.1) -> torch.Tensor:
    """T(m+1) for m = 0..width: a memory-bound pass, the same whatever its width."""
    return torch.full((width + 1,), t, dtype=torch.float64)


def linear(width: int, t1: float = 0.1, intercept: float = 0.0) -> torch.Tensor:
    """T(m+1) = t1 * (intercept + (1 - intercept) * (m + 1)): a pass over m tokens costs about m one-token passes."""
    m = torch.arange(width + 1, dtype=torch.float64)
    return t1 * (intercept + (1 - intercept) * (m + 1))


def test_copy_tokens_is_one_plus_the_confidences_so_far():
    conf = torch.tensor([[0.9, 0.5, 0.25], [1.0, 1.0, 0.0]])
    assert torch.allclose(copy_tokens(conf), torch.tensor([[1, 1.9, 2.4, 2.65], [1, 2, 3, 3]], dtype=torch.float64))


def test_flat_pass_time_copies_everything_offered():
    conf = torch.tensor([[0.9, 0.8, 0.7, 0.6, 0.3], [0.5, 0.2, 0.0, 0.0, 0.0], [0.0] * 5])
    choice = best_copy(conf, [5, 2, 0], flat(5))
    assert choice.length.tolist() == [5, 2, 0]
    assert torch.allclose(choice.rate, torch.tensor([4.3, 1.7, 1.0], dtype=torch.float64) / 0.1)


def test_proportional_pass_time_copies_nothing_unless_confidences_near_one():
    conf = torch.tensor([[0.95, 0.9, 0.85, 0.8], [1.0, 1.0, 1.0, 1.0], [1.0, 0.99, 0.98, 0.5]])
    assert best_copy(conf, [4, 4, 4], linear(4)).length.tolist() == [0, 0, 0]  # T(m) = m T(1): ties go short
    # a pass that grows a little slower than its width: only near-certain tokens pay for their share of it
    assert best_copy(conf, [4, 4, 4], linear(4, intercept=0.02)).length.tolist() == [0, 4, 2]


def test_the_cap_follows_the_pass_time_curve():
    conf = torch.tensor([[0.9, 0.85, 0.8, 0.75, 0.7, 0.65]])
    knee = torch.tensor([0.1, 0.1, 0.1, 0.1, 0.2, 0.3, 0.4], dtype=torch.float64)  # flat up to 4 tokens, then dear
    assert best_copy(conf, [6], knee).length.tolist() == [3]
    assert best_copy(conf, [2], knee).length.tolist() == [2]  # never longer than offered
    assert best_copy(conf, [6], knee[:3]).length.tolist() == [2]  # nor than the curve reaches


def test_copy_or_model_flips_where_their_rates_cross():
    conf = torch.tensor([[0.8, 0.6, 0.4], [0.3, 0.0, 0.0], [0.0, 0.0, 0.0]])
    choice = best_copy(conf, [3, 1, 0], flat(3))  # rates 28, 13, 10 tokens per second
    model = lambda tokens: RoundCosts(flat(3), model_k=3, model_tokens=tokens, model_time=0.1)  # noqa: E731
    assert prefers_copy(choice, model(2.0)).tolist() == [True, False, False]
    assert prefers_copy(choice, model(1.2)).tolist() == [True, True, False]
    assert prefers_copy(choice, model(0.9)).tolist() == [True, True, True]  # worse than the target alone
    assert prefers_copy(choice, model(3.0)).tolist() == [False, False, False]
    off = RoundCosts(flat(3))  # the model not offered: every row copies (a row without a copy proposes nothing)
    assert off.model_rate() == -math.inf and prefers_copy(choice, off).all()


def test_copies_that_fail_calibrate_their_confidences_down():
    """A matcher sure of copies (conf 1) of which each token is right half the time: the record's ratio falls to
    about 1/2 (9 of 19), and a pass that grows with its width then copies 2 tokens where the sure copy took 6."""
    conf = torch.tensor([[1.0, 0.5, 0.25]])
    assert torch.allclose(calibrated(conf, 1.0), conf.double()) and calibrated(conf, 3.0).max() == 1.0
    assert torch.allclose(calibrated(conf, 0.5), torch.tensor([[0.5, 0.125, 0.03125]], dtype=torch.float64))
    record, sure = CopyRecord(), torch.ones(2, 6)
    assert record.ratio() == 1.0  # nothing seen yet: the confidences as they are
    for accepted in ([0, 1], [2, 0], [1, 1], [0, 3], [1, 0]) * 8:  # 9 hits over 19 tokens reached, 5 rounds
        record.observe(sure, [6, 6], accepted, [True, True])
    assert 0.45 < record.ratio() < 0.55
    record.observe(sure, [6, 6], [6, 6], [False, False])  # model rows of a hybrid say nothing
    assert 0.45 < record.ratio() < 0.55
    knee = torch.tensor([0.1, 0.1, 0.1, 0.12, 0.14, 0.16, 0.18], dtype=torch.float64)
    assert best_copy(sure, [6, 6], knee).length.tolist() == [6, 6]
    assert best_copy(sure, [6, 6], knee, record.ratio()).length.tolist() == [2, 2]


def test_a_model_row_carries_its_copy_past_the_drafts_where_the_pass_stays_cheap():
    """After the model's 2 drafts (1.8 tokens expected, all accepted with chance 0.64), the copy's tokens 2.. add
    reach x their confidences: a flat pass takes all that is offered, a pass growing with its width the first token
    at reach 0.64 and none at 0.5, a knee up to where it turns; nothing where the copy is no longer than the drafts
    or the model cannot be all right."""
    conf = torch.tensor([[1.0, 1.0, 0.9, 0.8, 0.7, 0.6], [1.0, 0.9, 0.8, 0.0, 0.0, 0.0], [1.0] * 6])
    costs = lambda times, reach=0.64: RoundCosts(times, model_k=2, model_tokens=1.8,  # noqa: E731
                                                 model_time=0.02 + float(times[2]), model_reach=reach)
    assert best_extension(conf, [6, 3, 2], costs(flat(6))).length.tolist() == [4, 1, 0]
    assert best_extension(conf, [6, 3, 2], costs(linear(6))).length.tolist() == [1, 0, 0]  # 0.576 tokens for 0.1 s
    assert best_extension(conf, [6, 3, 2], costs(linear(6), reach=0.5)).length.tolist() == [0, 0, 0]
    knee = torch.tensor([0.1, 0.1, 0.1, 0.1, 0.1, 0.3, 0.5], dtype=torch.float64)  # flat up to 5 tokens per row
    assert best_extension(conf, [6, 6, 6], costs(knee)).length.tolist() == [2, 1, 2]
    assert best_extension(conf, [6, 6, 6], costs(flat(6), reach=0.0)).length.tolist() == [0, 0, 0]
    assert best_extension(conf[:1], [6], RoundCosts(flat(6))).length.tolist() == [0]  # the model not offered
    rates = best_extension(conf, [6, 3, 2], costs(flat(6))).rate  # with no extension: the model's own rate
    assert torch.allclose(rates, torch.tensor([1.8 + 0.64 * 3.0, 1.8 + 0.64 * 0.8, 1.8], dtype=torch.float64) / 0.12)


def test_only_the_models_own_drafts_count_as_its_proposals():
    proposal = Proposal(torch.zeros(3, 6, dtype=torch.long), num_proposed=[6, 4, 2], copied=[False, True, False],
                        extension=[4, 0, 0])
    assert proposal.model_counts() == [2, 0, 2]
    assert Proposal(torch.zeros(2, 3, dtype=torch.long)).model_counts() == [3, 3]


# ----------------------------------------------------------------------------------------------- the pacer


def profile(monkeypatch, pass_time, step_s=0.02):
    """A synthetic cost profile: a target pass over m tokens per row costs pass_time(m), a draft step `step_s`,
    a catch-up nothing, whatever this machine's timings."""
    monkeypatch.setattr(CostModelLookahead, "target_time",
                        lambda self, tokens, batch=None: pass_time(tokens // (batch or 1)))
    monkeypatch.setattr(CostModelLookahead, "draft_time", lambda self, batch: step_s)
    monkeypatch.setattr(CostModelLookahead, "catch_up_time", lambda self, tokens: 0.0)
    monkeypatch.setattr(CostModelLookahead, "target_timed", lambda self, batch: True)  # every pass is known


def test_lookup_alone_under_the_cost_model_drafts_for_free(pair):
    target, draft = pair
    options = SpeculativeOptions(num_draft_tokens="auto", prompt_lookup_num_tokens=7)
    pacer = make_pacer(options, target, None)
    assert isinstance(pacer, CopyPacer) and not pacer.with_model and pacer.model.max_k == 7
    assert pacer.model.catch_up_time(100) == 0.0
    pacer.model.observe_target(0.1, 1, 1)
    assert pacer.model.draft_time(1) == 0.0  # a copy is free to draft, measured or not
    hybrid = make_pacer(SpeculativeOptions(prompt_lookup_num_tokens=7), target, draft)
    assert isinstance(hybrid, CopyPacer) and hybrid.with_model
    fixed = make_pacer(SpeculativeOptions(num_draft_tokens=3, prompt_lookup_num_tokens=7), target, None)
    proposal = Proposal(torch.tensor([[1, 2, 3]]), confidence=torch.tensor([[0.1, 0.1, 0.1]]))
    assert fixed.cap(proposal) is proposal  # a given K: fixed, no cap


def test_cap_cuts_each_row_where_a_longer_pass_stops_paying(monkeypatch):
    profile(monkeypatch, lambda m: 0.1 * max(1, m - 3))  # flat up to 4 tokens per row, then linear
    pacer = CopyPacer(CostModelLookahead(max_k=6), Stopwatch(torch.device("cpu")), 6, with_model=False)
    tokens = torch.arange(12).view(2, 6)
    conf = torch.tensor([[1.0, 1.0, 1.0, 1.0, 1.0, 0.9], [0.6, 0.3, 0.0, 0.0, 0.0, 0.0]])
    capped = pacer.cap(Proposal(tokens, None, [6, 2], forwards=0, confidence=conf))
    assert capped.counts() == [3, 2] and capped.k == 3 and capped.forwards == 0
    assert torch.equal(capped.tokens, tokens[:, :3]) and torch.equal(capped.confidence, conf[:, :3])


def test_the_model_hears_only_of_its_own_drafts(monkeypatch):
    """A hybrid round: a model row of 2 drafts extended by 4 copied tokens (5 accepted), a copied row, a plain model
    row: the cost model is told 2 drafted / 2 accepted, 0 / 0, 2 / 1; the copied row calibrates the copies."""
    heard = []
    monkeypatch.setattr(CostModelPacer, "after_round", lambda self, p, o: heard.append((p.counts(), o.accepted)))
    pacer = CopyPacer(CostModelLookahead(max_k=6), Stopwatch(torch.device("cpu")), 6, with_model=True)
    proposal = Proposal(torch.zeros(3, 6, dtype=torch.long), num_proposed=[6, 4, 2], copied=[False, True, False],
                        confidence=torch.tensor([[0.0] * 6, [1.0] * 6, [0.0] * 6]), extension=[4, 0, 0])
    outcome = RoundOutcome(accepted=[5, 3, 1], committed=[6, 4, 2], own=[6, 4, 2], stopped=[False] * 3,
                           tokens=torch.zeros(3, 7, dtype=torch.long), old_lengths=[10, 10, 10])
    pacer.after_round(proposal, outcome)
    assert heard == [([2, 0, 2], [2, 0, 1])]
    assert pacer.copies.hits > 0


# ----------------------------------------------------------------------------------------------- exact, greedy

def mixed_prompts(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded rows, half repeating a phrase (matches to copy), half random (nothing to copy)."""
    gen = torch.Generator().manual_seed(seed)
    rows = []
    for i in range(4):
        phrase = torch.randint(0, 60, (5 + i,), generator=gen)
        rows.append(torch.cat([phrase, phrase, phrase[:3]]) if i % 2 == 0 else make_prompt(6 + i, seed=seed + i)[0])
    return left_pad_batch(rows)


def record_hybrid(monkeypatch) -> list[Proposal]:
    """Every proposal the hybrid makes."""
    seen, original = [], HybridDrafter.propose

    def propose(self, state, k, costs=None):
        proposal = original(self, state, k, costs)
        seen.append(proposal)
        return proposal

    monkeypatch.setattr(HybridDrafter, "propose", propose)
    return seen


def generate_both(target, ids, mask, **kw):
    common = dict(attention_mask=mask, do_sample=False, max_new_tokens=30)
    return target.generate(ids, **common), target.generate(ids, **common, **kw)


@pytest.mark.parametrize("shape", ["flat", "proportional"])
def test_lookup_alone_greedy_equals_stock(pair, monkeypatch, shape):
    """Lookup alone under the cost model: a flat pass lets every copy run to its end, a pass costing its width
    in one-token passes copies nothing (the matcher's confidences are at most 1); the output is stock's."""
    target, _ = pair
    profile(monkeypatch, (lambda m: 0.1) if shape == "flat" else (lambda m: 0.1 * m))
    ids, mask = mixed_prompts()
    ref, out = generate_both(target, ids, mask, prompt_lookup_num_tokens=6, num_draft_tokens="auto")
    assert torch.equal(out, ref)
    stats = target.speculative_stats
    assert stats.draft_forward_passes == 0 and stats.cost_model is not None
    if shape == "flat":
        assert stats.draft_tokens_proposed > 30 and stats.draft_tokens_accepted > 0
    else:
        assert stats.draft_tokens_proposed == 0


def hybrid_equals_stock(pair, monkeypatch, step_s: float, seed: int, lookup: int) -> list[Proposal]:
    """A greedy hybrid call on `mixed_prompts(seed)` under a flat pass and a draft step of `step_s`, checked equal
    to stock generate(); returns the hybrid's proposals."""
    target, draft = pair
    profile(monkeypatch, lambda m: 0.1, step_s=step_s)
    seen = record_hybrid(monkeypatch)
    ids, mask = mixed_prompts(seed=seed)
    ref, out = generate_both(target, ids, mask, draft_model=draft, prompt_lookup_num_tokens=lookup,
                             draft_tree=False)  # the chain hybrid's choices (trees: tests/test_tree_*.py)
    assert torch.equal(out, ref)
    return seen


def test_hybrid_greedy_equals_stock_with_copy_and_model_rows(pair, monkeypatch):
    target, _ = pair
    seen = hybrid_equals_stock(pair, monkeypatch, step_s=0.01, seed=1, lookup=6)  # sure copies win at this step
    assert any(p.copied is not None and any(p.copied) and not all(p.copied) for p in seen)  # both in one round
    stats = target.speculative_stats
    assert stats.draft_forward_passes > 0 and stats.draft_tokens_accepted > 0


def test_hybrid_with_a_model_that_cannot_pay_only_copies(pair, monkeypatch):
    """A draft step dearer than the pass: the model is never asked (it does not even run); copies still are."""
    target, _ = pair
    seen = hybrid_equals_stock(pair, monkeypatch, step_s=1.0, seed=2, lookup=6)
    stats = target.speculative_stats
    assert stats.draft_forward_passes == 0 and stats.draft_tokens_proposed > 0
    assert seen and all(p.copied is not None and all(p.copied) for p in seen)


def test_hybrid_greedy_equals_stock_with_model_rows_extended_by_their_copy(pair, monkeypatch):
    """A cheap draft step and a flat pass: the model drafts in most rows and carries the row's copy past its drafts;
    the output is stock's, and the cost model hears of the model's own drafts only (never more accepted than drafted,
    never an extension counted as a draft)."""
    target, _ = pair
    heard, observe_round = [], CostModelLookahead.observe_round

    def record(self, proposed, accepted, rows=None):
        heard.append((list(proposed), list(accepted)))
        return observe_round(self, proposed, accepted, rows)

    monkeypatch.setattr(CostModelLookahead, "observe_round", record)
    seen = hybrid_equals_stock(pair, monkeypatch, step_s=0.001, seed=3, lookup=16)
    extended = [p for p in seen if p.extension is not None]
    assert extended and all(n > e > 0 or e == 0 for p in extended for n, e in zip(p.counts(), p.extension))
    assert heard and all(a <= n for proposed, accepted in heard for n, a in zip(proposed, accepted))
    assert max(n for proposed, _ in heard for n in proposed) <= CostModelLookahead().max_k  # the model's k at most
    model = target.speculative_stats.cost_model
    assert model is not None and target.speculative_stats.draft_tokens_accepted > 0


# ----------------------------------------------------------------------------------------------- exact, sampling


def test_hybrid_gain_sampling_exact(gtest_pair, monkeypatch):
    """A G-test at batch N under the gain rule, with a profile in which some rows copy while others ask the model
    in the same round; power: the same run with a broken rule rejects."""
    target, draft = gtest_pair
    profile(monkeypatch, lambda m: 0.1, step_s=0.01)
    seen = record_hybrid(monkeypatch)
    kw = dict(draft_model=draft, prompt_lookup_num_tokens=3, temperature=0.8, draft_tree=False)
    expected = exact_distribution(target, PROMPT, _processors(temperature=0.8))
    (spec,) = _generate(target, [PROMPT], N, seed=41, **kw)
    mixed = [p for p in seen if p.copied is not None and any(p.copied) and not all(p.copied)]
    assert mixed and any(n > 0 for p in mixed for n, c in zip(p.counts(), p.copied) if c)  # real copies
    assert target.speculative_stats.draft_forward_passes > 0
    assert g_test(spec, expected) > ALPHA

    monkeypatch.setattr(decoding, "speculative_verify", _always_accept)
    (broken,) = _generate(target, [PROMPT], N, seed=42, **kw)
    assert g_test(broken, expected) < ALPHA


def test_hybrid_extension_sampling_exact(gtest_pair, monkeypatch):
    """A G-test at batch N with model rows extended by their copy (cheap draft step, flat pass, the model's k held
    at 1 so that copies reach past its drafts): the copied tokens after the model's sampled drafts are verified with
    one-hot q; power: a broken rule rejects."""
    target, draft = gtest_pair
    profile(monkeypatch, lambda m: 0.1, step_s=0.001)
    choose_k = CostModelLookahead.choose_k
    monkeypatch.setattr(CostModelLookahead, "choose_k", lambda self, **kw: min(1, choose_k(self, **kw)))
    seen = record_hybrid(monkeypatch)
    kw = dict(draft_model=draft, prompt_lookup_num_tokens=4, temperature=0.8, draft_tree=False)
    expected = exact_distribution(target, PROMPT, _processors(temperature=0.8))
    (spec,) = _generate(target, [PROMPT], N, seed=43, **kw)
    assert any(p.extension is not None and p.probs is not None for p in seen)
    assert g_test(spec, expected) > ALPHA

    monkeypatch.setattr(decoding, "speculative_verify", _always_accept)
    (broken,) = _generate(target, [PROMPT], N, seed=44, **kw)
    assert g_test(broken, expected) < ALPHA
