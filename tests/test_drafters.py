"""int8 drafts: cheaper, and the output stays exactly the target's (greedy equality; bench counts their bytes)."""

from __future__ import annotations

import torch

from speculoos_hf import enable_speculative
from speculoos_hf.bench import weight_bytes
from speculoos_hf.drafters import int8_draft
from speculoos_hf.toy import toy_pair


def test_int8_draft_keeps_greedy_exact_and_leaves_original_untouched():
    target, draft, tok = toy_pair()
    enable_speculative(target)
    before = {k: v.clone() for k, v in draft.state_dict().items()}
    q = int8_draft(draft)
    assert all(torch.equal(before[k], v) for k, v in draft.state_dict().items())
    assert any(type(m).__module__.startswith("torch.ao.nn.quantized") for m in q.modules())
    ids, mask = tok(["w01 w02 w03", "w10"], return_tensors="pt", padding=True).values()
    ref = target.generate(ids, attention_mask=mask, do_sample=False, max_new_tokens=25)
    out = target.generate(ids, attention_mask=mask, draft_model=q, num_draft_tokens=4, do_sample=False, max_new_tokens=25)
    assert torch.equal(out, ref)
    assert target.speculative_stats.acceptance_rate > 0.3  # the quantised draft still agrees with the target
    sampled = target.generate(ids, attention_mask=mask, draft_model=q, do_sample=True, max_new_tokens=10)
    assert sampled.shape[0] == 2


def test_weight_bytes_counts_int8_weights_and_skips_untied_input_embedding():
    target, draft, _ = toy_pair()
    linear = sum(m.weight.numel() for m in draft.modules() if isinstance(m, torch.nn.Linear))
    norms = sum(p.numel() for n, p in draft.named_parameters() if "norm" in n)
    assert weight_bytes(draft) == 4 * (linear + norms)  # float32, embedding table not read per step
    assert weight_bytes(int8_draft(draft)) == linear + 4 * norms
