"""Reduced-head drafts (FR-Spec, drafters/reduced_head.py) as copies of their own, and chosen by
draft_quantization="auto" (drafters/prepared.py) from the tokens of the user's own calls where the step they save
beats the acceptance they cost; the output stays the target's either way."""

from __future__ import annotations

import torch

from conftest import make_prompt, tiny_pair
from speculoos_hf.drafters.reduced_head import reduced_head_draft

KEEP = list(range(0, 60, 6))


def test_reduced_copy_owns_its_modules():
    """A dtype change of the copy or of the draft leaves the other as it was; no weight is copied."""
    _, draft = tiny_pair()
    ids = make_prompt(5)
    reduced = reduced_head_draft(draft, KEEP)
    assert reduced.model.embed_tokens.weight.data_ptr() == draft.model.embed_tokens.weight.data_ptr()
    before, reduced_before = draft(ids).logits, reduced(ids).logits
    reduced.to(torch.float64)
    assert all(p.dtype == torch.float32 for p in draft.parameters())
    assert torch.equal(draft(ids).logits, before)
    again = reduced_head_draft(draft, KEEP)
    draft.to(torch.bfloat16)
    assert all(p.dtype == torch.float32 for p in again.parameters())
    assert torch.equal(again(ids).logits, reduced_before)


def test_head_rule_keeps_the_ids_in_use_where_the_step_saving_pays():
    """Tokens on 300 of 65,536 ids, a head half the step: a small head pays; tokens spread over every id: none."""
    from speculoos_hf.drafters.head_choice import HeadCosts, choose_kept_ids

    costs = HeadCosts(step_share=0.3, head_share=0.5, acceptance=0.8, k=4)
    counts = torch.zeros(65536, dtype=torch.long)
    counts[1000:1300] = 50
    kept = choose_kept_ids(counts, costs, always=[7])
    assert kept is not None and len(kept) == 1024 and 7 in kept.tolist()
    assert set(range(1000, 1300)) <= set(kept.tolist()) and torch.equal(kept, kept.sort().values)
    assert choose_kept_ids(torch.ones(65536, dtype=torch.long), costs) is None  # every id in use: the full head
    assert choose_kept_ids(counts, HeadCosts(0.01, 0.5, 0.8, 4)) is None  # a step that costs nothing: no saving


def test_auto_draft_gets_a_reduced_head_from_the_users_calls(monkeypatch):
    """draft_quantization="auto" (the default): the first calls' prompts and outputs are counted; once enough were,
    the draft's head keeps the ids in use (a draft whose head is most of its step), and the output stays the
    target's own greedy output."""
    import speculoos_hf.drafters.head_choice as head_choice
    from conftest import tiny_model
    from speculoos_hf import enable_speculative

    monkeypatch.setattr(head_choice, "MIN_SEEN_TOKENS", 100)
    monkeypatch.setattr(head_choice, "HEAD_SIZES", (256, 512))
    target = enable_speculative(tiny_model("llama", vocab_size=2048))
    draft = tiny_model("llama", vocab_size=2048, seed=0)  # the target's twin, its own object
    ids = make_prompt(6, seed=3, batch=2) % 64 + 100  # ids in 100..163
    kw = dict(do_sample=False, max_new_tokens=40, draft_model=draft, num_draft_tokens=3)
    labels = []
    for _ in range(3):
        out = target.generate(ids, **kw)
        assert torch.equal(out, target.generate(ids, do_sample=False, max_new_tokens=40))
        labels.append(target.speculative_stats.draft_quantization)
    assert labels[0] is None and labels[-1] == "reduced head 256 ids (auto)", labels
    assert target.speculative_stats.draft_tokens_accepted > 0


def test_auto_head_counts_nothing_for_a_draft_with_another_tokenizer(monkeypatch):
    """A draft with its own tokenizer drafts in its own ids, while a call's sequences are the target's: "auto" counts
    none of them for its head (they would pick the wrong rows), alone or beside prompt lookup."""
    import speculoos_hf.drafters.head_choice as head_choice
    from test_other_tokenizer import _greedy_models, _left_pad, letters_tokenizers

    monkeypatch.setattr(head_choice, "MIN_SEEN_TOKENS", 1)
    tok_t, tok_d = letters_tokenizers()
    target, draft = _greedy_models(len(tok_t), len(tok_d))
    ids, mask = _left_pad([tok_t.encode(s) for s in ("abcd", "fe gh abcdcd")], tok_t.pad_token_id)
    kw = dict(attention_mask=mask, do_sample=False, max_new_tokens=12, pad_token_id=tok_t.pad_token_id)
    ref = target.generate(ids, **kw)
    for extra in (dict(), dict(prompt_lookup_num_tokens=3), dict()):
        out = target.generate(ids, draft_model=draft, tokenizer=tok_t, assistant_tokenizer=tok_d, **kw, **extra)
        assert torch.equal(out, ref)
        assert target.speculative_stats.draft_quantization in (None, "int8 (auto)")
    assert draft not in head_choice._SEEN
    same_t, same_d = tiny_pair()  # one tokenizer: counted
    same_t.generate(make_prompt(6), draft_model=same_d, do_sample=False, max_new_tokens=8)
    assert same_d in head_choice._SEEN


def test_head_rule_counts_the_ids_not_seen_yet():
    """300 ids in use, but half the counted tokens are ids seen once: the next calls will bring new ids as often
    (Good-Turing), and no reduced head pays; the same ids seen often: the small head pays."""
    from speculoos_hf.drafters.head_choice import HeadCosts, choose_kept_ids

    costs = HeadCosts(step_share=0.3, head_share=0.5, acceptance=0.8, k=4)
    counts = torch.zeros(65536, dtype=torch.long)
    counts[1000:1100] = 30
    counts[5000:8000] = 1  # 3,000 of 6,000 tokens on ids seen once
    assert choose_kept_ids(counts, costs) is None
    counts[5000:8000] = 0
    assert choose_kept_ids(counts, costs) is not None


def test_auto_head_undone_when_later_calls_miss_it(monkeypatch):
    """A head chosen from one repeated prompt; later calls on other ids miss it so often that the full head is
    faster: from then on the draft drafts with its full head, for good."""
    import speculoos_hf.drafters.head_choice as head_choice

    class Draft:  # any object the books can hold weakly
        pass

    monkeypatch.setattr(head_choice, "MIN_SEEN_TOKENS", 100)
    monkeypatch.setattr(head_choice, "UNDO_TOKENS", 100)
    draft, V = Draft(), 65536
    shares = lambda: (0.3, 0.5, [])  # noqa: E731
    same = torch.arange(1000, 1050).repeat(4)[None]  # [1, 200] the same 50 ids
    head_choice.note_call(draft, same, V, None, None)
    kept = head_choice.auto_head(draft, shares)
    assert kept is not None and len(kept) == 1024
    head_choice.note_call(draft, same, V, None, None)  # still on the head's ids: kept
    assert head_choice.auto_head(draft, shares) is not None
    head_choice.note_call(draft, torch.arange(20000, 20200)[None], V, None, None)  # every id outside the head
    assert head_choice.auto_head(draft, shares) is None
    head_choice.note_call(draft, same, V, None, None)
    assert head_choice.auto_head(draft, shares) is None  # for good
