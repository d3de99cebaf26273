"""What speculative generation can and cannot do, checked before decoding: models, caches, decoding modes.

Everything that cannot be exact is refused here with a ValueError that names the cause.
"""

from __future__ import annotations

from transformers import DynamicCache, PreTrainedModel

_UNSUPPORTED_OUTPUTS = ("output_scores", "output_logits", "output_attentions", "output_hidden_states")


def check_generation_config(config) -> None:
    """Refuse decoding modes and outputs that speculative decoding does not implement."""
    if config.num_beams > 1:
        raise ValueError("Speculative generation does not support beam search (num_beams > 1); use num_beams=1.")
    for flag in _UNSUPPORTED_OUTPUTS:
        if getattr(config, flag, False):
            raise ValueError(f"{flag}=True is not supported with draft_model.")


def check_models(target, draft) -> None:
    for role, m in (("target", target), ("draft_model", draft)):
        if not isinstance(m, PreTrainedModel):
            raise ValueError(f"{role} must be a transformers PreTrainedModel, got {type(m).__name__}.")
        if m.config.is_encoder_decoder:
            raise ValueError(
                f"{role} {type(m).__name__} is an encoder-decoder model; speculative generation supports causal "
                "(decoder-only) language models."
            )


def checked_cache(model, cache, max_length: int):
    """The cache must be an empty, croppable DynamicCache. Sliding-window layers are fine at any length: KVSlots
    records their past during a round and trims them after it, keeping each row's tokens contiguous (`max_length` is
    kept for callers; nothing depends on it). Recurrent state (Mamba, hybrid linear attention) cannot be rolled back."""
    if cache is None:
        cache = DynamicCache(config=model.config)
    recurrent = [type(layer).__name__ for layer, linear in zip(getattr(cache, "layers", ()), getattr(cache, "is_linear", ()))
                 if linear]
    if recurrent or getattr(model, "_is_stateful", False):
        kinds = ", ".join(sorted(set(recurrent))) or type(cache).__name__
        raise ValueError(
            f"{type(model).__name__} is a recurrent (state-space / linear-attention) model: its cache ({kinds}) keeps "
            "a fixed-size state that summarises every past token and cannot be rolled back to an earlier token, "
            "which speculative decoding needs in order to discard rejected drafts. Speculative generation supports "
            "attention models only; generate without draft_model for this model."
        )
    if not getattr(cache, "is_croppable", False):
        raise ValueError(
            f"{type(model).__name__}'s cache ({type(cache).__name__}) cannot be cropped, which speculative decoding "
            "needs to roll back rejected drafts (recurrent or quantized state cannot be rolled back). Use a "
            "transformer model with the default dynamic cache (no cache_implementation)."
        )
    if not isinstance(cache, DynamicCache):
        raise ValueError(
            f"Cache {type(cache).__name__} is not supported with draft_model; use the default DynamicCache."
        )
    if cache.get_seq_length() > 0:
        raise ValueError("Speculative generation starts from an empty cache; do not pass a prefilled cache.")
    return cache


