"""Prompt lookup: copy what followed the longest earlier occurrence of each row's latest tokens (suffix matching).

No draft model: the proposal is a copy (deterministic, `probs=None`), so the accept/reject rule accepts draft d with
probability p(d) and replaces it from norm(max(0, p - onehot(d))): exact for sampling too, whatever is copied, as
long as the copy is a function of what was committed before the round (any row's tokens and the cache snapshot
taken at `start`), which the round's fresh randomness is independent of. The rule is in `suffix_match.py`; each
row's index grows with its committed tokens, read from the host mirror `state.seq_host` (no device sync).
"""

from __future__ import annotations

import numpy as np
import torch

from ..glue.options import DEFAULT_LOOKUP_TOKENS
from ..loop.state import DecodeContext, DecodeState
from .base import Proposal, RoundOutcome
from .copy_anchor import CopyAnchors
from .suffix_index import SuffixIndex
from .suffix_match import Copies, MatchRule, Source, acceptance_estimate, suffix_copies

DEFAULT_MAX_MATCH = 64  # longest suffix matched when max_matching_ngram_size is not given
DEFAULT_THRESHOLD = 0.1  # the copy goes on while at least this share of the suffix's occurrences continue it
DEFAULT_MULTIPLE = 8.0  # the copy is at most this multiple of the match length


class PromptLookupDrafter:
    """Copies continuations of each row's longest recurring suffix from its prompt and output, and from `cache`:
    what `generate(ids, prompt_lookup_num_tokens=N)` builds without a draft model.

    Args:
        num_tokens (`int`, *optional*, defaults to 32): the most tokens copied per row and round
            (`prompt_lookup_num_tokens`).
        max_ngram_size (`int`, *optional*, defaults to 64): the longest suffix matched (`max_matching_ngram_size`).
        min_ngram_size (`int`, *optional*, defaults to 1): the shortest suffix that may start a copy.
        threshold (`float`, *optional*, defaults to 0.1): the copy goes on while at least this share of the
            suffix's occurrences continued that way.
        multiple (`float`, *optional*, defaults to 8.0): a copy is at most this multiple of the match length
            (None: no such cap).
        cache (`SuffixCache`, *optional*): earlier calls' prompts and outputs, searched as they were at `start`;
            each row is added to it when it finishes.
        anchored (`bool`, *optional*, defaults to True): after a copy breaks, resume from where it broke while the
            suffix matched is short (`copy_anchor.py`: edits).

    A copy depends only on committed tokens and is verified as a one-hot proposal, so the output is exact. It costs
    no model forward; the target pass grows with the copied tokens, which the cost model prices (`gain.best_copy`).
    """

    forward_passes = 0  # no model: nothing to count
    input_tokens = 0

    def __init__(self, num_tokens: int = DEFAULT_LOOKUP_TOKENS, max_ngram_size: int | None = None,
                 min_ngram_size: int = 1, *, threshold: float = DEFAULT_THRESHOLD,
                 multiple: float | None = DEFAULT_MULTIPLE, cache=None, anchored: bool = True):
        max_ngram_size = DEFAULT_MAX_MATCH if max_ngram_size is None else max_ngram_size
        if num_tokens < 1 or max_ngram_size < 1 or not 1 <= min_ngram_size <= max_ngram_size:
            raise ValueError(
                f"prompt lookup needs prompt_lookup_num_tokens >= 1 and 1 <= min <= max_matching_ngram_size, got "
                f"{num_tokens}, {min_ngram_size}, {max_ngram_size}."
            )
        if not 0.0 <= threshold <= 1.0 or (multiple is not None and not multiple > 0):
            raise ValueError(f"prompt lookup needs 0 <= threshold <= 1 and multiple > 0, got {threshold}, {multiple}.")
        self.num_tokens = num_tokens
        self.max_ngram_size = max_ngram_size
        self.min_ngram_size = min_ngram_size
        self.threshold = threshold
        self.multiple = multiple
        self.cache = cache
        self.anchored = anchored

    def start(self, ctx: DecodeContext, state: DecodeState) -> None:
        """Index every row's prompt (left padding excluded) and take the cache's snapshot; copies from the cache stop
        before an id outside the call's vocabulary `ctx.vocab_size` (a cache written with another model)."""
        self._vocab_size = None if ctx is None else ctx.vocab_size  # (the replay bench starts it without a call)
        B, S = state.seq_host.shape
        self._index = SuffixIndex(B, S, first=np.asarray(state.first_valid))  # row slot = original batch row
        self._live = list(state.rows)
        self._added: set[int] = set()
        self._cache_view = self.cache.view() if self.cache is not None else None
        self._anchors = CopyAnchors(B) if self.anchored else None
        self._ingest(state)

    def propose(self, state: DecodeState, k: int) -> Proposal:
        """Per row, a copy of up to min(k, num_tokens) tokens (rows without a match propose none). [B, k']"""
        copies = self.copies(state, k)
        return Proposal(torch.from_numpy(copies.tokens).to(state.seq.device), None, copies.counts.tolist(),
                        forwards=0, confidence=torch.from_numpy(acceptance_estimate(copies)))

    def copies(self, state: DecodeState, k: int) -> Copies:
        """Each row's copy of up to min(k, num_tokens) tokens and its matched suffix's length (what `propose` offers)."""
        self._ingest(state)  # a no-op after `commit`; keeps the index right for callers that skip it
        rule = MatchRule(self.max_ngram_size, self.min_ngram_size, self.threshold, self.multiple)
        own, sources, width = *self._sources(state), min(k, self.num_tokens)
        return self._steered(own, suffix_copies(own, sources, rule, width), width)[0]

    def _steered(self, own: Source, copies: Copies, width: int) -> tuple[Copies, np.ndarray]:
        """`copies` with each row whose copy resumes from its anchor replaced (copy_anchor.py), and which rows [B]."""
        if self._anchors is None:
            return copies, np.zeros(len(own.slots), dtype=bool)
        return self._anchors.steer(own.view, own.slots, own.hi + 1, copies, width, self._cache_view, self._vocab_size)

    def commit(self, state: DecodeState, outcome: RoundOutcome) -> None:
        """Index the round's committed tokens; rows that finished go to the cache (prompt and own output)."""
        self._ingest(state)
        self._live = list(state.rows)
        if self.cache is None:
            return
        finished = [(i, row) for i, row in enumerate(state.rows) if outcome.stopped[i] and row not in self._added]
        ends = [outcome.old_lengths[i] + outcome.own[i] - state.first_valid[i] for i, _ in finished]
        self.cache.add_all([self._index.tokens(row)[:end] for (_, row), end in zip(finished, ends)])
        self._added.update(row for _, row in finished)

    def select_rows(self, alive: torch.Tensor, alive_host: list[int]) -> None:
        """Rows that left are never looked up again."""
        kept = [self._live[i] for i in alive_host]
        self._index.drop_rows(sorted(set(self._live) - set(kept)))
        self._live = kept

    def _ingest(self, state: DecodeState) -> None:
        """Append each live row's committed tokens the index does not hold yet (a few per row and round)."""
        slots = np.asarray(state.rows)
        have = self._index.lengths[slots]  # [B]
        new = np.asarray(state.lengths) - have  # [B]
        if not new.any():
            return
        row = np.repeat(np.arange(len(slots)), new)  # [n] batch position of each new token
        col = np.repeat(have - np.cumsum(new) + new, new) + np.arange(len(row))  # [n] its column
        self._index.append(slots[row], col, state.seq_host.numpy()[row, col])

    def _sources(self, state: DecodeState) -> tuple[Source, list[Source]]:
        """The rows' own contexts (occurrences need a next token: before the last column) and the cache's."""
        slots = np.asarray(state.rows)
        cache = self._cache_view
        offset = int(cache.tokens.shape[1]) if cache is not None else 0  # own occurrences rank as more recent
        own = Source(self._index.view(), slots, np.asarray(state.lengths) - 1, offset)
        if cache is None:
            return own, [own]
        B = len(slots)
        hi = np.full(B, int(cache.lengths[0]))
        return own, [own, Source(cache, np.zeros(B, dtype=np.int64), hi, 0, vocab_size=self._vocab_size)]
