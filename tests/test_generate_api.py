"""The user-facing API: generate() integration, stats, streamers, user processors/criteria, save/load, seed API."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import (
    AutoModelForCausalLM,
    GenerationConfig,
    LlamaForCausalLM,
    LogitsProcessor,
    LogitsProcessorList,
    StoppingCriteria,
    StoppingCriteriaList,
    TextStreamer,
)
from transformers.generation.streamers import BaseStreamer

from conftest import (PAD_ID, TOKENIZER_LEN, left_pad_batch, make_prompt, on_flat_machine, perturbed_copy, tiny_model,
                      tiny_pair)
import speculoos_hf
from speculoos_hf.drafters import Proposal
from speculoos_hf import (
    SpeculativeGenerateOutput,
    SpeculativeGenerationMixin,
    SpeculativeModelForCausalLM,
    SpeculativeStats,
    enable_speculative,
)


PAIR = dict(vocab_size=TOKENIZER_LEN)  # the `pair` fixture: vocabulary = len(tokenizer), so every id decodes


# ------------------------------------------------------------------------------------------- stock behaviour


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_without_draft_generate_is_stock(arch):
    stock = tiny_model(arch, seed=3)
    spec = enable_speculative(tiny_model(arch, seed=3))
    ids = make_prompt(6, seed=1)
    assert torch.equal(
        stock.generate(ids, do_sample=False, max_new_tokens=12), spec.generate(ids, do_sample=False, max_new_tokens=12)
    )
    batch, mask = left_pad_batch([make_prompt(n, seed=n)[0] for n in (3, 6)])
    kw = dict(attention_mask=mask, max_new_tokens=10, pad_token_id=PAD_ID, repetition_penalty=1.2)
    assert torch.equal(stock.generate(batch, do_sample=False, **kw), spec.generate(batch, do_sample=False, **kw))
    torch.manual_seed(7)
    a = stock.generate(batch, do_sample=True, temperature=0.9, **kw)
    torch.manual_seed(7)
    b = spec.generate(batch, do_sample=True, temperature=0.9, **kw)
    assert torch.equal(a, b)
    # and the stock return_dict path is untouched (no speculative output class)
    out = spec.generate(ids, do_sample=False, max_new_tokens=4, return_dict_in_generate=True, output_scores=True)
    assert not isinstance(out, SpeculativeGenerateOutput)
    assert len(out.scores) == 4


def test_enable_speculative_keeps_identity(tmp_path):
    model = tiny_model("llama", seed=0)
    same = enable_speculative(model)
    assert same is model
    assert type(model).__name__ == "LlamaForCausalLM"
    assert isinstance(model, LlamaForCausalLM)
    assert isinstance(model, SpeculativeGenerationMixin)
    assert enable_speculative(model) is model and type(model).__name__ == "LlamaForCausalLM"  # idempotent
    # two models of the same class share one speculative class
    other = enable_speculative(tiny_model("llama", seed=1))
    assert type(other) is type(model)

    ids = make_prompt(5, seed=2)
    expected = model.generate(ids, do_sample=False, max_new_tokens=8)

    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"]

    plain = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert type(plain) is LlamaForCausalLM
    assert not isinstance(plain, SpeculativeGenerationMixin)
    assert torch.equal(plain.generate(ids, do_sample=False, max_new_tokens=8), expected)

    loaded = SpeculativeModelForCausalLM.from_pretrained(tmp_path)
    assert isinstance(loaded, LlamaForCausalLM) and isinstance(loaded, SpeculativeGenerationMixin)
    assert type(loaded).__name__ == "LlamaForCausalLM"
    draft = perturbed_copy(loaded, noise=0.05, seed=1)
    out = loaded.generate(ids, draft_model=draft, num_draft_tokens=3, do_sample=False, max_new_tokens=8)
    assert torch.equal(out, expected)
    assert isinstance(loaded.speculative_stats, SpeculativeStats)


# ------------------------------------------------------------------------------------------------------- stats


def test_return_dict_and_stats_consistency(pair):
    target, draft = pair
    ids = make_prompt(6, seed=3)
    out = target.generate(
        ids, draft_model=draft, num_draft_tokens=4, do_sample=False, max_new_tokens=20, return_dict_in_generate=True
    )
    assert isinstance(out, SpeculativeGenerateOutput)
    assert torch.equal(out.sequences, target.generate(ids, do_sample=False, max_new_tokens=20))
    stats = out.speculative_stats
    assert stats is target.speculative_stats
    _check_stats(stats, K=4, new_per_row=[20])
    assert 0 < stats.draft_tokens_accepted < stats.draft_tokens_proposed  # partial acceptance
    d = stats.to_dict()
    assert d["acceptance_rate"] == stats.acceptance_rate and stats["new_tokens"] == 20
    assert str(stats)


def test_stats_batched_with_eos(pair):
    target, draft = pair
    ids, mask = left_pad_batch([make_prompt(n, seed=10 + n)[0] for n in (4, 7, 5)])
    L = ids.shape[1]
    plain = target.generate(ids, attention_mask=mask, do_sample=False, max_new_tokens=15)
    eos = int(plain[1, L + 1])
    out = target.generate(
        ids, attention_mask=mask, draft_model=draft, num_draft_tokens=3, do_sample=False, max_new_tokens=15,
        eos_token_id=eos, return_dict_in_generate=True,
    )
    seqs = out.sequences
    assert torch.equal(seqs, target.generate(ids, attention_mask=mask, do_sample=False, max_new_tokens=15,
                                             eos_token_id=eos))
    actual = []
    for row in seqs[:, L:].tolist():
        actual.append(row.index(eos) + 1 if eos in row else len(row))
    assert actual[1] <= 2 and max(actual) == seqs.shape[1] - L
    _check_stats(out.speculative_stats, K=3, new_per_row=actual)


def _check_stats(stats: SpeculativeStats, K: int, new_per_row: list[int]) -> None:
    assert stats.num_draft_tokens == K
    assert len(stats.per_row) == len(new_per_row)
    assert [r.new_tokens for r in stats.per_row] == new_per_row
    assert stats.new_tokens == sum(new_per_row)
    assert 0 <= stats.draft_tokens_accepted <= stats.draft_tokens_proposed
    assert stats.draft_tokens_proposed == sum(r.draft_tokens_proposed for r in stats.per_row)
    assert stats.draft_tokens_accepted == sum(r.draft_tokens_accepted for r in stats.per_row)
    assert stats.acceptance_rate == pytest.approx(stats.draft_tokens_accepted / stats.draft_tokens_proposed)
    row_passes = sum(r.target_forward_passes for r in stats.per_row)
    assert stats.mean_accepted_length == pytest.approx(stats.new_tokens / row_passes)
    assert stats.target_forward_passes == max(r.target_forward_passes for r in stats.per_row)
    for r in stats.per_row:
        assert 0 <= r.draft_tokens_accepted <= r.draft_tokens_proposed <= K * r.target_forward_passes
        # every verification pass yields at least one and at most K+1 tokens for the row
        assert r.target_forward_passes <= r.new_tokens <= (K + 1) * r.target_forward_passes
        assert r.mean_accepted_length == pytest.approx(r.new_tokens / r.target_forward_passes)
    assert len(stats.acceptance_by_position) == K
    assert all(0.0 <= a <= 1.0 for a in stats.acceptance_by_position)


# --------------------------------------------------------------------------------------------------- streamers


def test_text_streamer_prints_generated_text(pair, tokenizer, capsys):
    target, draft = pair
    ids = make_prompt(5, seed=4)
    capsys.readouterr()
    out = target.generate(
        ids, draft_model=draft, num_draft_tokens=4, do_sample=False, max_new_tokens=14,
        streamer=TextStreamer(tokenizer, skip_prompt=True),
    )
    printed = capsys.readouterr().out
    expected = tokenizer.decode(out[0, 5:])
    assert printed.rstrip("\n") == expected
    assert len(expected.split()) == 14
    # exactly what the stock generate() prints with the same streamer
    target.generate(ids, do_sample=False, max_new_tokens=14, streamer=TextStreamer(tokenizer, skip_prompt=True))
    assert capsys.readouterr().out == printed


class RecordingStreamer(BaseStreamer):
    def __init__(self):
        self.calls = []

    def put(self, value):
        self.calls.append(("put", torch.as_tensor(value).clone()))

    def end(self):
        self.calls.append(("end", None))


@pytest.mark.parametrize("K", [1, 4])
def test_custom_streamer_receives_prompt_then_chunks_then_end(pair, K):
    target, draft = pair
    ids = make_prompt(6, seed=5)
    streamer = RecordingStreamer()
    out = target.generate(
        ids, draft_model=draft, num_draft_tokens=K, do_sample=False, max_new_tokens=13, streamer=streamer
    )
    kinds = [k for k, _ in streamer.calls]
    assert kinds[-1] == "end" and kinds.count("end") == 1
    assert kinds[:-1] == ["put"] * (len(kinds) - 1) and len(kinds) >= 3
    prompt = streamer.calls[0][1]
    assert prompt.flatten().tolist() == ids[0].tolist()
    chunks = [v.flatten() for k, v in streamer.calls[1:-1]]
    assert all(c.numel() >= 1 for c in chunks)
    assert torch.cat(chunks).tolist() == out[0, 6:].tolist()
    if K > 1:  # the chunks are per verification round, not per token (the draft is accepted sometimes)
        assert len(chunks) == target.speculative_stats.target_forward_passes


def test_streamer_with_eos_stops_with_eos(pair):
    target, draft = pair
    ids = make_prompt(6, seed=6)
    plain = target.generate(ids, do_sample=False, max_new_tokens=16)[0, 6:].tolist()
    eos = plain[5]
    streamer = RecordingStreamer()
    out = target.generate(
        ids, draft_model=draft, num_draft_tokens=5, do_sample=False, max_new_tokens=16, eos_token_id=eos,
        streamer=streamer,
    )
    chunks = [v.flatten() for k, v in streamer.calls[1:-1]]
    assert torch.cat(chunks).tolist() == out[0, 6:].tolist()
    assert out[0, -1] == eos


# ------------------------------------------------------------------------------------ user processors/criteria


class BanToken(LogitsProcessor):
    def __init__(self, token_id: int):
        self.token_id = token_id

    def __call__(self, input_ids, scores):
        scores = scores.clone()
        scores[:, self.token_id] = -float("inf")
        return scores


def test_user_logits_processor_greedy(pair):
    target, draft = pair
    ids = make_prompt(6, seed=7)
    plain = target.generate(ids, do_sample=False, max_new_tokens=20)[0, 6:].tolist()
    banned = max(set(plain), key=plain.count)
    procs = LogitsProcessorList([BanToken(banned)])
    ref = target.generate(ids, do_sample=False, max_new_tokens=20, logits_processor=procs)
    for K in (1, 4):
        out = target.generate(
            ids, draft_model=draft, num_draft_tokens=K, do_sample=False, max_new_tokens=20, logits_processor=procs
        )
        assert banned not in out[0, 6:].tolist()
        assert torch.equal(out, ref)


def test_user_logits_processor_sampling(pair):
    target, draft = pair
    ids, mask = left_pad_batch([make_prompt(n, seed=n)[0] for n in (3, 6)])
    torch.manual_seed(0)
    sampled = target.generate(ids, attention_mask=mask, do_sample=True, top_k=0, max_new_tokens=40)
    new = sampled[:, ids.shape[1]:].flatten().tolist()
    banned = max(set(new), key=new.count)
    procs = LogitsProcessorList([BanToken(banned)])
    for seed in range(3):
        torch.manual_seed(seed)
        out = target.generate(
            ids, attention_mask=mask, draft_model=draft, num_draft_tokens=4, do_sample=True, top_k=0,
            max_new_tokens=40, logits_processor=procs,
        )
        assert out.shape == (2, ids.shape[1] + 40)
        assert banned not in out[:, ids.shape[1]:].flatten().tolist()


class StopAtLength(StoppingCriteria):
    def __init__(self, length: int):
        self.length = length
        self.seen_lengths = []

    def __call__(self, input_ids, scores, **kwargs):
        self.seen_lengths.append(input_ids.shape[1])
        return torch.full((input_ids.shape[0],), input_ids.shape[1] >= self.length, dtype=torch.bool)


@pytest.mark.parametrize("use_self_draft", [True, False])
def test_user_stopping_criteria_checked_per_token(pair, use_self_draft):
    target, good = pair
    draft = target if use_self_draft else good
    ids = make_prompt(6, seed=8)
    criterion = StopAtLength(6 + 7)
    out = target.generate(
        ids, draft_model=draft, num_draft_tokens=5, do_sample=False, max_new_tokens=30,
        stopping_criteria=StoppingCriteriaList([criterion]),
    )
    assert out.shape == (1, 6 + 7)
    ref = target.generate(
        ids, do_sample=False, max_new_tokens=30, stopping_criteria=StoppingCriteriaList([StopAtLength(13)])
    )
    assert torch.equal(out, ref)
    stats = target.speculative_stats
    assert stats.new_tokens == 7
    if use_self_draft:
        # 100% acceptance: round one commits 5 drafts + the bonus token (6), round two is cut after 1 token
        assert stats.target_forward_passes == 2
        assert criterion.seen_lengths[-1] == 6 + 7
        assert 6 + 8 not in criterion.seen_lengths  # never looked past the stop


def test_generation_config_is_honoured(fresh_pair, tokenizer):
    target, draft = fresh_pair  # the test changes the target's generation_config
    ids = make_prompt(6, seed=9)
    gc = GenerationConfig(max_new_tokens=9, do_sample=False, repetition_penalty=1.6, pad_token_id=PAD_ID)
    ref = target.generate(ids, generation_config=gc)
    assert ref.shape == (1, 15)
    out = target.generate(ids, generation_config=gc, draft_model=draft, num_draft_tokens=3)
    assert torch.equal(out, ref)
    out = target.generate(ids, gc, draft_model=draft, num_draft_tokens=3)  # positional generation_config
    assert torch.equal(out, ref)
    # generate() kwargs override the config, as in the stock generate()
    out = target.generate(ids, generation_config=gc, draft_model=draft, max_new_tokens=4)
    assert torch.equal(out, target.generate(ids, generation_config=gc, max_new_tokens=4))
    # stop strings and eos from a GenerationConfig
    plain = target.generate(ids, do_sample=False, max_new_tokens=20)[0, 6:].tolist()
    word = tokenizer.convert_ids_to_tokens(plain[3])
    gc_stop = GenerationConfig(max_new_tokens=20, do_sample=False, stop_strings=[word], pad_token_id=PAD_ID)
    ref = target.generate(ids, generation_config=gc_stop, tokenizer=tokenizer)
    out = target.generate(ids, generation_config=gc_stop, tokenizer=tokenizer, draft_model=draft, num_draft_tokens=4)
    assert torch.equal(out, ref) and ref.shape[1] <= 6 + 4
    gc_eos = GenerationConfig(max_new_tokens=20, do_sample=False, eos_token_id=plain[2], pad_token_id=PAD_ID)
    ref = target.generate(ids, generation_config=gc_eos)
    out = target.generate(ids, generation_config=gc_eos, draft_model=draft, num_draft_tokens=4)
    assert torch.equal(out, ref) and ref.shape[1] <= 6 + 3
    # the model's own generation_config is used when none is given
    saved = target.generation_config.max_new_tokens
    try:
        target.generation_config.max_new_tokens = 5
        out = target.generate(ids, draft_model=draft, num_draft_tokens=2, do_sample=False)
        assert out.shape == (1, 11)
    finally:
        target.generation_config.max_new_tokens = saved


# ---------------------------------------------------------------------------------------------- no recompute


def _record_forward(model, log: list):
    original = model.forward

    def forward(*args, **kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        log.append(int(ids.shape[1]))
        return original(*args, **kwargs)

    model.forward = forward
    return original


@pytest.mark.parametrize("K", [1, 3, 6])
def test_no_token_is_recomputed(K):
    target, draft = tiny_pair()  # its own pair: the test wraps the models' forward
    P = 7
    ids = make_prompt(P, seed=K)
    t_log, d_log = [], []
    _record_forward(target, t_log)
    _record_forward(draft, d_log)
    try:
        target.generate(ids, draft_model=draft, num_draft_tokens=K, do_sample=False, max_new_tokens=25)
    finally:
        del target.forward, draft.forward
    stats = target.speculative_stats
    assert t_log[0] == P - 1 + K + 1  # the prompt's prefill rides with the first round's pass (K drafts + x0)
    assert stats.prefill_passes == 0
    assert d_log[0] == P  # the draft reads the whole prompt (x0 too) with its first proposal, once
    assert all(1 <= n <= K + 1 for n in t_log[1:])
    assert all(1 <= n <= 2 for n in d_log[1:])
    assert len(t_log) == stats.target_forward_passes  # every target forward is a round's
    assert sum(t_log) == stats.target_input_tokens
    assert sum(d_log) == stats.draft_input_tokens
    # every round feeds the pending token plus the k drafts: nothing else, nothing twice
    assert stats.target_input_tokens == (P - 1) + stats.target_forward_passes + stats.draft_tokens_proposed
    # the target computes at most one slot per committed token plus the rejected drafts
    assert stats.target_input_tokens <= (P - 1) + 25 + (stats.draft_tokens_proposed - stats.draft_tokens_accepted)
    assert stats.new_tokens == 25


# ---------------------------------------------------------------------------------------------------- seed API


def test_seed_api_sampler(tokenizer):
    from speculoos import SpeculativeSampler

    assert SpeculativeSampler is speculoos_hf.SpeculativeSampler
    target, draft = tiny_pair(vocab_size=TOKENIZER_LEN, speculative=False)
    sampler = SpeculativeSampler(draft, target, K=3, tokenizer=tokenizer)
    assert sampler.K == 3 and sampler.tokenizer is tokenizer
    ids = sampler.encode("w01 w02 w03 w04")
    assert ids.shape == (1, 4) and ids[0].tolist() == [1, 2, 3, 4]

    torch.manual_seed(0)
    out = sampler.sample(ids, T=10)
    assert out.shape == (1, 14) and torch.equal(out[:, :4], ids)
    assert sampler.last_stats is not None and sampler.last_stats.new_tokens == 10
    out = sampler.auto_regressive_sample(ids, T=10)
    assert out.shape == (1, 14) and torch.equal(out[:, :4], ids)

    text = sampler.sample_and_decode("w01 w02 w03", T=5)
    assert isinstance(text, str) and text.startswith("w01 w02 w03")
    text = sampler.auto_regressive_sample_and_decode("w01 w02 w03", T=5)
    assert isinstance(text, str) and text.startswith("w01 w02 w03")
    assert sampler.decode(torch.tensor([[1, 2, 3]])) == "w01 w02 w03"
    assert sampler.decode([5, 6]) == "w05 w06"
    assert sampler.decode(torch.tensor([[1, 2], [3, 4]])) == ["w01 w02", "w03 w04"]


def test_seed_api_functions():
    from speculoos_hf import auto_regressive_sampling, speculative_sampling

    target, draft = tiny_pair(speculative=False)
    ids = make_prompt(5, seed=12)
    torch.manual_seed(0)
    out = speculative_sampling(ids, draft, target, T=8, K=3)
    assert out.shape == (1, 13) and torch.equal(out[:, :5], ids)
    out = speculative_sampling(ids[0], draft, target, T=8, K=3)  # 1-D prompt
    assert out.shape == (1, 13)
    out = auto_regressive_sampling(ids, target, T=8)
    assert out.shape == (1, 13) and torch.equal(out[:, :5], ids)
    # greedy through the functions equals the target's greedy
    greedy = speculative_sampling(ids, draft, target, T=8, K=3, do_sample=False)
    assert torch.equal(greedy, auto_regressive_sampling(ids, target, T=8, do_sample=False))

    batch, mask = left_pad_batch([make_prompt(n, seed=n)[0] for n in (3, 6, 4)])
    out = speculative_sampling(batch, draft, target, T=8, K=3, attention_mask=mask)
    assert out.shape == (3, 6 + 8) and torch.equal(out[:, :6], batch)
    out = auto_regressive_sampling(batch, target, T=8, attention_mask=mask)
    assert out.shape == (3, 6 + 8) and torch.equal(out[:, :6], batch)
    greedy = speculative_sampling(batch, draft, target, T=8, K=2, attention_mask=mask, do_sample=False)
    assert torch.equal(greedy, auto_regressive_sampling(batch, target, T=8, attention_mask=mask, do_sample=False))


def test_speculoos_alias_package():
    import speculoos

    assert speculoos.SpeculativeSampler is speculoos_hf.SpeculativeSampler
    assert speculoos.enable_speculative is enable_speculative
    assert speculoos.__version__ == speculoos_hf.__version__


def test_user_stopping_criteria_batched(pair):
    """A per-row criterion in a batch: each row stops at its own length, finished rows are padded."""
    target, draft = pair

    class StopRowAfter(StoppingCriteria):
        def __init__(self, prompt_len, limits):
            self.prompt_len, self.limits = prompt_len, limits

        def __call__(self, input_ids, scores, **kwargs):
            n = input_ids.shape[1] - self.prompt_len
            # rows are identified by their prompt's first non-pad token, robust to rows leaving the batch
            return torch.tensor([n >= self.limits.get(int(row[row != PAD_ID][0]), 10**9) for row in input_ids])

    ids, mask = left_pad_batch([make_prompt(n, seed=200 + n)[0] for n in (3, 6, 4)])
    L = ids.shape[1]
    limits = {int(ids[0, -3]): 2, int(ids[2, -4]): 5}
    assert len(limits) == 2
    plain = target.generate(ids, attention_mask=mask, do_sample=False, max_new_tokens=12)
    # the stock loop pads rows finished by a criterion only when an eos id is set: use one that never fires
    unused = next(i for i in range(TOKENIZER_LEN) if i not in set(plain.flatten().tolist()) | {PAD_ID})
    kw = dict(attention_mask=mask, do_sample=False, max_new_tokens=12, pad_token_id=PAD_ID, eos_token_id=unused)
    ref = target.generate(ids, stopping_criteria=StoppingCriteriaList([StopRowAfter(L, limits)]), **kw)
    assert (ref[0, L + 2 :] == PAD_ID).all()
    out = target.generate(
        ids, draft_model=draft, num_draft_tokens=4, stopping_criteria=StoppingCriteriaList([StopRowAfter(L, limits)]),
        **kw,
    )
    assert torch.equal(out, ref)
    assert [r.new_tokens for r in target.speculative_stats.per_row] == [2, 12, 5]


def test_seed_api_sampler_from_paths(tmp_path, tokenizer):
    """Models and tokenizer given as local paths (loaded with from_pretrained; the tokenizer from the target)."""
    from speculoos import SpeculativeSampler

    target, draft = tiny_pair(vocab_size=TOKENIZER_LEN, speculative=False)
    target.save_pretrained(tmp_path / "target")
    tokenizer.save_pretrained(tmp_path / "target")
    draft.save_pretrained(tmp_path / "draft")
    sampler = SpeculativeSampler(str(tmp_path / "draft"), str(tmp_path / "target"), K=2, dtype=torch.float32)
    assert len(sampler.tokenizer) == len(tokenizer)
    ids = sampler.encode("w03 w04 w05")
    assert ids[0].tolist() == [3, 4, 5]
    greedy = sampler.sample(ids, T=6, do_sample=False)
    assert torch.equal(greedy, target.generate(ids, do_sample=False, max_new_tokens=6))
    text = sampler.sample_and_decode("w03 w04 w05", T=4, do_sample=False)
    assert text == tokenizer.decode(greedy[0, :7], skip_special_tokens=True)


# ----------------------------------------------------------------------------------------- options and drafters


class RepeatLastToken:
    """README's drafter: the four methods and nothing else (no counters)."""

    def start(self, ctx, state):
        pass

    def propose(self, state, k):
        last = state.seq.gather(1, state.lengths_tensor()[:, None] - 1)  # [B, 1]
        return Proposal(tokens=last.expand(-1, k).contiguous(), probs=None)

    def commit(self, state, outcome):
        pass

    def select_rows(self, alive, alive_host):
        pass


@pytest.mark.parametrize("K", [3, None])
def test_a_drafter_with_the_four_methods_only(pair, K):
    target, _ = pair
    ids, mask = left_pad_batch([make_prompt(n, seed=n)[0] for n in (3, 6)])
    ref = target.generate(ids, attention_mask=mask, do_sample=False, max_new_tokens=12)
    out = target.generate(ids, attention_mask=mask, do_sample=False, max_new_tokens=12, draft_model=RepeatLastToken(),
                          num_draft_tokens=K)
    assert torch.equal(out, ref)
    stats = target.speculative_stats
    assert stats.draft_forward_passes == 0 and stats.draft_input_tokens == 0
    assert stats.draft_tokens_proposed > 0 or K is None  # the cost model may rightly never draft with it


def test_prompt_lookup_from_the_generation_config_in_force(fresh_pair):
    """Prompt lookup is asked for by keyword, else by the generation config given, else by the model's own; a
    prompt_lookup_num_tokens=None keyword turns the model's off (as stock reads it)."""
    target, _ = fresh_pair
    ids = torch.tensor([[5, 6, 7, 8, 9, 5, 6, 7, 8, 9, 5, 6]])
    ref = target.generate(ids, do_sample=False, max_new_tokens=10)
    target.speculative_stats = None
    with on_flat_machine():  # the cost model paces the copies: on a busy machine's wall clock it may copy nothing
        out = target.generate(ids, GenerationConfig(prompt_lookup_num_tokens=3, do_sample=False, max_new_tokens=10))
    assert torch.equal(out, ref) and target.speculative_stats.draft_tokens_proposed > 0
    target.speculative_stats = None
    target.generation_config.prompt_lookup_num_tokens = 3
    assert torch.equal(target.generate(ids, do_sample=False, max_new_tokens=10), ref)
    assert target.speculative_stats.num_draft_tokens == 3  # lookup alone: k up to prompt_lookup_num_tokens
    target.speculative_stats = None
    plain = target.generate(ids, do_sample=False, max_new_tokens=10, prompt_lookup_num_tokens=None)
    assert torch.equal(plain, ref) and target.speculative_stats is None  # stock generate() took the call

