"""Applying transformers' logits processors at many positions at once, each with the prefix of its own position.

Warpers that ignore the prefix (temperature, top-k, top-p, min-p, ...) run once over all positions flattened into
the batch. Everything else (repetition penalty, n-gram blocking, min-new-tokens, user processors) is called once per
distinct prefix length, with exactly the `input_ids` the stock generate() would pass at that step.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers.generation import logits_process as lp

def _present(*names: str) -> tuple:
    """The transformers processor classes of these names that this transformers version has."""
    return tuple(getattr(lp, name) for name in names if hasattr(lp, name))


_WARPERS = ("TemperatureLogitsWarper", "TopKLogitsWarper", "TopPLogitsWarper", "MinPLogitsWarper",
            "TypicalLogitsWarper", "EpsilonLogitsWarper", "EtaLogitsWarper")
# Processors whose output depends only on the scores, never on input_ids.
PREFIX_FREE = _present(*_WARPERS, "TopHLogitsWarper", "SuppressTokensLogitsProcessor", "InfNanRemoveLogitsProcessor",
                       "LogitNormalization")
# Warpers that keep the best id of a row with a finite score: with only these, a draft always has an id to propose.
KEEP_BEST = _present(*_WARPERS, "RepetitionPenaltyLogitsProcessor")

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


class BatchProcessors:
    """A LogitsProcessorList bound to the original batch, callable on any subset or repetition of its rows.

    A few processors hold per-row state indexed by batch position: the repetition penalty's left-padding lengths
    (`prompt_ignore_length`), the encoder repetition penalty's prompts (`encoder_input_ids`) and the `batch_id`
    given to `prefix_allowed_tokens_fn`. Rows leave the batch when
    they finish and each row is scored at several positions, so that state is re-indexed for every call.
    """

    def __init__(self, processors: Sequence, batch_size: int):
        self.processors = processors
        self.prefix_free = is_prefix_free(processors)
        # some processor may ban every id a draft can propose (suppress_tokens, bad_words_ids, a user's rule, ...)
        self.may_ban_all = not all(isinstance(proc, KEEP_BEST) for proc in processors)
        self._row_tensors = [  # (processor, attribute, its value for every row of the batch, the original value)
            (proc, "prompt_ignore_length", proc.prompt_ignore_length, proc.prompt_ignore_length)
            for proc in processors
            if isinstance(proc, lp.RepetitionPenaltyLogitsProcessor)
            and isinstance(proc.prompt_ignore_length, torch.Tensor)
            and proc.prompt_ignore_length.shape[0] == batch_size
        ]
        for proc in processors:
            if isinstance(proc, lp.EncoderRepetitionPenaltyLogitsProcessor):
                # [B0, P]: the prompts before num_return_sequences expansion; stock repeats each row for its copies
                prompts = original = proc.encoder_input_ids
                if batch_size % prompts.shape[0]:
                    raise ValueError(
                        f"encoder_repetition_penalty holds {prompts.shape[0]} prompt rows for a batch of {batch_size}; "
                        "they do not line up (pass the prompts the batch was built from)."
                    )
                prompts = prompts.repeat_interleave(batch_size // prompts.shape[0], dim=0)
                self._row_tensors.append((proc, "encoder_input_ids", prompts, original))
        self._prefix_fns = [
            (proc, proc._prefix_allowed_tokens_fn)
            for proc in processors
            if isinstance(proc, lp.PrefixConstrainedLogitsProcessor)
        ]

    def __len__(self) -> int:
        return len(self.processors)

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, rows: Sequence[int]) -> torch.Tensor:
        """Process `scores` [R, V] whose row r belongs to original batch row `rows[r]`."""
        for proc, attr, full, _ in self._row_tensors:
            setattr(proc, attr, full.to(scores.device)[torch.tensor(rows, device=scores.device)])
        for proc, fn in self._prefix_fns:
            proc._prefix_allowed_tokens_fn = lambda batch_id, sent, fn=fn: fn(rows[batch_id], sent)
        try:
            return self.processors(input_ids, scores)
        finally:
            for proc, attr, _, original in self._row_tensors:
                setattr(proc, attr, original)
            for proc, fn in self._prefix_fns:
                proc._prefix_allowed_tokens_fn = fn


def apply_processors(
    processors: BatchProcessors,
    sequences: torch.Tensor,  # [R, S] long: each row's tokens, valid up to its own length
    lengths: Sequence[int],  # R host ints: prefix length of each row
    scores: torch.Tensor,  # [R, V] float32
    rows: Sequence[int],  # R host ints: original batch row of each row
) -> torch.Tensor:
    """Processed scores `[R, V]`: processors(sequences[r, :lengths[r]], scores[r]) for every row r."""
    if len(processors) == 0:
        return scores
    if processors.prefix_free:
        return processors(sequences[:, : max(lengths)], scores, rows)
    by_length: dict[int, list[int]] = {}
    for r, length in enumerate(lengths):
        by_length.setdefault(length, []).append(r)
    if len(by_length) == 1:
        return processors(sequences[:, : lengths[0]], scores, rows)
    out = torch.empty_like(scores)
    for length, group in by_length.items():
        idx = torch.tensor(group, device=scores.device)
        out[idx] = processors(sequences[idx, :length], scores[idx], [rows[r] for r in group])
    return out
