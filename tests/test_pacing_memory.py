"""What the cost model measured in one call, carried to the next on the same target, draft and clock
(pacing/memory.py), and the prompt's prefill riding with the first round's pass (KVSlots.defer): fewer target
passes, the same output."""

from __future__ import annotations

import gc
from pathlib import Path

import torch

from conftest import left_pad_batch, make_prompt, on_flat_machine, perturbed_copy, tiny_model, tiny_pair
from speculoos_hf.bench.methods import stock_generate
from speculoos_hf.pacing import memory
from speculoos_hf.pacing.memory import Learnt, Slot, forget_pacing
from speculoos_hf.pacing.simulated_machine import ForwardPricer, MachineProfile, SimulatedStopwatch
from speculoos_hf.pacing.timing import using_stopwatch

AVX2_FP32 = Path(__file__).resolve().parent.parent / "benchmarks" / "epyc-avx2" / "profile_avx2_fp32.json"


def _call(target, draft, ids, **kwargs):
    out = target.generate(ids, draft_model=draft, max_new_tokens=40, do_sample=False, **kwargs)
    return out, target.speculative_stats


def _plain_rounds_before_drafting(stats) -> int:
    widths = [r.width for r in stats.trace]
    return next((i for i, w in enumerate(widths) if w > 1), len(widths))


def test_a_later_call_drafts_from_its_second_round():
    """Cold: the merged prefill's round, a plain round that times the target, then drafts. Warm: only the first
    round is plain (the answer's first token comes from the prompt's pass, as stock's); outputs equal stock's."""
    target, draft = tiny_pair("llama", noise=0.02)
    ids = make_prompt(12)
    ref = stock_generate(target)(ids, max_new_tokens=40, do_sample=False)
    with on_flat_machine():
        out1, cold = _call(target, draft, ids)
        out2, warm = _call(target, draft, ids)
    assert torch.equal(out1, ref) and torch.equal(out2, ref)
    assert _plain_rounds_before_drafting(cold) == 2
    assert _plain_rounds_before_drafting(warm) == 1
    assert warm.target_forward_passes < cold.target_forward_passes
    assert warm.cost_model["acceptance_by_position"][0] > 0.5


def test_nothing_is_carried_to_another_clock_draft_or_after_forgetting():
    target, draft = tiny_pair("llama", noise=0.02)
    other = perturbed_copy(target, noise=0.02, seed=3)
    ids = make_prompt(12)
    with on_flat_machine():
        _call(target, draft, ids)
        assert _plain_rounds_before_drafting(_call(target, other, ids)[1]) == 2  # another draft
        assert _plain_rounds_before_drafting(_call(target, draft, ids)[1]) == 1
    with using_stopwatch(SimulatedStopwatch(MachineProfile.load(AVX2_FP32))):
        _, stats = _call(target, draft, ids)
    assert stats.trace[1].width == 1  # another clock: the target is timed afresh
    forget_pacing()
    with on_flat_machine():
        assert _plain_rounds_before_drafting(_call(target, draft, ids)[1]) == 2


def test_acceptance_is_carried_only_under_the_same_sampling_settings():
    target = tiny_model("llama")
    greedy = Slot(target, None, ("k",), setting=(False,))
    greedy.keep(Learnt(passes="p", drafts="d", accept="a", stretch=8, setting=(False,), confidences="c"))
    same = greedy.recall()
    assert (same.passes, same.accept, same.confidences) == ("p", "a", "c")
    other = Slot(target, None, ("k",), setting=(True, 0.7)).recall()
    assert other.passes == "p" and other.accept is None and other.confidences is None
    assert Slot(target, None, ("another kind",), setting=(False,)).recall() is None


def test_each_sampling_setting_keeps_its_own_acceptance():
    """Greedy, then sampled, then greedy again: the third call takes the latest timings and the first call's
    acceptance (a greedy call after a sampled one drafted nothing on an AVX-512 BF16 CPU from the priors')."""
    target = tiny_model("llama")
    greedy, sampled = (Slot(target, None, ("k",), setting=s) for s in ((False,), (True, 0.7)))
    greedy.keep(Learnt(passes="p1", drafts="d1", accept="greedy", stretch=8, setting=(False,), confidences="c1"))
    sampled.keep(Learnt(passes="p2", drafts="d2", accept="sampled", stretch=8, setting=(True, 0.7), confidences="c2"))
    again = greedy.recall()
    assert (again.passes, again.drafts, again.accept, again.confidences) == ("p2", "d2", "greedy", "c1")
    assert (sampled.recall().accept, sampled.recall().confidences) == ("sampled", "c2")
    assert Slot(target, None, ("k",), setting=(True, 1.0)).recall().accept is None


def test_a_greedy_call_after_a_sampled_one_drafts_at_once():
    target, draft = tiny_pair("llama", noise=0.02)
    ids = make_prompt(12)
    with on_flat_machine():
        cold = _call(target, draft, ids)[1].target_forward_passes
        target.generate(ids, draft_model=draft, max_new_tokens=40, do_sample=True, temperature=0.7)
        out, warm = _call(target, draft, ids)
    assert torch.equal(out, stock_generate(target)(ids, max_new_tokens=40, do_sample=False))
    assert _plain_rounds_before_drafting(warm) == 1
    assert warm.target_forward_passes < cold  # from the greedy acceptance: 8 (from the priors': 12; cold: 11)


def test_what_was_learnt_dies_with_the_target():
    target, draft = tiny_pair("llama", noise=0.02)
    with on_flat_machine():
        _call(target, draft, make_prompt(8))
    assert len(memory._LEARNT) == 1
    del target
    gc.collect()
    assert len(memory._LEARNT) == 0


def test_a_machine_where_drafts_do_not_pay_stays_as_fast_warm():
    """AVX2 float32 profile (a pass over 2 tokens costs two): the second call is no slower than the first."""
    profile = MachineProfile.load(AVX2_FP32)
    target, draft = tiny_pair("llama", noise=0.02)
    ids = make_prompt(12)
    seconds = []
    for _ in range(2):
        with using_stopwatch(SimulatedStopwatch(profile)), ForwardPricer(profile, target, [draft]) as spent:
            _call(target, draft, ids)
        seconds.append(spent.seconds)
    assert seconds[1] <= seconds[0] * 1.001


def _count_forwards(model):
    calls = []
    handle = model.register_forward_hook(lambda *a: calls.append(1))
    return calls, handle


def test_the_prompt_is_read_with_the_first_round():
    """One target forward per round and none for the prefill alone, in a padded batch too; outputs equal stock's."""
    target, draft = tiny_pair("llama", noise=0.02)
    ids, mask = left_pad_batch([make_prompt(n, seed=n)[0] for n in (12, 7, 10)])
    ref = stock_generate(target)(ids, attention_mask=mask, max_new_tokens=20, do_sample=False)
    calls, handle = _count_forwards(target)
    try:
        out = target.generate(ids, attention_mask=mask, draft_model=draft, max_new_tokens=20, do_sample=False,
                              num_draft_tokens=4)
    finally:
        handle.remove()
    stats = target.speculative_stats
    assert torch.equal(out, ref)
    assert stats.prefill_passes == 0 and len(calls) == stats.target_forward_passes
    assert stats.trace[0].width == 5  # a given K drafts in the first round, verified in the prompt's pass


def test_a_row_of_padding_alone_keeps_the_prefill_apart():
    """A row whose prompt is all padding numbers its new tokens from 1 (as stock): its prefill stays a forward of
    its own, and the output is stock's."""
    target, draft = tiny_pair("llama", noise=0.02)
    ids, mask = left_pad_batch([make_prompt(6)[0], make_prompt(1)[0]])
    mask[1] = 0
    ref = stock_generate(target)(ids, attention_mask=mask, max_new_tokens=12, do_sample=False)
    out = target.generate(ids, attention_mask=mask, draft_model=draft, max_new_tokens=12, do_sample=False,
                          num_draft_tokens=3)
    assert torch.equal(out, ref)
    assert target.speculative_stats.prefill_passes == 1
