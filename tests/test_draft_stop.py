"""The plain call's stop rule (pacing/draft_stop.py): a draft model's round goes on past the cost model's k while one
more draft is expected to pay. Its arithmetic, its record of acceptance by confidence, where it drafts long and
where it stops, and that the output stays exact: greedy equal to the target's, sampling by a G-test with power."""

from __future__ import annotations

import functools

import pytest
import torch

import speculoos_hf.loop.decoding as decoding
from conftest import left_pad_batch, make_prompt, on_flat_machine, tiny_pair
from gtest import ALPHA, N, PROMPT, _always_accept, _generate, _processors, exact_distribution, g_test
from speculoos_hf.pacing.draft_stop import BANDS, ConfidenceRecord, DraftStop, draft_stop
from speculoos_hf.pacing.k_policy import KPolicy
from speculoos_hf.pacing.lookahead import CostModelLookahead
from speculoos_hf.pacing.pacer import CostModelPacer


def test_the_record_counts_reached_drafts_by_band():
    """Row 0 kept 1 of 3 drafts (bands 5, 2, 0): draft 0 accepted, draft 1 rejected, draft 2 never reached; row 1
    kept both of its 2 (bands 5, 5; its third column is padding)."""
    record = ConfidenceRecord(forget=1.0)
    bands = torch.tensor([[5, 2, 0], [5, 5, 1]])
    record.observe(bands, counts=[3, 2], accepted=[1, 2])
    assert record.trials.tolist() == [0, 0, 1, 0, 0, 3] and record.hits.tolist() == [0, 0, 0, 0, 0, 3]
    table = record.table(prior=0.5)  # shrunk towards the prior with 2 pseudo-observations
    assert table[5] == pytest.approx((3 + 1) / (3 + 2)) and table[2] == pytest.approx(1 / 3) and table[0] == 0.5


def test_the_stop_goes_on_while_the_expected_tokens_pay():
    """survival: the product of alpha by position times the lift of each draft's band of q (at most 1); the round
    goes on while its sum over rows reaches worth[j], never past its cap, and the last draft is never asked about."""
    lift = torch.tensor([0.2, 0.5, 0.8, 1.0, 1.1, 1.2])
    alpha = torch.tensor([0.9, 0.9, 0.5, 0.5])
    stop = DraftStop(worth=(1.5, 1.5, 1.0), lift=lift, alpha=alpha, cap=4, edges=torch.tensor(BANDS))
    assert stop.goes_on(torch.tensor([0.99, 0.95]), ask=True)  # min(1, 0.9 * 1.2) + 0.9 * 1.1 >= 1.5
    assert not stop.goes_on(torch.tensor([0.99, 0.5]), ask=True)  # 1 * 1 + 0.99 * 0.45 < 1.5
    assert stop.drafted_bands(2).tolist() == [[5, 5], [4, 1]]
    sure = DraftStop(worth=(0.5,), lift=lift, alpha=alpha, cap=2, edges=torch.tensor(BANDS))
    assert sure.goes_on(torch.tensor([0.99]), ask=True) and not sure.goes_on(torch.tensor([0.99]), ask=True)


def test_a_band_lifts_only_where_it_differs_from_all_drafts():
    """Bands accepted as often as all drafts lift nothing (the cost model's alpha stands); a sure band lifts."""
    same, apart = ConfidenceRecord(forget=1.0), ConfidenceRecord(forget=1.0)
    same.observe(torch.tensor([[0, 5, 5, 0]]), counts=[4], accepted=[4])
    assert torch.allclose(same.lift(prior=1.0), torch.ones(len(BANDS) + 1, dtype=torch.float64))
    apart.observe(torch.tensor([[5, 5, 5, 0]]), counts=[4], accepted=[3])
    lift = apart.lift(prior=0.75)
    assert lift[5] > 1.0 > lift[0]


class _Costs:
    """A cost model's answers: passes of `one` seconds plus `per_token` per token beyond the first, draft steps."""

    def __init__(self, per_token, one=0.2, step=0.05, alpha=0.8):
        self.per_token, self.one, self.step, self.alpha = per_token, one, step, alpha

    def target_time(self, tokens, batch=None):
        return self.one * (1 + self.per_token * (tokens / (batch or 1) - 1))

    def draft_time(self, batch):
        return self.step

    def rate(self, k, batch):
        e = sum(self.alpha ** i for i in range(k + 1))
        return batch * e / (k * self.step + self.target_time((k + 1) * batch, batch))

    def acceptance(self, k=None):
        return [self.alpha] * (k or 4)


def test_worth_is_the_rate_times_the_step_and_the_wider_pass():
    flat, steep = _Costs(0.0), _Costs(1.0)
    a = draft_stop(flat, ConfidenceRecord(), k=4, cap=8, batch=1, device="cpu")
    b = draft_stop(steep, ConfidenceRecord(), k=1, cap=8, batch=1, device="cpu")
    assert len(a.worth) == 7 and a.worth[0] == pytest.approx(flat.rate(4, 1) * 0.05)
    assert b.worth[0] == pytest.approx(steep.rate(1, 1) * (0.05 + 0.2))  # a pass one token wider costs 0.2 s
    assert min(b.worth) > 2 * max(a.worth)  # where passes are steep, a round stops far sooner
    assert draft_stop(flat, ConfidenceRecord(), k=1, cap=1, batch=1, device="cpu") is None  # nothing to go on to


def _widths(stats) -> list[int]:
    return [r.width - 1 for r in stats.trace]


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_greedy_equals_stock_with_the_stop_on_a_flat_machine(arch):
    """One row at a time (prompts of 9, 7, 4 tokens): the plain call's rounds run under the stop rule (its record is
    on the stats, a round drafted 8 or more) and the output is the target's own; the same with the three
    left-padded together, where the rule applies once a single row is left."""
    target, draft = tiny_pair(arch, noise=0.0)
    prompts = [make_prompt(n, seed=n)[0] for n in (9, 7, 4)]
    for ids in [p[None, :] for p in prompts]:
        ref = target.generate(ids, do_sample=False, max_new_tokens=60)
        with on_flat_machine():
            out = target.generate(ids, do_sample=False, max_new_tokens=60, draft_model=draft, draft_tree=False)
        assert torch.equal(out, ref)
        stats = target.speculative_stats
        assert "draft_acceptance_by_confidence" in stats.cost_model and max(_widths(stats)) >= 8
    ids, mask = left_pad_batch(prompts)  # an EOS from row 0's output ends rows at different rounds
    ref = target.generate(ids, attention_mask=mask, do_sample=False, max_new_tokens=40)
    eos = int(ref[0, ids.shape[1] + 12])
    ref = target.generate(ids, attention_mask=mask, do_sample=False, max_new_tokens=40, eos_token_id=eos)
    with on_flat_machine():
        out = target.generate(ids, attention_mask=mask, do_sample=False, max_new_tokens=40, draft_model=draft,
                              draft_tree=False, eos_token_id=eos)
    assert torch.equal(out, ref)
    target.generate(prompts[0][None, :], do_sample=False, max_new_tokens=8, draft_model=draft,
                    draft_confidence_threshold=0.5)
    assert "draft_acceptance_by_confidence" not in target.speculative_stats.cost_model  # the user's rule instead


def test_a_draft_that_is_often_wrong_stops_early():
    """A noisy draft on the flat profile: the record learns that its drafts are often rejected, and rounds stop
    well before the cap, where a perfect draft runs to it."""
    target, good = tiny_pair("llama", noise=0.0)
    _, bad = tiny_pair("llama", noise=2.0)
    ids = make_prompt(6, seed=2)
    widths = {}
    for name, draft in (("good", good), ("bad", bad)):
        with on_flat_machine():
            target.generate(ids, do_sample=False, max_new_tokens=60, draft_model=draft, draft_tree=False)
        drafted = [w for w in _widths(target.speculative_stats) if w > 0]
        widths[name] = sum(drafted) / max(len(drafted), 1)
    assert widths["good"] > 2 * widths["bad"], widths


def test_sampling_exact_under_the_stop(gtest_pair, monkeypatch):
    """G-test: the cost model gives each round k = 1 and the stop rule carries it on, here made to follow the first
    row's own draws (so the stop falls at a different draft in each round); the broken rule is caught at the same
    N. The rule applies to one row; here it is made to run over all 12,000 (as if each were alone)."""
    target, draft = gtest_pair
    monkeypatch.setattr(CostModelLookahead, "target_time", lambda self, tokens, batch=None: 0.1)
    monkeypatch.setattr(CostModelLookahead, "draft_time", lambda self, batch: 0.01)
    monkeypatch.setattr(CostModelLookahead, "catch_up_time", lambda self, tokens: 0.0)
    monkeypatch.setattr(KPolicy, "best_k", lambda self, batch=None, limit=None, rows=None: min(1, limit or 1))
    monkeypatch.setattr(CostModelLookahead, "__init__",  # 5 new tokens: every round drafts, under the rule
                        functools.partialmethod(CostModelLookahead.__init__, measure_plain_step=False))
    monkeypatch.setattr(CostModelLookahead, "drafting_started", lambda self: True)
    choose = CostModelPacer.choose_k

    def as_if_alone(self, rows, remaining):
        k, limits = choose(self, rows, remaining)
        self._cap = min(self.model.max_k, remaining - 1) if k > 0 else 0
        return k, limits

    monkeypatch.setattr(CostModelPacer, "choose_k", as_if_alone)
    stops, original = [], DraftStop.goes_on

    def first_row_decides(self, confidence, ask):
        original(self, confidence, ask)
        go = ask and float(confidence[0]) > 0.4
        stops.append(go)
        return go

    monkeypatch.setattr(DraftStop, "goes_on", first_row_decides)
    expected = exact_distribution(target, PROMPT, _processors(temperature=0.8))
    (spec,) = _generate(target, [PROMPT], N, seed=31, draft_model=draft, temperature=0.8, draft_tree=False)
    assert target.speculative_stats.draft_tokens_proposed > 0 and True in stops and False in stops
    assert g_test(spec, expected) > ALPHA
    monkeypatch.setattr(decoding, "speculative_verify", _always_accept)
    (broken,) = _generate(target, [PROMPT], N, seed=32, draft_model=draft, temperature=0.8, draft_tree=False)
    assert g_test(broken, expected) < ALPHA
