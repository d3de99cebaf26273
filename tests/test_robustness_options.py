"""Options checked once, before any work, and the glue as stock (issue 25, cases 10-13 and 18-20): a given K holds
beside prompt lookup, a wrong suffix_cache is refused by name, huge counts allocate only for what can be drafted,
stats never outlive their call, a criterion met on the prompt ends the call as stock does, no warning about our own
keywords, and the seed API samples plainly in both paths."""

from __future__ import annotations

import logging

import pytest
import torch
from transformers import GenerationConfig, GenerationMixin
from transformers.generation import logits_process as lp
from transformers.generation.stopping_criteria import MaxLengthCriteria, StoppingCriteriaList

import speculoos_hf.loop.decoding as decoding
import speculoos_hf.glue.generation as generation
import speculoos_hf.glue.options as options_module
from conftest import left_pad_batch, make_prompt, tiny_pair
from speculoos_hf import SuffixCache, auto_regressive_sampling, speculative_sampling
from speculoos_hf.drafters import PromptLookupDrafter
from speculoos_hf.drafters.model import ModelDrafter
from speculoos_hf.glue.options import AUTO_MAX_DRAFT_TOKENS

PAIR = dict(layers=1)
GREEDY = dict(do_sample=False, max_new_tokens=12)
REPEATING = torch.tensor([[5, 6, 7, 8, 9, 10, 5, 6, 7, 8, 9, 10, 5, 6, 7]])  # prompt lookup finds copies here


@pytest.fixture
def forwards(pair):
    """How many forwards the target ran (a pre-hook on it): nothing may run before a refusal."""
    target, _ = pair
    calls = []
    handle = target.register_forward_pre_hook(lambda module, args: calls.append(1))
    yield calls
    handle.remove()


# ------------------------------------------------------------------------------- 10. K beside prompt lookup


def test_given_k_caps_the_model_beside_prompt_lookup(pair, monkeypatch):
    """num_draft_tokens=2 with prompt_lookup_num_tokens=8: the model drafts at most 2 per round (copies may be
    longer) and the stats report the 2 asked."""
    target, draft = pair
    asked = []
    propose = ModelDrafter.propose
    monkeypatch.setattr(ModelDrafter, "propose", lambda self, state, k: asked.append(k) or propose(self, state, k))
    ids = torch.cat([REPEATING, make_prompt(3, seed=3)], dim=1)
    ref = target.generate(ids, **GREEDY)
    out = target.generate(ids, draft_model=draft, num_draft_tokens=2, prompt_lookup_num_tokens=8, **GREEDY)
    assert torch.equal(out, ref)
    assert asked and max(asked) <= 2
    assert target.speculative_stats.num_draft_tokens == 2


# ------------------------------------------------------------------------------ 11. suffix_cache= of a wrong type


@pytest.mark.parametrize("value", ["cache.npz", [1, 2, 3], False, {}, PromptLookupDrafter(3)],
                         ids=["path", "list", "False", "dict", "drafter"])
@pytest.mark.parametrize("with_draft", [False, True])
def test_suffix_cache_of_a_wrong_type_is_refused_by_name(pair, forwards, value, with_draft):
    target, draft = pair
    with pytest.raises(ValueError, match="suffix_cache must be a speculoos_hf.SuffixCache"):
        target.generate(REPEATING, draft_model=draft if with_draft else None, suffix_cache=value, **GREEDY)
    assert not forwards


def test_suffix_cache_with_a_drafter_object_names_suffix_cache(pair, forwards):
    target, _ = pair
    with pytest.raises(ValueError, match="suffix_cache feeds prompt lookup") as refused:
        target.generate(REPEATING, draft_model=PromptLookupDrafter(3), suffix_cache=SuffixCache(), **GREEDY)
    assert "prompt_lookup_num_tokens" not in str(refused.value) and not forwards


@pytest.mark.parametrize("option", [dict(block_verification="no"), dict(block_verification=1),
                                    dict(draft_confidence_threshold="0.5"), dict(draft_quantization=["int8"])])
def test_options_of_a_wrong_type_are_refused_by_name(pair, forwards, option):
    """Siblings of case 11: no option is read by truthiness or float() of a string."""
    target, draft = pair
    with pytest.raises(ValueError, match=next(iter(option))):
        target.generate(REPEATING, draft_model=draft, **option, **GREEDY)
    assert not forwards


# ---------------------------------------------------------------------- 12. huge counts allocate for what can be drafted


HUGE = [(dict(num_draft_tokens=10**9), True), (dict(num_draft_tokens=2**63 - 1), True),
        (dict(prompt_lookup_num_tokens=10**9), True), (dict(prompt_lookup_num_tokens=10**9), False),
        (dict(prompt_lookup_num_tokens=10**7, num_draft_tokens=3), False),
        (dict(num_draft_tokens=10**9, prompt_lookup_num_tokens=10**9), True)]


@pytest.mark.parametrize("option, with_draft", HUGE)
def test_huge_counts_allocate_only_for_what_can_be_drafted(pair, monkeypatch, option, with_draft):
    """max_new_tokens=5: the loop's books are as wide as 5 tokens allow and the drafter and the pacer (cost model
    included) are given counts of at most 4 (or the "auto" cap), whatever was asked; the stats report what was
    asked. (The spies refuse a huge size before anything is allocated for it.)"""
    target, draft = pair
    widths, given = [], []
    start_state, make_pacer = decoding._start_state, generation.make_pacer

    def spy_state(ids, mask, width, pad):
        widths.append(width)
        assert width < 1000, "books allocated for drafts that cannot happen"
        return start_state(ids, mask, width, pad)

    def spy_pacer(options, *args):
        given.append(options)
        assert options.max_draft_tokens < 1000, "a pacer weighing drafts that cannot happen"
        return make_pacer(options, *args)

    monkeypatch.setattr(decoding, "_start_state", spy_state)
    monkeypatch.setattr(generation, "make_pacer", spy_pacer)
    kw = dict(do_sample=False, max_new_tokens=5)
    ref = target.generate(REPEATING, **kw)
    out = target.generate(REPEATING, draft_model=draft if with_draft else None, **option, **kw)
    assert torch.equal(out, ref)
    P = REPEATING.shape[1]
    assert widths == [P + 5 + 5]  # end + K + 1 with K at most the 4 that can be drafted
    assert given[0].max_draft_tokens <= max(4, AUTO_MAX_DRAFT_TOKENS) and (given[0].prompt_lookup_num_tokens or 0) <= 4
    asked = option.get("num_draft_tokens", AUTO_MAX_DRAFT_TOKENS if with_draft else option["prompt_lookup_num_tokens"])
    assert target.speculative_stats.num_draft_tokens == asked


@pytest.mark.parametrize("with_draft", [True, False])
def test_a_huge_max_new_tokens_allocates_for_what_is_generated(pair, monkeypatch, with_draft):
    """Sibling of case 12: max_new_tokens=10**9 with an EOS reached after a few tokens (stock allocates nothing in
    proportion): the loop's books start small (8 new tokens here) and grow with the rows; the output is stock's."""
    target, draft = pair
    widths = []
    start_state = decoding._start_state

    def spy_state(ids, mask, width, pad):
        widths.append(width)
        assert width < 10**4, "books allocated for max_new_tokens, not for what is generated"
        return start_state(ids, mask, width, pad)

    monkeypatch.setattr(decoding, "_start_state", spy_state)
    monkeypatch.setattr(decoding, "START_WIDTH", 8)
    eos = int(target.generate(REPEATING, do_sample=False, max_new_tokens=40)[0, -1])  # met within 40 tokens
    kw = dict(do_sample=False, eos_token_id=eos, max_new_tokens=10**9)
    ref = target.generate(REPEATING, **kw)
    lookup = {} if with_draft else dict(prompt_lookup_num_tokens=4)
    out = target.generate(REPEATING, draft_model=draft if with_draft else None, num_draft_tokens=4, **lookup, **kw)
    assert torch.equal(out, ref) and ref.shape[1] > REPEATING.shape[1] + 8 + 5  # past the books' first width
    assert widths == [REPEATING.shape[1] + 8 + 5]


@pytest.mark.parametrize("option", [dict(num_draft_tokens=10**9), dict(prompt_lookup_num_tokens=10**9)])
def test_huge_counts_with_a_huge_budget_are_capped(pair, monkeypatch, option):
    """max_new_tokens=10**9 too (an EOS ends the call): no round is offered more than MAX_ROUND_DRAFTS drafts (8
    here, to keep the test short)."""
    target, draft = pair
    given = []
    make_pacer = generation.make_pacer

    def spy_pacer(options, *args):
        given.append(options)
        counts = [options.prompt_lookup_num_tokens or 0] + ([] if options.auto_k else [options.num_draft_tokens])
        assert max(counts) <= 8, "a pacer weighing drafts that cannot pay"
        return make_pacer(options, *args)

    monkeypatch.setattr(generation, "make_pacer", spy_pacer)
    monkeypatch.setattr(options_module, "MAX_ROUND_DRAFTS", 8)
    eos = int(target.generate(REPEATING, do_sample=False, max_new_tokens=12)[0, -1])
    kw = dict(do_sample=False, eos_token_id=eos, max_new_tokens=10**9)
    ref = target.generate(REPEATING, **kw)
    assert torch.equal(target.generate(REPEATING, draft_model=draft, **option, **kw), ref) and given
    assert target.speculative_stats.num_draft_tokens == option.get("num_draft_tokens", AUTO_MAX_DRAFT_TOKENS)


@pytest.mark.parametrize("name", ["num_draft_tokens", "prompt_lookup_num_tokens", "max_matching_ngram_size"])
@pytest.mark.parametrize("value", [2**63, 2**64 + 5])
def test_counts_beyond_any_index_are_refused_before_any_work(pair, forwards, name, value):
    target, draft = pair
    with pytest.raises(ValueError, match=rf"{name} must be an integer in \[1, 2\*\*63\)"):
        target.generate(REPEATING, draft_model=draft, **{name: value}, **GREEDY)
    assert not forwards


# ------------------------------------------------------------------------------ 13. stats never outlive their call


def test_a_call_that_raises_leaves_no_stats(pair):
    target, draft = pair
    target.generate(REPEATING, draft_model=draft, num_draft_tokens=3, **GREEDY)
    assert target.speculative_stats is not None
    with pytest.raises(ValueError):
        target.generate(REPEATING, draft_model=draft, num_draft_tokens=0, **GREEDY)
    assert target.speculative_stats is None
    target.generate(REPEATING, draft_model=draft, num_draft_tokens=3, **GREEDY)
    with pytest.raises(ValueError, match="position_ids"):  # raised inside stock's preparation, after the options
        target.generate(REPEATING, draft_model=draft, position_ids=torch.zeros_like(REPEATING) + 3, **GREEDY)
    assert target.speculative_stats is None


def test_seed_sampler_last_stats_never_outlive_their_call(tokenizer):
    from conftest import TOKENIZER_LEN
    from speculoos_hf import SpeculativeSampler

    target, draft = tiny_pair(vocab_size=TOKENIZER_LEN, speculative=False, layers=1)
    sampler = SpeculativeSampler(draft, target, K=3, tokenizer=tokenizer)
    sampler.sample(sampler.encode("w01 w02 w03"), T=4)
    assert sampler.last_stats is not None
    with pytest.raises(ValueError):
        sampler.sample(sampler.encode("w01 w02 w03"), T=4, num_beams=2)
    assert sampler.last_stats is None


# ------------------------------------------------------------- 18. a criterion met on the prompt: one token, end()


class Recording:
    def __init__(self):
        self.calls = []

    def put(self, value):
        self.calls.append(torch.as_tensor(value).flatten().tolist())

    def end(self):
        self.calls.append("end")


@pytest.mark.parametrize("max_length", [3, 8])
@pytest.mark.parametrize("do_sample", [False, True])
def test_max_length_criterion_met_on_the_prompt_behaves_as_stock(pair, max_length, do_sample):
    """MaxLengthCriteria(max_length <= prompt length): stock generates one token and ends its streamer."""
    target, draft = pair
    ids = make_prompt(8, seed=6)
    criteria = lambda: StoppingCriteriaList([MaxLengthCriteria(max_length)])  # noqa: E731
    runs = []
    for drafter in (None, draft):
        streamer = Recording()
        torch.manual_seed(3)
        out = target.generate(ids, draft_model=drafter, stopping_criteria=criteria(), streamer=streamer,
                              do_sample=do_sample, max_new_tokens=6)
        runs.append((out, streamer.calls))
    (stock, stock_calls), (ours, our_calls) = runs
    assert stock.shape == (1, 9) and our_calls[-1] == "end" and our_calls == stock_calls
    if not do_sample:
        assert torch.equal(ours, stock)
    batch, mask = left_pad_batch([make_prompt(n, seed=n)[0] for n in (8, 5)])
    kw = dict(attention_mask=mask, do_sample=False, max_new_tokens=6)
    assert torch.equal(target.generate(batch, draft_model=draft, stopping_criteria=criteria(), **kw),
                       target.generate(batch, stopping_criteria=criteria(), **kw))


# ------------------------------------------------------------- 19. no warning about a keyword the glue added itself


class Collect(logging.Handler):
    def __init__(self):
        super().__init__()
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


@pytest.fixture
def stock_warnings():
    """Messages of transformers' generation logger (warning_once forgotten first, so each shows again)."""
    logging.Logger.warning_once.cache_clear()
    handler, logger = Collect(), logging.getLogger("transformers.generation.utils")
    logger.addHandler(handler)
    yield handler.messages
    logger.removeHandler(handler)
    logging.Logger.warning_once.cache_clear()


def _mixed(messages) -> list[str]:
    return [m for m in messages if "Passing `generation_config` together" in m]


def test_no_deprecation_warning_about_our_own_keyword(fresh_pair, stock_warnings):
    target, draft = fresh_pair
    config = GenerationConfig(do_sample=False, max_new_tokens=10)
    ref = target.generate(REPEATING, generation_config=config)
    assert torch.equal(target.generate(REPEATING, generation_config=config, draft_model=draft), ref)
    assert not _mixed(stock_warnings)
    target.generation_config.prompt_lookup_num_tokens = 4  # the model's config asks for lookup: ours, not stock's
    assert torch.equal(target.generate(REPEATING, generation_config=config, num_draft_tokens=4), ref)
    stats = target.speculative_stats
    assert stats.draft_tokens_proposed > 0 and stats.draft_forward_passes == 0 and not _mixed(stock_warnings)
    target.generate(REPEATING, generation_config=config, draft_model=draft, min_new_tokens=2)  # the user's own
    assert any("min_new_tokens" in m for m in _mixed(stock_warnings))  # power: the warning is seen when it is due


# -------------------------------------------------------------------------- 20. the seed API samples plainly


def test_seed_api_samples_plainly_in_both_paths(monkeypatch):
    """A checkpoint generation_config that reshapes the distribution (as Qwen2.5 instruct's repetition_penalty):
    both paths get the same processors, none of which reshapes anything; given settings still apply."""
    target, draft = tiny_pair(speculative=False, layers=1)
    target.generation_config.update(repetition_penalty=1.5, no_repeat_ngram_size=2, top_k=5, top_p=0.5, min_p=0.3,
                                    typical_p=0.5, temperature=0.7, epsilon_cutoff=0.01)
    built = []
    original = GenerationMixin._get_logits_processor
    monkeypatch.setattr(GenerationMixin, "_get_logits_processor",
                        lambda self, *a, **k: built.append(original(self, *a, **k)) or built[-1])
    ids = make_prompt(5, seed=12)
    speculative_sampling(ids, draft, target, T=4, K=2)
    auto_regressive_sampling(ids, target, T=4)
    plain, baseline = built
    assert [type(p) for p in plain] == [type(p) for p in baseline]
    for processor in plain:  # min_p has no off value but None: 0.0 keeps every token
        assert isinstance(processor, lp.MinPLogitsWarper) and processor.min_p == 0.0
    built.clear()
    speculative_sampling(ids, draft, target, T=4, K=2, top_k=3)
    assert any(isinstance(p, lp.TopKLogitsWarper) and p.top_k == 3 for p in built[0])
