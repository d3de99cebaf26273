"""Greedy speculative generate() must equal the target's own greedy generate(), token for token (float32).

Greedy verification keeps a draft token only where it equals the target's argmax, so whatever the draft (good,
bad, the target itself, another dtype), the output is the target's greedy output; every stopping rule and every
logits processor must act exactly as in the stock loop.
"""

from __future__ import annotations

import pytest
import torch

from conftest import (
    ARCHS,
    PAD_ID,
    TOKENIZER_LEN,
    left_pad_batch,
    make_prompt,
    perturbed_copy,
    tiny_tokenizer,
)


def _pick(trio, kind: str):
    """The draft of a trio (target, good, bad) by name: "good", "bad" or "self" (the target as its own draft)."""
    target, good, bad = trio
    return {"good": good, "bad": bad, "self": target}[kind]


def _assert_same(spec: torch.Tensor, ref: torch.Tensor) -> None:
    assert spec.shape == ref.shape, f"shape {tuple(spec.shape)} != target greedy {tuple(ref.shape)}\n{spec}\n{ref}"
    assert torch.equal(spec, ref), f"speculative\n{spec.tolist()}\n!= target greedy\n{ref.tolist()}"


# ---------------------------------------------------------------------------------------------- basic exactness


@pytest.mark.parametrize("K", [1, 2, 5, 8])
@pytest.mark.parametrize("draft_kind", ["good", "bad", "self"])
@pytest.mark.parametrize("arch", ARCHS)
def test_matches_target_greedy(arch, draft_kind, K, trios):
    target, _, _ = trio = trios(arch)
    draft = _pick(trio, draft_kind)
    for prompt_len, max_new in ((1, 7), (7, 17)):
        ids = make_prompt(prompt_len, seed=prompt_len + K)
        ref = target.generate(ids, do_sample=False, max_new_tokens=max_new)
        spec = target.generate(ids, draft_model=draft, num_draft_tokens=K, do_sample=False, max_new_tokens=max_new)
        _assert_same(spec, ref)
        assert spec.shape[1] == prompt_len + max_new
        stats = target.speculative_stats
        assert stats.new_tokens == max_new
        if draft_kind == "self":  # the target as its own draft: every draft token is accepted
            assert stats.draft_tokens_accepted == stats.draft_tokens_proposed > 0


@pytest.mark.parametrize("arch", ARCHS)
def test_good_draft_gives_partial_acceptance(arch, trios):
    """Sanity check of the trios: the perturbed copy is accepted often but not always, the bad draft rarely."""
    target, good, bad = trios(arch)
    ids = make_prompt(6, seed=3)
    target.generate(ids, draft_model=good, num_draft_tokens=3, do_sample=False, max_new_tokens=30)
    good_rate = target.speculative_stats.acceptance_rate
    target.generate(ids, draft_model=bad, num_draft_tokens=3, do_sample=False, max_new_tokens=30)
    bad_rate = target.speculative_stats.acceptance_rate
    assert 0.0 < good_rate < 1.0
    assert bad_rate < good_rate


# -------------------------------------------------------------------------------------------------------- stops


def _greedy_new_tokens(target, ids, max_new: int, **kw) -> list[int]:
    out = target.generate(ids, do_sample=False, max_new_tokens=max_new, **kw)
    return out[0, ids.shape[1]:].tolist()


@pytest.mark.parametrize("K", [2, 8])
@pytest.mark.parametrize("draft_kind", ["good", "self"])
@pytest.mark.parametrize("arch", ARCHS)
def test_stops_on_eos(arch, draft_kind, K, trios):
    target, _, _ = trio = trios(arch)
    draft = _pick(trio, draft_kind)
    ids = make_prompt(5, seed=11)
    plain = _greedy_new_tokens(target, ids, 20)
    eos = plain[3]  # the 4th generated token: greedy (with this eos) stops at its first occurrence
    first = plain.index(eos)
    ref = target.generate(ids, do_sample=False, max_new_tokens=20, eos_token_id=eos)
    assert ref.shape[1] == 5 + first + 1 and ref[0, -1] == eos  # the setup really stops early
    spec = target.generate(
        ids, draft_model=draft, num_draft_tokens=K, do_sample=False, max_new_tokens=20, eos_token_id=eos
    )
    _assert_same(spec, ref)
    assert target.speculative_stats.new_tokens == first + 1
    # a list of eos ids: the first of them reached stops generation
    other = (eos + 1) % 60
    ref2 = target.generate(ids, do_sample=False, max_new_tokens=20, eos_token_id=[other, eos])
    spec2 = target.generate(
        ids, draft_model=draft, num_draft_tokens=K, do_sample=False, max_new_tokens=20, eos_token_id=[other, eos]
    )
    _assert_same(spec2, ref2)


@pytest.mark.parametrize("K", [1, 5])
@pytest.mark.parametrize("arch", ARCHS)
def test_stops_on_stop_strings(arch, K, trios):
    tok = tiny_tokenizer()
    target, good, _ = trios(arch, vocab_size=TOKENIZER_LEN)
    assert target.config.vocab_size == len(tok)
    ids = make_prompt(4, seed=21)
    plain = _greedy_new_tokens(target, ids, 20)
    stop_word = tok.convert_ids_to_tokens(plain[4])
    first = plain.index(plain[4])
    ref = target.generate(ids, do_sample=False, max_new_tokens=20, stop_strings=[stop_word], tokenizer=tok)
    assert ref.shape[1] == 4 + first + 1, "the stop string must end generation early in this setup"
    for draft in (good, target):
        spec = target.generate(
            ids, draft_model=draft, num_draft_tokens=K, do_sample=False, max_new_tokens=20,
            stop_strings=[stop_word], tokenizer=tok,
        )
        _assert_same(spec, ref)
        assert tok.decode(spec[0, 4:]).endswith(stop_word)
    # several stop strings, one of them a plain string never produced
    spec = target.generate(
        ids, draft_model=good, num_draft_tokens=K, do_sample=False, max_new_tokens=20,
        stop_strings=["zzz", stop_word], tokenizer=tok,
    )
    _assert_same(spec, ref)


@pytest.mark.parametrize("K", [1, 8])
@pytest.mark.parametrize("max_new", [1, 2, 7])
@pytest.mark.parametrize("arch", ARCHS)
def test_never_exceeds_max_new_tokens(arch, max_new, K, trios):
    target, good, _ = trios(arch)
    ids = make_prompt(6, seed=max_new)
    ref = target.generate(ids, do_sample=False, max_new_tokens=max_new)
    for draft in (good, target):
        spec = target.generate(ids, draft_model=draft, num_draft_tokens=K, do_sample=False, max_new_tokens=max_new)
        assert spec.shape == (1, 6 + max_new)
        _assert_same(spec, ref)
        stats = target.speculative_stats
        assert stats.new_tokens == max_new
        assert stats.draft_tokens_accepted <= stats.draft_tokens_proposed


@pytest.mark.parametrize("arch", ARCHS)
def test_max_length(arch, trios):
    target, good, _ = trios(arch)
    ids = make_prompt(6, seed=5)
    ref = target.generate(ids, do_sample=False, max_length=15)
    spec = target.generate(ids, draft_model=good, num_draft_tokens=4, do_sample=False, max_length=15)
    assert ref.shape == (1, 15)
    _assert_same(spec, ref)


@pytest.mark.parametrize("K", [2, 6])
@pytest.mark.parametrize("arch", ARCHS)
def test_min_new_tokens(arch, K, trios):
    target, good, _ = trios(arch)
    ids = make_prompt(5, seed=31)
    plain = _greedy_new_tokens(target, ids, 20)
    eos = plain[0]  # without min_new_tokens generation would stop after one token
    ref = target.generate(ids, do_sample=False, max_new_tokens=20, eos_token_id=eos, min_new_tokens=6)
    assert ref.shape[1] >= 5 + 6
    assert eos not in ref[0, 5 : 5 + 5].tolist()
    for draft in (good, target):
        spec = target.generate(
            ids, draft_model=draft, num_draft_tokens=K, do_sample=False, max_new_tokens=20,
            eos_token_id=eos, min_new_tokens=6,
        )
        _assert_same(spec, ref)


@pytest.mark.parametrize("K", [1, 5])
@pytest.mark.parametrize("arch", ARCHS)
def test_repetition_penalty(arch, K, trios):
    target, good, bad = trios(arch)
    ids = make_prompt(6, seed=41)
    ref = target.generate(ids, do_sample=False, max_new_tokens=16, repetition_penalty=1.8)
    for draft in (good, bad, target):
        spec = target.generate(
            ids, draft_model=draft, num_draft_tokens=K, do_sample=False, max_new_tokens=16, repetition_penalty=1.8
        )
        _assert_same(spec, ref)


def test_repetition_penalty_changes_output(trios):
    """The penalty setting is not a no-op on the fixture models (so the test above checks something)."""
    changed = 0
    for arch in ARCHS:
        target, _, _ = trios(arch)
        ids = make_prompt(6, seed=41)
        a = target.generate(ids, do_sample=False, max_new_tokens=16)
        b = target.generate(ids, do_sample=False, max_new_tokens=16, repetition_penalty=1.8)
        changed += int(not torch.equal(a, b))
    assert changed >= 1


def _bigrams(tokens: list[int]) -> list[tuple[int, int]]:
    return list(zip(tokens, tokens[1:]))


@pytest.mark.parametrize("K", [2, 8])
@pytest.mark.parametrize("arch", ARCHS)
def test_no_repeat_ngram_size(arch, K, trios):
    target, good, _ = trios(arch)
    ids = make_prompt(6, seed=51)
    ref = target.generate(ids, do_sample=False, max_new_tokens=20, no_repeat_ngram_size=2)
    grams = _bigrams(ref[0].tolist())
    assert len(grams) == len(set(grams))
    for draft in (good, target):
        spec = target.generate(
            ids, draft_model=draft, num_draft_tokens=K, do_sample=False, max_new_tokens=20, no_repeat_ngram_size=2
        )
        _assert_same(spec, ref)


@pytest.mark.parametrize("arch", ARCHS)
def test_combined_processors_and_eos(arch, trios):
    target, good, _ = trios(arch)
    ids = make_prompt(7, seed=61)
    plain = _greedy_new_tokens(target, ids, 20)
    kw = dict(
        do_sample=False, max_new_tokens=24, repetition_penalty=1.3, no_repeat_ngram_size=3,
        min_new_tokens=3, eos_token_id=plain[1],
    )
    ref = target.generate(ids, **kw)
    for K in (2, 5):
        spec = target.generate(ids, draft_model=good, num_draft_tokens=K, **kw)
        _assert_same(spec, ref)


# ------------------------------------------------------------------------------------------------------ batched


def _batch(lengths=(3, 7, 5), seed=0):
    prompts = [make_prompt(n, seed=seed + i)[0] for i, n in enumerate(lengths)]
    return left_pad_batch(prompts, PAD_ID)


@pytest.mark.parametrize("K", [1, 4])
@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize("arch", ["llama", "gpt2", "qwen2"])
def test_batched_left_padded(arch, attn, K, trios):
    target, good, bad = trios(arch, attn)
    assert target.config._attn_implementation == attn
    ids, mask = _batch(seed=K)
    ref = target.generate(ids, attention_mask=mask, do_sample=False, max_new_tokens=12, pad_token_id=PAD_ID)
    for draft in (good, bad, target):
        spec = target.generate(
            ids, attention_mask=mask, draft_model=draft, num_draft_tokens=K, do_sample=False,
            max_new_tokens=12, pad_token_id=PAD_ID,
        )
        _assert_same(spec, ref)
        stats = target.speculative_stats
        assert len(stats.per_row) == 3
        assert [r.new_tokens for r in stats.per_row] == [12, 12, 12]


@pytest.mark.parametrize("K", [2, 5])
@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_batched_rows_finishing_on_eos(arch, attn, K, trios):
    """Rows that hit eos early are padded with pad_token_id exactly as in the stock batched greedy."""
    target, good, _ = trios(arch, attn)
    ids, mask = _batch(lengths=(4, 8, 6), seed=70)
    L = ids.shape[1]
    plain = target.generate(ids, attention_mask=mask, do_sample=False, max_new_tokens=16, pad_token_id=PAD_ID)
    eos = int(plain[0, L + 2])  # row 0 finishes after at most 3 new tokens
    ref = target.generate(
        ids, attention_mask=mask, do_sample=False, max_new_tokens=16, pad_token_id=PAD_ID, eos_token_id=eos
    )
    assert (ref[0, L + 3 :] == PAD_ID).all() and ref.shape[1] > L + 3, "setup: row 0 must finish early"
    for draft in (good, target):
        spec = target.generate(
            ids, attention_mask=mask, draft_model=draft, num_draft_tokens=K, do_sample=False,
            max_new_tokens=16, pad_token_id=PAD_ID, eos_token_id=eos,
        )
        _assert_same(spec, ref)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_batched_with_processors(arch, trios):
    target, good, _ = trios(arch)
    ids, mask = _batch(lengths=(5, 2, 6), seed=80)
    kw = dict(attention_mask=mask, do_sample=False, max_new_tokens=14, pad_token_id=PAD_ID,
              repetition_penalty=1.5, no_repeat_ngram_size=2)
    ref = target.generate(ids, **kw)
    spec = target.generate(ids, draft_model=good, num_draft_tokens=4, **kw)
    _assert_same(spec, ref)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_num_return_sequences_sampling_shape(arch, trios):
    target, good, _ = trios(arch)
    ids, mask = _batch(seed=90)
    L = ids.shape[1]
    torch.manual_seed(0)
    out = target.generate(
        ids, attention_mask=mask, draft_model=good, num_draft_tokens=3, do_sample=True, num_return_sequences=2,
        max_new_tokens=6, pad_token_id=PAD_ID,
    )
    assert out.shape == (6, L + 6)
    # each prompt is repeated num_return_sequences times, in order
    assert torch.equal(out[:, :L], ids.repeat_interleave(2, dim=0))
    assert len(target.speculative_stats.per_row) == 6


# ------------------------------------------------------------------------------------------------- draft dtype


@pytest.mark.parametrize("K", [2, 5])
@pytest.mark.parametrize("arch", ARCHS)
def test_bfloat16_draft_float32_target(arch, K, trios):
    target, good, _ = trios(arch)
    draft = perturbed_copy(target, noise=0.05, seed=2).to(torch.bfloat16)
    assert next(draft.parameters()).dtype == torch.bfloat16
    ids = make_prompt(6, seed=K)
    ref = target.generate(ids, do_sample=False, max_new_tokens=20)
    spec = target.generate(ids, draft_model=draft, num_draft_tokens=K, do_sample=False, max_new_tokens=20)
    _assert_same(spec, ref)
    assert target.speculative_stats.draft_tokens_accepted > 0
    ids, mask = _batch(seed=K)
    ref = target.generate(ids, attention_mask=mask, do_sample=False, max_new_tokens=10, pad_token_id=PAD_ID)
    spec = target.generate(
        ids, attention_mask=mask, draft_model=draft, num_draft_tokens=K, do_sample=False, max_new_tokens=10,
        pad_token_id=PAD_ID,
    )
    _assert_same(spec, ref)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_batched_extreme_padding(arch, trios):
    """A one-token prompt next to long ones (its prefill prefix is pure padding), and K > max_new_tokens."""
    target, good, _ = trios(arch)
    ids, mask = _batch(lengths=(1, 8, 2), seed=100)
    for max_new, K in ((9, 3), (3, 8)):
        ref = target.generate(ids, attention_mask=mask, do_sample=False, max_new_tokens=max_new, pad_token_id=PAD_ID)
        spec = target.generate(
            ids, attention_mask=mask, draft_model=good, num_draft_tokens=K, do_sample=False,
            max_new_tokens=max_new, pad_token_id=PAD_ID,
        )
        _assert_same(spec, ref)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_batched_stop_strings_and_min_new_tokens(arch, trios):
    tok = tiny_tokenizer()
    target, good, _ = trios(arch, vocab_size=TOKENIZER_LEN)
    ids, mask = _batch(lengths=(4, 6, 3), seed=110)
    L = ids.shape[1]
    plain = target.generate(ids, attention_mask=mask, do_sample=False, max_new_tokens=14, pad_token_id=PAD_ID)
    word = tok.convert_ids_to_tokens(int(plain[2, L + 2]))
    # The stock loop pads rows finished by a stopping criterion only when an eos id is set: set one never emitted.
    unused = _unused_id(plain, TOKENIZER_LEN)
    kw = dict(attention_mask=mask, do_sample=False, max_new_tokens=14, pad_token_id=PAD_ID)
    ref = target.generate(ids, stop_strings=[word], tokenizer=tok, eos_token_id=unused, **kw)
    assert (ref[2, L + 3 :] == PAD_ID).all() and ref.shape[1] > L + 3, "setup: row 2 must stop early"
    spec = target.generate(
        ids, draft_model=good, num_draft_tokens=4, stop_strings=[word], tokenizer=tok, eos_token_id=unused, **kw
    )
    _assert_same(spec, ref)
    # min_new_tokens per row with an eos that rows would otherwise emit early
    eos = int(plain[0, L])
    ref = target.generate(ids, eos_token_id=eos, min_new_tokens=4, **kw)
    spec = target.generate(ids, draft_model=good, num_draft_tokens=3, eos_token_id=eos, min_new_tokens=4, **kw)
    _assert_same(spec, ref)


def _unused_id(sequences: torch.Tensor, vocab_size: int) -> int:
    """An id that appears nowhere in `sequences` (used as an eos that never fires)."""
    used = set(sequences.flatten().tolist()) | {PAD_ID}
    return next(i for i in range(vocab_size) if i not in used)


@pytest.mark.parametrize("K", [1, 4])
@pytest.mark.parametrize("arch", ARCHS)
def test_sampling_with_top_k_1_is_greedy(arch, K, trios):
    """do_sample=True with top_k=1 makes target and draft distributions one-hot: the speculative sampling path
    (accept/reject + residual) must then reproduce the target greedy output exactly, whatever the seed."""
    target, good, bad = trios(arch)
    ids = make_prompt(5, seed=120)
    ref = target.generate(ids, do_sample=False, max_new_tokens=15)
    for seed, draft in ((0, good), (1, bad)):
        torch.manual_seed(seed)
        spec = target.generate(ids, draft_model=draft, num_draft_tokens=K, do_sample=True, top_k=1, max_new_tokens=15)
        _assert_same(spec, ref)
    bids, mask = _batch(seed=121)
    ref = target.generate(bids, attention_mask=mask, do_sample=False, max_new_tokens=10, pad_token_id=PAD_ID)
    spec = target.generate(
        bids, attention_mask=mask, draft_model=good, num_draft_tokens=K, do_sample=True, top_k=1,
        max_new_tokens=10, pad_token_id=PAD_ID,
    )
    _assert_same(spec, ref)


@pytest.mark.parametrize("arch", ["llama", "gpt2", "qwen2"])
def test_batched_stress_varied_lengths_and_eos(arch, trios):
    """B=5 rows of random lengths (1..9) and an eos hit at different steps per row, several K and drafts:
    exercises rows leaving the batch, holes from per-row rejections and cropping."""
    target, good, bad = trios(arch)
    gen = torch.Generator().manual_seed(7)
    for trial, K in enumerate((2, 5, 8)):
        lengths = torch.randint(1, 10, (5,), generator=gen).tolist()
        ids, mask = _batch(lengths=tuple(lengths), seed=300 + 10 * trial)
        L = ids.shape[1]
        plain = target.generate(ids, attention_mask=mask, do_sample=False, max_new_tokens=18, pad_token_id=PAD_ID)
        eos = [int(plain[1, L + 4]), int(plain[3, L + 9])]
        kw = dict(attention_mask=mask, do_sample=False, max_new_tokens=18, pad_token_id=PAD_ID, eos_token_id=eos)
        ref = target.generate(ids, **kw)
        for draft in (good, bad):
            spec = target.generate(ids, draft_model=draft, num_draft_tokens=K, **kw)
            _assert_same(spec, ref)


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_multi_token_stop_string(arch, trios):
    tok = tiny_tokenizer()
    target, good, _ = trios(arch, vocab_size=TOKENIZER_LEN)
    ids = make_prompt(5, seed=130)
    plain = _greedy_new_tokens(target, ids, 20)
    stop = tok.decode(plain[5:7])  # two words, "wAA wBB"
    assert len(stop.split()) == 2
    ref = target.generate(ids, do_sample=False, max_new_tokens=20, stop_strings=[stop], tokenizer=tok)
    assert ref.shape[1] <= 5 + 7 and tok.decode(ref[0, 5:]).endswith(stop)
    for K in (1, 3, 8):
        spec = target.generate(
            ids, draft_model=good, num_draft_tokens=K, do_sample=False, max_new_tokens=20,
            stop_strings=[stop], tokenizer=tok,
        )
        _assert_same(spec, ref)
