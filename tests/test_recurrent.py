"""Recurrent and hybrid models (recurrent_state.py): per-row rollback of recurrent and convolution state, exact.

Two toys stand for the families: a Qwen3.5-like model (gated delta-net layers with a short convolution beside a full
attention layer) and a Mamba-2-like one (recurrent only, no attention). Greedy output must equal the target's own
generate() token for token (float32) at every K and under the cost model, at batch size 1 and in a left-padded batch
of unequal prompts where rows accept different numbers of drafts; with every drafter (a hybrid or recurrent draft,
an attention draft for a hybrid target and the reverse, prompt lookup, the hybrid drafter, the suffix cache, a draft
with another tokenizer) and all-padding rows. Sampling: G-tests against the exact distribution, with their power,
at batch 1 and in a batch whose rows finish at different rounds. Plus the per-row invariant checked directly on
KVSlots against clean per-row forwards, and the rollback's books (no extra target pass).
"""

from __future__ import annotations

import pytest
import torch
import transformers as T

import speculoos_hf.loop.decoding as decoding
from conftest import PAD_ID, left_pad_batch, make_prompt, on_flat_machine, perturbed_copy, tiny_model
from gtest import ALPHA, GTEST_PAD, GTEST_V, _always_accept, _generate, _processors, exact_distribution, g_test
from gtest import mask_pad
from speculoos_hf import SuffixCache, enable_speculative
from speculoos_hf.loop.kv_slots import KVSlots

VOCAB = 64
NEW = 20


def qwen35_like(vocab: int = VOCAB, seed: int = 0, scale: float = 4.0, pad: int | None = PAD_ID):
    """Gated delta-net (with its short convolution) in layers 0 and 1, full attention in layer 2."""
    config = T.Qwen3_5TextConfig(
        vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
        num_key_value_heads=2, head_dim=8, linear_num_key_heads=2, linear_num_value_heads=4, linear_key_head_dim=8,
        linear_value_head_dim=8, linear_conv_kernel_dim=3, max_position_embeddings=256,
        layer_types=["linear_attention", "linear_attention", "full_attention"])
    return _built(config, seed, scale, pad)


def mamba2_like(vocab: int = VOCAB, seed: int = 0, scale: float = 4.0, pad: int | None = PAD_ID):
    """Mamba-2 blocks only: a state-space recurrence and a short convolution, no attention layer at all."""
    config = T.Mamba2Config(vocab_size=vocab, hidden_size=32, state_size=8, num_hidden_layers=2, expand=2,
                            conv_kernel=3, num_heads=4, head_dim=16, n_groups=1, chunk_size=8)
    return _built(config, seed, scale, pad)


def _built(config, seed: int, scale: float, pad: int | None):
    config.pad_token_id, config.bos_token_id, config.eos_token_id = pad, None, None
    config.tie_word_embeddings = False
    torch.manual_seed(seed)
    model = T.AutoModelForCausalLM.from_config(config).eval()
    with torch.no_grad():
        model.get_output_embeddings().weight.mul_(scale)
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = pad
    return model


BUILDERS = {"qwen3_5": qwen35_like, "mamba2": mamba2_like}


@pytest.fixture(scope="module")
def toys():
    """toys(name) -> (target with the speculative generate(), perturbed-copy draft), built once."""
    built: dict = {}

    def get(name: str):
        if name not in built:
            target = enable_speculative(BUILDERS[name]())
            built[name] = (target, perturbed_copy(target, noise=0.1, seed=1))
        return built[name]

    return get


def _batch():
    return left_pad_batch([make_prompt(n, seed=n)[0] for n in (5, 11, 2)])


def _assert_equal_to_stock(target, draft, ids, mask=None, **kwargs):
    ref = target.generate(ids, attention_mask=mask, do_sample=False, max_new_tokens=NEW)
    out = target.generate(ids, attention_mask=mask, do_sample=False, max_new_tokens=NEW, draft_model=draft, **kwargs)
    assert torch.equal(out, ref), f"{kwargs}: speculative greedy output differs from the target's own"
    return target.speculative_stats


# ------------------------------------------------------------------------------------------------ greedy, every K


@pytest.mark.parametrize("name", list(BUILDERS))
@pytest.mark.parametrize("K", range(1, 9))
def test_greedy_equals_stock_at_every_k(name, K, toys):
    target, draft = toys(name)
    single = _assert_equal_to_stock(target, draft, make_prompt(7, seed=3), num_draft_tokens=K)
    batch = _assert_equal_to_stock(target, draft, *_batch(), num_draft_tokens=K)
    for stats in (single, batch):
        assert 0 < stats.draft_tokens_accepted < stats.draft_tokens_proposed, "drafts must be rejected somewhere"
        assert stats.prefill_passes == 1  # a recurrent state per token: the prompt is read by a forward of its own
    accepted = [r.draft_tokens_accepted / max(r.draft_tokens_proposed, 1) for r in batch.per_row]
    assert len(set(accepted)) > 1, "rows must accept differently (so that per-row rollback is exercised)"


@pytest.mark.parametrize("name", list(BUILDERS))
def test_greedy_equals_stock_under_the_cost_model(name, toys):
    """The cost model times with the flat profile: on a busy machine's wall clock it may rightly draft nothing."""
    target, draft = toys(name)
    with on_flat_machine():
        stats = _assert_equal_to_stock(target, draft, *_batch())  # num_draft_tokens: the cost model's k
    assert stats.draft_tokens_proposed > 0


# ------------------------------------------------------------------------------------------------ every drafter


def test_attention_draft_for_a_hybrid_target_and_the_reverse(toys):
    hybrid, _ = toys("qwen3_5")
    attention = tiny_model("llama", vocab_size=VOCAB)
    _assert_equal_to_stock(hybrid, perturbed_copy(attention, 0.0), *_batch(), num_draft_tokens=4)
    _assert_equal_to_stock(enable_speculative(attention), perturbed_copy(hybrid, 0.1), *_batch(), num_draft_tokens=4)
    mamba, mamba_draft = toys("mamba2")
    _assert_equal_to_stock(hybrid, mamba_draft, *_batch(), num_draft_tokens=3)  # recurrent draft, other family
    _assert_equal_to_stock(mamba, perturbed_copy(hybrid, 0.1), *_batch(), num_draft_tokens=3)


@pytest.mark.parametrize("name", list(BUILDERS))
def test_prompt_lookup_hybrid_drafter_and_suffix_cache(name, toys):
    target, draft = toys(name)
    repeat = torch.cat([make_prompt(6, seed=1)] * 3, dim=1)  # the context repeats: lookup finds copies
    ids, mask = left_pad_batch([repeat[0], make_prompt(4, seed=2)[0], repeat[0, :9]])
    with on_flat_machine():  # the cost model paces the copies: on a busy machine's wall clock it may copy nothing
        lookup = _assert_equal_to_stock(target, None, ids, mask, prompt_lookup_num_tokens=5)
    assert lookup.draft_tokens_proposed > 0
    _assert_equal_to_stock(target, draft, ids, mask, prompt_lookup_num_tokens=5, num_draft_tokens=3)
    cache = SuffixCache()
    cache.add(target.generate(repeat, do_sample=False, max_new_tokens=NEW)[0].tolist())
    with on_flat_machine():
        cached = _assert_equal_to_stock(target, None, repeat, suffix_cache=cache)
    assert cached.draft_tokens_accepted > 0


def test_block_verification_and_all_padding_rows(toys):
    target, draft = toys("qwen3_5")
    ids, mask = left_pad_batch([make_prompt(4, seed=4)[0], make_prompt(1, seed=5)[0]])
    mask[1] = 0  # a row that is all padding, as stock allows
    _assert_equal_to_stock(target, draft, ids, mask, num_draft_tokens=3)
    _assert_equal_to_stock(target, draft, *_batch(), num_draft_tokens=3, block_verification=True)


def test_draft_with_another_tokenizer():
    from test_other_tokenizer import letters_tokenizers, _left_pad

    tok_t, tok_d = letters_tokenizers()
    target = enable_speculative(qwen35_like(len(tok_t), seed=0, scale=6.0, pad=tok_t.pad_token_id))
    draft = mamba2_like(len(tok_d), seed=1, scale=3.0, pad=tok_d.pad_token_id)
    ids, mask = _left_pad([tok_t.encode(s) for s in ("abcd", "h", "fe gh abcdcd")], tok_t.pad_token_id)
    pad = tok_t.pad_token_id
    ref = target.generate(ids, attention_mask=mask, do_sample=False, max_new_tokens=NEW, pad_token_id=pad)
    out = target.generate(ids, attention_mask=mask, do_sample=False, max_new_tokens=NEW, pad_token_id=pad,
                          draft_model=draft, num_draft_tokens=3, tokenizer=tok_t, assistant_tokenizer=tok_d)
    assert torch.equal(out, ref)
    assert target.speculative_stats.draft_tokens_proposed > 0


# ------------------------------------------------------------------------------------------------ the invariant


@pytest.mark.parametrize("name", list(BUILDERS))
@torch.no_grad()
def test_each_row_sees_exactly_its_real_tokens(name, toys):
    """KVSlots against clean per-row forwards: chunks with holes inside (as the draft feeds catch-up chunks), rows
    keeping different prefixes of what they were fed; every row's next logits equal its own sequence's."""
    target, _ = toys(name)
    kv = KVSlots(target)
    kv.start(3)
    rows = [make_prompt(n, seed=10 + n)[0].tolist() for n in (4, 6, 1)]
    width = max(map(len, rows))
    chunk = torch.tensor([[PAD_ID] * (width - len(r)) + r for r in rows])
    kv.forward(chunk, (chunk != PAD_ID).long(), 1)
    seen = [list(r) for r in rows]
    gen = torch.Generator().manual_seed(0)
    for step in range(6):
        n = 1 + step % 3
        tokens = torch.randint(0, PAD_ID, (3, n), generator=gen)
        valid = torch.ones(3, n, dtype=torch.long)
        valid[step % 3, : n - 1] = 0  # one row gets holes before its real token (a shorter catch-up)
        first = kv.num_slots
        logits = kv.forward(tokens, valid, n)
        keep = [int(valid[i].sum()) - (i + step) % 2 if n > 1 else 1 for i in range(3)]
        for i in range(3):
            real = tokens[i][valid[i].bool()].tolist()
            expected = target(input_ids=torch.tensor([seen[i] + real])).logits[0, -1]
            torch.testing.assert_close(logits[i, -1], expected, atol=1e-4, rtol=1e-4)
        kv.keep_first([kv.real_tokens()[i] - (int(valid[i].sum()) - keep[i]) for i in range(3)])
        for i in range(3):
            seen[i] += tokens[i][valid[i].bool()].tolist()[: keep[i]]
        assert kv.real_tokens() == [len(s) for s in seen]
        del first


def test_rollback_adds_no_target_pass(toys):
    """With a draft that is always right, a hybrid target commits K+1 tokens per target pass, as attention does."""
    target, _ = toys("qwen3_5")
    attention = enable_speculative(tiny_model("llama", vocab_size=VOCAB))
    for model in (target, attention):
        _assert_equal_to_stock(model, perturbed_copy(model, 0.0), make_prompt(5, seed=1), num_draft_tokens=4)
        stats = model.speculative_stats
        assert stats.target_forward_passes == NEW // 5  # 20 tokens, 5 per pass


# ------------------------------------------------------------------------------------------------ sampling


N = 4000
PROMPTS = ([1, 3, 0], [2, 2], [0, 1, 3, 3])


def _gtest_models(name: str):
    target = BUILDERS[name](GTEST_V + 1, seed=0, scale=6.0, pad=GTEST_PAD)
    target.get_output_embeddings().register_forward_hook(mask_pad)
    draft = perturbed_copy(target, noise=0.6, seed=2)
    return enable_speculative(target), draft


@pytest.mark.parametrize("name", list(BUILDERS))
@pytest.mark.parametrize("prompts", [PROMPTS[:1], PROMPTS], ids=["batch1", "batch3_eos"])
def test_sampling_matches_exact_distribution(name, prompts, monkeypatch):
    target, draft = _gtest_models(name)
    eos = 2 if len(prompts) > 1 else None  # rows that meet EOS finish at different rounds
    settings = dict(temperature=0.8, top_k=3) if len(prompts) > 1 else {}
    extra = dict(settings, **({} if eos is None else dict(eos_token_id=eos)))
    n_each = N // len(prompts)
    spec = _generate(target, list(prompts), n_each, seed=1, draft_model=draft, num_draft_tokens=3, **extra)
    stats = target.speculative_stats
    assert 0.05 < stats.acceptance_rate < 0.98
    broken_rule = []
    for p, samples in zip(prompts, spec):
        expected = exact_distribution(target, list(p), _processors(**settings), eos)
        assert g_test(samples, expected) > ALPHA, f"{name} {p}: samples deviate from the exact distribution"
        broken_rule.append(expected)
    # power: the draft alone, and a rule that accepts every draft, must be rejected by the same test
    draft_only = _generate(enable_speculative(draft), list(prompts), n_each, seed=2, **extra)
    assert min(g_test(s, e) for s, e in zip(draft_only, broken_rule)) < ALPHA
    monkeypatch.setattr(decoding, "speculative_verify", _always_accept)
    broken = _generate(target, list(prompts), n_each, seed=3, draft_model=draft, num_draft_tokens=3, **extra)
    assert min(g_test(s, e) for s, e in zip(broken, broken_rule)) < ALPHA


def test_rollback_depth_is_bounded(toys, monkeypatch):
    """Copies longer than recurrent_state.MAX_ROLLBACK are verified in pieces of at most that many drafts, and a
    draft that catches up on a longer stretch keeps only that many states per row; still exact."""
    from speculoos_hf.loop.recurrent_state import MAX_ROLLBACK

    target, draft = toys("qwen3_5")
    fed = []
    forward = KVSlots.forward
    monkeypatch.setattr(KVSlots, "forward",
                        lambda self, t, v, logits_to_keep: fed.append((self.model is target, t.shape[1]))
                        or forward(self, t, v, logits_to_keep))
    repeat = torch.cat([make_prompt(9, seed=7)] * 8, dim=1)  # 72 tokens that repeat: lookup copies run long
    ref = target.generate(repeat, do_sample=False, max_new_tokens=60)
    fed.clear()
    out = target.generate(repeat, do_sample=False, max_new_tokens=60, draft_model=draft,
                          prompt_lookup_num_tokens=48, max_matching_ngram_size=24, num_draft_tokens=2)
    assert torch.equal(out, ref)
    verified = [n for is_target, n in fed[1:] if is_target]  # after the prefill
    assert max(verified) == MAX_ROLLBACK + 1, "copies are verified up to the bound, not past it"
    # a chunk longer than the tape keeps (a draft catching up), then a rollback: exact per row
    kv = KVSlots(target)
    kv.start(2)
    rows = torch.randint(0, PAD_ID, (2, 50), generator=torch.Generator().manual_seed(3))
    kv.forward(rows[:, :4], None, 1)
    kv.forward(rows[:, 4:], None, 1)  # 46 tokens over a cache: more than MAX_ROLLBACK states per row
    kv.keep_first([50 - 3, 50 - MAX_ROLLBACK])
    logits = kv.forward(torch.tensor([[5], [6]]), None, 1)
    for i, kept in enumerate((47, 50 - MAX_ROLLBACK)):
        expected = target(input_ids=torch.cat([rows[i, :kept], torch.tensor([5 + i])])[None]).logits[0, -1]
        torch.testing.assert_close(logits[i, -1], expected, atol=1e-4, rtol=1e-4)
