"""Targets placed by accelerate: layers offloaded to disk (a real `device_map` with "disk" entries and an offload
folder), loaded through `SpeculativeModelForCausalLM.from_pretrained` or dispatched and then `enable_speculative`.

Greedy output is token for token the same model's plain generate() (float32), and sampling follows the exact
target distribution (G-test with power, as in test_distribution.py). On a CPU-only machine "disk" is the only
offload tier below the main device; the code paths (accelerate hooks, meta parameters, execution device) are the
ones a GPU target offloaded to CPU or disk takes.
"""

from __future__ import annotations

import sys

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

import speculoos_hf
from conftest import left_pad_batch, make_prompt, perturbed_copy, tiny_llama
from gtest import ALPHA, N, T, V, _always_accept, _processors, exact_distribution, g_test as _g_test
from speculoos_hf import SpeculativeModelForCausalLM, enable_speculative
from speculoos_hf.glue.placement import input_device, is_dispatched, placement_kwargs, placement_summary

# Embeddings and head on disk too: the model's first parameter is then on "meta", and inputs must go to the
# execution device of accelerate's hook rather than to `model.device`.
DISK_MAP = {
    "model.embed_tokens": "disk",
    "model.layers.0": "cpu",
    "model.layers.1": "disk",
    "model.layers.2": "cpu",
    "model.norm": "cpu",
    "model.rotary_emb": "cpu",
    "lm_head": "disk",
}


@pytest.fixture(scope="module")
def saved_llama(tmp_path_factory):
    """A tiny 3-layer float32 Llama saved to a directory, and its good draft (kept in memory)."""
    model = tiny_llama(seed=0, layers=3)
    path = tmp_path_factory.mktemp("tiny_llama")
    model.save_pretrained(path)
    return path, model, perturbed_copy(model, noise=0.05, seed=1)


def _load_offloaded(path, offload_dir, loader=SpeculativeModelForCausalLM):
    model = loader.from_pretrained(path, device_map=DISK_MAP, offload_folder=str(offload_dir), dtype=torch.float32)
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = model.config.pad_token_id
    return model.eval()


def _assert_offloaded(model):
    assert is_dispatched(model)
    assert "disk" in set(model.hf_device_map.values())
    assert model.get_input_embeddings().weight.device.type == "meta"  # its weights really live on disk
    assert input_device(model) == torch.device("cpu")


@pytest.mark.parametrize("K", [1, 3, 6])
def test_from_pretrained_disk_offload_greedy_equals_plain(saved_llama, tmp_path, K):
    path, in_memory, draft = saved_llama
    target = _load_offloaded(path, tmp_path / "offload")
    _assert_offloaded(target)
    prompt = make_prompt(7, seed=3)
    plain = target.generate(prompt, max_new_tokens=24, do_sample=False)
    assert torch.equal(plain, in_memory.generate(prompt, max_new_tokens=24, do_sample=False))
    out = target.generate(prompt, draft_model=draft, num_draft_tokens=K, max_new_tokens=24, do_sample=False)
    assert torch.equal(out, plain)
    stats = target.speculative_stats
    assert stats.new_tokens == 24 and 0 < stats.acceptance_rate
    assert stats.target_forward_passes < 24  # several tokens per offloaded target pass


def test_enable_speculative_on_dispatched_model_batched(saved_llama, tmp_path):
    """A model loaded with a device_map by plain transformers, then enabled in place; a left-padded batch."""
    path, _, draft = saved_llama
    target = enable_speculative(_load_offloaded(path, tmp_path / "offload", loader=AutoModelForCausalLM))
    _assert_offloaded(target)
    ids, mask = left_pad_batch([make_prompt(n, seed=n).flatten() for n in (3, 8, 5)])
    plain = target.generate(ids, attention_mask=mask, max_new_tokens=16, do_sample=False)
    out = target.generate(ids, attention_mask=mask, draft_model=draft, num_draft_tokens=4, max_new_tokens=16,
                          do_sample=False)
    assert torch.equal(out, plain)


def test_enable_speculative_after_accelerate_disk_offload(saved_llama, tmp_path):
    """A model already in memory, moved entirely to disk by accelerate's `disk_offload` (every weight on "meta")."""
    from accelerate import disk_offload

    _, in_memory, draft = saved_llama
    prompt = make_prompt(6, seed=5)
    plain = in_memory.generate(prompt, max_new_tokens=16, do_sample=False)
    target = enable_speculative(disk_offload(tiny_llama(seed=0, layers=3), str(tmp_path / "off"), execution_device="cpu"))
    assert all(p.device.type == "meta" for p in target.parameters()) and input_device(target) == torch.device("cpu")
    out = target.generate(prompt, draft_model=draft, num_draft_tokens=5, max_new_tokens=16, do_sample=False)
    assert torch.equal(out, plain)


def test_draft_offloaded_too(saved_llama, tmp_path):
    """The draft lives wherever its user put it: here it is itself dispatched with accelerate's cpu_offload."""
    from accelerate import cpu_offload

    path, in_memory, draft = saved_llama
    target = _load_offloaded(path, tmp_path / "offload")
    offloaded_draft = cpu_offload(perturbed_copy(in_memory, noise=0.05, seed=1), execution_device="cpu")
    prompt = make_prompt(5, seed=9)
    plain = target.generate(prompt, max_new_tokens=20, do_sample=False)
    out = target.generate(prompt, draft_model=offloaded_draft, num_draft_tokens=3, max_new_tokens=20, do_sample=False)
    assert torch.equal(out, plain)


def test_max_memory_places_the_rest_on_disk(saved_llama, tmp_path):
    """`max_memory` alone (device_map="auto") on a budget smaller than the model: accelerate offloads to disk."""
    path, in_memory, draft = saved_llama
    kwargs = placement_kwargs(max_memory="cpu=60KB", offload_folder=tmp_path / "offload")
    assert kwargs["device_map"] == "auto"
    target = SpeculativeModelForCausalLM.from_pretrained(path, dtype=torch.float32, **kwargs)
    target.generation_config.eos_token_id = None
    shares = placement_summary(target)
    assert 0.2 < shares.get("disk", 0.0) < 1.0 and abs(sum(shares.values()) - 1.0) < 1e-9
    prompt = make_prompt(6, seed=4)
    out = target.generate(prompt, draft_model=draft, num_draft_tokens=4, max_new_tokens=16, do_sample=False)
    assert torch.equal(out, in_memory.generate(prompt, max_new_tokens=16, do_sample=False))


# ------------------------------------------------------------------------------- exact distribution (G-test)

PROMPT = [1, 3, 0]
G_MAP = {"model.embed_tokens": "cpu", "model.layers.0": "disk", "model.layers.1": "cpu", "model.norm": "disk",
         "model.rotary_emb": "cpu", "lm_head": "disk"}


def _small_vocab_model(seed: int, logit_scale: float = 6.0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=64, bos_token_id=None, eos_token_id=None,
                      pad_token_id=None)
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(logit_scale)
    return model


def _samples(model, seed: int, **kwargs) -> list[tuple]:
    ids = torch.tensor([PROMPT] * N)
    torch.manual_seed(seed)
    out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=True, max_new_tokens=T, top_k=0,
                         pad_token_id=0, **kwargs)
    return [tuple(row) for row in out[:, len(PROMPT):].tolist()]


def _patch_verify(monkeypatch, replacement) -> int:
    """Replace the sampling rule wherever the package imported it (robust to where the loop lives)."""
    original = speculoos_hf.speculative_verify
    patched = 0
    for name, module in list(sys.modules.items()):
        if name.startswith("speculoos_hf") and getattr(module, "speculative_verify", None) is original:
            monkeypatch.setattr(module, "speculative_verify", replacement)
            patched += 1
    return patched


def test_offloaded_target_matches_exact_distribution(tmp_path, monkeypatch):
    _small_vocab_model(0).save_pretrained(tmp_path / "target")
    target = SpeculativeModelForCausalLM.from_pretrained(
        tmp_path / "target", device_map=G_MAP, offload_folder=str(tmp_path / "offload"), dtype=torch.float32
    ).eval()
    assert "disk" in set(target.hf_device_map.values()) and is_dispatched(target)
    draft = _small_vocab_model(0)
    torch.manual_seed(123)
    with torch.no_grad():
        for p in draft.parameters():
            p.add_(0.6 * p.std() * torch.randn_like(p))

    temperature = 0.8
    expected = exact_distribution(_small_vocab_model(0), PROMPT, _processors(temperature))  # same weights, in memory
    spec = _samples(target, seed=1, draft_model=draft, num_draft_tokens=3, temperature=temperature)
    assert 0.05 < target.speculative_stats.acceptance_rate < 0.98
    p_spec = _g_test(spec, expected)
    assert p_spec > ALPHA, f"offloaded target: speculative samples deviate from the exact distribution (p={p_spec:.2e})"

    # power 1: draft-only samples are rejected by the same test
    p_draft = _g_test(_samples(enable_speculative(draft), seed=2, temperature=temperature), expected)
    assert p_draft < ALPHA, f"the test cannot tell draft-only samples apart (p={p_draft:.2e})"

    # power 2: an always-accept rule is rejected
    assert _patch_verify(monkeypatch, _always_accept) >= 1
    broken = _samples(target, seed=3, draft_model=draft, num_draft_tokens=3, temperature=temperature)
    p_broken = _g_test(broken, expected)
    assert p_broken < ALPHA, f"the test cannot detect an always-accept rule (p={p_broken:.2e})"
