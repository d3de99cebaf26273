"""Every decoder-only family transformers' assisted generation serves, sliding windows past their length, batched.

Tiny configs (hidden 32, 2 layers, vocabulary 64) with small windows (WINDOW = 4 slots, 3 for the sampling test)
and generations of more than three windows, prompts longer than a window included. Greedy speculative output must
equal the target's own generate() token for token (float32): at batch size 1, and in a left-padded batch of
unequal prompts with a perturbed-copy draft, so that rows accept different numbers of drafts and their caches get
holes. For the models that count slots (sliding windows, MPT's ALiBi, GPT-Neo's local attention) the batch case
must also have compacted the caches (the proof that the path under test ran); the same sweep without compaction
fails for them (see `test_sweep_has_power_without_compaction`). Plus: target/draft pairs with different windows,
a G-test of sampling with a sliding window (with its power), a direct check of KVSlots against clean per-row
forwards (chunks with holes inside, as the draft model feeds them). Recurrent and hybrid models: tests/test_recurrent.py.
"""

from __future__ import annotations

import random

import pytest
import torch
import transformers as T

from conftest import PAD_ID, _finish, left_pad_batch, make_prompt, on_flat_machine, perturbed_copy
from speculoos_hf import enable_speculative
from speculoos_hf.loop.cache_layout import slot_distance_reason
from speculoos_hf.loop.kv_slots import CompactLayout, KVSlots

WINDOW = 4
NEW = 14  # > 3 windows
PROMPTS = (3, 9, 6)  # batch prompt lengths: one longer than two windows
H = 32


def _llama_like(**extra):
    return dict(vocab_size=64, hidden_size=H, intermediate_size=2 * H, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, max_position_embeddings=256, **extra)


def _configs(window: int) -> dict:
    """name -> (config class, kwargs). Sliding-window models get `window`; Gemma 2/3 mix a sliding and a full layer."""
    W = window
    sliding_qwen = dict(use_sliding_window=True, sliding_window=W, max_window_layers=0)
    return {
        "llama": (T.LlamaConfig, _llama_like()),
        "qwen2": (T.Qwen2Config, _llama_like(**sliding_qwen)),
        "qwen3": (T.Qwen3Config, _llama_like(head_dim=8, **sliding_qwen)),
        "qwen3_moe": (T.Qwen3MoeConfig, _llama_like(head_dim=8, num_experts=4, num_experts_per_tok=2,
                                                     moe_intermediate_size=H, **sliding_qwen)),
        "mistral": (T.MistralConfig, _llama_like(sliding_window=W)),
        "mixtral": (T.MixtralConfig, _llama_like(sliding_window=W, num_local_experts=4, num_experts_per_tok=2)),
        "gemma": (T.GemmaConfig, _llama_like(head_dim=8)),
        "gemma2": (T.Gemma2Config, _llama_like(head_dim=8, sliding_window=W,
                                               layer_types=["sliding_attention", "full_attention"])),
        "gemma3": (T.Gemma3TextConfig, _llama_like(head_dim=8, sliding_window=W,
                                                   layer_types=["sliding_attention", "full_attention"])),
        "phi3": (T.Phi3Config, _llama_like(sliding_window=W)),
        "starcoder2": (T.Starcoder2Config, _llama_like(sliding_window=W)),
        "cohere": (T.CohereConfig, _llama_like()),
        "cohere2": (T.Cohere2Config, _llama_like(sliding_window=W)),
        "olmo2": (T.Olmo2Config, _llama_like()),
        "olmo3": (T.Olmo3Config, _llama_like(sliding_window=W)),
        "gpt2": (T.GPT2Config, dict(vocab_size=64, n_embd=H, n_layer=2, n_head=4, n_positions=256)),
        "gpt_neox": (T.GPTNeoXConfig, dict(vocab_size=64, hidden_size=H, num_hidden_layers=2, num_attention_heads=4,
                                           intermediate_size=2 * H, max_position_embeddings=256)),
        "gpt_neo": (T.GPTNeoConfig, dict(vocab_size=64, hidden_size=H, num_layers=2, num_heads=4, window_size=W,
                                         attention_types=[[["local", "global"], 1]], max_position_embeddings=256)),
        "falcon": (T.FalconConfig, dict(vocab_size=64, hidden_size=H, num_hidden_layers=2, num_attention_heads=4)),
        "falcon_alibi": (T.FalconConfig, dict(vocab_size=64, hidden_size=H, num_hidden_layers=2, num_attention_heads=4,
                                              alibi=True)),
        "opt": (T.OPTConfig, dict(vocab_size=64, hidden_size=H, num_hidden_layers=2, num_attention_heads=4,
                                  ffn_dim=2 * H, word_embed_proj_dim=H, max_position_embeddings=256)),
        "bloom": (T.BloomConfig, dict(vocab_size=64, hidden_size=H, n_layer=2, n_head=4)),
        "mpt": (T.MptConfig, dict(vocab_size=64, d_model=H, n_layers=2, n_heads=4, max_seq_len=256)),
        # chunked attention (chunks of W slots) next to a full layer; attention sinks with a window next to a full one
        "llama4": (T.Llama4TextConfig, _llama_like(head_dim=8, attention_chunk_size=W, num_local_experts=2,
                                                   num_experts_per_tok=1, intermediate_size_mlp=2 * H,
                                                   layer_types=["chunked_attention", "full_attention"],
                                                   no_rope_layers=[1, 0])),
        "gpt_oss": (T.GptOssConfig, _llama_like(head_dim=8, sliding_window=W, num_local_experts=4,
                                                num_experts_per_tok=2,
                                                layer_types=["sliding_attention", "full_attention"])),
    }


ARCHS = list(_configs(WINDOW))
# attention by slot distance: must be compacted with batches (Bloom's and Falcon's ALiBi use positions: not these)
SLOT_COUNTING = {"qwen2", "qwen3", "qwen3_moe", "mistral", "mixtral", "gemma2", "gemma3", "phi3", "starcoder2",
                 "cohere2", "olmo3", "gpt_neo", "mpt", "llama4", "gpt_oss"}
_EAGER = {"gemma2", "bloom", "mpt", "gpt_neo", "gpt_oss"}  # gemma2 prefers eager; the others have no sdpa


def tiny_arch(name: str, window: int | None = WINDOW, seed: int = 0, logit_scale: float = 4.0):
    """Tiny float32 `name` model; `window=None` turns its sliding window off (same weights for the same seed)."""
    config_cls, kwargs = _configs(window or WINDOW)[name]
    if window is None:
        for key in ("sliding_window", "use_sliding_window", "max_window_layers", "layer_types", "attention_chunk_size"):
            kwargs.pop(key, None)
    config = config_cls(**kwargs, tie_word_embeddings=False, pad_token_id=PAD_ID, bos_token_id=None,
                        eos_token_id=None)
    torch.manual_seed(seed)
    model = T.AutoModelForCausalLM.from_config(config, attn_implementation="eager" if name in _EAGER else "sdpa")
    return _finish(model, seed, logit_scale)


@pytest.fixture(scope="module")
def arch_pair():
    """arch_pair(name) -> (target with the speculative generate(), perturbed-copy draft), built once per module."""
    built: dict = {}

    def get(name: str):
        if name not in built:
            target = enable_speculative(tiny_arch(name))
            built[name] = (target, perturbed_copy(target, noise=0.1, seed=1))
        return built[name]

    return get


@pytest.fixture
def compactions(monkeypatch):
    """Counts the per-row gathers (compactions) of every compact KV cache during the test."""
    count = [0]
    original = CompactLayout._compact

    def counting(self):
        count[0] += 1
        original(self)

    monkeypatch.setattr(CompactLayout, "_compact", counting)
    return count


def _check_greedy(target, draft, compactions=None, expect_compaction=None, K=3):
    ids = make_prompt(5, seed=1)
    ref = target.generate(ids, do_sample=False, max_new_tokens=NEW)
    spec = target.generate(ids, draft_model=draft, num_draft_tokens=K, do_sample=False, max_new_tokens=NEW)
    assert torch.equal(spec, ref), f"batch 1:\n{spec.tolist()}\n!= target alone\n{ref.tolist()}"
    if compactions is not None:
        assert compactions[0] == 0, "batch size 1 never has holes: nothing should move"

    ids, mask = left_pad_batch([make_prompt(n, seed=n)[0] for n in PROMPTS])
    ref = target.generate(ids, attention_mask=mask, do_sample=False, max_new_tokens=NEW)
    spec = target.generate(ids, attention_mask=mask, draft_model=draft, num_draft_tokens=K, do_sample=False,
                           max_new_tokens=NEW)
    assert torch.equal(spec, ref), f"batch:\n{spec.tolist()}\n!= target alone\n{ref.tolist()}"
    rates = [r.acceptance_rate for r in target.speculative_stats.per_row]
    assert 0.0 < target.speculative_stats.acceptance_rate < 1.0, rates
    if compactions is not None and expect_compaction is not None:
        assert (compactions[0] > 0) == expect_compaction


@pytest.mark.parametrize("name", ARCHS)
def test_greedy_matches_target_alone(name, compactions, arch_pair):
    target, draft = arch_pair(name)
    assert (slot_distance_reason(target, T.DynamicCache(config=target.config)) is not None) == (name in SLOT_COUNTING)
    _check_greedy(target, draft, compactions, expect_compaction=name in SLOT_COUNTING)


@pytest.mark.parametrize(
    "target_spec, draft_spec",
    [(("mistral", 4), ("mistral", 7)), (("gemma3", 4), ("gemma3", 6)), (("qwen2", 5), ("qwen2", None)),
     (("starcoder2", None), ("starcoder2", 4))],
    ids=["mistral_w4_draft_w7", "gemma3_w4_draft_w6", "qwen2_w5_draft_no_window", "starcoder2_full_draft_w4"],
)
def test_target_and_draft_with_different_windows(target_spec, draft_spec):
    """The target's weights with another window (a little noise too) make a draft that disagrees past the window."""
    target = enable_speculative(tiny_arch(target_spec[0], window=target_spec[1]))
    draft = perturbed_copy(tiny_arch(draft_spec[0], window=draft_spec[1]), noise=0.02, seed=3)
    _check_greedy(target, draft)


def test_sweep_has_power_without_compaction(monkeypatch, arch_pair):
    """Without compaction (holes left in place) the batch case fails for slot-counting models: the sweep can tell."""
    original = KVSlots.__init__

    def no_compaction(self, model, cache=None, compact=None):
        original(self, model, cache, compact=False)
        self.cache.activate_past_recording()

    monkeypatch.setattr(KVSlots, "__init__", no_compaction)
    for name in ("mistral", "gemma2", "mpt"):
        target, draft = arch_pair(name)
        with pytest.raises((AssertionError, RuntimeError)):
            _check_greedy(target, draft)


@pytest.mark.parametrize("name", ["mistral", "gemma2", "mpt"])
def test_rows_leaving_at_different_times(name, compactions, arch_pair):
    """An EOS that one row reaches early: rows leave the batch one by one (select_rows crops the leading holes)."""
    target, draft = arch_pair(name)
    ids, mask = left_pad_batch([make_prompt(n, seed=n)[0] for n in PROMPTS])
    free = target.generate(ids, attention_mask=mask, do_sample=False, max_new_tokens=NEW)
    width = ids.shape[1]
    eos = int(free[1, width + 4])  # row 1 stops after 5 tokens (others maybe later, or never)
    ref = target.generate(ids, attention_mask=mask, do_sample=False, max_new_tokens=NEW, eos_token_id=eos)
    spec = target.generate(ids, attention_mask=mask, draft_model=draft, num_draft_tokens=3, do_sample=False,
                           max_new_tokens=NEW, eos_token_id=eos)
    assert torch.equal(spec, ref), f"\n{spec.tolist()}\n!= target alone\n{ref.tolist()}"
    assert len({r.new_tokens for r in target.speculative_stats.per_row}) > 1, "rows should stop at different times"
    assert compactions[0] > 0


@pytest.mark.parametrize("name", ["mistral", "gemma2", "mpt"])
def test_prompt_lookup_with_windows(name, arch_pair):
    """Prompt lookup (no draft model: rows propose different numbers of tokens) on slot-counting targets. The cost
    model times with the flat profile: on a busy machine's wall clock it may rightly copy nothing."""
    target, _ = arch_pair(name)
    rows = [torch.tensor([5, 6, 7, 8, 5, 6, 7, 8, 5, 6]), torch.tensor([9, 1, 2, 9, 1]), torch.tensor([3, 4, 3])]
    ids, mask = left_pad_batch(rows)
    ref = target.generate(ids, attention_mask=mask, do_sample=False, max_new_tokens=NEW)
    with on_flat_machine():
        spec = target.generate(ids, attention_mask=mask, prompt_lookup_num_tokens=3, do_sample=False,
                               max_new_tokens=NEW)
    assert torch.equal(spec, ref), f"\n{spec.tolist()}\n!= target alone\n{ref.tolist()}"
    assert target.speculative_stats.draft_tokens_proposed > 0


# ------------------------------------------------------------------------------------- KVSlots against clean runs


@pytest.mark.parametrize("name", ["mistral", "gemma2", "mpt", "llama"])
def test_kv_slots_match_clean_rows(name):
    """Random rounds as the loop and the draft model make them: a chunk with holes at its front (pending tokens),
    single tokens, then a prefix of the round kept. Every real token's logits must equal those of a clean forward
    of its row alone (no cache, no padding)."""
    model = tiny_arch(name)
    rng = random.Random(0)
    B = 3
    kv = KVSlots(model)
    kv.start(B)
    rows = [[rng.randrange(60) for _ in range(n)] for n in (2, 7, 5)]
    width = max(map(len, rows))
    ids = torch.tensor([[PAD_ID] * (width - len(r)) + r for r in rows])
    kv.forward(ids, (ids != PAD_ID).long(), logits_to_keep=1)
    checked = 0
    for _ in range(8):
        pending = [rng.randrange(1, 4) for _ in range(B)]  # tokens each row feeds this round, as one chunk
        w = max(pending)
        chunk = [[PAD_ID] * (w - p) + [rng.randrange(60) for _ in range(p)] for p in pending]
        tokens = torch.tensor(chunk)
        first = kv.num_slots
        logits = kv.forward(tokens, (tokens != PAD_ID).long(), logits_to_keep=w)
        fed = [list(r) for r in rows]
        for b in range(B):
            fed[b] += chunk[b][w - pending[b]:]
        outs = [[logits[b, -1]] for b in range(B)]
        first_single = kv.num_slots
        for _ in range(rng.randrange(0, 4)):
            new = torch.tensor([[rng.randrange(60)] for _ in range(B)])
            out = kv.forward(new, None, 1)
            for b in range(B):
                fed[b].append(int(new[b, 0]))
                outs[b].append(out[b, -1])
        n_single = kv.num_slots - first_single
        kept = [rng.randrange(0, n_single + 1) for _ in range(B)]
        for b in range(B):  # every fed token's logits against a clean run of the row
            clean = model(input_ids=torch.tensor([fed[b]])).logits[0].float()
            start = len(fed[b]) - n_single - 1
            for j, got in enumerate(outs[b]):
                torch.testing.assert_close(got, clean[start + j], atol=1e-4, rtol=1e-4)
                checked += 1
        kv.keep(first_single, kept)
        rows = [fed[b][: len(fed[b]) - n_single + kept[b]] for b in range(B)]
        assert kv.real_tokens() == [len(r) for r in rows]
        assert kv.num_slots == max(map(len, rows)) or not kv.compact
        for layer in kv.cache.layers:  # sliding layers stay bounded by their window
            if hasattr(layer, "sliding_window") and layer.keys is not None:
                assert layer.keys.shape[-2] <= layer.sliding_window - 1
    assert checked > 20


# ------------------------------------------------------------------------------------ sampling with a window


def _windowed_model(seed: int, window: int):
    """test_distribution's tiny target (4 tokens + a pad id never sampled), as a Mistral with a sliding window."""
    from gtest import PAD, V, _mask_pad

    torch.manual_seed(seed)
    config = T.MistralConfig(vocab_size=V + 1, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                             sliding_window=window, bos_token_id=None, eos_token_id=None, pad_token_id=PAD)
    model = T.MistralForCausalLM(config).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(6.0)
    model.lm_head.register_forward_hook(_mask_pad)
    return model


def test_sliding_window_sampling_is_exact(monkeypatch):
    """G-test (test_distribution's method) for a window of 3 slots, prompts of 3 and 6 tokens in one batch and
    5 new tokens: every continuation runs past the window. Power: draft-only samples, an always-accept rule and
    the same sampler with holes left in place (no compaction) must all be rejected."""
    import speculoos_hf.loop.decoding as decoding
    from gtest import ALPHA, N, _always_accept, _generate, _processors, exact_distribution, g_test

    target = enable_speculative(_windowed_model(0, window=3))
    draft = _windowed_model(0, window=3)
    torch.manual_seed(123)
    with torch.no_grad():
        for p in draft.parameters():
            p.add_(0.6 * p.std() * torch.randn_like(p))
    prompts = [[1, 3, 0], [3, 3, 1, 0, 2, 1]]
    procs = _processors(temperature=0.9)
    expected = [exact_distribution(target, prompt, procs) for prompt in prompts]
    n_each = N // 4
    kwargs = dict(draft_model=draft, num_draft_tokens=3, temperature=0.9)

    groups = _generate(target, prompts, n_each, seed=11, **kwargs)
    assert 0.05 < target.speculative_stats.acceptance_rate < 0.98
    for prompt, samples, exp in zip(prompts, groups, expected):
        p = g_test(samples, exp)
        assert p > ALPHA, f"prompt {prompt}: speculative samples with a sliding window deviate (p={p:.2e})"

    def worst(groups):
        return min(g_test(s, e) for s, e in zip(groups, expected))

    assert worst(_generate(enable_speculative(draft), prompts, n_each, seed=12, temperature=0.9)) < ALPHA

    with monkeypatch.context() as m:
        original = KVSlots.__init__

        def no_compaction(self, model, cache=None, compact=None):
            original(self, model, cache, compact=False)
            self.cache.activate_past_recording()

        m.setattr(KVSlots, "__init__", no_compaction)
        assert worst(_generate(target, prompts, n_each, seed=13, **kwargs)) < ALPHA, "holes left in the window"

    monkeypatch.setattr(decoding, "speculative_verify", _always_accept)
    assert worst(_generate(target, prompts, n_each, seed=14, **kwargs)) < ALPHA
