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
from transformers.cache_utils import (
    DynamicIndexedLayer,
    DynamicLayer,
    DynamicSlidingWindowLayer,
    LinearAttentionCacheLayerMixin,
)

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


def _movable(layer) -> bool:
    """Dynamic full or sliding layers, hybrid ones holding such a part beside recurrent state, and indexed ones."""
    return isinstance(layer, DynamicLayer)


def _attention_layers(cache):
    """(layer, is_sliding) for every layer that stores keys/values; refuses layer kinds we cannot move. Recurrent
    state beside the keys/values (hybrid layers) is not slot-indexed: `RecurrentStates` keeps it."""
    out = []
    for layer in cache.layers:
        if getattr(layer, "keys", None) is None or not getattr(layer, "is_initialized", False):
            continue  # dummy / shared / purely recurrent / not yet written
        if not _movable(layer):
            raise ValueError(_not_movable(layer))
        if layer.keys.numel() == 0:
            continue
        out.append((layer, isinstance(layer, DynamicSlidingWindowLayer)))
    return out


def _not_movable(layer) -> str:
    return (f"Cache layer {type(layer).__name__} cannot be rearranged per row, which a batch of rows that accept "
            "different numbers of drafts needs for this model (its attention counts slots); speculative generation "
            "supports it at batch size 1, or with dynamic (full, sliding-window, indexed or hybrid) cache layers.")


def check_movable(cache) -> None:
    """Raise ValueError if some cache layer kind cannot be rearranged (checked on the layer classes, before use)."""
    for layer in cache.layers:
        if isinstance(layer, LinearAttentionCacheLayerMixin) and not isinstance(layer, DynamicLayer):
            continue  # purely recurrent: nothing slot-indexed
        if not _movable(layer) and getattr(layer, "keys", 0) is not None:
            raise ValueError(_not_movable(layer))


def crop_slots(cache, remove: int) -> None:
    """Remove the last `remove` slots of every layer that stores keys/values (recurrent state is not slot-indexed
    and is left alone: transformers' crop would roll it back by `remove` tokens)."""
    if remove <= 0:
        return
    for layer in cache.layers:
        if not isinstance(layer, LinearAttentionCacheLayerMixin):
            layer.crop(-remove)
        elif isinstance(layer, DynamicSlidingWindowLayer):
            DynamicSlidingWindowLayer.crop(layer, -remove)
        elif isinstance(layer, DynamicLayer):
            DynamicLayer.crop(layer, -remove)


def select_cache_rows(cache, rows: torch.Tensor) -> None:
    """Keep only batch rows `rows` in every layer's keys/values (recurrent state: `RecurrentStates.select_rows`)."""
    for layer in cache.layers:
        if isinstance(layer, LinearAttentionCacheLayerMixin) and not isinstance(layer, DynamicLayer):
            continue
        layer.batch_select_indices(rows)


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
        _move_indexer(layer, lambda t, dim: _take_along(t, idx, dim))


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
            _move_indexer(layer, lambda t, dim: t.narrow(dim, lo, hi - lo))
        if sliding:
            layer.cumulative_length = new_total


def _move_indexer(layer, move) -> None:
    """An indexed layer's indexer keys [B, L, D] and positions [P, B, L] follow its slots (`move(tensor, slot_dim)`)."""
    if not isinstance(layer, DynamicIndexedLayer):
        return
    if layer.is_indexer_initialized and layer.indexer_keys.numel() > 0:
        layer.indexer_keys = move(layer.indexer_keys, 1)
    if layer.indexer_position_ids is not None:
        layer.indexer_position_ids = move(layer.indexer_position_ids, 2)


def _take_along(t: torch.Tensor, idx: torch.Tensor, dim: int) -> torch.Tensor:
    """Slots of `t` rearranged by idx [B, S] along `dim` (the batch is dim 0, or dim 1 for position ids)."""
    batch_dim = 1 if dim == 2 else 0
    shape = [1] * t.dim()
    shape[batch_dim], shape[dim] = idx.shape
    index = idx.to(t.device).view(shape).expand(*[t.shape[d] if shape[d] == 1 else -1 for d in range(t.dim())])
    return t.gather(dim, index)
