"""`SuffixCache`: prompts and outputs of earlier generate() calls, searched by prompt lookup in later ones.

A bounded store of token sequences (the oldest leave once the total passes `max_tokens`) behind one suffix index
(sequences joined by a separator no token equals), shared safely between threads: `add` and `view` hold a lock, and
drafting reads a frozen view taken when its call starts. Saved as a plain .npz of int arrays and loaded with
`allow_pickle=False`, so loading a cache file from elsewhere runs no code (suffix_cache_file.py).
"""

from __future__ import annotations

import threading
from collections import deque

import numpy as np

from . import suffix_cache_file
from .suffix_index import IndexView, SuffixIndex
from .suffix_cache_file import MAX_TOKENS

SEPARATOR = -1  # joins sequences in the index: no token id equals it, so no match crosses it
DEFAULT_MAX_TOKENS = 1 << 20


class SuffixCache:
    """Prompts and outputs of earlier calls, for prompt lookup to copy from in later ones.

    `model.generate(ids, suffix_cache=cache)` turns prompt lookup on (N=32 unless `prompt_lookup_num_tokens=` says
    otherwise; with `draft_model=`, the hybrid) and adds each row's prompt and output when the row finishes.

    Args:
        max_tokens (`int`, *optional*, defaults to 1,048,576): the most tokens held; the oldest sequences leave when
            an addition passes it, and a longer sequence keeps its last `max_tokens` tokens.

    Copies from the cache are verified like any draft, so the output is exact whatever the cache holds. It costs
    56 bytes per stored token (64 while it grows; see suffix_index.py), and an index update per `add`. Thread-safe: `add` and `view` hold
    a lock, and a call drafts from the snapshot taken when it starts. `save(path)` writes a plain .npz of int arrays;
    `SuffixCache.load(path)` reads it with `allow_pickle=False`, so loading runs no code.
    """

    def __init__(self, max_tokens: int = DEFAULT_MAX_TOKENS):
        if isinstance(max_tokens, bool) or not isinstance(max_tokens, (int, np.integer)) or not 1 <= max_tokens <= MAX_TOKENS:
            raise ValueError(f"SuffixCache needs 1 <= max_tokens <= 2**30, got {max_tokens!r}.")
        self.max_tokens = int(max_tokens)
        self._lock = threading.Lock()
        self._spans: deque[tuple[int, int]] = deque()  # (first column, length) of each sequence, oldest first
        self._num_tokens = 0
        self._index = SuffixIndex(1, 1024)

    def __len__(self) -> int:
        return len(self._spans)

    @property
    def num_tokens(self) -> int:
        """Tokens held (separators not counted)."""
        return self._num_tokens

    def add(self, tokens) -> None:
        """Store one finished sequence (a row's prompt and output, padding excluded); its last `max_tokens` tokens
        if it is longer. The oldest sequences leave until the total fits."""
        self.add_all([tokens])

    def add_all(self, sequences) -> None:
        """`add` for several sequences at once (one index update; those that would leave at once are not indexed)."""
        seqs = _newest_within([_token_array(t)[-self.max_tokens :] for t in sequences], self.max_tokens)
        if not seqs:
            return
        with self._lock:
            start = int(self._index.lengths[0])
            for seq in seqs:
                self._spans.append((start, len(seq)))
                start += len(seq) + 1
            self._append(np.concatenate([part for seq in seqs for part in (seq, [SEPARATOR])]))
            self._num_tokens += sum(map(len, seqs))
            while self._num_tokens > self.max_tokens:
                _, n = self._spans.popleft()
                self._num_tokens -= n
            self._index.move_first(0, self._spans[0][0])
            if self._spans[0][0] > 2 * self._num_tokens + 1024:  # mostly evicted: index the live part afresh
                self._reindex()

    def view(self) -> IndexView | None:
        """A frozen snapshot to search (None while empty)."""
        with self._lock:
            return self._index.view() if self._spans else None

    def sequences(self) -> list[np.ndarray]:
        """The stored sequences, oldest first (copies)."""
        with self._lock:
            row = self._index.tokens(0)
            base = self._spans[0][0] if self._spans else 0
            return [row[s - base : s - base + n].copy() for s, n in self._spans]

    def save(self, path) -> None:
        """Write the cache to `path` as an .npz of int arrays (no pickled objects)."""
        suffix_cache_file.write(path, self.sequences(), self.max_tokens)

    @classmethod
    def load(cls, path, max_tokens: int | None = None) -> "SuffixCache":
        """Read a cache written by `save` (`max_tokens` overrides the saved bound), its sequences indexed together.
        Refuses anything else, pickled content and malformed or damaged files included, with a ValueError: loading
        runs no code and allocates nothing a file merely claims."""
        sequences, saved = suffix_cache_file.read(path)
        cache = cls(saved if max_tokens is None else max_tokens)
        cache.add_all(sequences)
        return cache

    def _append(self, tokens: np.ndarray) -> None:
        start = int(self._index.lengths[0])
        cols = np.arange(start, start + len(tokens))
        self._index.append(np.zeros(len(tokens), dtype=np.int64), cols, tokens)

    def _reindex(self) -> None:
        """A new index over the live sequences only (views taken before keep the old one)."""
        row, base = self._index.tokens(0), self._spans[0][0]
        live = row[: self._spans[-1][0] + self._spans[-1][1] + 1 - base]
        self._index = SuffixIndex(1, max(1024, 2 * len(live)))
        self._append(live)
        self._spans = deque((s - base, n) for s, n in self._spans)


def _token_array(tokens) -> np.ndarray:
    """Token ids as a 1-d int64 array (a list, an array or a CPU/GPU tensor); refuses ids outside [0, 2**63)."""
    if hasattr(tokens, "detach"):
        tokens = tokens.detach().cpu().numpy()
    arr = np.asarray(tokens)
    if arr.ndim != 1 or (arr.size and not np.issubdtype(arr.dtype, np.integer)):
        raise ValueError(f"SuffixCache.add takes a 1-d sequence of token ids, got shape {arr.shape}, {arr.dtype}.")
    if arr.size and (arr.min() < 0 or arr.max() > np.iinfo(np.int64).max):
        raise ValueError("SuffixCache.add takes token ids >= 0 (and below 2**63).")
    return arr.astype(np.int64)


def _newest_within(seqs: list[np.ndarray], max_tokens: int) -> list[np.ndarray]:
    """The non-empty `seqs` that stay after adding them all: the newest whose total fits `max_tokens`."""
    seqs = [seq for seq in seqs if len(seq)]
    total, first = 0, len(seqs)
    while first > 0 and total + len(seqs[first - 1]) <= max_tokens:
        first -= 1
        total += len(seqs[first])
    return seqs[first:]
