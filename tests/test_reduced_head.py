"""A draft with nothing to propose (issue 16 item 5): a reduced-head draft (FR-Spec) gives -inf to every id outside
its kept set, so a processor that bans the kept ids (suppress_tokens, bad_words_ids, no_repeat_ngram_size) leaves it
no id at all, while the target still has some. Such a row must propose nothing from that position on, not crash
in the draft's sampling step; the output stays the target's (greedy: stock's tokens; sampling: its distribution).
The same holds for a full draft model whose vocabulary is smaller than the target's (its missing ids are -inf too).
"""

from __future__ import annotations

import pytest
import torch
from transformers import LogitsProcessorList
from transformers.generation.logits_process import NoBadWordsLogitsProcessor

import speculoos_hf.loop.decoding as decoding
from conftest import PAD_ID, left_pad_batch, make_prompt, tiny_model, tiny_pair
from gtest import ALPHA, N, PROMPT, T, _always_accept, _generate, exact_distribution, g_test
from speculoos_hf import enable_speculative
from speculoos_hf.drafters.reduced_head import reduced_head_draft

KEEP = list(range(0, 60, 6))  # the reduced head's ids: 10 of the 64


@pytest.fixture(scope="module")
def reduced():
    """(target, a reduced-head copy of its near copy keeping KEEP)."""
    target, draft = tiny_pair()
    return target, reduced_head_draft(draft, KEEP)


def _batch():
    prompts = [make_prompt(n, seed=40 + n)[0] for n in (3, 6)]
    return left_pad_batch(prompts)


# Three ways to ban every kept id: as suppressed tokens, as one-token bad words, and as n-grams of size 1 (the prompts
# hold every kept id, and no_repeat_ngram_size=1 bans every id already in the sequence).
BANS = {
    "suppress_tokens": dict(suppress_tokens=KEEP),
    "bad_words_ids": dict(bad_words_ids=[[k] for k in KEEP]),
    "no_repeat_ngram_size": dict(no_repeat_ngram_size=1),
}


def _prompt_with_kept_ids() -> tuple[torch.Tensor, torch.Tensor]:
    """Two rows whose prompts contain every kept id (for no_repeat_ngram_size=1), one longer than the other."""
    long = torch.tensor(KEEP + [7, 13])
    short = torch.tensor(KEEP[::-1])
    return left_pad_batch([long, short])


@pytest.mark.parametrize("ban", list(BANS))
@pytest.mark.parametrize("K", [1, 4])
def test_draft_without_ids_greedy_matches_stock_and_proposes_nothing(reduced, ban, K):
    target, draft = reduced
    ids, mask = _prompt_with_kept_ids()
    kw = dict(attention_mask=mask, do_sample=False, max_new_tokens=8, pad_token_id=PAD_ID, **BANS[ban])
    ref = target.generate(ids, **kw)
    out = target.generate(ids, draft_model=draft, num_draft_tokens=K, **kw)
    assert torch.equal(out, ref), (out, ref)
    stats = target.speculative_stats
    assert stats.draft_tokens_proposed == 0, "a draft whose every id is banned proposed something"
    assert stats.new_tokens == 2 * 8


WARPERS = {"plain": {}, "top_k": dict(top_k=3), "top_p": dict(top_p=0.8, temperature=0.7)}


@pytest.mark.parametrize("ban", list(BANS))
@pytest.mark.parametrize("warpers", list(WARPERS))
def test_draft_without_ids_samples_without_crashing(reduced, ban, warpers):
    """Sampling (where the draft's q = softmax(-inf, ..., -inf) used to crash), with top-k/top-p warping an all -inf
    row too: the call returns, proposes nothing and never emits a banned id."""
    target, draft = reduced
    ids, mask = _prompt_with_kept_ids()
    torch.manual_seed(0)
    out = target.generate(ids, attention_mask=mask, do_sample=True, max_new_tokens=8, pad_token_id=PAD_ID,
                          draft_model=draft, num_draft_tokens=3, **BANS[ban], **WARPERS[warpers])
    assert target.speculative_stats.draft_tokens_proposed == 0
    assert out.shape == (2, ids.shape[1] + 8)
    assert not set(out[:, ids.shape[1]:].flatten().tolist()) & set(KEEP)


def test_rows_run_out_of_ids_mid_round_greedy_matches_stock(reduced):
    """A rule that bans the kept ids only after some tokens: rows stop proposing at different positions of a round,
    the others keep drafting; the output is stock's."""
    target, draft = reduced
    ids, mask = _batch()
    plain = target.generate(ids, attention_mask=mask, do_sample=False, max_new_tokens=12)
    after = sorted({t for t in plain[:, ids.shape[1]:].flatten().tolist()})[:3]  # a few ids the target does emit
    bad = [[a, k] for a in after for k in KEEP]  # after any of them, no kept id
    kw = dict(attention_mask=mask, do_sample=False, max_new_tokens=12, bad_words_ids=bad)
    ref = target.generate(ids, **kw)
    out = target.generate(ids, draft_model=draft, num_draft_tokens=4, **kw)
    assert torch.equal(out, ref), (out, ref)
    assert target.speculative_stats.draft_tokens_proposed > 0


class _Len:
    """Stands for a tokenizer both models share (generate() only needs its length for the vocabulary check)."""

    def __init__(self, n: int):
        self.n = n

    def __len__(self) -> int:
        return self.n


@pytest.mark.parametrize("do_sample", [False, True])
def test_full_draft_with_fewer_ids_than_the_target(do_sample):
    """The same hazard without a reduced head: a draft with 60 ids for a 64-id target (padded embeddings) whose 60
    ids are all suppressed; the target still has ids 60..63."""
    target = enable_speculative(tiny_model("llama", 64, 0))
    draft = tiny_model("llama", 60, 5)
    ids, mask = _batch()
    kw = dict(attention_mask=mask, do_sample=do_sample, max_new_tokens=6, pad_token_id=PAD_ID,
              suppress_tokens=list(range(60)), tokenizer=_Len(60))
    torch.manual_seed(0)
    out = target.generate(ids, draft_model=draft, num_draft_tokens=3, **kw)
    assert target.speculative_stats.draft_tokens_proposed == 0
    assert set(out[:, ids.shape[1]:].flatten().tolist()) <= {60, 61, 62, 63}
    if not do_sample:
        kw.pop("tokenizer")
        assert torch.equal(out, target.generate(ids, **kw))


# ------------------------------------------------------------------------------------------------ exact distribution

GKEEP = [0, 2, 3]  # the G-test draft's kept ids (of 0..3): never 1
GBAD = [[3, 0], [3, 2], [3, 3]]  # after a 3 the target may only say 1, and the draft has nothing left


def test_rows_out_of_ids_mid_round_sample_the_exact_distribution(gtest_pair, monkeypatch):
    """The G-test's 4-token target; a reduced-head draft over ids {0, 2, 3}; after a 3 every kept id is a bad
    word, so a row whose draft has just proposed 3 proposes nothing more this round. Samples must follow the exact
    target distribution under the same processor, and the always-accept rule must be caught (power)."""
    target, draft = gtest_pair
    small = reduced_head_draft(draft, GKEEP)
    expected = exact_distribution(target, PROMPT, LogitsProcessorList([NoBadWordsLogitsProcessor(GBAD)]))
    kw = dict(draft_model=small, num_draft_tokens=3, bad_words_ids=GBAD)
    (spec,) = _generate(target, [PROMPT], N // 2, seed=11, **kw)
    stats = target.speculative_stats
    assert 0.05 < stats.acceptance_rate < 0.98, stats
    rounds = sum(r.target_forward_passes for r in stats.per_row)
    assert 0 < stats.draft_tokens_proposed < 3 * rounds  # some rounds were cut short by the ban
    p = g_test(spec, expected)
    assert p > ALPHA, f"samples deviate from the exact distribution (p={p:.2e})"
    assert any(1 in o for o in spec) and all(len(o) == T for o in spec)

    monkeypatch.setattr(decoding, "speculative_verify", _always_accept)
    (broken,) = _generate(target, [PROMPT], N // 2, seed=12, **kw)
    p_broken = g_test(broken, expected)
    assert p_broken < ALPHA, "the test cannot detect an always-accept rule"
    print(f"\np={p:.3f} acceptance={stats.acceptance_rate:.2f}; always-accept p={p_broken:.1e}")
