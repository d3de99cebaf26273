"""transformers glue: `model.generate(..., draft_model=draft)` through the stock generate() preparation.

The stock generate() merges the generation config, builds logits processors and stopping criteria, expands
`num_return_sequences` and prepares the attention mask and cache; it then calls our decoding loop as a
`custom_generate` callable. What that path does not forward (streamer, tokenizer, stop strings) is handled here.
"""

from __future__ import annotations

import ast
import copy
import logging
import re
from contextlib import contextmanager
from dataclasses import dataclass

from transformers import AutoModelForCausalLM, GenerationMixin, PreTrainedModel
from transformers.generation.stopping_criteria import StoppingCriteriaList, StopStringCriteria
from transformers.generation.utils import GenerateDecoderOnlyOutput

from .checks import (
    check_generate_arguments,
    check_generation_config,
    check_models,
    check_position_ids,
    checked_cache,
    pop_stop_strings,
)
from ..loop.decoding import speculative_decode
from .model_support import check_batch
from ..drafters.prepared import PreparedDraft, note_draft_step, note_tokens, prepare_draft
from ..drafters.select import drafts_in_target_ids, make_drafter
from .options import (
    DEFAULT_NUM_DRAFT_TOKENS,
    DecodeRequest,
    SpeculativeOptions,
    UserObjects,
    drop_speculoos_options,
    wants_prompt_lookup,
)
from ..pacing.memory import sampling_setting
from ..pacing.pacer import make_pacer
from .processors import check_supported
from ..loop.stats import SpeculativeStats

__all__ = ["DEFAULT_NUM_DRAFT_TOKENS", "SpeculativeGenerateOutput", "SpeculativeGenerationMixin",
           "SpeculativeModelForCausalLM", "enable_speculative", "speculative_generate"]

_KNOWN_MODEL_KWARGS = {"attention_mask", "cache", "past_key_values", "position_ids", "logits_to_keep", "use_cache"}


@dataclass
class SpeculativeGenerateOutput(GenerateDecoderOnlyOutput):
    """`GenerateDecoderOnlyOutput` plus the counters of the speculative run."""

    speculative_stats: SpeculativeStats | None = None


class SpeculativeGenerationMixin:
    """Adds `draft_model=` / `num_draft_tokens=` (see `SpeculativeOptions`) to generate(); without a draft model or
    prompt lookup generate() is the stock one."""

    def generate(self, inputs=None, generation_config=None, *args, draft_model=None, **kwargs):
        if draft_model is None and not wants_prompt_lookup(self, generation_config, kwargs):
            drop_speculoos_options(kwargs)
            return super().generate(inputs, generation_config, *args, **kwargs)
        if args:
            raise TypeError("With draft_model or prompt lookup, pass generate() arguments after generation_config by "
                            "keyword.")
        return speculative_generate(self, inputs, generation_config, draft_model=draft_model, **kwargs)


def speculative_generate(model, inputs=None, generation_config=None, *, draft_model=None, **kwargs):
    """Speculative generate() for `model` (any transformers causal LM): what `model.generate(..., draft_model=...)`
    runs. A draft (or a copy from the context) proposes tokens, the target verifies them in one forward pass, and
    the rule of Leviathan et al. / Chen et al. keeps the output exactly the target's: sampled output has the target's
    distribution, greedy output is the target's own greedy output token for token (float32; in bf16/fp16 exact ties
    can break the other way).

    Args:
        inputs, generation_config, **kwargs: as stock `GenerationMixin.generate`: greedy or sampling, processors,
            stopping criteria, stop strings, streamer, left-padded batches, `num_return_sequences`,
            `return_dict_in_generate`. Every other keyword goes to stock generate(), which prepares the call and runs
            the speculative loop as its `custom_generate`. What cannot be exact (beam search and other decoding
            modes, encoder-decoder models, `output_scores`, ...) is refused with a ValueError before any work.
        draft_model (`PreTrainedModel` or drafter, *optional*): a causal LM sharing the target's tokenizer, a draft
            with another tokenizer (with `tokenizer` and `assistant_tokenizer`), or any object with the `Drafter`
            methods (`speculoos_hf.drafters`). Needed unless prompt lookup or `suffix_cache` is asked for.
        num_draft_tokens (`int` or `"auto"`, *optional*, defaults to `"auto"`): drafts per round. `"auto"` (or None):
            a cost model times the target's passes and the draft's steps as the call runs and picks each round's k
            for the most tokens per second, 0 (no drafting) where drafts cannot pay. An int fixes it (the model's
            drafts beside prompt lookup too); a round drafts at most max_new_tokens - 1 and 1024 tokens whatever is
            asked, and the stats report what was asked.
        draft_confidence_threshold (`float` in [0, 1), *optional*): dynamic lookahead: a round stops drafting once,
            in every row, the draft gave its latest token less than this probability. Costs one host sync per draft.
            Unset, under `"auto"` a draft model's round goes on past the cost model's k while one more draft is
            expected to pay, judged from the probabilities the draft gave its tokens (docs/speed.md); 0.0: never.
        prompt_lookup_num_tokens (`int`, *optional*): copy up to N tokens per round from each row's prompt and output
            (the longest recurring suffix; transformers' name). Alone: no draft model runs; with `draft_model`: the
            hybrid, which takes per row and round the copy or the model's drafts, by expected gain.
        max_matching_ngram_size (`int`, *optional*, defaults to 64): the longest suffix prompt lookup matches.
        suffix_cache (`SuffixCache`, *optional*): earlier calls' prompts and outputs to copy from; turns prompt lookup
            on (N=32 unless given) and receives this call's rows as they finish. Anything else (a path, False) is
            refused with a ValueError.
        draft_tree (`"auto"`, `False` or a tuple of ints, *optional*, defaults to `"auto"`): token trees: the draft
            model also offers its runner-up continuations, verified in the same target pass, exactly. `"auto"`: trees
            where the cost model says they pay; False: chains only; a branching per depth (as `(3, 2, 1, 1)`): that
            tree in every round.
        block_verification (`bool`, *optional*, defaults to `False`): sampling verifies each draft block jointly
            (Sun et al. 2024): as exact, never fewer accepted tokens on average, a little more work per round.
        draft_quantization (`"auto"`, `"int8"` or `None`, *optional*, defaults to `"auto"`): `"auto"` drafts with an
            int8 copy of a draft model on CPU where its step is a large share of a round (`drafters.prepared.
            int8_pays`), and with a reduced LM head over the ids earlier calls used once they show it pays (FR-Spec,
            `drafters.head_choice`); `"int8"` always; None never. The copy is made once per draft object and reused
            while the draft's weights stay as they were; a draft with offloaded weights is kept as given ("int8":
            ValueError). Exact either way: the output never depends on the draft.
        tokenizer, assistant_tokenizer (*optional*): the target's tokenizer (needed for `stop_strings`) and the
            draft's, when it differs (transformers' names).

    Returns:
        As stock generate(): the sequences `[B, L]`, or with `return_dict_in_generate=True` a
        `SpeculativeGenerateOutput` (`.sequences`, `.speculative_stats`). `model.speculative_stats` holds the
        call's `SpeculativeStats` (proposed and accepted drafts, target passes, per row, the cost model's figures).
    """
    model.speculative_stats = None  # a call that raises leaves no earlier call's numbers behind
    options = SpeculativeOptions.from_generate(model, generation_config, draft_model, kwargs)
    check_models(model, draft_model)
    _refuse_other_drafting(kwargs)
    prepared = prepare_draft(draft_model, options.draft_quantization, model)
    decode = _SpeculativeDecode(options, prepared, streamer=kwargs.pop("streamer", None))
    given = set(kwargs)
    generation_config = _stock_arguments(model, generation_config, options, kwargs)
    with _quiet_about(set(kwargs) - given if generation_config is not None else set()):
        return GenerationMixin.generate(model, inputs, generation_config, custom_generate=decode, **kwargs)


_IMAGE_INPUTS = ("pixel_values", "pixel_values_images", "pixel_values_videos", "image_patches", "mm_encoder_outputs")
_NO_IMAGES = ("Image or video inputs are not supported with draft_model: speculative generation serves multimodal "
              "models with text prompts. Generate without draft_model for image inputs.")


def _refuse_other_drafting(kwargs: dict) -> None:
    if any(kwargs.get(name) is not None and not (isinstance(kwargs[name], dict) and not kwargs[name])
           for name in _IMAGE_INPUTS):
        raise ValueError(_NO_IMAGES)
    if kwargs.get("assistant_model") is not None:
        raise ValueError("Pass either draft_model (speculoos) or assistant_model (transformers), not both.")
    if kwargs.get("custom_generate") is not None:
        raise ValueError("custom_generate cannot be combined with draft_model.")


def _stock_arguments(model, generation_config, options: SpeculativeOptions, kwargs: dict):
    """Prepare what stock generate() gets (in place), and the generation config to hand it: prompt lookup and stop
    strings are ours (stock would start its own lookup, and cannot hand its tokenizer to a custom_generate)."""
    generation_config = _without_stock_lookup(model, generation_config, kwargs)
    check_generate_arguments(model, generation_config, kwargs)
    stop_strings, generation_config = pop_stop_strings(model, generation_config, kwargs)
    if stop_strings:
        if options.tokenizer is None:
            raise ValueError("stop_strings needs the tokenizer: pass tokenizer=<your tokenizer> to generate().")
        criteria = StoppingCriteriaList(kwargs.pop("stopping_criteria", None) or [])
        criteria.append(StopStringCriteria(tokenizer=options.tokenizer, stop_strings=stop_strings))
        kwargs["stopping_criteria"] = criteria
    return generation_config


def _without_stock_lookup(model, generation_config, kwargs: dict):
    """The generation config to hand stock generate(), with no prompt lookup of its own in force: a given config's
    is unset in a copy; the model's needs a None keyword (stock fills a config's None fields from the model's), added
    only then, so that stock has no keyword of ours to warn about beside a given config."""
    if generation_config is not None and generation_config.prompt_lookup_num_tokens is not None:
        generation_config = copy.deepcopy(generation_config)
        generation_config.prompt_lookup_num_tokens = None
    if getattr(model.generation_config, "prompt_lookup_num_tokens", None) is not None:
        kwargs["prompt_lookup_num_tokens"] = None
    return generation_config


_MIXED_ARGUMENTS = re.compile(r"Passing `generation_config` together with generation-related arguments=\((\{.*?\})\)")


@contextmanager
def _quiet_about(added: set[str]):
    """Stock warns when a generation config comes with generation keywords: not about keywords the glue added itself
    (None overrides of the model's prompt lookup and stop strings), which the user never passed."""
    if not added:
        yield
        return
    stock_logger = logging.getLogger("transformers.generation.utils")

    def user_caused(record: logging.LogRecord) -> bool:
        named = _MIXED_ARGUMENTS.search(record.getMessage())
        try:
            return named is None or not ast.literal_eval(named.group(1)) <= added
        except (ValueError, SyntaxError):  # worded otherwise: shown
            return True

    stock_logger.addFilter(user_caused)
    try:
        yield
    finally:
        stock_logger.removeFilter(user_caused)


class _SpeculativeDecode:
    """The `custom_generate` callable: stock generate() calls it with what it prepared; it builds the drafter and
    the pacer, runs the loop and shapes the output as stock would."""

    def __init__(self, options: SpeculativeOptions, prepared: PreparedDraft, streamer=None):
        self.options = options
        self.prepared = prepared  # .model: a draft model (maybe its int8 copy), a drafter object, or None
        self.streamer = streamer

    def __call__(self, model, input_ids, logits_processor, stopping_criteria, generation_config, **model_kwargs):
        config = generation_config
        _check_prepared(model, input_ids, logits_processor, config, model_kwargs, self.streamer)
        if isinstance(self.prepared.model, PreTrainedModel):
            check_batch(self.prepared.model, input_ids.shape[0], "draft_model")
        cache = checked_cache(model, model_kwargs.get("cache"))
        options = self.options.within(config.max_length - input_ids.shape[1] - 1)  # at most what can be drafted
        drafter, V = make_drafter(model, self.prepared.model, options)
        pacer = make_pacer(options, model, self.prepared.model, sampling_setting(config))
        if self.streamer is not None:
            self.streamer.put(input_ids.cpu())
        request = DecodeRequest(
            input_ids,
            config.max_length,
            model_kwargs.get("attention_mask"),
            do_sample=bool(config.do_sample),
            eos_token_id=config._eos_token_tensor,  # stock's prepared special tokens
            pad_token_id=None if config._pad_token_tensor is None else int(config._pad_token_tensor),
            vocab_size=V,
        )
        user = UserObjects(logits_processor, stopping_criteria, self.streamer, cache)
        sequences, stats = speculative_decode(model, drafter, request, options, user, pacer)
        stats.record_draft(self.prepared.quantization, self.prepared.prepare_s)
        note_draft_step(self.prepared, model, stats.cost_model)
        if drafts_in_target_ids(drafter):  # the "auto" reduced head counts the draft's own ids
            note_tokens(self.prepared, sequences, request.pad_token_id, stats.cost_model)
        model.speculative_stats = stats
        if config.return_dict_in_generate:
            return SpeculativeGenerateOutput(sequences=sequences, speculative_stats=stats)
        return sequences


def _check_prepared(model, input_ids, logits_processor, config, model_kwargs: dict, streamer) -> None:
    """Refuse what stock generate() prepared but speculative decoding cannot do exactly."""
    check_generation_config(config)
    if model_kwargs.get("mm_encoder_outputs"):
        raise ValueError(_NO_IMAGES)
    unknown = {k for k, v in model_kwargs.items()
               if v is not None and k not in _KNOWN_MODEL_KWARGS and not (k == "mm_encoder_outputs" and not v)}
    if unknown:
        raise ValueError(f"Speculative generation supports plain input_ids prompts; unsupported inputs: {unknown}.")
    if streamer is not None and input_ids.shape[0] > 1:
        raise ValueError("streamer supports batch size 1 only (as transformers' TextStreamer).")
    check_supported(logits_processor)
    check_batch(model, input_ids.shape[0])
    check_position_ids(model_kwargs.get("position_ids"), model_kwargs.get("attention_mask"), input_ids)


def _speculative_class(base: type) -> type:
    """A subclass of `base` with the speculative generate(), keeping the base's name (save_pretrained writes it).

    pickle finds classes by module and name, which lead to `base`, not to this subclass; its instances therefore
    pickle as "rebuild the speculative subclass of `base`" (`_reduce_speculative`), so pickle, torch.save and
    deepcopy give back a model with the speculative generate(), in this process or a fresh one."""
    cached = _CLASS_CACHE.get(base)
    if cached is None:
        namespace = {"__module__": base.__module__, "_speculoos_base": base, "__reduce_ex__": _reduce_speculative}
        cached = type(base.__name__, (SpeculativeGenerationMixin, base), namespace)
        cached.__qualname__ = base.__qualname__
        _CLASS_CACHE[base] = cached
    return cached


def _reduce_speculative(self, protocol):
    """`__reduce_ex__` of the dynamic subclasses: the default reduction with the class replaced by its base."""
    reduced = object.__reduce_ex__(self, protocol)
    cls = type(self)
    base = cls.__dict__.get("_speculoos_base")
    if base is None or not isinstance(reduced, tuple) or len(reduced) < 2 or not reduced[1] or reduced[1][0] is not cls:
        return reduced
    func, args = reduced[0], reduced[1]
    return (_rebuild_speculative, (base, func, tuple(args[1:])), *reduced[2:])


def _rebuild_speculative(base: type, func, args: tuple):
    """Unpickling: `func(speculative subclass of base, *args)`, as the default reduction would have called it."""
    return func(_speculative_class(base), *args)


_CLASS_CACHE: dict[type, type] = {}


def enable_speculative(model):
    """Give an already loaded causal LM the speculative generate(), in place; returns the model."""
    if not isinstance(model, PreTrainedModel):
        raise ValueError(f"enable_speculative expects a transformers PreTrainedModel, got {type(model).__name__}.")
    if not isinstance(model, SpeculativeGenerationMixin):
        model.__class__ = _speculative_class(type(model))
    return model


class SpeculativeModelForCausalLM:
    """`SpeculativeModelForCausalLM.from_pretrained(...)`: AutoModelForCausalLM with the speculative generate()."""

    def __init__(self, *args, **kwargs):
        raise TypeError("Use SpeculativeModelForCausalLM.from_pretrained(name_or_path, **kwargs).")

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, **kwargs):
        model = AutoModelForCausalLM.from_pretrained(pretrained_model_name_or_path, *model_args, **kwargs)
        return enable_speculative(model)

    @classmethod
    def from_config(cls, config, **kwargs):
        return enable_speculative(AutoModelForCausalLM.from_config(config, **kwargs))
