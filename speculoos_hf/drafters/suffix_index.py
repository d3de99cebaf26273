"""A growing index of token rows for suffix matching: where did a row's latest g tokens occur before?

Each committed position holds a 64-bit polynomial hash of the g tokens ending there, for g in `LEVELS` (each length
combines two halves of the one below it). Positions are kept sorted by (level, row, hash) in one array, except each
row's newest ones (a short tail, compared directly), merged in once a tail passes ~4 sqrt(the row's sorted size).
Appending costs O(levels) per token plus the amortised merges, a lookup O(log L + tail): no row is rescanned.
Hashes only nominate candidates; callers compare tokens before trusting them, so a collision costs time, never a
wrong match. `view()` is a frozen snapshot: appending never writes where a view reads, so other threads may read.

Memory per token (the tokens row, 6 sorted 32-bit keys and their positions): 8 + 24 + 48 bytes, 8 + 24 + 24 in a
one-row index (a `SuffixCache`: a position is its column alone); 64-bit hashes are kept for each row's tail and the
`KEEP` columns before it only, and forgotten tokens' keys leave the sorted part at the next merge.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

LEVELS = (1, 2, 4, 8, 16, 32)  # g-gram lengths hashed at every position
INVALID = np.uint64(2**64 - 1)  # the hash of a position whose g tokens would start before the row's first token
RECENT = 256  # occurrences a lookup returns from the sorted part at most (the most recent ones)
TAIL_MIN = 64  # tail length that never triggers a merge
_MIX1, _MIX2 = np.uint64(0x9E3779B97F4A7C15), np.uint64(0xBF58476D1CE4E5B9)
_ROW = np.uint64(0xD6E8FEB86659FD93)  # mixes the row into sorted keys
_LEVEL_KEYS = (np.arange(len(LEVELS), dtype=np.uint64) * np.uint64(0x94D049BB133111EB)) >> np.uint64(1)
_BASE = 0x100000001B3
_POWERS = {g: np.uint64(pow(_BASE, g, 2**64)) for g in LEVELS}  # BASE^g
_COL_BITS = np.uint64(32)
KEEP = LEVELS[-1]  # hashed columns kept before a row's tail: a new position reads its halves up to LEVELS[-1] // 2 back


def token_hashes(tokens: np.ndarray) -> np.ndarray:
    """The level-1 hash of each token id (any int64, separators included). [n] uint64"""
    x = (tokens + 2).astype(np.uint64) * _MIX1
    return (x ^ (x >> np.uint64(31))) * _MIX2


def sort_keys(levels: np.ndarray, slots: np.ndarray, hashes: np.ndarray) -> np.ndarray:
    """Sort keys: the top 32 bits of a g-gram hash made distinct per level and row (broadcasting). Two g-grams share
    a key about once in 4e9: a spurious candidate, which the callers' token comparison drops. uint32"""
    return ((hashes ^ (slots.astype(np.uint64) * _ROW) ^ _LEVEL_KEYS[levels]) >> np.uint64(32)).astype(np.uint32)


@dataclass(frozen=True)
class IndexView:
    """A frozen snapshot of a `SuffixIndex`: every array here is either copied or never written again below
    `lengths`, so a view may be read while the index grows (in another thread too)."""

    tokens: np.ndarray  # [R, cap] int64, committed tokens (row r holds columns first[r]..lengths[r]-1)
    hashes: np.ndarray  # [levels, R, cap] uint64
    first: np.ndarray  # [R] first live column of each row
    lengths: np.ndarray  # [R] committed length of each row
    static_end: np.ndarray  # [R] columns below are in the sorted part
    keys: np.ndarray  # sorted keys of (level, row, hash), every level in one array (uint32)
    flat: np.ndarray  # each sorted key's position: row << 32 | column (uint64), or the column alone (uint32, one row)
    hash_base: np.ndarray  # [R] the column `hashes[:, r, 0]` holds (hashes are kept from each row's tail on)

    def latest_hashes(self, slots: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """The hashes of the g tokens ending at `cols[q]` of row `slots[q]` (a tail column), every level. [levels, Q]"""
        return self.hashes[:, slots, np.maximum(cols - self.hash_base[slots], 0)]

    def count(self, slots: np.ndarray, hashes: np.ndarray, hi: np.ndarray) -> np.ndarray:
        """How many occurrences of `hashes[level, q]` row `slots[q]` holds ending before column `hi[q]` (the
        sorted part counts in full), at every level at once. [levels, Q]"""
        levels = np.arange(len(LEVELS))[:, None]  # [levels, 1]
        left, right = self._ranges(levels, slots[None, :], hashes)  # [levels, Q]
        _, inside, at = self._tail(slots, hi)  # [Q, T]
        found = self.hashes[:, slots[:, None], at] == hashes[:, :, None]  # [levels, Q, T]
        return right - left + (found & inside[None]).sum(2)

    def find(self, levels: np.ndarray, slots: np.ndarray, hashes: np.ndarray,
             hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """End columns of the occurrences of `hashes[q]` (level `levels[q]`) in row `slots[q]` before `hi[q]`: at
        most `RECENT` of the sorted part's (the most recent) and all of the tail's. Returns (query [M], column [M])."""
        left, right = self._ranges(levels, slots, hashes)  # [Q]
        left = np.maximum(left, right - RECENT)
        sizes = right - left  # [Q]
        query = np.repeat(np.arange(len(slots)), sizes)  # [M]
        within = np.arange(len(query)) - np.repeat(np.cumsum(sizes) - sizes, sizes)
        row, col = unpack(self.flat[left[query] + within])
        own = row == slots[query]  # a key shared by two rows: keep the asked row's
        cols, inside, at = self._tail(slots, hi)  # [Q, T]
        tq, tc = np.nonzero(inside & (self.hashes[levels[:, None], slots[:, None], at] == hashes[:, None]))
        return np.concatenate([query[own], tq]), np.concatenate([col[own], cols[tq, tc]])

    def _ranges(self, levels: np.ndarray, slots: np.ndarray, hashes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        keys = sort_keys(levels, slots, hashes)
        return np.searchsorted(self.keys, keys, "left"), np.searchsorted(self.keys, keys, "right")

    def _tail(self, slots: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Each queried row's tail: its columns [Q, T], which are real [Q, T], and where `hashes` holds them (clipped
        into the array) [Q, T]."""
        start = self.static_end[slots]  # [Q]
        end = np.minimum(hi, self.lengths[slots])  # [Q]
        width = int(max((end - start).max(initial=0), 0))
        cols = start[:, None] + np.arange(width)[None, :]  # [Q, T]
        at = np.clip(cols - self.hash_base[slots][:, None], 0, self.hashes.shape[2] - 1)
        return cols, cols < end[:, None], at


class SuffixIndex:
    """The hashes of every committed position of R token rows, growing as tokens are appended."""

    def __init__(self, rows: int, capacity: int, first: np.ndarray | None = None):
        self._tokens = np.full((rows, capacity), -1, dtype=np.int64)
        self._first = np.zeros(rows, dtype=np.int64) if first is None else np.asarray(first, dtype=np.int64).copy()
        self._hash_base = self._first.copy()  # the column `_hashes[:, r, 0]` holds
        self._hashes = np.full((len(LEVELS), rows, capacity), INVALID, dtype=np.uint64)
        self._lengths = self._first.copy()
        self._static_end = self._first.copy()
        self._live = np.ones(rows, dtype=bool)
        self._keys = np.empty(0, dtype=np.uint32)
        self._flat = pack(np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64), rows)
        self._purged = (self._first.copy(), self._live.copy())  # `first` and `live` when the sorted part was purged

    @property
    def lengths(self) -> np.ndarray:
        """[R] committed length of each row (a copy)."""
        return self._lengths.copy()

    def tokens(self, slot: int) -> np.ndarray:
        """Row `slot`'s live tokens (a copy). [n]"""
        return self._tokens[slot, self._first[slot] : self._lengths[slot]].copy()

    def append(self, slots: np.ndarray, cols: np.ndarray, tokens: np.ndarray) -> None:
        """Commit `tokens[i]` at column `cols[i]` of row `slots[i]`; each row's columns continue its length."""
        if not len(tokens):
            return
        need = int(cols.max()) + 1
        if need > self._tokens.shape[1]:
            self._tokens = _grown(self._tokens, max(need, 2 * self._tokens.shape[1]), -1)
        need = int((cols - self._hash_base[slots]).max()) + 1
        if need > self._hashes.shape[2]:
            self._hashes = _grown(self._hashes, max(need, 2 * self._hashes.shape[2]), INVALID)
        self._tokens[slots, cols] = tokens
        self._hash(slots, cols, tokens)
        np.maximum.at(self._lengths, slots, cols + 1)
        self._maybe_merge()

    def drop_rows(self, slots) -> None:
        """Rows never asked about again: their tails are no longer sorted in."""
        self._live[list(slots)] = False

    def move_first(self, slot: int, col: int) -> None:
        """Forget row `slot`'s tokens before column `col` (lookups stop matching there)."""
        self._first[slot] = max(self._first[slot], col)

    def view(self) -> IndexView:
        return IndexView(self._tokens, self._hashes, self._first.copy(), self._lengths.copy(),
                         self._static_end.copy(), self._keys, self._flat, self._hash_base.copy())

    def _hash(self, slots: np.ndarray, cols: np.ndarray, tokens: np.ndarray) -> None:
        """Hashes of the new positions, level by level: a g-gram's is its two halves', sum_j h(token[c - j]) * BASE^j
        (a level reads the one below at two columns, both written already)."""
        h, at = self._hashes, cols - self._hash_base[slots]  # [n] where the new positions' hashes go
        h[0, slots, at] = token_hashes(tokens)
        start = self._first[slots]  # [n]
        for level in range(1, len(LEVELS)):
            half = LEVELS[level - 1]
            below = h[level - 1, slots, np.maximum(at - half, 0)] * _POWERS[half]  # [n] (kept: KEEP >= half)
            whole = cols - LEVELS[level] + 1 >= start
            h[level, slots, at] = np.where(whole, h[level - 1, slots, at] + below, INVALID)

    def _maybe_merge(self) -> None:
        live = self._live
        tail = (self._lengths - self._static_end)[live]
        sorted_size = np.maximum(self._static_end - self._first, 0)[live]
        if tail.size and tail.max() > max(TAIL_MIN, 4 * int(np.sqrt(sorted_size.max()))):
            self._merge_tails()

    def _merge_tails(self) -> None:
        """Sort every live row's tail but its last position (it has no next token yet) into the sorted part: the
        tail's keys sorted, then inserted after equal keys (positions stay ascending within a key); then only the
        hashes still read are kept."""
        start = np.maximum(self._static_end, self._first)  # [R] (a row's forgotten tokens are never sorted in)
        end = np.where(self._live, np.maximum(self._lengths - 1, start), start)  # [R]
        size = end - start  # [R]
        rows = np.repeat(np.arange(len(size)), size)  # [n]
        cols = np.repeat(start - np.cumsum(size) + size, size) + np.arange(len(rows))  # [n]
        flat = pack(rows, cols, len(size))  # [n]
        h = self._hashes[:, rows, cols - self._hash_base[rows]]  # [levels, n]
        ok = h != INVALID
        levels = np.broadcast_to(np.arange(len(LEVELS))[:, None], h.shape)[ok]
        keys, flat = _sorted(sort_keys(levels, np.broadcast_to(rows, h.shape)[ok], h[ok]),
                             np.broadcast_to(flat, h.shape)[ok])
        old_keys, old_flat = self._purged_sorted()
        if len(old_keys):
            at = np.searchsorted(old_keys, keys, "right")
            keys, flat = np.insert(old_keys, at, keys), np.insert(old_flat, at, flat)  # new arrays
        self._keys, self._flat = keys, flat
        self._static_end = end
        self._keep_tail_hashes()

    def _purged_sorted(self) -> tuple[np.ndarray, np.ndarray]:
        """The sorted part without the keys of forgotten tokens and of rows never asked about again (the same
        arrays when nothing was forgotten since the last merge)."""
        first, live = self._purged
        if np.array_equal(first, self._first) and np.array_equal(live, self._live):
            return self._keys, self._flat
        row, col = unpack(self._flat)
        keep = self._live[row] & (col >= self._first[row])
        self._purged = (self._first.copy(), self._live.copy())
        return self._keys[keep], self._flat[keep]

    def _keep_tail_hashes(self) -> None:
        """New hash arrays holding each live row's tail and the KEEP columns before it, all a row can still be
        asked about or read to hash its next positions (views keep the old arrays)."""
        base = np.where(self._live, np.minimum(self._static_end, self._lengths - KEEP), self._lengths)
        base = np.clip(base, self._hash_base, self._lengths)  # [R]
        size = self._lengths - base  # [R]
        hashes = np.full((len(LEVELS), len(base), max(2 * int(size.max(initial=0)), TAIL_MIN)), INVALID,
                         dtype=np.uint64)
        rows = np.repeat(np.arange(len(size)), size)  # [n]
        at = np.arange(len(rows)) - np.repeat(np.cumsum(size) - size, size)  # [n] its place in the new array
        hashes[:, rows, at] = self._hashes[:, rows, at + (base - self._hash_base)[rows]]
        self._hashes, self._hash_base = hashes, base


def pack(rows: np.ndarray, cols: np.ndarray, num_rows: int) -> np.ndarray:
    """Sorted entries' positions: the column alone (uint32) in a one-row index, else row << 32 | column (uint64)."""
    if num_rows == 1:
        return cols.astype(np.uint32)
    return (rows.astype(np.uint64) << _COL_BITS) | cols.astype(np.uint64)


def unpack(flat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(rows, columns) of `pack`ed positions. [n], [n] int64"""
    if flat.dtype == np.uint32:
        return np.zeros(len(flat), dtype=np.int64), flat.astype(np.int64)
    return (flat >> _COL_BITS).astype(np.int64), (flat & np.uint64(0xFFFFFFFF)).astype(np.int64)


def _sorted(keys: np.ndarray, flat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`keys` ascending with their positions `flat`, positions ascending within a key (the most recent last; the
    input lists each row's positions in ascending order). One row: a single sort of key << 32 | column."""
    if flat.dtype == np.uint32:
        both = np.sort((keys.astype(np.uint64) << _COL_BITS) | flat)
        return (both >> _COL_BITS).astype(np.uint32), (both & np.uint64(0xFFFFFFFF)).astype(np.uint32)
    order = np.argsort(keys, kind="stable")
    return keys[order], flat[order]


def _grown(array: np.ndarray, width: int, fill) -> np.ndarray:
    """A copy of `array` widened to `width` along its last axis, filled with `fill` (views keep the old one)."""
    grown = np.full((*array.shape[:-1], width), fill, dtype=array.dtype)
    grown[..., : array.shape[-1]] = array
    return grown
