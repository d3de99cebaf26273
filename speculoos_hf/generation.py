"""transformers glue: `model.generate(..., draft_model=draft)` through the stock generate() preparation.

The stock generate() merges the generation config, builds logits processors and stopping criteria, expands
`num_return_sequences` and prepares the attention mask and cache; it then calls our decoding loop as a
`custom_generate` callable. What that path does not forward (streamer, tokenizer, stop strings) is handled here.
"""

from __future__ import annotations

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
from .decoding import speculative_decode
from .drafters.prepared import PreparedDraft, note_draft_step, prepare_draft
from .drafters.select import make_drafter
from .options import (
    DEFAULT_NUM_DRAFT_TOKENS,
    DecodeRequest,
    SpeculativeOptions,
    UserObjects,
    drop_speculoos_options,
    wants_prompt_lookup,
)
from .pacer import make_pacer
from .processors import check_supported
from .stats import SpeculativeStats

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
    """Speculative generate() for `model` (any transformers causal LM) with `draft_model` proposing tokens:
    `num_draft_tokens` per round, or fewer when `draft_confidence_threshold` (0..1) stops drafting early.
    `draft_model` is a causal LM or a drafter object; `prompt_lookup_num_tokens` copies n-gram continuations from
    the context, alone (no draft_model) or together with a draft model (hybrid). `block_verification=True` verifies
    sampled blocks jointly (Sun et al. 2024): still exact, never fewer accepted tokens on average.
    `draft_quantization` ("auto" by default, "int8", None) drafts with an int8 copy of the draft, made once and reused,
    where `drafters.prepared.int8_pays` (auto) or always (int8). Every other keyword
    goes to stock generate(), which prepares the call and runs our loop as its `custom_generate`."""
    options = SpeculativeOptions.from_generate(model, generation_config, draft_model, kwargs)
    check_models(model, draft_model)
    _refuse_other_drafting(kwargs)
    prepared = prepare_draft(draft_model, options.draft_quantization, model)
    decode = _SpeculativeDecode(options, prepared, streamer=kwargs.pop("streamer", None))
    generation_config = _stock_arguments(model, generation_config, options, kwargs)
    return GenerationMixin.generate(model, inputs, generation_config, custom_generate=decode, **kwargs)


def _refuse_other_drafting(kwargs: dict) -> None:
    if kwargs.get("assistant_model") is not None:
        raise ValueError("Pass either draft_model (speculoos) or assistant_model (transformers), not both.")
    if kwargs.get("custom_generate") is not None:
        raise ValueError("custom_generate cannot be combined with draft_model.")


def _stock_arguments(model, generation_config, options: SpeculativeOptions, kwargs: dict):
    """Prepare what stock generate() gets (in place), and the generation config to hand it: prompt lookup and stop
    strings are ours (stock would start its own lookup, and cannot hand its tokenizer to a custom_generate)."""
    kwargs["prompt_lookup_num_tokens"] = None  # a None keyword overrides the model's config, which stock would read
    check_generate_arguments(model, generation_config, kwargs)
    stop_strings, generation_config = pop_stop_strings(model, generation_config, kwargs)
    if stop_strings:
        if options.tokenizer is None:
            raise ValueError("stop_strings needs the tokenizer: pass tokenizer=<your tokenizer> to generate().")
        criteria = StoppingCriteriaList(kwargs.pop("stopping_criteria", None) or [])
        criteria.append(StopStringCriteria(tokenizer=options.tokenizer, stop_strings=stop_strings))
        kwargs["stopping_criteria"] = criteria
    return generation_config


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
        cache = checked_cache(model, model_kwargs.get("cache"))
        drafter, V = make_drafter(model, self.prepared.model, self.options)
        pacer = make_pacer(self.options, model, self.prepared.model)
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
        sequences, stats = speculative_decode(model, drafter, request, self.options, user, pacer)
        stats.record_draft(self.prepared.quantization, self.prepared.prepare_s)
        note_draft_step(self.prepared, model, stats.cost_model)
        model.speculative_stats = stats
        if config.return_dict_in_generate:
            return SpeculativeGenerateOutput(sequences=sequences, speculative_stats=stats)
        return sequences


def _check_prepared(model, input_ids, logits_processor, config, model_kwargs: dict, streamer) -> None:
    """Refuse what stock generate() prepared but speculative decoding cannot do exactly."""
    check_generation_config(config)
    unknown = {k for k, v in model_kwargs.items() if v is not None and k not in _KNOWN_MODEL_KWARGS}
    if unknown:
        raise ValueError(f"Speculative generation supports plain input_ids prompts; unsupported inputs: {unknown}.")
    if streamer is not None and input_ids.shape[0] > 1:
        raise ValueError("streamer supports batch size 1 only (as transformers' TextStreamer).")
    check_supported(logits_processor)
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
