"""draft_quantization: the default "auto" decision, the int8 backend in force, and outputs that never depend on it
(greedy equality with the target's own generate(), and a G-test with power, with an int8 draft)."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

import speculoos_hf.loop.decoding as decoding
import speculoos_hf.drafters.prepared as prepared
from gtest import ALPHA, N, PROMPT, _always_accept, _generate, _processors, exact_distribution, g_test
from speculoos_hf import enable_speculative
from speculoos_hf.drafters import int8_draft
from speculoos_hf.drafters.prepared import (
    PreparedDraft,
    float_linear_bytes,
    int8_pays,
    note_draft_step,
    prepare_draft,
    step_bytes,
)
from speculoos_hf.drafters.quantize import DEFAULT_BACKEND, Int8Linear
from speculoos_hf.pacing.lookahead import CostModelLookahead
from speculoos_hf.glue.options import SpeculativeOptions
from speculoos_hf.glue.toy import toy_pair


def _large_llama(device: str):
    """A Llama just over MIN_INT8_BYTES (a 32768 x 512 float32 head), built on meta and, for "cpu", given
    uninitialised CPU storage: for the decision only, never run."""
    config = LlamaConfig(vocab_size=32768, hidden_size=512, intermediate_size=1024, num_hidden_layers=1,
                         num_attention_heads=4, num_key_value_heads=4)
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    return model if device == "meta" else model.to_empty(device=device)


def _huge_target_by_bytes(draft):
    """A meta model reading more than 1 / MIN_DRAFT_SHARE times the draft's bytes per step (never run)."""
    config = LlamaConfig(vocab_size=32768, hidden_size=2048, intermediate_size=8192, num_hidden_layers=3,
                         num_attention_heads=16, num_key_value_heads=16)
    with torch.device("meta"):
        target = LlamaForCausalLM(config)
    assert step_bytes(draft) < prepared.MIN_DRAFT_SHARE * step_bytes(target)
    return target


def test_default_int8_backend_is_present():
    """Fails, not skips, when the kernel the default int8 backend calls leaves torch."""
    assert DEFAULT_BACKEND == "int8pack"
    assert callable(getattr(torch.ops.aten, "_weight_int8pack_mm", None)), "torch lost aten._weight_int8pack_mm"
    assert callable(getattr(torch, "_weight_int8pack_mm", None)), "torch lost torch._weight_int8pack_mm"
    _, draft, _ = toy_pair()
    q = int8_draft(draft)
    assert any(isinstance(m, Int8Linear) for m in q.modules())
    ids = torch.tensor([[1, 4, 2, 7]])
    assert (q(ids).logits - draft(ids).logits).abs().max() < 0.05 * draft(ids).logits.abs().max()


def test_int8_pays_by_bytes_measurement_and_device():
    large = _large_llama("cpu")
    assert float_linear_bytes(large) >= prepared.MIN_INT8_BYTES
    assert int8_pays(large, large)  # by bytes: the draft reads as much per step as the target
    assert not int8_pays(large, large, measured_share=prepared.MIN_DRAFT_SHARE / 2)  # a measurement overrules bytes
    assert int8_pays(large, large, measured_share=prepared.MIN_DRAFT_SHARE)
    on_meta = _large_llama("meta")  # the same sizes, not on CPU: as given
    assert step_bytes(on_meta) == step_bytes(large) and not int8_pays(on_meta, large)
    _, tiny, _ = toy_pair()
    assert float_linear_bytes(tiny) < prepared.MIN_INT8_BYTES
    assert not int8_pays(tiny, tiny) and not int8_pays(tiny, tiny, measured_share=1.0)
    assert not int8_pays(large, _huge_target_by_bytes(large))  # a draft of under a tenth of the target's bytes


def test_auto_never_requantises_a_quantised_draft(monkeypatch):
    monkeypatch.setattr(prepared, "MIN_INT8_BYTES", 1)  # every float Linear counts
    target, draft, _ = toy_pair()
    assert int8_pays(draft, target, measured_share=1.0)
    for backend in ("int8pack", "torch.ao"):
        quantised = int8_draft(draft, backend=backend)
        assert float_linear_bytes(quantised) == 0 and not int8_pays(quantised, target, measured_share=1.0)


def test_auto_keeps_tiny_drafts_as_given():
    target, draft, tok = toy_pair()
    enable_speculative(target)
    assert prepare_draft(draft, "auto", target) == PreparedDraft(draft)
    ids = torch.tensor([[1, 4, 2, 7]])
    out = target.generate(ids, draft_model=draft, num_draft_tokens=3, do_sample=False, max_new_tokens=12)
    assert torch.equal(out, target.generate(ids, do_sample=False, max_new_tokens=12))
    stats = target.speculative_stats
    assert stats.draft_quantization is None and stats.draft_prepare_s == 0.0
    assert stats.to_dict()["draft_quantization"] is None


def test_options_default_is_auto_and_none_means_as_given():
    target, draft, _ = toy_pair()
    config = target.generation_config
    assert SpeculativeOptions.from_generate(target, config, draft, {}).draft_quantization == "auto"
    given_none = SpeculativeOptions.from_generate(target, config, draft, {"draft_quantization": None})
    assert given_none.draft_quantization is None
    with pytest.raises(ValueError, match="draft_quantization"):
        SpeculativeOptions(draft_quantization="int4")


def test_auto_makes_the_int8_copy_once_reports_it_and_stays_exact(monkeypatch):
    """With the size floor lowered to one byte, the toy draft is "large": "auto" drafts with an int8 copy made by
    the first call (its seconds in the stats) and reused by the next; draft_quantization=None still drafts as given."""
    monkeypatch.setattr(prepared, "MIN_INT8_BYTES", 1)
    target, draft, tok = toy_pair()
    enable_speculative(target)
    ids, mask = tok(["w01 w02 w03", "w10"], return_tensors="pt", padding=True).values()
    ref = target.generate(ids, attention_mask=mask, do_sample=False, max_new_tokens=16)
    for call in range(2):
        out = target.generate(ids, attention_mask=mask, draft_model=draft, num_draft_tokens=3, do_sample=False,
                              max_new_tokens=16)
        assert torch.equal(out, ref)
        stats = target.speculative_stats
        assert stats.draft_quantization == "int8 (auto)" and stats.draft_tokens_proposed > 0
        assert (stats.draft_prepare_s > 0) == (call == 0)
    copy = prepare_draft(draft, "auto", target)
    assert copy.model is prepare_draft(draft, "int8", target).model  # one copy, whichever asked for it first
    assert any(isinstance(m, Int8Linear) for m in copy.model.modules()) and copy.prepare_s == 0.0
    target.generate(ids, attention_mask=mask, draft_model=draft, draft_quantization=None, max_new_tokens=4)
    assert target.speculative_stats.draft_quantization is None
    assert prepare_draft(draft, "auto").model is draft  # without the target to weigh it against: as given


def test_auto_follows_the_draft_step_a_call_measured(monkeypatch):
    """A call's cost model measures the draft as given; later "auto" calls decide by that share, not by bytes."""
    monkeypatch.setattr(prepared, "MIN_INT8_BYTES", 1)
    target, draft, _ = toy_pair()
    enable_speculative(target)
    assert int8_pays(draft, target)  # by bytes
    monkeypatch.setattr(CostModelLookahead, "target_time", lambda self, tokens, batch=None: 0.1)  # synthetic costs
    monkeypatch.setattr(CostModelLookahead, "draft_time", lambda self, batch: 0.005)
    monkeypatch.setattr(CostModelLookahead, "catch_up_time", lambda self, tokens: 0.0)
    ids = torch.tensor([[1, 4, 2, 7, 9]])
    target.generate(ids, draft_model=draft, draft_quantization=None, do_sample=False, max_new_tokens=30)
    assert target.speculative_stats.cost_model["draft_step_s"] == 0.005  # 5% of a pass
    assert prepare_draft(draft, "auto", target) == PreparedDraft(draft)
    passes = {1: 0.1, 2: 0.11}
    copy_measured = {"draft_step_s": 0.09, "target_pass_s_predicted": passes}
    note_draft_step(PreparedDraft(int8_draft(draft), "int8"), target, copy_measured)
    assert prepare_draft(draft, "auto", target) == PreparedDraft(draft)  # a copy's step says nothing of the draft's
    note_draft_step(PreparedDraft(draft), target, {"draft_step_s": 0.05, "target_pass_s_predicted": passes})
    assert prepare_draft(draft, "auto", target).quantization == "int8 (auto)"


def test_int8_draft_greedy_equals_target_generate():
    target, draft, tok = toy_pair()
    enable_speculative(target)
    ids, mask = tok(["w01 w02 w03 w04", "w10", "w05 w06"], return_tensors="pt", padding=True).values()
    ref = target.generate(ids, attention_mask=mask, do_sample=False, max_new_tokens=24)
    for K in (None, 4):
        out = target.generate(ids, attention_mask=mask, draft_model=draft, num_draft_tokens=K, do_sample=False,
                              max_new_tokens=24, draft_quantization="int8")
        assert torch.equal(out, ref)
        assert target.speculative_stats.draft_quantization == "int8"


def test_int8_draft_samples_the_target_distribution(gtest_pair, monkeypatch):
    target, draft = gtest_pair
    settings = dict(temperature=0.9)
    expected = exact_distribution(target, PROMPT, _processors(**settings))
    (spec,) = _generate(target, [PROMPT], N, seed=41, draft_model=draft, num_draft_tokens=3,
                        draft_quantization="int8", **settings)
    stats = target.speculative_stats
    assert stats.draft_quantization == "int8" and 0.05 < stats.acceptance_rate < 0.98
    assert g_test(spec, expected) > ALPHA
    q = prepare_draft(draft, "int8").model
    (draft_only,) = _generate(enable_speculative(q), [PROMPT], N, seed=42, **settings)
    assert g_test(draft_only, expected) < ALPHA  # power: the int8 draft's own samples are told apart
    monkeypatch.setattr(decoding, "speculative_verify", _always_accept)
    (broken,) = _generate(target, [PROMPT], N, seed=43, draft_model=draft, num_draft_tokens=3,
                          draft_quantization="int8", **settings)
    assert g_test(broken, expected) < ALPHA  # power: a rule that accepts every int8 draft is rejected
