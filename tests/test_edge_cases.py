"""Edge cases where speculative generate() must give stock generate()'s output or a clear ValueError (issue 9).

Every comparison is against the same target's own generate() (no draft) on the same inputs, in float32, greedy,
batched (left padding) where the case is about batches.
"""

from __future__ import annotations

import copy
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import GenerationConfig, LlamaForCausalLM
from transformers.generation import logits_process as lp

from conftest import (
    EOS_ID,
    PAD_ID,
    TOKENIZER_LEN,
    left_pad_batch,
    make_prompt,
    tiny_model,
    tiny_pair,
    tiny_tokenizer,
)
from speculoos_hf import SpeculativeGenerationMixin, enable_speculative
from speculoos_hf.glue.processors import BatchProcessors


# The `pair` fixture (shared by the tests that leave the models alone) and `fresh_pair` (for a test that changes them):
# a one-layer Llama over the tokenizer's vocabulary and its perturbed copy.
PAIR = dict(vocab_size=TOKENIZER_LEN, layers=1)


def _batch(lengths=(3, 6, 4), seed=0):
    return left_pad_batch([make_prompt(n, seed=seed + n)[0] for n in lengths])


# ------------------------------------------------------------------------ 3. encoder_repetition_penalty, batch > 1


def test_encoder_repetition_penalty_batched_matches_stock(pair):
    target, draft = pair
    ids, mask = _batch()
    kw = dict(attention_mask=mask, max_new_tokens=12, do_sample=False, pad_token_id=PAD_ID)
    ref = target.generate(ids, encoder_repetition_penalty=3.0, **kw)
    assert not torch.equal(ref, target.generate(ids, **kw)), "setup: the penalty must change the output"
    for K in (1, 3):
        out = target.generate(ids, draft_model=draft, num_draft_tokens=K, encoder_repetition_penalty=3.0, **kw)
        assert torch.equal(out, ref), K


def test_encoder_repetition_penalty_rows_follow_num_return_sequences():
    """Stock repeats each prompt row for its num_return_sequences copies; any subset of the expanded batch (rows
    leave, positions repeat) must get the prompt of its own original row."""
    prompts = torch.tensor([[1, 2, 3], [7, 8, 9]])
    processor = lp.EncoderRepetitionPenaltyLogitsProcessor(2.0, prompts)
    scores = torch.randn(4, 16)  # batch of 2 prompts x 2 return sequences
    ids = torch.zeros(4, 3, dtype=torch.long)
    expected = processor(ids, scores.clone())  # stock: the whole expanded batch
    batch = BatchProcessors(lp.LogitsProcessorList([processor]), 4)
    rows = [3, 1, 1, 2]
    got = batch(ids[rows], scores[rows].clone(), rows)
    assert torch.equal(got, expected[rows])
    wrong_row = lp.EncoderRepetitionPenaltyLogitsProcessor(2.0, prompts[:1])(ids[:1], scores[2:3].clone())[0]
    assert not torch.equal(expected[2], wrong_row), "setup: another row's prompt must give other scores"
    assert torch.equal(processor.encoder_input_ids, prompts)  # the processor's own state is left as it was


# ----------------------------------------------------------------- 4. stop_strings in generation_config, healing


def _stop_word(target, ids, mask, tok):
    """A word the first row produces as its 3rd new token without stop strings (so stopping changes the output)."""
    plain = target.generate(ids, attention_mask=mask, max_new_tokens=12, do_sample=False, pad_token_id=PAD_ID)
    return tok.convert_ids_to_tokens(int(plain[0, ids.shape[1] + 2]))


@pytest.mark.parametrize("where", ["model_config", "explicit_over_model_config", "given_config", "none_overrides"])
def test_stop_strings_from_generation_config(where, fresh_pair):
    tok = tiny_tokenizer()
    target, draft = fresh_pair
    ids, mask = _batch()
    word = _stop_word(target, ids, mask, tok)
    # an EOS id makes stock pad the rows that stopped (without one, see the lead's item on stopped rows)
    kw = dict(attention_mask=mask, max_new_tokens=12, do_sample=False, pad_token_id=PAD_ID, eos_token_id=EOS_ID,
              tokenizer=tok)
    if where == "model_config":
        target.generation_config.stop_strings = [word]
    elif where == "explicit_over_model_config":
        target.generation_config.stop_strings = ["w59"]
        kw["stop_strings"] = [word]
    elif where == "given_config":
        target.generation_config.stop_strings = ["w59"]
        kw = dict(kw, generation_config=GenerationConfig(stop_strings=[word], max_new_tokens=12, do_sample=False,
                                                         pad_token_id=PAD_ID, eos_token_id=EOS_ID))
        del kw["max_new_tokens"], kw["do_sample"], kw["pad_token_id"], kw["eos_token_id"]
    else:  # an explicit stop_strings=None switches the model's stop strings off, in stock too
        target.generation_config.stop_strings = [word]
        kw["stop_strings"] = None
    ref = target.generate(ids, **kw)
    stopped = ref.shape[1] < ids.shape[1] + 12 or bool((ref[0, ids.shape[1]:] == PAD_ID).any())
    assert stopped == (where != "none_overrides"), "setup: the stop string must (or must not) stop row 0"
    out = target.generate(ids, draft_model=draft, num_draft_tokens=3, **kw)
    assert torch.equal(out, ref)
    assert target.generation_config.stop_strings is not None  # the model's own config is left alone


def test_stop_strings_in_model_config_without_tokenizer_names_the_tokenizer(fresh_pair):
    target, draft = fresh_pair
    target.generation_config.stop_strings = ["w01"]
    with pytest.raises(ValueError, match="tokenizer"):
        target.generate(make_prompt(4), draft_model=draft, max_new_tokens=4)


@pytest.mark.parametrize("via", ["argument", "generation_config", "model_config"])
def test_token_healing_refused(via, fresh_pair):
    tok = tiny_tokenizer()
    target, draft = fresh_pair
    kw = dict(max_new_tokens=4, tokenizer=tok)
    if via == "argument":
        kw["token_healing"] = True
    elif via == "generation_config":
        kw["generation_config"] = GenerationConfig(token_healing=True, max_new_tokens=4)
        del kw["max_new_tokens"]
    else:
        target.generation_config.token_healing = True
    with pytest.raises(ValueError, match="token_healing.*heal_tokens"):
        target.generate(make_prompt(4), draft_model=draft, **kw)


# ---------------------------------------------------------------------------------------------- 5. position_ids


def test_shifted_position_ids_refused():
    target, draft = tiny_pair("gpt2", **PAIR)  # absolute positions: a shift changes the output
    ids = make_prompt(5, seed=2)
    shifted = torch.arange(40, 45)[None]
    ref_shifted = target.generate(ids, position_ids=shifted, max_new_tokens=8, do_sample=False)
    assert not torch.equal(ref_shifted, target.generate(ids, max_new_tokens=8, do_sample=False)), "setup"
    with pytest.raises(ValueError, match="position_ids"):
        target.generate(ids, position_ids=shifted, draft_model=draft, max_new_tokens=8, do_sample=False)


def test_batched_position_ids_differing_on_a_real_token_refused():
    target, draft = tiny_pair("gpt2", **PAIR)
    ids, mask = _batch()
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    positions[1, -1] += 1
    with pytest.raises(ValueError, match="position_ids"):
        target.generate(ids, attention_mask=mask, position_ids=positions, draft_model=draft, max_new_tokens=4)


def test_default_position_ids_accepted_and_exact():
    """position_ids equal to the ones stock derives from the mask (padding slots may hold anything) change nothing."""
    target, draft = tiny_pair("gpt2", **PAIR)
    ids, mask = _batch()
    positions = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 7)  # any value on padding
    positions[:, -1] = (mask.sum(-1) - 1)
    kw = dict(attention_mask=mask, max_new_tokens=10, do_sample=False, pad_token_id=PAD_ID)
    ref = target.generate(ids, **kw)
    assert torch.equal(target.generate(ids, position_ids=positions, **kw), ref)
    out = target.generate(ids, position_ids=positions, draft_model=draft, num_draft_tokens=3, **kw)
    assert torch.equal(out, ref)


# ------------------------------------------------------------------------------------- 6. other decoding modes


_MODES = {
    "contrastive search": dict(penalty_alpha=0.6, top_k=4),
    "DoLa": dict(dola_layers="low"),
    "group beam search": dict(num_beams=4, num_beam_groups=2, diversity_penalty=0.5),
    "constrained beam search": dict(num_beams=2, force_words_ids=[[5]]),
    "beam search": dict(num_beams=2),
    "beam sampling": dict(num_beams=2, do_sample=True),
    "use_mtp": dict(use_mtp=True),
    "assistant_early_exit": dict(assistant_early_exit=1),
    "speculation_type": dict(speculation_type="dflash"),
    "continuous batching": dict(cache_implementation="paged"),
    "synced_gpus": dict(synced_gpus=True),
    "assistant_tokenizer": dict(assistant_tokenizer=tiny_tokenizer()),
}


@pytest.mark.parametrize("name", list(_MODES))
def test_unimplemented_decoding_modes_refused_by_name(name, fresh_pair):
    target, draft = fresh_pair
    with pytest.raises(ValueError, match=name):
        target.generate(make_prompt(4), draft_model=draft, max_new_tokens=4, **_MODES[name])


def test_decoding_mode_from_generation_config_refused(fresh_pair):
    target, draft = fresh_pair
    target.generation_config.penalty_alpha = 0.6
    target.generation_config.top_k = 4
    with pytest.raises(ValueError, match="contrastive search"):
        target.generate(make_prompt(4), draft_model=draft, max_new_tokens=4, do_sample=False)
    # with sampling, stock ignores penalty_alpha (plain sampling): so does speculative generation
    out = target.generate(make_prompt(4), draft_model=draft, max_new_tokens=4, do_sample=True)
    assert out.shape == (1, 8)


# ----------------------------------------------------------------------------------- 9. integral num_draft_tokens


@pytest.mark.parametrize("K", [np.int64(3), np.int32(2), torch.tensor(3)])
def test_integral_num_draft_tokens(K, pair):
    target, draft = pair
    ids, mask = _batch()
    kw = dict(attention_mask=mask, max_new_tokens=10, do_sample=False, pad_token_id=PAD_ID)
    out = target.generate(ids, draft_model=draft, num_draft_tokens=K, **kw)
    assert torch.equal(out, target.generate(ids, **kw))
    assert target.speculative_stats.num_draft_tokens == int(K)


@pytest.mark.parametrize("K", [np.float64(3.0), torch.tensor(2.5), np.int64(0), 3.0])
def test_non_integral_num_draft_tokens_refused(K, pair):
    target, draft = pair
    with pytest.raises(ValueError, match="num_draft_tokens"):
        target.generate(make_prompt(4), draft_model=draft, num_draft_tokens=K, max_new_tokens=4)


# ------------------------------------------------------------------------------------------------ 10. pickling


def _check_speculative(model, original, draft):
    assert isinstance(model, SpeculativeGenerationMixin) and isinstance(model, LlamaForCausalLM)
    assert type(model).__name__ == "LlamaForCausalLM"
    ids, mask = _batch()
    kw = dict(attention_mask=mask, max_new_tokens=10, do_sample=False, pad_token_id=PAD_ID)
    ref = original.generate(ids, **kw)
    assert torch.equal(model.generate(ids, draft_model=draft, num_draft_tokens=3, **kw), ref)
    assert model.speculative_stats.target_forward_passes > 0


def test_pickle_and_deepcopy_keep_the_speculative_generate(pair):
    target, draft = pair
    for protocol in (2, pickle.HIGHEST_PROTOCOL):
        _check_speculative(pickle.loads(pickle.dumps(target, protocol=protocol)), target, draft)
    _check_speculative(copy.deepcopy(target), target, draft)
    plain = tiny_model("llama", **PAIR)
    assert type(pickle.loads(pickle.dumps(plain))) is LlamaForCausalLM  # models not enabled are untouched


def test_torch_save_loads_in_a_fresh_process(tmp_path, pair):
    target, draft = pair
    ids, mask = _batch()
    ref = target.generate(ids, attention_mask=mask, max_new_tokens=10, do_sample=False, pad_token_id=PAD_ID)
    torch.save({"target": target, "draft": draft, "ids": ids, "mask": mask, "ref": ref}, tmp_path / "m.pt")
    script = f"""
import torch
from transformers import LlamaForCausalLM
from speculoos_hf import SpeculativeGenerationMixin
d = torch.load({str(tmp_path / "m.pt")!r}, weights_only=False)
t = d["target"]
assert isinstance(t, SpeculativeGenerationMixin) and isinstance(t, LlamaForCausalLM), type(t).__mro__
out = t.generate(d["ids"], attention_mask=d["mask"], draft_model=d["draft"], num_draft_tokens=3,
                 max_new_tokens=10, do_sample=False, pad_token_id={PAD_ID})
assert torch.equal(out, d["ref"]) and t.speculative_stats.target_forward_passes > 0
print("OK")
"""
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]), OMP_NUM_THREADS="1")
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0 and "OK" in run.stdout, run.stderr[-3000:]


# ------------------------------------------------------------------------------------- 8. an all-padding row


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_all_padding_row_matches_stock(arch, attn):
    """Stock generates for a row whose attention mask is all zeros: its first token comes from a query that
    attends to nothing (sdpa: attention output 0; eager: uniform over the pad slots), the generated tokens then
    sit at positions 1, 2, ... and never attend to the padding."""
    target, draft = tiny_pair(arch, attn_implementation=attn, **PAIR)
    prompt = make_prompt(4, seed=2)[0]
    ids = torch.stack([torch.full((4,), PAD_ID), prompt, torch.cat([torch.full((2,), PAD_ID), prompt[:2]])])
    mask = torch.tensor([[0, 0, 0, 0], [1, 1, 1, 1], [0, 0, 1, 1]])
    kw = dict(attention_mask=mask, max_new_tokens=10, do_sample=False, pad_token_id=PAD_ID)
    ref = target.generate(ids, **kw)
    assert torch.equal(ref[:1], target.generate(ids[:1], **dict(kw, attention_mask=mask[:1])))
    for K in (1, 3):
        out = target.generate(ids, draft_model=draft, num_draft_tokens=K, **kw)
        assert torch.equal(out, ref), (K, out, ref)
