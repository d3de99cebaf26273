"""The draft copy (`draft_quantization`) follows its draft: never built from offloaded ("meta") weights, made again
when the draft's weights change in place, untouched by a later `draft.float()`, never made of an already quantised
draft; what a call measured of the draft is forgotten when the draft changes layout (issue 25, cases 6-9)."""

from __future__ import annotations

import pytest
import torch

import speculoos_hf.drafters.prepared as prepared
from conftest import make_prompt, tiny_model, tiny_pair
from speculoos_hf.drafters import int8_draft
from speculoos_hf.drafters.prepared import PreparedDraft, note_draft_step, prepare_draft

GREEDY = dict(do_sample=False, max_new_tokens=16)


@pytest.fixture
def int8_everywhere(monkeypatch):
    """Every float draft is "large": "auto" makes an int8 copy of the tiny drafts too."""
    monkeypatch.setattr(prepared, "MIN_INT8_BYTES", 1)


def _partly_offloaded(model, folder):
    """`model` dispatched by accelerate with its second layer offloaded to disk (its weights on "meta" here)."""
    from accelerate import dispatch_model

    device_map = {"model.embed_tokens": "cpu", "model.layers.0": "cpu", "model.layers.1": "disk",
                  "model.norm": "cpu", "model.rotary_emb": "cpu", "lm_head": "cpu"}
    return dispatch_model(model, device_map=device_map, offload_dir=str(folder))


def test_offloaded_draft_is_never_copied_from_meta_weights(int8_everywhere, tmp_path, caplog):
    """Case 6: "auto" drafts with the offloaded draft as given (said once, with why); "int8" is refused before any
    work, naming the cause."""
    target, draft = tiny_pair()
    draft = _partly_offloaded(draft, tmp_path / "offload")
    assert next(draft.parameters()).device.type == "cpu" and any(p.device.type == "meta" for p in draft.parameters())
    ids = make_prompt(6, seed=2)
    ref = target.generate(ids, **GREEDY)
    target.generate(ids, draft_model=draft, num_draft_tokens=3, draft_quantization=None, **GREEDY)
    as_given = target.speculative_stats.draft_tokens_accepted
    assert as_given > 0
    with caplog.at_level("WARNING", logger="speculoos_hf"):
        for _ in range(2):
            out = target.generate(ids, draft_model=draft, num_draft_tokens=3, **GREEDY)
            assert torch.equal(out, ref)
            stats = target.speculative_stats
            assert stats.draft_quantization is None and stats.draft_tokens_accepted == as_given
    assert sum(r.name == "speculoos_hf" and "offloaded" in r.getMessage() for r in caplog.records) == 1
    target.speculative_stats = None
    with pytest.raises(ValueError, match="draft_quantization='int8'.*offloaded"):
        target.generate(ids, draft_model=draft, num_draft_tokens=3, draft_quantization="int8", **GREEDY)
    with pytest.raises(ValueError, match="offloaded"):
        int8_draft(draft)


@pytest.mark.parametrize("write", ["load_state_dict", "through .data"])
def test_copy_is_made_again_when_the_draft_changes_in_place(int8_everywhere, write):
    """Case 7: a bad draft's int8 copy is cached; the draft then gets the target's weights in place (fine-tuning,
    an adapter merged through `.data`): the next call drafts with a copy of the new weights, and the call after it
    reuses that copy."""
    target, _ = tiny_pair()
    draft = tiny_model(seed=123)  # unrelated: low acceptance
    ids = make_prompt(8, seed=4)
    ref = target.generate(ids, **GREEDY)
    target.generate(ids, draft_model=draft, num_draft_tokens=4, **GREEDY)
    stale = target.speculative_stats.acceptance_rate
    assert target.speculative_stats.draft_quantization == "int8 (auto)" and stale < 0.5
    if write == "load_state_dict":
        draft.load_state_dict(target.state_dict())
    else:
        for mine, theirs in zip(draft.parameters(), target.parameters()):
            mine.data.copy_(theirs.data)
    for call in range(2):
        out = target.generate(ids, draft_model=draft, num_draft_tokens=4, **GREEDY)
        stats = target.speculative_stats
        assert torch.equal(out, ref) and stats.acceptance_rate > 0.9
        assert (stats.draft_prepare_s > 0) == (call == 0)  # made again once, then reused


def test_weights_state_sees_changes_not_reads():
    weights_state = prepared.weights_state
    model = tiny_model(seed=3)
    state = weights_state(model)
    model(make_prompt(4))
    assert weights_state(model) == state  # a forward changes nothing
    with torch.no_grad():
        model.lm_head.weight[0, 0] += 1.0  # in place: the version counter moves
    assert weights_state(model) != state
    state = weights_state(model)
    model.model.norm.weight.data.mul_(2.0)  # through .data: no version, the sampled bytes tell
    assert weights_state(model) != state


def test_bf16_draft_copy_survives_draft_float(int8_everywhere):
    """Case 8: the copy of a bf16 draft shares its embedding and norms' storage, never their Parameter objects:
    `draft.float()` leaves the old copy intact, and the next call drafts with a copy of the float32 draft."""
    target, draft = tiny_pair()
    draft = draft.to(torch.bfloat16)
    ids = make_prompt(7, seed=5)
    ref = target.generate(ids, **GREEDY)
    assert torch.equal(target.generate(ids, draft_model=draft, num_draft_tokens=3, **GREEDY), ref)
    old = prepare_draft(draft, "int8").model
    assert old.get_input_embeddings().weight.data_ptr() == draft.get_input_embeddings().weight.data_ptr()
    draft.float()
    assert old.get_input_embeddings().weight.dtype == torch.bfloat16  # not converted under the copy
    for quantization in ("auto", "int8"):
        out = target.generate(ids, draft_model=draft, num_draft_tokens=3, draft_quantization=quantization, **GREEDY)
        assert torch.equal(out, ref) and target.speculative_stats.draft_tokens_accepted > 0


@pytest.mark.parametrize("backend", ["torch.ao", "int8pack"])
def test_int8_on_an_already_quantised_draft_drafts_with_it_as_given(backend):
    """Case 9: "int8" on a draft `int8_draft` already quantised: nothing left to shrink, it drafts as given."""
    target, draft = tiny_pair()
    quantised = int8_draft(draft, backend=backend)
    ids = make_prompt(6, seed=6)
    ref = target.generate(ids, **GREEDY)
    for quantization in ("int8", "auto"):
        out = target.generate(ids, draft_model=quantised, num_draft_tokens=3, draft_quantization=quantization,
                              **GREEDY)
        assert torch.equal(out, ref)
        assert target.speculative_stats.draft_quantization is None and target.speculative_stats.acceptance_rate > 0
    with pytest.raises(ValueError, match="no floating-point nn.Linear"):
        int8_draft(quantised)


def test_measured_draft_share_is_forgotten_when_the_draft_changes_layout(int8_everywhere):
    """A measured share decides "auto" only for the draft and target as they were measured (dtype, device,
    modules): after `draft.to(bfloat16)` the decision goes back to bytes."""
    target, draft = tiny_pair()
    assert prepared.int8_pays(draft, target)  # by bytes
    passes = {1: 0.1}
    note_draft_step(PreparedDraft(draft), target, {"draft_step_s": 0.001, "target_pass_s_predicted": passes})
    assert prepare_draft(draft, "auto", target) == PreparedDraft(draft)  # the measured 1% says no
    draft.to(torch.bfloat16)
    assert prepare_draft(draft, "auto", target).quantization == "int8 (auto)"
