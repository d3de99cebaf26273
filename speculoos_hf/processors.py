"""Applying transformers' logits processors at many positions at once, each with the prefix of its own position.

Warpers that ignore the prefix (temperature, top-k, top-p, min-p, ...) run once over all positions flattened into
the batch. Everything else (repetition penalty, n-gram blocking, min-new-tokens, user processors) is called once per
distinct prefix length, with exactly the `input_ids` the stock generate() would pass at that step.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers.generation import logits_process as lp

# Processors whose output depends only on the scores, never on input_ids.
PREFIX_FREE = tuple(
    getattr(lp, name)
    for name in (
        "TemperatureLogitsWarper",
        "TopKLogitsWarper",
        "TopPLogitsWarper",
        "MinPLogitsWarper",
        "TypicalLogitsWarper",
        "EpsilonLogitsWarper",
        "EtaLogitsWarper",
        "TopHLogitsWarper",
        "SuppressTokensLogitsProcessor",
        "InfNanRemoveLogitsProcessor",
        "LogitNormalization",
    )
    if hasattr(lp, name)
)

# Processors that keep state between calls or change the batch layout: calling them K+1 times per step is wrong.
STATEFUL = tuple(
    getattr(lp, name)
    for name in (
        "UnbatchedClassifierFreeGuidanceLogitsProcessor",
        "ClassifierFreeGuidanceLogitsProcessor",
        "SynthIDTextWatermarkLogitsProcessor",
        "WhisperTimeStampLogitsProcessor",
        "WhisperNoSpeechDetection",
        "AlternatingCodebooksLogitsProcessor",
        "BarkEosPrioritizerLogitsProcessor",
    )
    if hasattr(lp, name)
)


def check_supported(processors: Sequence) -> None:
    """Raise ValueError for processors that cannot be evaluated at several positions per step."""
    for proc in processors:
        if isinstance(proc, STATEFUL):
            raise ValueError(
                f"Speculative generation does not support the stateful logits processor {type(proc).__name__}: it "
                "must be called exactly once per generated token, but verification scores K+1 positions per step. "
                "Generate without draft_model for this processor."
            )


def is_prefix_free(processors: Sequence) -> bool:
    return all(isinstance(proc, PREFIX_FREE) for proc in processors)


def apply_processors(
    processors: Sequence,
    sequences: torch.Tensor,  # [R, S] long: each row's tokens, valid up to its own length
    lengths: Sequence[int],  # R host ints: prefix length of each row
    scores: torch.Tensor,  # [R, V] float32
) -> torch.Tensor:
    """Processed scores `[R, V]`: processors(sequences[r, :lengths[r]], scores[r]) for every row r."""
    if len(processors) == 0:
        return scores
    if is_prefix_free(processors):
        return processors(sequences[:, : max(lengths)], scores)
    out = torch.empty_like(scores)
    by_length: dict[int, list[int]] = {}
    for row, length in enumerate(lengths):
        by_length.setdefault(length, []).append(row)
    if len(by_length) == 1:
        return processors(sequences[:, : lengths[0]], scores)
    for length, rows in by_length.items():
        idx = torch.tensor(rows, device=scores.device)
        out[idx] = processors(sequences[idx, :length], scores[idx])
    return out
