"""The round trace (issue 27.2): `speculative_stats.trace` has one record per round, saying what each row drafted
and kept, how wide the target's pass was, and where the round's wall time went."""

from __future__ import annotations

import pytest
import torch

from conftest import left_pad_batch, make_prompt, tiny_pair
from speculoos_hf.loop.trace import PHASES, trace_summary


def test_trace_has_a_record_per_round_that_adds_up_to_the_stats():
    target, draft = tiny_pair("llama")
    ids = make_prompt(8, seed=2)
    target.generate(ids, do_sample=False, max_new_tokens=30, draft_model=draft, num_draft_tokens=3)
    stats = target.speculative_stats
    trace = stats.trace
    assert len(trace) == stats.target_forward_passes
    assert sum(sum(r.proposed) for r in trace) == stats.draft_tokens_proposed
    assert sum(sum(r.accepted) for r in trace) == stats.draft_tokens_accepted
    assert all(r.width == max(r.proposed) + 1 and r.rows == 1 and not r.tree for r in trace)
    assert trace[0].forwards == 3 and trace[0].catch_up == 8  # the first proposal read the prompt
    for r in trace:
        assert all(getattr(r, p) >= 0.0 for p in PHASES) and r.target_s > 0.0
        assert (r.draft_s > 0.0) == (r.forwards > 0)
    assert sum(r.seconds for r in trace) <= stats.elapsed_s
    summary = trace_summary(trace)
    assert summary["rounds"] == len(trace) and sum(summary["share"].values()) == pytest.approx(1.0)
    assert summary["tokens_per_pass_per_row"] == pytest.approx(
        (stats.draft_tokens_accepted + len(trace)) / len(trace))
    assert trace[0].to_dict()["width"] == 4


def test_trace_follows_rows_that_leave_and_plain_rounds():
    """A batch whose rows stop at different lengths: the live rows per round shrink; rounds without drafts are
    recorded too (width 1)."""
    target, draft = tiny_pair("llama")
    ids, mask = left_pad_batch([make_prompt(n, seed=n)[0] for n in (3, 7, 5)])
    eos = int(target.generate(ids[:1], attention_mask=mask[:1], do_sample=False, max_new_tokens=6)[0, -1])
    target.generation_config.eos_token_id = eos
    try:
        target.generate(ids, attention_mask=mask, do_sample=False, max_new_tokens=24, draft_model=draft)
    finally:
        target.generation_config.eos_token_id = None
    trace = target.speculative_stats.trace
    rows = [r.rows for r in trace]
    assert rows[0] == 3 and rows == sorted(rows, reverse=True) and rows[-1] < 3
    assert trace[0].width == 1 and all(len(r.proposed) == len(r.accepted) == r.rows for r in trace)
    assert len(trace) == target.speculative_stats.target_forward_passes


def test_trace_of_a_plain_greedy_call_is_exact():
    """Tracing adds no sync and changes nothing: the output is the target's own."""
    target, draft = tiny_pair("llama")
    ids = make_prompt(5, seed=9)
    ref = target.generate(ids, do_sample=False, max_new_tokens=16)
    out = target.generate(ids, do_sample=False, max_new_tokens=16, draft_model=draft)
    assert torch.equal(out, ref) and len(target.speculative_stats.trace) > 0
