"""Prompt lookup: propose the continuation of the latest n-gram's earlier occurrence in the row's own context.

No draft model: the proposal is a copy (deterministic, `probs=None`), so the accept/reject rule accepts draft d
with probability p(d) and replaces it from norm(max(0, p - onehot(d))): exact for sampling too. The search runs on
the host copy of the committed tokens (`state.seq_host`), so it costs no device sync. As transformers' prompt
lookup: n-grams from `max_matching_ngram_size` down to 1, the earliest occurrence whose continuation is non-empty.
"""

from __future__ import annotations

import torch

from ..state import DecodeContext, DecodeState
from .base import Proposal, RoundOutcome


def find_continuation(tokens: torch.Tensor, max_ngram: int, min_ngram: int, max_tokens: int) -> torch.Tensor:
    """Up to `max_tokens` ids following the earliest earlier occurrence of the last n tokens of `tokens` [L]
    (largest n first, n >= min_ngram). Empty when no n-gram recurs."""
    L = tokens.shape[0]
    for n in range(min(max_ngram, L - 1), min_ngram - 1, -1):
        windows = tokens.unfold(0, n, 1)[:-1]  # [L-n, n] every n-gram but the suffix itself
        hits = (windows == tokens[L - n :]).all(dim=1).nonzero()  # [h, 1]
        if len(hits):
            start = int(hits[0]) + n
            return tokens[start : min(start + max_tokens, L)]
    return tokens[:0]


class PromptLookupDrafter:
    """Copies continuations of repeated n-grams from each row's prompt and output (batched, any batch size)."""

    def __init__(self, num_tokens: int = 10, max_ngram_size: int = 2, min_ngram_size: int = 1):
        if num_tokens < 1 or max_ngram_size < 1 or not 1 <= min_ngram_size <= max_ngram_size:
            raise ValueError(
                f"prompt lookup needs prompt_lookup_num_tokens >= 1 and 1 <= min <= max_matching_ngram_size, got "
                f"{num_tokens}, {min_ngram_size}, {max_ngram_size}."
            )
        self.num_tokens = num_tokens
        self.max_ngram_size = max_ngram_size
        self.min_ngram_size = min_ngram_size

    def start(self, ctx: DecodeContext, state: DecodeState) -> None:
        self.ctx = ctx

    def propose(self, state: DecodeState, k: int) -> Proposal:
        """Per row, the copy of up to min(k, num_tokens) tokens (rows without a match propose none). [B, k']"""
        k = min(k, self.num_tokens)
        found = []
        for i, length in enumerate(state.lengths):  # one vectorised search per row
            first = int(state.first_valid[i])
            found.append(find_continuation(state.seq_host[i, first:length], self.max_ngram_size,
                                           self.min_ngram_size, k))
        width = max((len(f) for f in found), default=0)
        tokens = torch.zeros(state.batch_size, width, dtype=torch.long)
        for i, f in enumerate(found):
            tokens[i, : len(f)] = f
        return Proposal(tokens.to(state.seq.device), None, [len(f) for f in found], forwards=0)

    def commit(self, state: DecodeState, outcome: RoundOutcome) -> None:
        """Nothing to roll back: the context is the committed tokens themselves."""

    def select_rows(self, alive: torch.Tensor, alive_host: list[int]) -> None:
        """Nothing per row to drop."""
