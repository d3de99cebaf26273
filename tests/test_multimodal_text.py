"""Multimodal classes (Gemma 3, Fuyu, ...) with text prompts: served as transformers serves them, exactly; image
inputs with a draft are refused before any work with a clear message."""

from __future__ import annotations

import pytest
import torch

from conftest import left_pad_batch, make_prompt, perturbed_copy
from speculoos_hf import enable_speculative
from speculoos_hf.bench.tiny_models import tiny_model


@pytest.fixture(scope="module")
def gemma3():
    target = enable_speculative(tiny_model("gemma3"))
    return target, perturbed_copy(target, noise=0.1, seed=1)


def test_text_prompts_equal_stock_greedy(gemma3):
    target, draft = gemma3
    ids, mask = left_pad_batch([make_prompt(n, seed=n)[0] for n in (5, 9, 3)])
    ref = target.generate(ids, attention_mask=mask, do_sample=False, max_new_tokens=12)
    out = target.generate(ids, attention_mask=mask, do_sample=False, max_new_tokens=12, draft_model=draft,
                          num_draft_tokens=3)
    assert torch.equal(out, ref)
    assert target.speculative_stats.draft_tokens_proposed > 0


def test_image_inputs_are_refused_before_any_work(gemma3, monkeypatch):
    target, draft = gemma3
    vision = target.config.vision_config
    pixels = torch.zeros(1, vision.num_channels, vision.image_size, vision.image_size)
    calls = []
    encoder = type(target.model).get_image_features
    monkeypatch.setattr(type(target.model), "get_image_features", lambda *a, **k: calls.append(1) or encoder(*a, **k))
    with pytest.raises(ValueError, match="Image or video inputs are not supported with draft_model"):
        target.generate(make_prompt(4), pixel_values=pixels, draft_model=draft, max_new_tokens=3)
    assert not calls, "the image may not be encoded before the refusal"
