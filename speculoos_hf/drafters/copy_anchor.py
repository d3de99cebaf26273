"""Where a copy resumes after the target wrote something else: the anchor rule of prompt lookup on edits.

An answer that edits the prompt's text (a rename, a reformat, a fix) copies it in long runs broken at each edit. At
the break the suffix matcher sees the target's new token(s), which match nowhere or only by one common token ("(",
","): a copy after a one-token match was right 28% of the time on the shipped edits. But the copy that broke says
where the answer was in the source: its anchor, the source column of the first token the target did not take. Per
row, while the suffix matched is short (under `TRUSTED_MATCH` tokens) and the anchor is recent, the copy resumes
from the anchor instead: right after the row's latest token if it occurs within `WINDOW` source tokens of the anchor
(the target caught up), else one source token past it (the target replaced that token, as a rename does).

Each round's copy is a function of the committed tokens and of the earlier rounds' copies (which were): exact as
every copy is. The books are per batch row (the drafter's slots), on the host; numpy over rows, no syncs.
"""

from __future__ import annotations

import numpy as np

from .suffix_index import IndexView
from .suffix_match import Copies

WINDOW = 16  # source tokens after the anchor searched for the row's latest token
TRUSTED_MATCH = 2  # a suffix matched over this many tokens keeps its own copy
STALE = 16  # an anchor not moved for this many committed tokens is dropped
ANCHOR_MATCH = 4  # an anchored copy is priced as a copy after a match this long (acceptance_estimate)


class CopyAnchors:
    """Per row slot: the anchor (a column of the row's own context, -1: none) and the last round's copy."""

    def __init__(self, slots: int):
        self.anchor = np.full(slots, -1, dtype=np.int64)
        self.moved_at = np.zeros(slots, dtype=np.int64)  # committed length when the anchor last moved
        self.prev_length = np.zeros(slots, dtype=np.int64)
        self.prev_tokens = np.zeros((slots, 0), dtype=np.int64)
        self.prev_count = np.zeros(slots, dtype=np.int64)
        self.prev_origin = np.full(slots, -1, dtype=np.int64)

    def steer(self, view: IndexView, slots: np.ndarray, lengths: np.ndarray, copies: Copies, width: int
              ) -> tuple[Copies, np.ndarray]:
        """The rows' copies, each row with a recent anchor and a short match resuming from it instead, and which
        rows do [B] bool; the books learn from what was committed since the last call."""
        self._follow_up(view, slots, lengths)
        out, used = self._resumed(view, slots, lengths, copies, width)
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
        self.moved_at[slots[moved]] = lengths[moved]
        stale = lengths - self.moved_at[slots] > STALE
        self.anchor[slots[stale]] = -1

    def _resumed(self, view: IndexView, slots: np.ndarray, lengths: np.ndarray, copies: Copies, width: int) -> Copies:
        """Rows with an anchor and a match under `TRUSTED_MATCH` copy from the anchor (see the module doc)."""
        anchor = self.anchor[slots]
        elsewhere = (copies.counts > 0) & (copies.origin < 0) if copies.origin is not None else copies.counts > 0
        use = (anchor >= 0) & (copies.match < TRUSTED_MATCH) & ~elsewhere  # a cache's copy is left alone
        if not use.any() or width < 1:
            return copies, np.zeros(len(slots), dtype=bool)
        tokens, last = view.tokens, view.tokens[slots, lengths - 1]  # [B] each row's latest token
        cols = anchor[:, None] + np.arange(WINDOW)[None, :]  # [B, WINDOW]
        inside = cols < lengths[:, None] - 1  # a source token with a next one before the latest token
        caught = inside & (tokens[slots[:, None], np.minimum(cols, tokens.shape[1] - 1)] == last[:, None])
        start = np.where(caught.any(axis=1), anchor + np.argmax(caught, axis=1) + 1, anchor + 1)  # [B]
        n = np.where(use, np.clip(lengths - 1 - start, 0, width), 0)  # copy only what lies before the latest token
        use &= n > 0
        if not use.any():
            return copies, use
        return _replaced(copies, use, tokens, slots, start, n), use

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
        origin = copies.origin if copies.origin is not None else np.full(len(slots), -1)
        self.prev_origin[slots] = np.where(copies.counts > 0, origin, -1)


def _replaced(copies: Copies, use: np.ndarray, tokens: np.ndarray, slots: np.ndarray, start: np.ndarray,
              n: np.ndarray) -> Copies:
    """`copies` with the rows in `use` copying `n` tokens of their own context from column `start`."""
    W = max(copies.tokens.shape[1], int(n.max()))
    j = np.arange(W)[None, :]
    grown = np.zeros((len(use), W), dtype=np.int64)
    grown[:, : copies.tokens.shape[1]] = copies.tokens
    conf = np.zeros((len(use), W), dtype=np.float32)
    conf[:, : copies.confidence.shape[1]] = copies.confidence
    cols = np.minimum(start[:, None] + j, tokens.shape[1] - 1)
    own = np.where(j < n[:, None], tokens[slots[:, None], cols], 0)
    grown[use], conf[use] = own[use], (j < n[:, None])[use].astype(np.float32)
    counts = np.where(use, n, copies.counts)
    match = np.where(use, ANCHOR_MATCH, copies.match)
    origin = copies.origin if copies.origin is not None else np.full(len(use), -1)
    return Copies(grown, counts, conf, match, np.where(use, start, origin))
