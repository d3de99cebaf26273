"""Unsupported settings fail early with a clear ValueError that names the problem."""

from __future__ import annotations

import pytest
import torch
from transformers import DynamicCache, LogitsProcessorList, TextStreamer
from transformers.generation.logits_process import UnbatchedClassifierFreeGuidanceLogitsProcessor

from conftest import (
    PAD_ID,
    TOKENIZER_LEN,
    left_pad_batch,
    make_prompt,
    perturbed_copy,
    tiny_model,
    tiny_pair,
    tiny_tokenizer,
)
from speculoos_hf import enable_speculative

PAIR = dict(layers=1)  # the `pair` fixture: a one-layer Llama, vocabulary 64, and its perturbed copy


@pytest.mark.parametrize("K", [0, -1, 2.5, True, "3"])
def test_bad_num_draft_tokens(pair, ids, K):
    target, draft = pair
    with pytest.raises(ValueError, match="num_draft_tokens"):
        target.generate(ids, draft_model=draft, num_draft_tokens=K, max_new_tokens=4)


@pytest.mark.parametrize("option", [dict(num_draft_tokens=3), dict(num_draft_tokens=0),
                                    dict(draft_confidence_threshold=0.5), dict(block_verification=True),
                                    dict(draft_quantization="int8")])
def test_speculoos_options_without_draft_model(pair, ids, option):
    target, _ = pair
    with pytest.raises(ValueError, match=f"{next(iter(option))} was given without draft_model"):
        target.generate(ids, max_new_tokens=4, **option)


def test_speculoos_options_left_unset_reach_stock_generate_as_nothing(pair, ids):
    target, _ = pair
    ref = target.generate(ids, do_sample=False, max_new_tokens=4)
    out = target.generate(ids, do_sample=False, max_new_tokens=4, num_draft_tokens=None, block_verification=False,
                          draft_quantization=None, suffix_cache=None)
    assert torch.equal(out, ref)


@pytest.mark.parametrize("value", [-0.1, 1.0, True])
def test_bad_confidence_threshold(pair, ids, value):
    target, draft = pair
    with pytest.raises(ValueError, match="draft_confidence_threshold"):
        target.generate(ids, draft_model=draft, draft_confidence_threshold=value, max_new_tokens=4)


def test_beam_search_refused(pair, ids):
    target, draft = pair
    with pytest.raises(ValueError, match="(?i)beam"):
        target.generate(ids, draft_model=draft, num_beams=2, max_new_tokens=4)


@pytest.mark.parametrize("arch", ["t5", "bart"])
def test_encoder_decoder_target_refused(pair, ids, arch):
    _, draft = pair
    target = enable_speculative(tiny_model(arch, layers=1))
    with pytest.raises(ValueError, match="encoder-decoder"):
        target.generate(ids, draft_model=draft, max_new_tokens=4)


@pytest.mark.parametrize("arch", ["t5", "bart"])
def test_encoder_decoder_draft_refused(pair, ids, arch):
    target, _ = pair
    with pytest.raises(ValueError, match="encoder-decoder"):
        target.generate(ids, draft_model=tiny_model(arch, layers=1), max_new_tokens=4)


def test_different_vocab_sizes_without_tokenizer(pair, ids):
    target, _ = pair
    draft = tiny_model("llama", vocab_size=80, seed=5, layers=1)
    with pytest.raises(ValueError) as info:
        target.generate(ids, draft_model=draft, max_new_tokens=4)
    message = str(info.value)
    assert "80" in message and "64" in message and "vocab" in message.lower()
    # the other way round too
    with pytest.raises(ValueError, match="80"):
        enable_speculative(draft).generate(ids, draft_model=target, max_new_tokens=4)


def _resized_copy(model, vocab_size: int):
    draft = perturbed_copy(model, noise=0.05, seed=1)
    draft.resize_token_embeddings(vocab_size)
    assert draft.config.vocab_size == vocab_size
    assert draft.get_output_embeddings().weight.shape[0] == vocab_size
    return draft


def _zero_padded_rows(model, used: int):
    """Like real padded embedding matrices (Qwen2.5 7B: 152064 rows for a 151665-token tokenizer): the rows
    beyond the tokenizer are untrained, here zero, so their logit is 0 (rarely the argmax of peaked logits)."""
    with torch.no_grad():
        model.get_output_embeddings().weight[used:] = 0.0
    return model


@pytest.mark.parametrize("target_vocab, draft_vocab", [(64, 72), (72, 64), (TOKENIZER_LEN, 64)])
def test_different_vocab_sizes_with_fitting_tokenizer(target_vocab, draft_vocab):
    tok = tiny_tokenizer()
    target = tiny_model("llama", vocab_size=target_vocab, seed=0, layers=1)
    target = enable_speculative(_zero_padded_rows(target, len(tok)))
    draft = _zero_padded_rows(_resized_copy(target, draft_vocab), len(tok))
    assert len(tok) <= min(target_vocab, draft_vocab)
    ids = make_prompt(5, seed=3)
    ref = target.generate(ids, do_sample=False, max_new_tokens=15)
    out = target.generate(ids, draft_model=draft, num_draft_tokens=3, do_sample=False, max_new_tokens=15, tokenizer=tok)
    assert torch.equal(out, ref)
    assert target.speculative_stats.draft_tokens_accepted > 0
    # sampling runs too (distributions padded to the larger vocabulary), and only ids the target has come out
    for seed in range(3):
        torch.manual_seed(seed)
        out = target.generate(
            ids, draft_model=draft, num_draft_tokens=3, do_sample=True, max_new_tokens=15, tokenizer=tok
        )
        assert out.shape == (1, 20) and int(out.max()) < target_vocab


def test_target_token_outside_draft_vocab():
    """The target may produce an id the (smaller) draft lacks (a padded row has non-zero probability when
    sampling). Exactness only needs the target; the draft must not crash on such an id in its input."""
    tok = tiny_tokenizer()
    # random rows 63..71: often chosen
    target = enable_speculative(tiny_model("llama", vocab_size=72, seed=0, layers=1))
    draft = _resized_copy(target, 64)
    ids = make_prompt(5, seed=3)
    ref = target.generate(ids, do_sample=False, max_new_tokens=15)
    assert int(ref[0, 5:].max()) >= 64, "setup: the target's greedy output must contain an id >= 64"
    out = target.generate(ids, draft_model=draft, num_draft_tokens=3, do_sample=False, max_new_tokens=15, tokenizer=tok)
    assert torch.equal(out, ref)


def test_different_vocab_sizes_with_too_large_tokenizer(ids):
    tok = tiny_tokenizer()  # 63 ids
    target = enable_speculative(tiny_model("llama", vocab_size=72, seed=0, layers=1))
    draft = tiny_model("llama", vocab_size=60, seed=1, layers=1)
    with pytest.raises(ValueError, match="60"):
        target.generate(ids, draft_model=draft, max_new_tokens=4, tokenizer=tok)


def test_stateful_logits_processor_refused(pair, ids):
    target, draft = pair
    processor = UnbatchedClassifierFreeGuidanceLogitsProcessor(1.5, target)
    with pytest.raises(ValueError, match="UnbatchedClassifierFreeGuidanceLogitsProcessor"):
        target.generate(
            ids, draft_model=draft, max_new_tokens=4, logits_processor=LogitsProcessorList([processor])
        )


def test_guidance_scale_refused(pair, ids):
    target, draft = pair
    with pytest.raises(ValueError, match="(?i)stateful|guidance"):
        target.generate(ids, draft_model=draft, max_new_tokens=4, guidance_scale=1.5)


def test_static_cache_refused(pair, ids):
    target, draft = pair
    with pytest.raises(ValueError, match="(?i)cache"):
        target.generate(ids, draft_model=draft, max_new_tokens=4, cache_implementation="static")


class NonCroppableCache(DynamicCache):
    @property
    def is_croppable(self):
        return False


def test_non_croppable_cache_refused(pair, ids):
    target, draft = pair
    cache = NonCroppableCache(config=target.config)
    assert not cache.is_croppable
    with pytest.raises(ValueError, match="cropped"):
        target.generate(ids, draft_model=draft, max_new_tokens=4, cache=cache)


def test_prefilled_cache_refused(pair, ids):
    target, draft = pair
    cache = DynamicCache(config=target.config)
    with torch.no_grad():
        target(input_ids=ids[:, :3], cache=cache, use_cache=True)
    assert cache.get_seq_length() == 3
    with pytest.raises(ValueError, match="(?i)cache"):
        target.generate(ids, draft_model=draft, max_new_tokens=4, cache=cache)


def test_stop_strings_without_tokenizer(pair, ids):
    target, draft = pair
    with pytest.raises(ValueError, match="tokenizer"):
        target.generate(ids, draft_model=draft, max_new_tokens=4, stop_strings=["w01"])


def test_streamer_with_batch_of_two(pair):
    target, draft = pair
    batch, mask = left_pad_batch([make_prompt(n, seed=n)[0] for n in (3, 5)])
    with pytest.raises(ValueError, match="(?i)batch size"):
        target.generate(
            batch, attention_mask=mask, draft_model=draft, max_new_tokens=4, pad_token_id=PAD_ID,
            streamer=TextStreamer(tiny_tokenizer()),
        )
    # num_return_sequences makes the effective batch 2 as well
    with pytest.raises(ValueError, match="(?i)batch size"):
        target.generate(
            make_prompt(4), draft_model=draft, max_new_tokens=4, do_sample=True, num_return_sequences=2,
            streamer=TextStreamer(tiny_tokenizer()),
        )


def test_draft_must_be_a_model(pair, ids):
    target, _ = pair
    with pytest.raises(ValueError, match="draft_model"):
        target.generate(ids, draft_model=torch.nn.Linear(2, 2), max_new_tokens=4)


def test_assistant_model_and_draft_model_together(pair, ids):
    target, draft = pair
    with pytest.raises(ValueError, match="assistant_model"):
        target.generate(ids, draft_model=draft, assistant_model=draft, max_new_tokens=4)


@pytest.mark.parametrize("flag", ["output_scores", "output_logits"])
def test_unsupported_outputs(pair, ids, flag):
    target, draft = pair
    with pytest.raises(ValueError, match=flag):
        target.generate(ids, draft_model=draft, max_new_tokens=4, return_dict_in_generate=True, **{flag: True})


def test_inputs_embeds_refused(pair, ids):
    target, draft = pair
    embeds = target.get_input_embeddings()(ids).detach()
    with pytest.raises(ValueError, match="inputs_embeds"):
        target.generate(inputs_embeds=embeds, draft_model=draft, max_new_tokens=4)


def test_sliding_window_exact_within_and_beyond_window():
    """No longer refused past the window (issue 10; the architecture sweep is tests/test_architectures.py)."""
    target, draft = tiny_pair("qwen2", layers=1, use_sliding_window=True, sliding_window=16, max_window_layers=0)
    assert target.config.layer_types == ["sliding_attention"]
    ids = make_prompt(5, seed=4)
    for new in (10, 30):
        ref = target.generate(ids, do_sample=False, max_new_tokens=new)
        out = target.generate(ids, draft_model=draft, num_draft_tokens=3, do_sample=False, max_new_tokens=new)
        assert torch.equal(out, ref)


def test_different_vocab_sizes_resolved_through_saved_tokenizers(tmp_path):
    """No tokenizer= passed, but both models were loaded from paths holding the same tokenizer: accepted.
    Paths holding the tokenizer plus added tokens: accepted too (vocab.py compares them)."""
    from transformers import AutoModelForCausalLM

    tok = tiny_tokenizer()
    target = tiny_model("llama", vocab_size=64, seed=0, layers=1)
    draft = _resized_copy(target, 72)
    target.save_pretrained(tmp_path / "target")
    tok.save_pretrained(tmp_path / "target")
    draft.save_pretrained(tmp_path / "draft")
    tok.save_pretrained(tmp_path / "draft")
    loaded_target = enable_speculative(AutoModelForCausalLM.from_pretrained(tmp_path / "target"))
    loaded_draft = AutoModelForCausalLM.from_pretrained(tmp_path / "draft")
    ids = make_prompt(5, seed=6)
    ref = loaded_target.generate(ids, do_sample=False, max_new_tokens=8)
    out = loaded_target.generate(ids, draft_model=loaded_draft, num_draft_tokens=3, do_sample=False, max_new_tokens=8)
    assert torch.equal(out, ref)

    other = tiny_tokenizer()
    other.add_tokens(["extra1", "extra2"])  # a different vocabulary
    other.save_pretrained(tmp_path / "draft2")
    draft.save_pretrained(tmp_path / "draft2")
    loaded_draft2 = AutoModelForCausalLM.from_pretrained(tmp_path / "draft2")
    # both tokenizers at hand: tokens added at the end keep the shared ids (the draft drafts with them, exactly);
    # a tokenizer that really differs would be drafted across vocabularies (tests/test_other_tokenizer.py)
    out = loaded_target.generate(ids, draft_model=loaded_draft2, num_draft_tokens=3, do_sample=False, max_new_tokens=8)
    assert torch.equal(out, ref)


def test_right_padding_is_refused():
    target, draft = tiny_pair()
    ids = torch.tensor([[5, 6, 7, 61], [5, 6, 7, 8]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]])
    with pytest.raises(ValueError, match="left"):
        target.generate(ids, attention_mask=mask, draft_model=draft, max_new_tokens=3)
