"""int8 drafts: cheaper, and the output stays exactly the target's (greedy equality; bench counts their bytes)."""

from __future__ import annotations

import pytest
import torch

from speculoos_hf import enable_speculative
from speculoos_hf.bench import weight_bytes
from speculoos_hf.drafters import int8_draft
from speculoos_hf.drafters.quantize import Int8Linear
from speculoos_hf.glue.toy import toy_pair


def test_int8_draft_keeps_greedy_exact_and_leaves_original_untouched():
    target, draft, tok = toy_pair()
    enable_speculative(target)
    before = {k: v.clone() for k, v in draft.state_dict().items()}
    q = int8_draft(draft)
    assert all(torch.equal(before[k], v) for k, v in draft.state_dict().items())
    assert not any(type(m) is torch.nn.Linear for m in q.modules())  # every Linear quantised (either backend)
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
    scales = sum(m.out_features for m in draft.modules() if isinstance(m, torch.nn.Linear))
    # int8pack computes in bf16 on CPU: bf16 scales and norms
    assert weight_bytes(int8_draft(draft, backend="int8pack")) == linear + 2 * scales + 2 * norms
    assert weight_bytes(int8_draft(draft, backend="torch.ao")) == linear + 4 * norms


@pytest.mark.parametrize("backend", ["int8pack", "torch.ao"])
def test_int8_backends_close_to_float_and_greedy_exact(backend):
    target, draft, tok = toy_pair()
    enable_speculative(target)
    q = int8_draft(draft, backend=backend)
    ids = torch.tensor([[1, 4, 2, 7, 9]])
    ref, got = draft(ids).logits, q(ids).logits
    tol = 0.05 if backend == "int8pack" else 0.15  # torch.ao also quantises activations
    assert (got - ref).abs().max() < tol * ref.abs().max()
    out = target.generate(ids, draft_model=q, num_draft_tokens=3, do_sample=False, max_new_tokens=15)
    assert torch.equal(out, target.generate(ids, do_sample=False, max_new_tokens=15))


def test_int8pack_keeps_bf16_and_int8_weights():
    _, draft, _ = toy_pair()
    q = int8_draft(draft.to(torch.bfloat16), backend="int8pack")
    lin = [m for m in q.modules() if isinstance(m, Int8Linear)]
    assert lin and all(m.weight.dtype == torch.int8 and m.scales.dtype == torch.bfloat16 for m in lin)
    assert q(torch.tensor([[1, 2, 3]])).logits.dtype == torch.bfloat16
    with pytest.raises(ValueError):
        int8_draft(draft, backend="nope")


# ---------------------------------------------------------------------------------------------------------------
# FR-Spec reduced heads
# ---------------------------------------------------------------------------------------------------------------

from speculoos_hf.drafters.reduced_head import ReducedLMHead, frequent_token_ids, reduced_head_draft  # noqa: E402


def test_frequent_token_ids_order_specials_counts_then_rank():
    _, _, tok = toy_pair()
    V = len(tok)
    specials = set(tok.all_special_ids) | set(tok.added_tokens_decoder)  # always kept
    ids = frequent_token_ids(len(specials) + 3, V, token_ids=[[7, 7, 7, 9], [9, 12]], tokenizer=tok)
    assert set(ids.tolist()) == specials | {7, 9, 12}
    ids = frequent_token_ids(len(specials) + 3, V, token_ids=[7, 7, 9], tokenizer=tok)
    first_unseen = min(set(range(V)) - specials - {7, 9})
    assert set(ids.tolist()) == specials | {7, 9, first_unseen}
    w = tok.convert_tokens_to_ids("w05")
    assert w in frequent_token_ids(len(specials) + 1, V, texts=["w05 w05 w05"], tokenizer=tok).tolist()
    assert frequent_token_ids(5, 100).tolist() == [0, 1, 2, 3, 4]  # no source: id (merge) rank


def test_reduced_head_logits_and_shared_weights():
    target, draft, tok = toy_pair()
    V = draft.config.vocab_size
    keep = torch.tensor([0, 3, 5, 8, 13, 21])
    r = reduced_head_draft(draft, keep)
    assert isinstance(r.lm_head, ReducedLMHead) and not isinstance(draft.lm_head, ReducedLMHead)  # original untouched
    pairs = zip(r.model.parameters(), draft.model.parameters())
    assert all(a.data_ptr() == b.data_ptr() for a, b in pairs)  # the decoder's weights shared, not copied
    ids = torch.tensor([[1, 4, 2, 7]])
    full = draft(ids).logits
    small = r(ids).logits
    assert small.shape == full.shape
    assert torch.allclose(small[..., keep], full[..., keep], atol=1e-5)
    mask = torch.ones(V, dtype=torch.bool)
    mask[keep] = False
    assert torch.isneginf(small[..., mask]).all()
    assert r.lm_head.proj.weight.shape == (len(keep), draft.config.hidden_size)  # only the small head is computed


def test_reduced_head_draft_keeps_generation_exact():
    """The draft never proposes an id outside the kept set; the output stays the target's (greedy: identical;
    sampling: the distribution tests of the rule cover q = 0 outside the kept ids)."""
    target, draft, tok = toy_pair()
    enable_speculative(target)
    V = draft.config.vocab_size
    keep = frequent_token_ids(V // 2, V, tokenizer=tok)
    r = reduced_head_draft(draft, keep)
    ids, mask = tok(["w01 w02 w03", "w10"], return_tensors="pt", padding=True).values()
    ref = target.generate(ids, attention_mask=mask, do_sample=False, max_new_tokens=20)
    out = target.generate(ids, attention_mask=mask, draft_model=r, num_draft_tokens=4, do_sample=False, max_new_tokens=20)
    assert torch.equal(out, ref)
    sampled = target.generate(ids, attention_mask=mask, draft_model=r, num_draft_tokens=3, do_sample=True, max_new_tokens=10)
    assert sampled.shape[0] == 2
    # composes with int8 (both backends): reduce first, then quantise (the small head is quantised too) ...
    for backend in ("torch.ao", "int8pack"):
        q = int8_draft(r, backend=backend)
        assert isinstance(q.lm_head, ReducedLMHead) and type(q.lm_head.proj) is not torch.nn.Linear
        out = target.generate(ids, attention_mask=mask, draft_model=q, num_draft_tokens=4, do_sample=False, max_new_tokens=20)
        assert torch.equal(out, ref)
        # ... or the other way round: a reduced head over an int8 draft keeps the int8 head's kept rows
        r2 = reduced_head_draft(int8_draft(draft, backend=backend), keep)
        full, small = int8_draft(draft, backend=backend)(ids).logits, r2(ids).logits
        # int8pack: the same int8 rows and scales; torch.ao: a dequantised float head (no activation quantisation)
        tol = 1e-4 if backend == "int8pack" else 0.15 * full[..., keep].abs().max().item()
        assert torch.allclose(small[..., keep], full[..., keep], atol=tol)
        out = target.generate(ids, attention_mask=mask, draft_model=r2, num_draft_tokens=4, do_sample=False, max_new_tokens=20)
        assert torch.equal(out, ref)
