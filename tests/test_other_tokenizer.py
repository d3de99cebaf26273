"""Drafts with another tokenizer (`speculoos_hf.drafters.other_tokenizer`), proven on tiny models whose tokenizers
really differ.

The target reads characters: a byte-level BPE without merges over "a", "b", "c" plus "<eos>" (ids 0..3) and
"<pad>" (4), so every continuation of T tokens can be enumerated (4**5 = 1024) and its exact probability computed
with the same logits processors generate() applies. The draft's tokenizer has merges over the same alphabet
("ab", "ca", "bb", "cab", ids in another order), so its own tokenisation of the accepted text changes as text
arrives ("c" + "a" + "b" becomes "cab") and its cache must be re-synchronised every round.

As in test_distribution.py: 12,000 samples in one batched generate() call, a G-test at significance 0.001 against
the exact distribution, fixed seeds; and each case shows the test's power: an always-accept rule, and a drafter
that reports a wrong q (uniform over the intersection instead of the distribution it sampled from), must both be
rejected by the same test. Greedy: token-for-token equality with the target's own greedy generate() in float32,
batched with unequal prompts, with stops; a draft that is the target itself in permuted ids accepts everything.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

import speculoos_hf.loop.decoding as decoding
from speculoos_hf import enable_speculative
from speculoos_hf.loop.decoding import speculative_decode
from speculoos_hf.glue.options import DecodeRequest, SpeculativeOptions
from speculoos_hf.drafters.model import ModelDrafter
from speculoos_hf.drafters.other_tokenizer import OtherTokenizerDrafter, decode_tail, token_bytes
from speculoos_hf.drafters.select import model_drafter
from gtest import ALPHA, N, PAD, T, _always_accept, _generate, _processors, exact_distribution, g_test

EOS = 3  # target tokens a, b, c, <eos> (V = 4 of gtest); the target's <pad> is gtest's PAD, never produced


# ------------------------------------------------------------------------------------------------ tokenizers


def bpe_tokenizer(vocab: dict[str, int], merges: list[tuple[str, str]]) -> PreTrainedTokenizerFast:
    """Offline byte-level BPE (as GPT-2, Qwen2.5, SmolLM2), no regex split, "<eos>"/"<pad>" special, left padding."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    tok = Tokenizer(models.BPE(vocab, merges))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>", pad_token="<pad>", padding_side="left")


def target_tokenizer():
    return bpe_tokenizer({"a": 0, "b": 1, "c": 2, "<eos>": 3, "<pad>": 4}, [])


def draft_tokenizer():
    vocab = {"<pad>": 0, "<eos>": 1, "ab": 2, "c": 3, "b": 4, "a": 5, "ca": 6, "bb": 7, "cab": 8}
    return bpe_tokenizer(vocab, [("c", "a"), ("ca", "b"), ("a", "b"), ("b", "b")])


def _masked(model, ids: list[int]):
    """Ids that must never be sampled (pads) get a huge negative logit, processor-free."""
    def hook(module, inputs, output):
        output[..., ids] = -1e9
        return output

    model.lm_head.register_forward_hook(hook)
    return model


def _llama(vocab_size: int, seed: int, logit_scale: float) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                      bos_token_id=None, eos_token_id=None, pad_token_id=None)
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(logit_scale)
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = PAD
    return model


@pytest.fixture(scope="module", autouse=True)
def _frozen_heap():
    """12,000-row batches make many small host objects; keeping the long-lived heap out of the garbage
    collector's scans halves the time of these tests (nothing to do with the drafter's results)."""
    import gc

    gc.collect()
    gc.freeze()
    yield
    gc.unfreeze()


@pytest.fixture(scope="module")
def toks():
    return target_tokenizer(), draft_tokenizer()


@pytest.fixture(scope="module")
def target():
    return enable_speculative(_masked(_llama(5, 0, 6.0), [PAD]))


@pytest.fixture(scope="module")
def draft():
    return _masked(_llama(9, 1, 3.0), [0])  # the draft's <pad>


# ------------------------------------------------------------------------------------------------ exact distribution


def _reports_uniform_q(monkeypatch):
    """A broken drafter: samples from the right q but reports uniform over the intersection."""
    original = OtherTokenizerDrafter.propose

    def wrong(self, state, k):
        proposal = original(self, state, k)
        inter_t = self.vocab.inter_t
        uniform = torch.zeros_like(proposal.probs)
        uniform[..., inter_t] = 1.0 / len(inter_t)
        return replace(proposal, probs=uniform)

    monkeypatch.setattr(OtherTokenizerDrafter, "propose", wrong)


CASES = {
    "plain": dict(settings={}, K=4, wrong_q=True),
    "temperature": dict(settings=dict(temperature=0.6), K=3),
    "top_p": dict(settings=dict(top_p=0.7), K=3, wrong_q=True),
    "repetition_penalty": dict(settings=dict(repetition_penalty=1.8), K=3),
    "eos_in_block": dict(settings={}, K=4, eos=EOS),
}
PROMPT = [2, 0, 1]  # "cab": one draft token


@pytest.mark.parametrize("name", list(CASES))
def test_other_tokenizer_sampling_is_exact(name, target, draft, toks, monkeypatch):
    case = CASES[name]
    settings, K, eos = case["settings"], case["K"], case.get("eos")
    expected = exact_distribution(target, PROMPT, _processors(**settings), eos)
    kwargs = dict(settings, draft_model=draft, num_draft_tokens=K, tokenizer=toks[0], assistant_tokenizer=toks[1])
    if eos is not None:
        kwargs["eos_token_id"] = eos
    (spec,) = _generate(target, [PROMPT], N, seed=1, **kwargs)
    stats = target.speculative_stats
    assert 0.05 < stats.acceptance_rate < 0.98, f"acceptance {stats.acceptance_rate}: test not meaningful"
    p_spec = g_test(spec, expected)
    assert p_spec > ALPHA, f"{name}: speculative samples deviate from the target distribution (p={p_spec:.2e})"
    if eos is not None:
        assert any(len(o) < T for o in spec), "EOS must happen inside draft blocks"

    with monkeypatch.context() as m:  # power 1: an always-accept rule
        m.setattr(decoding, "speculative_verify", _always_accept)
        (broken,) = _generate(target, [PROMPT], N, seed=2, **kwargs)
    p_broken = g_test(broken, expected)
    assert p_broken < ALPHA, f"{name}: the test cannot detect an always-accept rule (p={p_broken:.2e})"

    p_wrong = None
    if case.get("wrong_q"):  # power 2: a drafter that reports a q it did not sample from
        with monkeypatch.context() as m:
            _reports_uniform_q(m)
            (wrong,) = _generate(target, [PROMPT], N, seed=3, **kwargs)
        p_wrong = g_test(wrong, expected)
        assert p_wrong < ALPHA, f"{name}: the test cannot detect a wrongly reported q (p={p_wrong:.2e})"
    print(f"\n{name}: p={p_spec:.3f} acceptance={stats.acceptance_rate:.2f}; always-accept p={p_broken:.1e}; "
          f"wrong q p={p_wrong}")


def test_other_tokenizer_batch_of_unequal_prompts(target, draft, toks, monkeypatch):
    """One left-padded batch with prompts of 1, 3 and 6 characters (1, 1 and 4 draft tokens)."""
    prompts = [[2], [2, 0, 1], [0, 1, 1, 2, 2, 0]]
    settings = dict(temperature=0.8, repetition_penalty=1.3)
    procs = _processors(**settings)
    kwargs = dict(settings, draft_model=draft, num_draft_tokens=4, tokenizer=toks[0], assistant_tokenizer=toks[1])
    groups = _generate(target, prompts, N // 2, seed=4, **kwargs)
    assert 0.05 < target.speculative_stats.acceptance_rate < 0.98
    ps = [g_test(s, exact_distribution(target, pr, procs)) for pr, s in zip(prompts, groups)]
    assert min(ps) > ALPHA, f"batched speculative samples deviate: p={ps}"
    with monkeypatch.context() as m:
        m.setattr(decoding, "speculative_verify", _always_accept)
        groups = _generate(target, prompts, N // 2, seed=5, **kwargs)
    worst = max(g_test(s, exact_distribution(target, pr, procs)) for pr, s in zip(prompts, groups))
    assert worst < ALPHA, "the batched test cannot detect an always-accept rule"
    print(f"\nbatch: p={[round(p, 3) for p in ps]}; always-accept worst p={worst:.1e}")


# ------------------------------------------------------------------------------------------------ greedy


ALPHABET = "abcdefgh "


def letters_tokenizers():
    """Characters for the target; for the draft the same characters plus merges (ids shuffled)."""
    chars = list(ALPHABET)
    target_vocab = {("Ġ" if c == " " else c): i for i, c in enumerate(chars)}
    target_vocab.update({"<eos>": len(chars), "<pad>": len(chars) + 1})
    merges = [("a", "b"), ("c", "d"), ("e", "Ġ"), ("ab", "cd"), ("Ġ", "f"), ("g", "h"), ("h", "a"), ("Ġf", "e")]
    draft_tokens = ["<pad>", "<eos>"] + [("Ġ" if c == " " else c) for c in reversed(chars)] + [a + b for a, b in merges]
    draft_vocab = {t: i for i, t in enumerate(draft_tokens)}
    return bpe_tokenizer(target_vocab, []), bpe_tokenizer(draft_vocab, merges)


def _greedy_models(target_vocab: int, draft_vocab: int, seed: int = 0):
    target = enable_speculative(_llama(target_vocab, seed, 4.0))
    target.generation_config.pad_token_id = target_vocab - 1
    return target, _llama(draft_vocab, seed + 7, 4.0)


def _left_pad(prompts: list[list[int]], pad: int):
    width = max(map(len, prompts))
    ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])
    return ids, (ids != pad).long()


@pytest.mark.parametrize("K", [1, 3, 6])
def test_other_tokenizer_greedy_equals_target_greedy_batched(K):
    tok_t, tok_d = letters_tokenizers()
    target, draft = _greedy_models(len(tok_t), len(tok_d))
    pad, eos = tok_t.pad_token_id, tok_t.eos_token_id
    prompts = [tok_t.encode(s) for s in ("abcd", "h", "fe gh abcdcd", "ga e")]
    ids, mask = _left_pad(prompts, pad)
    for extra in (dict(), dict(eos_token_id=eos), dict(repetition_penalty=1.5)):
        ref = target.generate(ids, attention_mask=mask, do_sample=False, max_new_tokens=24, pad_token_id=pad, **extra)
        out = target.generate(ids, attention_mask=mask, do_sample=False, max_new_tokens=24, pad_token_id=pad,
                              draft_model=draft, num_draft_tokens=K, tokenizer=tok_t, assistant_tokenizer=tok_d, **extra)
        assert torch.equal(out, ref), f"K={K} {extra}: greedy output differs from the target's own"
        assert target.speculative_stats.draft_tokens_proposed > 0


def test_other_tokenizer_with_prompt_lookup_auto_k_and_stop_strings():
    """The drafter composes: prompt lookup first (hybrid), the cost-model K, stop strings; greedy stays exact."""
    tok_t, tok_d = letters_tokenizers()
    target, draft = _greedy_models(len(tok_t), len(tok_d))
    pad = tok_t.pad_token_id
    ids, mask = _left_pad([tok_t.encode(s) for s in ("abcd abcd abcd", "h", "fe gh abcdcd fe gh")], pad)
    common = dict(attention_mask=mask, do_sample=False, max_new_tokens=30, pad_token_id=pad)
    ref = target.generate(ids, **common)
    both = dict(draft_model=draft, tokenizer=tok_t, assistant_tokenizer=tok_d)
    assert torch.equal(target.generate(ids, **common, **both, num_draft_tokens=4, prompt_lookup_num_tokens=3), ref)
    assert torch.equal(target.generate(ids, **common, **both), ref)  # num_draft_tokens=None: the cost model picks K
    ref = target.generate(ids, **common, tokenizer=tok_t, stop_strings=["gh"])
    assert torch.equal(target.generate(ids, **common, **both, num_draft_tokens=3, stop_strings=["gh"]), ref)


def _permuted_copy(target, perm: torch.Tensor):
    """The target in another id space: draft id perm[t] has the embedding and output row of target id t."""
    import copy

    draft = copy.deepcopy(target)
    inv = torch.argsort(perm)
    with torch.no_grad():
        draft.get_input_embeddings().weight.copy_(target.get_input_embeddings().weight[inv])
        draft.lm_head.weight.copy_(target.lm_head.weight[inv])
    return draft


@pytest.mark.parametrize("do_sample", [False, True])
def test_same_model_in_permuted_ids_accepts_everything(do_sample):
    """A draft that is the target itself, with every id renamed through its own tokenizer: the intersection is the
    whole vocabulary, q = p and the string-level proposals are the target's own tokens, so every draft is
    accepted. Checks the id mapping both ways and that the draft's cache stays exactly in step."""
    tok_t, _ = letters_tokenizers()
    chars = [tok_t.convert_ids_to_tokens(i) for i in range(len(tok_t))]
    perm = torch.tensor([(7 * i + 3) % len(chars) for i in range(len(chars))])  # a permutation (11 ids, 7 coprime)
    assert sorted(perm.tolist()) == list(range(len(chars)))
    vocab = {chars[t]: int(perm[t]) for t in range(len(chars))}
    tok_d = bpe_tokenizer(vocab, [])
    target = enable_speculative(_llama(len(tok_t), 3, 4.0))
    draft = _permuted_copy(target, perm)
    pad = tok_t.pad_token_id
    target.generation_config.pad_token_id = pad
    ids, mask = _left_pad([tok_t.encode(s) for s in ("abc", "h ga", "fe gh abcdcd")], pad)
    torch.manual_seed(0)
    out = target.generate(ids, attention_mask=mask, do_sample=do_sample, max_new_tokens=20, pad_token_id=pad,
                          draft_model=draft, num_draft_tokens=4, tokenizer=tok_t, assistant_tokenizer=tok_d)
    stats = target.speculative_stats
    assert stats.acceptance_rate > 0.99, stats
    if not do_sample:
        ref = target.generate(ids, attention_mask=mask, do_sample=False, max_new_tokens=20, pad_token_id=pad)
        assert torch.equal(out, ref)


# ------------------------------------------------------------------------------------------------ the draft's cache


class _CheckedDrafter(OtherTokenizerDrafter):
    """After every feed: the draft's logits equal a fresh forward over the ids the drafter believes are cached,
    and those ids spell exactly the committed target text."""

    checks = 0

    def propose(self, state, k):
        self._state = state
        return super().propose(state, k)

    def _feed_pending(self):
        logits = super()._feed_pending()
        state = self._state
        for i, row in enumerate(self.rows):
            full = row.frozen_ids + row.ids
            with torch.no_grad():
                fresh = self.model(input_ids=torch.tensor([full])).logits[0, -1].float()
            torch.testing.assert_close(logits[i], fresh, atol=1e-4, rtol=1e-4)
            n = state.lengths[i]
            committed = [t for t, v in zip(state.seq_host[i, :n].tolist(), state.valid_host[i, :n].tolist()) if v]
            text, _ = decode_tail(self.bridge.text_of(committed))
            spelled = b"".join(self.bridge.draft_bytes[d] for d in full)
            assert spelled.decode() == text, (spelled, text)
            type(self).checks += 1
        return logits


@pytest.mark.parametrize("do_sample", [False, True])
def test_draft_cache_stays_in_step_without_recomputing(do_sample):
    tok_t, tok_d = letters_tokenizers()
    target, draft = _greedy_models(len(tok_t), len(tok_d), seed=2)
    pad = tok_t.pad_token_id
    prompts = [tok_t.encode(s) for s in ("abcd efgh abcd efgh abcd", "h", "fe gh abcdcd ab")]
    ids, mask = _left_pad(prompts, pad)
    drafter = _CheckedDrafter(draft, tok_t, tok_d, len(tok_t), window=4)
    torch.manual_seed(0)
    request = DecodeRequest(ids, ids.shape[1] + 60, mask, do_sample=do_sample, pad_token_id=pad,
                            vocab_size=len(tok_t))
    out, stats = speculative_decode(target, drafter, request, SpeculativeOptions(num_draft_tokens=4))
    assert _CheckedDrafter.checks > 10
    # every draft token is computed about once: what is fed is the text's tokens plus a few per round (re-tokenised
    # boundaries and rejected drafts), never the prefix again
    real_prompt = int(mask.sum())
    new = sum(r.new_tokens for r in stats.per_row)
    rounds = sum(r.target_forward_passes for r in stats.per_row)
    assert drafter.input_tokens < ids.numel() + 2 * new + (4 + 2 * 4) * rounds
    assert drafter.input_tokens < 0.9 * (real_prompt * rounds)  # far below re-feeding every prompt each round


# ------------------------------------------------------------------------------------------------ choosing the path


def test_token_bytes_and_intersection(toks):
    tok_t, tok_d = toks
    assert token_bytes(tok_t) == [b"a", b"b", b"c", b"<eos>", b"<pad>"]
    assert token_bytes(tok_d)[8] == b"cab"
    drafter, V = model_drafter(_llama(5, 0, 1.0), _llama(9, 1, 1.0), tokenizer=tok_t, assistant_tokenizer=tok_d)
    assert isinstance(drafter, OtherTokenizerDrafter) and V == 5
    pairs = sorted(zip(drafter.bridge.inter_d.tolist(), drafter.bridge.inter_t.tolist()))
    assert pairs == [(0, 4), (1, 3), (3, 2), (4, 1), (5, 0)]  # <pad>, <eos>, c, b, a
    assert decode_tail("é".encode()[:1] + b"x") == ("\ufffdx", 2)
    assert decode_tail(b"ab" + "é".encode()[:1]) == ("ab", 2)


def test_which_drafter(toks):
    tok_t, tok_d = toks
    target, draft = _llama(5, 0, 1.0), _llama(5, 1, 1.0)  # same vocab_size, other tokenizers
    drafter, _ = model_drafter(target, draft, tokenizer=tok_t, assistant_tokenizer=tok_d)
    assert isinstance(drafter, OtherTokenizerDrafter)
    drafter, _ = model_drafter(target, draft, tokenizer=tok_t, assistant_tokenizer=target_tokenizer())
    assert isinstance(drafter, ModelDrafter)  # an equal tokenizer: one id space
    drafter, _ = model_drafter(target, draft)  # nothing to check with: equal sizes are taken as one tokenizer
    assert isinstance(drafter, ModelDrafter)
    with pytest.raises(ValueError, match="assistant_tokenizer"):
        model_drafter(target, _llama(4, 1, 1.0), tokenizer=tok_t)  # 5 ids do not fit a 4-row draft: unknowable
    drafter, _ = model_drafter(target, _llama(9, 1, 1.0), tokenizer=tok_t)  # fits both: the padded-embeddings rule
    assert isinstance(drafter, ModelDrafter)
    with pytest.raises(ValueError, match="tokenizer="):
        model_drafter(target, draft, assistant_tokenizer=tok_d)  # the target's tokenizer is unknown


def test_tokenizers_loaded_from_model_paths(tmp_path, toks):
    tok_t, tok_d = toks
    target, draft = _llama(5, 0, 1.0), _llama(9, 1, 1.0)
    for model, tok, name in ((target, tok_t, "t"), (draft, tok_d, "d")):
        tok.save_pretrained(tmp_path / name)
        model.name_or_path = str(tmp_path / name)
    drafter, V = model_drafter(target, draft)
    assert isinstance(drafter, OtherTokenizerDrafter) and V == 5
