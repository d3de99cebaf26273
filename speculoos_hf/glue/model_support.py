"""Which causal LMs speculative generation serves exactly, and at which batch sizes; refusals name the reason.

Checked before any work, for the target and for a draft model. The rules are about how a model keeps its past:
  - its past must live in transformers' `DynamicCache` (attention keys/values, sliding windows, indexed keys, and
    recurrent state whose layers record per-token states: recurrent_state.py), because rejected drafts are rolled
    back there;
  - with batch size > 1, rows accept different numbers of drafts and the cache gets masked holes (kv_slots.py); a
    model that numbers positions by cache length, or whose sparse attention may select a masked slot, would see
    them: it is served at batch size 1 only.
"""

from __future__ import annotations

import inspect
import sys

from transformers import DynamicCache

from ..loop.recurrent_state import has_attention, recurrent_layers

# Model types that pass the generic checks below but cannot be exact, with the reason.
NOT_EXACT = {
    "xlm": "its `cache` argument is a dictionary of its own, not a transformers cache that can be rolled back",
    "cpmant": "it builds positions and segments from its own past length and takes neither explicit positions nor "
              "a multi-token chunk over its past",
    "moshi": "its multi-token forward disagrees with its own token-by-token forward, so verifying drafts in one "
             "pass cannot reproduce its output",
}
_TOP_K_KEYS = ("its attention keeps the top-k keys of each query, and in a multi-token forward it ranks keys differently "
               "than token by token (transformers' assisted generation differs from its greedy output too), so "
               "verifying drafts in one pass cannot reproduce its output")
NOT_EXACT.update({"deepseek_v32": _TOP_K_KEYS, "glm_moe_dsa": _TOP_K_KEYS, "doge": _TOP_K_KEYS,
                  "dots3_note": _TOP_K_KEYS, "dots3_note_text": _TOP_K_KEYS})
_AUDIO = "its generate() decodes several audio codebooks per step, which speculative generation does not implement"
NOT_EXACT.update({name: _AUDIO for name in ("musicgen", "musicgen_melody", "musicgen_decoder", "musicgen_melody_decoder")})
# Attention models whose forward takes no position_ids but whose positions come from the attention mask (ALiBi from
# its cumsum) or that KVSlots keeps contiguous (slot-distance models): holes are harmless for them.
POSITIONS_FROM_MASK = {"bloom", "mpt"}
# Models that take position_ids but number their positions from the cache length anyway.
POSITIONS_FROM_CACHE = {"git"}


def check_servable(model, role: str = "target") -> None:
    """Raise ValueError (naming the reason) when `model` cannot be served exactly at any batch size."""
    name = type(model).__name__
    types = {getattr(model.config, "model_type", None), getattr(model.config.get_text_config(), "model_type", None)}
    for model_type in sorted(types & set(NOT_EXACT)):
        raise ValueError(f"{role} {name} is not supported with speculative generation: {NOT_EXACT[model_type]}.")
    supports = getattr(model, "_supports_default_dynamic_cache", None)
    if callable(supports) and not supports():
        raise ValueError(
            f"{role} {name} keeps its past in its own format (not transformers' DynamicCache), which speculative "
            "generation cannot roll back to discard rejected drafts; generate without draft_model for it.")
    params = inspect.signature(type(model).forward).parameters  # the class's: a user's wrapper may hide it
    if "cache" not in params and "past_key_values" not in params:
        raise ValueError(
            f"{role} {name} takes no cache (its forward has no `cache`/`past_key_values`), so drafts cannot be "
            "verified over the past in one pass; generate without draft_model for it.")
    cache = DynamicCache(config=model.config)
    if recurrent_layers(cache) and not _records_states(model):
        raise ValueError(
            f"{role} {name} has recurrent layers that do not record their per-token states through transformers' "
            "cache (`get_recurrent_states_to_keep` is not implemented for it), which rolling back a rejected draft "
            "needs; generate without draft_model for it.")


def check_batch(model, batch_size: int, role: str = "target") -> None:
    """Raise ValueError when `model` is served at batch size 1 only and `batch_size` > 1."""
    if batch_size <= 1:
        return
    reason = batch_one_reason(model)
    if reason:
        raise ValueError(f"{role} {type(model).__name__} is served with batch size 1 only: {reason}. Generate the "
                         "rows one at a time, or without draft_model.")


def batch_one_reason(model) -> str | None:
    """Why masked holes in the cache (rows accepting different numbers of drafts) would change `model`'s output."""
    config = model.config.get_text_config()
    model_type = getattr(config, "model_type", None)
    if "indexed_attention" in (getattr(config, "layer_types", None) or []):
        return "its sparse (indexed) attention selects keys among cache slots and may select a masked one"
    if model_type in POSITIONS_FROM_CACHE or (
            model_type not in POSITIONS_FROM_MASK and not _takes_positions(model)
            and not _recurrent_only(model)):
        return "it numbers positions by cache length, so a rejected draft's masked slot would shift later positions"
    return None


def _takes_positions(model) -> bool:
    return "position_ids" in inspect.signature(type(model).forward).parameters


def _recurrent_only(model) -> bool:
    return not has_attention(DynamicCache(config=model.config))


def _records_states(model) -> bool:
    """Whether the model's recurrent layers can be rolled back token by token: its code keeps its state through the
    cache's API, and where it has a recurrent state (not only a convolution window) asks the cache how many per-token
    states to record."""
    module = sys.modules.get(type(model).__module__)
    try:
        source = inspect.getsource(module)
    except (OSError, TypeError):
        return False
    if "update_recurrent_state" in source:
        return "get_recurrent_states_to_keep" in source
    return "update_conv_state" in source
