"""What speculative generation can and cannot do, checked before decoding: models, caches, decoding modes.

Everything that cannot be exact is refused here with a ValueError that names the cause.
"""

from __future__ import annotations

import copy
import operator

import torch
from transformers import DynamicCache, PreTrainedModel

from .model_support import check_servable

_UNSUPPORTED_OUTPUTS = ("output_scores", "output_logits", "output_attentions", "output_hidden_states")


def unsupported_decoding_mode(config) -> str | None:
    """The decoding mode `config` asks for, named, when it is not plain greedy search or sampling (else None).

    Mirrors `GenerationConfig.get_generation_mode()` (transformers 5.x), and adds the assisted-generation
    variants that stock generate() would start on its own. Prompt lookup is not listed: speculoos implements it.
    """
    if config.constraints is not None or config.force_words_ids is not None:
        return "constrained beam search (constraints / force_words_ids)"
    num_beams = config.num_beams or 1
    if num_beams > 1:
        if (config.num_beam_groups or 1) > 1:
            return "group beam search (num_beam_groups > 1)"
        return "beam sampling (num_beams > 1, do_sample=True)" if config.do_sample else "beam search (num_beams > 1)"
    if (
        config.do_sample is not True
        and config.penalty_alpha is not None
        and config.penalty_alpha > 0
        and config.top_k is not None
        and config.top_k > 1
    ):
        return "contrastive search (penalty_alpha > 0 with top_k > 1)"
    if config.dola_layers is not None:
        return "DoLa decoding (dola_layers)"
    if getattr(config, "use_mtp", None):
        return "multi-token-prediction assisted generation (use_mtp)"
    if getattr(config, "assistant_early_exit", None) is not None:
        return "early-exit assisted generation (assistant_early_exit)"
    if getattr(config, "speculation_type", None) is not None:
        return f"speculation_type={config.speculation_type!r}"
    return None


def check_generation_config(config) -> None:
    """Refuse decoding modes and outputs that speculative decoding does not implement."""
    mode = unsupported_decoding_mode(config)
    if mode is not None:
        raise ValueError(
            f"Speculative generation (draft_model= / prompt lookup) implements greedy search and sampling only; "
            f"this generation config asks for {mode}. Generate without draft_model for it, or unset it."
        )
    for flag in _UNSUPPORTED_OUTPUTS:
        if getattr(config, flag, False):
            raise ValueError(f"{flag}=True is not supported with draft_model.")


def check_models(target, draft=None) -> None:
    """The target, and the draft when it is a model (a drafter object is checked where drafters are made), must be
    transformers causal (decoder-only) LMs."""
    models = [("target", target)] + ([("draft_model", draft)] if isinstance(draft, PreTrainedModel) else [])
    for role, m in models:
        if not isinstance(m, PreTrainedModel):
            raise ValueError(f"{role} must be a transformers PreTrainedModel, got {type(m).__name__}.")
        if m.config.is_encoder_decoder:
            raise ValueError(
                f"{role} {type(m).__name__} is an encoder-decoder model; speculative generation supports causal "
                "(decoder-only) language models."
            )
        check_servable(m, role)


def checked_cache(model, cache=None):
    """`cache`, or a new one, when it is an empty, croppable DynamicCache. Sliding-window layers are fine at any
    length (KVSlots records their past during a round and trims it after); recurrent layers (Mamba, gated delta-net,
    short convolutions) are rolled back per row from recorded states (recurrent_state.py)."""
    if cache is None:
        cache = DynamicCache(config=model.config)
    if not getattr(cache, "is_croppable", False):
        raise ValueError(
            f"{type(model).__name__}'s cache ({type(cache).__name__}) cannot be cropped, which speculative decoding "
            "needs to roll back rejected drafts (quantized state cannot be rolled back). Use the default dynamic "
            "cache (no cache_implementation)."
        )
    if not isinstance(cache, DynamicCache):
        raise ValueError(
            f"Cache {type(cache).__name__} is not supported with draft_model; use the default DynamicCache."
        )
    if cache.get_seq_length() > 0:
        raise ValueError("Speculative generation starts from an empty cache; do not pass a prefilled cache.")
    return cache


def integer_at_least_one(value, name: str) -> int:
    """`value` as an int when it is an integral number >= 1 (int, numpy or 0-d integer tensor), else ValueError."""
    if not isinstance(value, bool):
        try:
            number = operator.index(value)
        except TypeError:
            number = None
        if number is not None and number >= 1:
            return number
    raise ValueError(f"{name} must be an integer >= 1, got {value!r}.")


def generate_setting(model, generation_config, kwargs: dict, name: str):
    """The value of generation option `name` that stock generate() will use: the keyword argument when given
    (even None), else `generation_config`'s value when not None, else the model's generation_config's."""
    if name in kwargs:
        return kwargs[name]
    if generation_config is not None and getattr(generation_config, name, None) is not None:
        return getattr(generation_config, name)
    return getattr(model.generation_config, name, None)


def pop_stop_strings(model, generation_config, kwargs: dict):
    """(stop_strings in force, generation_config to hand on), with the stop strings taken out of the stock path.

    Stock generate() builds StopStringCriteria from the tokenizer, which it never hands to a custom_generate
    callable ("could not locate a tokenizer"), so speculoos builds that criterion itself and stock must see no stop
    strings: not in the given generation_config, and not in the model's generation_config either (stock fills a None
    field from it, so only a stop_strings=None keyword overrides it). `kwargs` is updated in place."""
    stop_strings = generate_setting(model, generation_config, kwargs, "stop_strings")
    kwargs.pop("stop_strings", None)
    if generation_config is not None and getattr(generation_config, "stop_strings", None) is not None:
        generation_config = copy.deepcopy(generation_config)
        generation_config.stop_strings = None
    if getattr(model.generation_config, "stop_strings", None) is not None:
        kwargs["stop_strings"] = None
    return stop_strings, generation_config


def check_generate_arguments(model, generation_config, kwargs: dict) -> None:
    """Refuse, before stock generate() starts preparing, what it would do without speculoos on this path."""
    if generate_setting(model, generation_config, kwargs, "token_healing"):
        raise ValueError(
            "token_healing=True is not supported with draft_model (stock generate() heals the prompt with the "
            "tokenizer, which it does not hand to speculative decoding). Heal the prompt first, "
            "input_ids = model.heal_tokens(input_ids, tokenizer=tokenizer), then generate from the healed ids."
        )
    if kwargs.get("cache_implementation") == "paged":
        raise ValueError(
            "cache_implementation='paged' switches generate() to continuous batching (generate_batch), which "
            "speculative decoding does not implement; use the default dynamic cache with draft_model."
        )
    if kwargs.get("synced_gpus"):
        raise ValueError(
            "synced_gpus=True (ZeRO-3 / FSDP lockstep across processes) is not supported with draft_model."
        )


def check_position_ids(position_ids, attention_mask, input_ids) -> None:
    """Speculative decoding numbers each row's positions from its attention mask, as stock generate() does by
    default (cumsum of the mask - 1, padding at 0). Explicit position_ids that differ from those (on a real token or
    on a row's last slot, which sets where generation continues) would be ignored: refuse them."""
    if position_ids is None:
        return
    B, L = input_ids.shape
    mask = torch.ones(B, L, dtype=torch.long, device=input_ids.device) if attention_mask is None else attention_mask
    mask = mask.to(input_ids.device, torch.long)
    expected = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 0)
    checked = mask.bool()
    checked[:, -1] = True
    given = position_ids.to(input_ids.device)
    if given.dim() != 2 or given.shape[-1] != L or given.shape[0] not in (1, B):
        raise ValueError(
            f"position_ids of shape {tuple(given.shape)} are not supported with draft_model (input_ids {B}x{L}); "
            "positions are taken from the attention mask."
        )
    if bool(((given.expand(B, L) != expected) & checked).any()):
        raise ValueError(
            "position_ids= is not supported with draft_model: speculative decoding numbers positions from the "
            "attention mask (0 at each row's first real token, as stock generate() does when position_ids are not "
            "given), and these position_ids differ. Leave position_ids out, or generate without draft_model."
        )
