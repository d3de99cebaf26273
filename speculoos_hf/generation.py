"""transformers glue: `model.generate(..., draft_model=draft)` through the stock generate() preparation.

The stock generate() merges the generation config, builds logits processors and stopping criteria, expands
`num_return_sequences` and prepares the attention mask and cache; it then calls our decoding loop as a
`custom_generate` callable. What that path does not forward (streamer, tokenizer, stop strings) is handled here.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import AutoModelForCausalLM, GenerationMixin, PreTrainedModel
from transformers.generation.stopping_criteria import StoppingCriteriaList, StopStringCriteria
from transformers.generation.utils import GenerateDecoderOnlyOutput

from .decoding import speculative_decode
from .drafters.prepared import prepared_draft
from .drafters.select import make_drafter
from .lookahead import CostModelLookahead
from .checks import (
    check_generate_arguments,
    check_generation_config,
    check_models,
    check_position_ids,
    checked_cache,
    integer_at_least_one,
    pop_stop_strings,
)
from .processors import check_supported
from .stats import SpeculativeStats

# num_draft_tokens=None (or "auto"): a cost model picks each round's k up to this, and 0 where drafting cannot pay
AUTO_MAX_DRAFT_TOKENS = 12
DEFAULT_NUM_DRAFT_TOKENS = 5  # the seed API's K

_KNOWN_MODEL_KWARGS = {"attention_mask", "cache", "past_key_values", "position_ids", "logits_to_keep", "use_cache"}


@dataclass
class SpeculativeGenerateOutput(GenerateDecoderOnlyOutput):
    """`GenerateDecoderOnlyOutput` plus the counters of the speculative run."""

    speculative_stats: SpeculativeStats | None = None


class SpeculativeGenerationMixin:
    """Adds `draft_model=` / `num_draft_tokens=` to generate(); without a draft model generate() is the stock one."""

    def generate(self, inputs=None, generation_config=None, *args, draft_model=None, num_draft_tokens=None, **kwargs):
        if draft_model is None and _prompt_lookup_setting(self, generation_config, kwargs) is not None:
            if args:
                raise TypeError("With prompt lookup, pass generate() arguments after generation_config by keyword.")
            return speculative_generate(
                self, inputs, generation_config, draft_model=None, num_draft_tokens=num_draft_tokens, **kwargs
            )
        if draft_model is None:
            if num_draft_tokens is not None or any(kwargs.get(n) for n in ("draft_confidence_threshold",
                                                                            "block_verification",
                                                                            "draft_quantization")):
                raise ValueError(
                    "num_draft_tokens / draft_confidence_threshold / block_verification / draft_quantization were "
                    "given without draft_model: pass draft_model=<a causal LM> (or prompt_lookup_num_tokens=N)."
                )
            kwargs.pop("draft_confidence_threshold", None)
            kwargs.pop("block_verification", None)
            kwargs.pop("draft_quantization", None)
            return super().generate(inputs, generation_config, *args, **kwargs)
        if args:
            raise TypeError("With draft_model, pass generate() arguments after generation_config by keyword.")
        return speculative_generate(
            self, inputs, generation_config, draft_model=draft_model, num_draft_tokens=num_draft_tokens, **kwargs
        )


def speculative_generate(
    model,
    inputs=None,
    generation_config=None,
    *,
    draft_model,
    num_draft_tokens=None,
    draft_confidence_threshold=None,
    prompt_lookup_num_tokens=None,
    max_matching_ngram_size=None,
    block_verification=False,
    draft_quantization=None,
    **kwargs,
):
    """Speculative generate() for `model` (any transformers causal LM) with `draft_model` proposing tokens:
    `num_draft_tokens` per round, or fewer when `draft_confidence_threshold` (0..1) stops drafting early.
    `draft_model` is a causal LM or a drafter object; `prompt_lookup_num_tokens` copies n-gram continuations from
    the context, alone (no draft_model) or together with a draft model (hybrid). `block_verification=True` verifies
    sampled blocks jointly (Sun et al. 2024): still exact, never fewer accepted tokens on average.
    `draft_quantization="int8"` drafts with an int8 copy of the draft, made once and reused."""
    lookup_n = _prompt_lookup_setting(model, generation_config, {"prompt_lookup_num_tokens": prompt_lookup_num_tokens})
    ngram = max_matching_ngram_size
    if ngram is None:
        base = generation_config if generation_config is not None else model.generation_config
        ngram = getattr(base, "max_matching_ngram_size", None)
    if lookup_n is not None:
        lookup_n = integer_at_least_one(lookup_n, "prompt_lookup_num_tokens")
    if ngram is not None:
        ngram = integer_at_least_one(ngram, "max_matching_ngram_size")
    if num_draft_tokens is None and draft_model is None and lookup_n is not None:
        num_draft_tokens = lookup_n
    auto_k = num_draft_tokens is None or (isinstance(num_draft_tokens, str) and num_draft_tokens == "auto")
    K = AUTO_MAX_DRAFT_TOKENS if auto_k else integer_at_least_one(num_draft_tokens, "num_draft_tokens")
    if lookup_n is not None:
        K = max(K, lookup_n)
    threshold = draft_confidence_threshold
    if threshold is not None and (isinstance(threshold, bool) or not 0.0 <= float(threshold) < 1.0):
        raise ValueError(f"draft_confidence_threshold must be a probability in [0, 1), got {threshold!r}.")
    check_models(model, draft_model if isinstance(draft_model, PreTrainedModel) else model)
    draft_model = prepared_draft(draft_model, draft_quantization)
    if kwargs.get("assistant_model") is not None:
        raise ValueError("Pass either draft_model (speculoos) or assistant_model (transformers), not both.")
    if kwargs.get("custom_generate") is not None:
        raise ValueError("custom_generate cannot be combined with draft_model.")
    # prompt lookup is ours now: stock must not start its own (it would refill the field from the model's config)
    kwargs["prompt_lookup_num_tokens"] = None

    streamer = kwargs.pop("streamer", None)
    tokenizer = kwargs.pop("tokenizer", None)
    assistant_tokenizer = kwargs.pop("assistant_tokenizer", None)  # the draft's own, if it differs (vocab.py)
    check_generate_arguments(model, generation_config, kwargs)
    stop_strings, generation_config = pop_stop_strings(model, generation_config, kwargs)
    if stop_strings:
        if tokenizer is None:
            raise ValueError("stop_strings needs the tokenizer: pass tokenizer=<your tokenizer> to generate().")
        criteria = StoppingCriteriaList(kwargs.pop("stopping_criteria", None) or [])
        criteria.append(StopStringCriteria(tokenizer=tokenizer, stop_strings=stop_strings))
        kwargs["stopping_criteria"] = criteria

    def _speculoos_decode(model, input_ids, logits_processor, stopping_criteria, generation_config, **model_kwargs):
        config = generation_config
        check_generation_config(config)
        unknown = {k for k, v in model_kwargs.items() if v is not None and k not in _KNOWN_MODEL_KWARGS}
        if unknown:
            raise ValueError(f"Speculative generation supports plain input_ids prompts; unsupported inputs: {unknown}.")
        if streamer is not None and input_ids.shape[0] > 1:
            raise ValueError("streamer supports batch size 1 only (as transformers' TextStreamer).")
        check_supported(logits_processor)
        check_position_ids(model_kwargs.get("position_ids"), model_kwargs.get("attention_mask"), input_ids)
        target_cache = checked_cache(model, model_kwargs.get("cache"), config.max_length)
        drafter, vocab = make_drafter(
            model,
            draft_model,
            num_draft_tokens=K,
            prompt_lookup_num_tokens=lookup_n,
            max_matching_ngram_size=ngram,
            confidence_threshold=None if threshold is None else float(threshold),
            tokenizer=tokenizer,
            max_length=config.max_length,
            assistant_tokenizer=assistant_tokenizer,
        )

        lookahead = CostModelLookahead(max_k=K, prior_catch_up_ratio=catch_up_ratio(model, drafter)) if auto_k else None
        if streamer is not None:
            streamer.put(input_ids.cpu())
        sequences, stats = speculative_decode(
            model,
            drafter,
            input_ids,
            num_draft_tokens=K,
            do_sample=bool(config.do_sample),
            max_length=config.max_length,
            logits_processor=logits_processor,
            stopping_criteria=stopping_criteria,
            attention_mask=model_kwargs.get("attention_mask"),
            eos_token_id=config._eos_token_tensor,
            pad_token_id=None if config._pad_token_tensor is None else int(config._pad_token_tensor),
            target_cache=target_cache,
            streamer=streamer,
            vocab_size=vocab,
            lookahead=lookahead,
            block_verification=bool(block_verification),
        )
        model.speculative_stats = stats
        if config.return_dict_in_generate:
            return SpeculativeGenerateOutput(sequences=sequences, speculative_stats=stats)
        return sequences

    return GenerationMixin.generate(model, inputs, generation_config, custom_generate=_speculoos_decode, **kwargs)


def _prompt_lookup_setting(model, generation_config, kwargs):
    """prompt_lookup_num_tokens from the call, else from the generation config in force (None when unset)."""
    if kwargs.get("prompt_lookup_num_tokens") is not None:
        return kwargs["prompt_lookup_num_tokens"]
    base = generation_config if generation_config is not None else model.generation_config
    return getattr(base, "prompt_lookup_num_tokens", None)


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


def catch_up_ratio(target, drafter) -> float:
    """Parameters of the drafter's model over the target's (0 for a drafter without one, such as prompt lookup):
    the cost model's prior for what reading a token costs the draft, relative to the target's prefill."""
    model = drafter
    while model is not None and not isinstance(model, torch.nn.Module):
        model = getattr(model, "model", None)
    if model is None:
        return 0.0
    return sum(p.numel() for p in model.parameters()) / max(sum(p.numel() for p in target.parameters()), 1)
