"""Models speculative generation cannot serve exactly are refused before any work, with the reason named; models
served at batch size 1 only (positions from the cache length, sparse indexed attention) are exact there and
refused in batches."""

from __future__ import annotations

import pytest
import torch

from conftest import left_pad_batch, make_prompt, perturbed_copy
from speculoos_hf import enable_speculative
from speculoos_hf.bench.tiny_models import tiny_model
from speculoos_hf.glue.model_support import batch_one_reason

REFUSED = {
    "rwkv": "its own format",
    "xlstm": "its own format",
    "openai-gpt": "takes no cache",
    "xlm": "dictionary of its own",
    "moshi": "multi-token forward disagrees",
    "zamba": "do not record their per-token states",
    "glm_moe_dsa": "keeps the top-k keys",
}


@pytest.mark.parametrize("model_type", list(REFUSED))
def test_refused_before_any_work_with_the_reason(model_type):
    target = enable_speculative(tiny_model(model_type))
    calls = []
    target.register_forward_pre_hook(lambda *a: calls.append(1))
    for role, (t, d) in {"target": (target, perturbed_copy(target, 0.0)),
                         "draft_model": (enable_speculative(tiny_model("llama")), target)}.items():
        with pytest.raises(ValueError, match=REFUSED[model_type]) as info:
            t.generate(make_prompt(4), draft_model=d, max_new_tokens=4)
        assert str(info.value).startswith(f"{role} {type(target).__name__}")
    assert not calls, "no forward may run before the refusal"


@pytest.mark.parametrize("model_type", ["bart", "git"])
def test_positions_from_cache_length_batch_one_only(model_type):
    target = enable_speculative(tiny_model(model_type))
    draft = perturbed_copy(target, noise=0.1)
    ids = make_prompt(6, seed=2)
    ref = target.generate(ids, do_sample=False, max_new_tokens=12)
    out = target.generate(ids, do_sample=False, max_new_tokens=12, draft_model=draft, num_draft_tokens=3)
    assert torch.equal(out, ref)
    batch, mask = left_pad_batch([make_prompt(n, seed=n)[0] for n in (3, 6)])
    with pytest.raises(ValueError, match="batch size 1 only: it numbers positions by cache length"):
        target.generate(batch, attention_mask=mask, max_new_tokens=4, draft_model=draft)


def test_sparse_indexed_attention_is_batch_one_only():
    assert "sparse (indexed) attention" in batch_one_reason(tiny_model("dots3_note"))
    assert batch_one_reason(tiny_model("llama")) is None
    assert batch_one_reason(tiny_model("bloom")) is None  # ALiBi from the mask: holes are harmless
    assert batch_one_reason(tiny_model("mamba2")) is None  # recurrent only: no positions at all
