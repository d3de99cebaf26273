"""Where a copy resumes after the target wrote something else: the anchor rule of prompt lookup on edits.

An answer that edits the prompt's text (a rename, a reformat, a fix) copies it in long runs broken at each edit. At
the break the suffix matcher sees the target's new token(s), which match nowhere or only by one common token ("(",
","): a copy after a one-token match was right 28% of the time on the shipped edits. But the copy that broke says
where the answer was in the source: its anchor, the source column of the first token the target did not take. Per
row, while the suffix matched is short (under `TRUSTED_MATCH` tokens) and the anchor is recent, the copy resumes
from the anchor instead: right after the row's latest token if it occurs within `WINDOW` source tokens of the anchor
(the target caught up), else one source token past it (the target replaced that token, as a rename does). An anchor
points into the row's own context or into a `SuffixCache` (a second request editing an earlier answer); a copy from
the cache is not replaced by an anchor in the row's own context.

Each round's copy is a function of the committed tokens and of the earlier rounds' copies (which were): exact as
every copy is. The books are per batch row (the drafter's slots), on the host; numpy over rows, no syncs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .suffix_index import IndexView
from .suffix_match import Copies

WINDOW = 16  # source tokens after the anchor searched for the row's latest token
TRUSTED_MATCH = 2  # a suffix matched over this many tokens keeps its own copy
STALE = 16  # an anchor not moved for this many committed tokens is dropped
ANCHOR_MATCH = 4  # an anchored copy is priced as a copy after a match this long (acceptance_estimate)


class CopyAnchors:
    """Per row slot: the anchor (a column of the row's own context or of a cache, -1: none) and the last round's
    copy."""

    def __init__(self, slots: int):
        self.anchor = np.full(slots, -1, dtype=np.int64)
        self.anchor_src = np.zeros(slots, dtype=np.int64)  # the anchor's source: 0 the row's own context, 1 a cache
        self.moved_at = np.zeros(slots, dtype=np.int64)  # committed length when the anchor last moved
        self.prev_length = np.zeros(slots, dtype=np.int64)
        self.prev_tokens = np.zeros((slots, 0), dtype=np.int64)
        self.prev_count = np.zeros(slots, dtype=np.int64)
        self.prev_origin = np.full(slots, -1, dtype=np.int64)
        self.prev_src = np.full(slots, -1, dtype=np.int64)

    def steer(self, view: IndexView, slots: np.ndarray, lengths: np.ndarray, copies: Copies, width: int,
              cache: IndexView | None = None, vocab_size: int | None = None) -> tuple[Copies, np.ndarray]:
        """The rows' copies, each row with a recent anchor and a short match resuming from it instead, and which
        rows do [B] bool; the books learn from what was committed since the last call. `view`: the rows' own
        contexts (slot per row, committed `lengths`); `cache`: a cache's sequences (one row), or None, whose ids at
        or past `vocab_size` are never copied."""
        self._follow_up(view, slots, lengths)
        sources = [AnchorSource(view.tokens, slots, lengths - 1)]  # own: before the latest token (it needs a next)
        if cache is not None:
            end = np.full(len(slots), int(cache.lengths[0]))
            sources.append(AnchorSource(cache.tokens, np.zeros_like(slots), end, vocab_size))
        out, used = self._resumed(sources, view.tokens[slots, lengths - 1], slots, copies, width)
        self._remember(slots, lengths, out)
        return out, used

    def _follow_up(self, view: IndexView, slots: np.ndarray, lengths: np.ndarray) -> None:
        """Move each row's anchor past the tokens its last copy had accepted (the copy's origin + accepted)."""
        before, count, W = self.prev_length[slots], self.prev_count[slots], self.prev_tokens.shape[1]
        j = np.arange(W)[None, :]
        cols = before[:, None] + j  # [B, W] where the last copy's tokens would have been committed
        seen = view.tokens[slots[:, None], np.minimum(cols, view.tokens.shape[1] - 1)]
        same = (seen == self.prev_tokens[slots]) & (j < count[:, None]) & (cols < lengths[:, None])
        accepted = np.cumprod(same, axis=1).sum(axis=1)  # [B]
        moved = (self.prev_origin[slots] >= 0) & (accepted > 0)
        self.anchor[slots[moved]] = self.prev_origin[slots[moved]] + accepted[moved]
        self.anchor_src[slots[moved]] = self.prev_src[slots[moved]]
        self.moved_at[slots[moved]] = lengths[moved]
        stale = lengths - self.moved_at[slots] > STALE
        self.anchor[slots[stale]] = -1

    def _resumed(self, sources: list[AnchorSource], last: np.ndarray, slots: np.ndarray, copies: Copies, width: int
                 ) -> tuple[Copies, np.ndarray]:
        """Rows with an anchor and a match under `TRUSTED_MATCH` copy from the anchor (see the module doc), except a
        row whose copy comes from a cache while its anchor is in its own context (that copy is kept)."""
        anchor, src = self.anchor[slots], self.anchor_src[slots]
        other = (copies.counts > 0) & (copies.origin_src == 1) & (src == 0)
        use = (anchor >= 0) & (src < len(sources)) & (copies.match < TRUSTED_MATCH) & ~other
        if not use.any() or width < 1:
            return copies, np.zeros(len(slots), dtype=bool)
        start, n, taken = np.zeros_like(anchor), np.zeros_like(anchor), np.zeros((len(slots), width), dtype=np.int64)
        for s_i, source in enumerate(sources):
            rows = use & (src == s_i)
            if rows.any():
                s_start, s_n, s_tok = source.resume(anchor, last, width)
                start, n = np.where(rows, s_start, start), np.where(rows, s_n, n)
                taken[rows] = s_tok[rows]
        use &= n > 0
        if not use.any():
            return copies, use
        return _replaced(copies, use, taken, start, n, src), use

    def _remember(self, slots: np.ndarray, lengths: np.ndarray, copies: Copies) -> None:
        W = max(self.prev_tokens.shape[1], copies.tokens.shape[1])
        if W > self.prev_tokens.shape[1]:
            grown = np.zeros((len(self.prev_tokens), W), dtype=np.int64)
            grown[:, : self.prev_tokens.shape[1]] = self.prev_tokens
            self.prev_tokens = grown
        self.prev_tokens[slots] = 0
        self.prev_tokens[slots, : copies.tokens.shape[1]] = copies.tokens
        self.prev_count[slots] = copies.counts
        self.prev_length[slots] = lengths
        self.prev_origin[slots] = np.where(copies.counts > 0, copies.origin, -1)
        self.prev_src[slots] = np.where(copies.counts > 0, copies.origin_src, -1)


@dataclass(frozen=True)
class AnchorSource:
    """Token rows an anchor may point into: batch row b reads row `rows[b]` of `tokens`, columns before `end[b]`;
    a negative token (a cache's separator) ends a copy."""

    tokens: np.ndarray  # [R, cap]
    rows: np.ndarray  # [B]
    end: np.ndarray  # [B]
    vocab_size: int | None = None  # an id at or past it ends a copy (a cache written with another model)

    def resume(self, anchor: np.ndarray, last: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per row: where its copy resumes (after `last` [B] if it occurs within `WINDOW` tokens of the anchor, else
        one past the anchor), how many tokens it copies (at most `width`) and those tokens [B, width]."""
        cap = self.tokens.shape[1] - 1
        cols = anchor[:, None] + np.arange(WINDOW)[None, :]  # [B, WINDOW]
        seen = self.tokens[self.rows[:, None], np.clip(cols, 0, cap)]
        caught = (cols < self.end[:, None]) & (seen == last[:, None])
        start = np.where(caught.any(axis=1), anchor + np.argmax(caught, axis=1) + 1, anchor + 1)  # [B]
        at = start[:, None] + np.arange(width)[None, :]  # [B, width]
        tok = self.tokens[self.rows[:, None], np.clip(at, 0, cap)]
        known = tok < self.vocab_size if self.vocab_size is not None else True
        ok = np.cumprod((at < self.end[:, None]) & (tok >= 0) & known, axis=1).astype(bool)
        return start, ok.sum(axis=1), np.where(ok, tok, 0)


def _replaced(copies: Copies, use: np.ndarray, taken: np.ndarray, start: np.ndarray, n: np.ndarray,
              src: np.ndarray) -> Copies:
    """`copies` with the rows in `use` copying their first `n` tokens of `taken` [B, width], from column `start` of
    their anchor's source."""
    W = max(copies.tokens.shape[1], int(n.max()))
    j = np.arange(W)[None, :]
    grown = np.zeros((len(use), W), dtype=np.int64)
    grown[:, : copies.tokens.shape[1]] = copies.tokens
    conf = np.zeros((len(use), W), dtype=np.float32)
    conf[:, : copies.confidence.shape[1]] = copies.confidence
    own = np.zeros((len(use), W), dtype=np.int64)
    own[:, : min(W, taken.shape[1])] = taken[:, :W]
    own = np.where(j < n[:, None], own, 0)
    grown[use], conf[use] = own[use], (j < n[:, None])[use].astype(np.float32)
    counts = np.where(use, n, copies.counts)
    match = np.where(use, ANCHOR_MATCH, copies.match)
    origin, origin_src = np.where(use, start, copies.origin), np.where(use, src, copies.origin_src)
    return Copies(grown, counts, conf, match, origin, origin_src)
