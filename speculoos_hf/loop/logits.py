"""Logits on a shared id range: both models' distributions live on ids [0, V), the larger of their vocabularies."""

from __future__ import annotations

import torch


def pad_vocab(logits: torch.Tensor, size: int) -> torch.Tensor:
    """Pad logits `[..., V]` to `[..., size]` with -inf: ids a model lacks get probability 0 (and processors that
    index scores by token id stay in range when the other model's ids appear in the prefix)."""
    extra = size - logits.shape[-1]
    return logits if extra <= 0 else torch.nn.functional.pad(logits, (0, extra), value=float("-inf"))
