"""Moving KV-cache slots around: which models need it, and the per-layer gathers and slices that do it.

A "slot" is one column of the cache (one fed token of every row). `KVSlots` keeps a [B, L] mask of which slots hold
a real token of each row; the functions here rearrange every attention layer's keys/values along the slot axis the
same way, so that mask and cache stay in step. Full-attention layers (`DynamicLayer`) store all L slots; sliding
-window layers (`DynamicSlidingWindowLayer`) store only the last S <= L of them (S = window - 1 once trimmed, more
while past recording keeps a round's states for rollback) and count L in `cumulative_length`, from which
transformers derives the mask offsets.
"""

from __future__ import annotations

import torch
from transformers.cache_utils import DynamicLayer, DynamicSlidingWindowLayer

# Models whose attention depends on slot distances (not on position_ids or on the attention mask's cumsum):
#   mpt:     ALiBi bias built from slot indices (arange over the key length), no position_ids at all;
#   gpt_neo: "local" layers mask keys more than window_size slots back (a fixed causal buffer over slot indices).
# Bloom and Falcon's ALiBi are built from attention_mask.cumsum(), i.e. from positions: holes are harmless there.
SLOT_DISTANCE_MODEL_TYPES = {"mpt": "ALiBi from slot distances", "gpt_neo": "local attention over slots"}


def slot_distance_reason(model, cache) -> str | None:
    """Why `model` must see each row's real tokens in contiguous slots (None when masked holes are harmless).

    Sliding-window or chunked layers count slots, not positions; so do the model types in SLOT_DISTANCE_MODEL_TYPES.
    """
    windows = sorted({layer.sliding_window for layer in cache.layers if isinstance(layer, DynamicSlidingWindowLayer)})
    if windows:
        return f"sliding-window attention (window {', '.join(map(str, windows))})"
    config = model.config.get_text_config()
    layer_types = getattr(config, "layer_types", None) or []
    if any(t in ("sliding_attention", "chunked_attention") for t in layer_types):
        return "sliding-window attention"
    model_type = getattr(config, "model_type", None)
    if model_type in SLOT_DISTANCE_MODEL_TYPES:
        return SLOT_DISTANCE_MODEL_TYPES[model_type]
    return None


def _attention_layers(cache):
    """(layer, is_sliding) for every layer that stores keys/values; refuses layer kinds we cannot move."""
    out = []
    for layer in cache.layers:
        if getattr(layer, "keys", None) is None or not getattr(layer, "is_initialized", False):
            continue  # dummy / shared / not yet written
        if type(layer) not in (DynamicLayer, DynamicSlidingWindowLayer):
            raise ValueError(
                f"Cache layer {type(layer).__name__} cannot be rearranged per row; speculative generation with "
                "batch size > 1 supports this model only with plain dynamic (full or sliding-window) cache layers."
            )
        if layer.keys.numel() == 0:
            continue
        out.append((layer, isinstance(layer, DynamicSlidingWindowLayer)))
    return out


def check_movable(cache) -> None:
    """Raise ValueError if some cache layer kind cannot be rearranged (checked on the layer classes, before use)."""
    for layer in cache.layers:
        if type(layer) not in (DynamicLayer, DynamicSlidingWindowLayer) and getattr(layer, "keys", 0) is not None:
            raise ValueError(
                f"Cache layer {type(layer).__name__} cannot be rearranged per row; speculative generation with "
                "batch size > 1 supports this model only with plain dynamic (full or sliding-window) cache layers."
            )


def permute_slots(cache, order: torch.Tensor, total: int) -> None:
    """Rearrange slots within each row: new slot j of row b holds old slot order[b, j] ([B, L], L = total).

    A sliding layer stores only the last S slots; its new stored slots come from old ones, and every real token that
    lands in the stored range must come from the stored range (KVSlots guarantees it: rows are right-aligned after
    each round and past recording keeps the whole round); hole slots that come from before it are clamped (masked).
    """
    for layer, sliding in _attention_layers(cache):
        stored = layer.keys.shape[-2]
        idx = order[:, total - stored :] - (total - stored) if stored < total else order
        idx = idx.clamp(0, stored - 1).to(layer.keys.device)
        layer.keys = _take_slots(layer.keys, idx)
        layer.values = _take_slots(layer.values, idx)


def _take_slots(states: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """states [B, H, S, D], idx [B, S] -> out[b, h, j] = states[b, h, idx[b, j]]. One index_select over rows of D
    values: as fast as a copy (torch.gather with an index expanded to [B, H, S, D] is far slower on CPU)."""
    B, H, S, D = states.shape
    base = torch.arange(B * H, device=idx.device).view(B, H, 1) * S
    flat = (idx[:, None, :] + base).reshape(-1)
    return states.reshape(B * H * S, D).index_select(0, flat).view(B, H, S, D)


def slice_slots(cache, total: int, start: int, end: int, trim: bool = True) -> None:
    """Keep slots [start, end) of the `total` (same for every row); with `trim`, sliding layers keep only the last
    window - 1 of them (what their next forward needs), as transformers' own crop does."""
    new_total = end - start
    for layer, sliding in _attention_layers(cache):
        stored = layer.keys.shape[-2]
        first = total - stored  # slot index of the first stored slot
        hi = max(end - first, 0)  # a range that ends before the stored slots keeps none of them
        lo = min(max(start, first) - first, hi)
        keep = hi - lo
        if sliding:
            need = min(new_total, layer.sliding_window - 1)
            if keep < need:  # only possible if a caller rolled back past the recorded states
                raise RuntimeError("sliding-window cache rolled back past its recorded states")
            if trim:
                lo = max(lo, hi - need)
        if lo != 0 or hi != stored:
            layer.keys = layer.keys[:, :, lo:hi]
            layer.values = layer.values[:, :, lo:hi]
        if sliding:
            layer.cumulative_length = new_total
