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
