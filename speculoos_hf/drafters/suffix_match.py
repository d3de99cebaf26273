"""The suffix-matching rule of prompt lookup, batched over rows (after SuffixDecoding, Oliaro et al. 2025).

Per row: the longest suffix of its committed tokens (at most `max_match`) that occurred before, in its own context
or in a cache of earlier sequences; then, token by token, the continuation that followed it most often (ties: the
most recent), while that continuation's empirical probability (its occurrences / the matched suffix's) stays at
least `threshold` and its length at most `multiple` x the match length (unless the match reached `max_match`: it
may be longer). Python loops run over index levels and draft positions only, never over rows or the context.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .suffix_index import LEVELS, IndexView

PRIOR_TOKENS = 2  # a suffix matched over m tokens goes on with chance m / (m + PRIOR_TOKENS) (see `acceptance_estimate`)


@dataclass(frozen=True)
class MatchRule:
    """How long a suffix to match and how far to follow it."""

    max_match: int = 64  # longest suffix compared (max_matching_ngram_size)
    min_match: int = 1  # shorter matches propose nothing
    threshold: float = 0.0  # a continuation is followed while count(suffix + copy) / count(suffix) >= threshold
    multiple: float | None = None  # the copy is at most multiple x a match shorter than max_match (None: no cap)


@dataclass(frozen=True)
class Source:
    """Where each row b looks: row `slots[b]` of `view`, occurrences ending before column `hi[b]` (they need a next
    token); `rank` is added to columns to order occurrences by recency across sources; a copy ends before an id
    `>= vocab_size` (a cache written with another model holds ids the target has not: never proposed)."""

    view: IndexView
    slots: np.ndarray  # [B]
    hi: np.ndarray  # [B]
    rank: int
    vocab_size: int | None = None


@dataclass(frozen=True)
class Copies:
    """Each row's proposal: `tokens[b, :counts[b]]`, and the empirical probability that its first j+1 tokens follow
    the matched suffix, `confidence[b, j]` (non-increasing in j)."""

    tokens: np.ndarray  # [B, w] int64
    counts: np.ndarray  # [B]
    confidence: np.ndarray  # [B, w] float32
    match: np.ndarray  # [B] matched suffix length (0: none)
    origin: np.ndarray | None = None  # [B] column where the row's copy starts in its source (-1: no copy)
    origin_src: np.ndarray | None = None  # [B] that source: 0 the row's own context, 1 the cache (-1: no copy)


@dataclass(frozen=True)
class _Hits:
    """Occurrences of each row's matched suffix: hit i belongs to row `row[i]`, ends at `col[i]` of source `src[i]`."""

    row: np.ndarray  # [M]
    src: np.ndarray  # [M]
    col: np.ndarray  # [M]
    length: np.ndarray  # [B] matched length (0: none)


@dataclass(frozen=True)
class Continuations:
    """What followed each occurrence of each row's matched suffix: hit i belongs to row `row[i]`, its next tokens
    are `tokens[i]` (-1 past its row's end), `rank[i]` orders hits by recency; row b copies at most `caps[b]`
    tokens; `match[b]` is its matched length (0: none)."""

    tokens: np.ndarray  # [M, W]
    row: np.ndarray  # [M]
    rank: np.ndarray  # [M]
    caps: np.ndarray  # [B]
    match: np.ndarray  # [B]
    src: np.ndarray | None = None  # [M] the source each hit is in (0: the rows' own contexts)
    col: np.ndarray | None = None  # [M] the column its suffix ends at


def matched_continuations(own: Source, sources: list[Source], rule: MatchRule, max_tokens: int) -> Continuations:
    """The continuations of every row's longest matched suffix (`own`: the rows' own contexts; `sources` holds
    `own` and any cache), each row's copy capped by `max_tokens` and the rule's multiple of its match."""
    B = len(own.slots)
    hits = _longest_matches(own, sources, rule)
    hits = _keep(hits, hits.length[hits.row] >= rule.min_match)
    length = np.where(hits.length >= rule.min_match, hits.length, 0)
    caps = np.full(B, max_tokens)
    if rule.multiple is not None:  # a match as long as max_match may be longer: the cap stops measuring there
        capped = np.maximum(1, np.floor(rule.multiple * length).astype(np.int64))
        caps = np.where(length < rule.max_match, np.minimum(caps, capped), caps)
    caps = np.where(length > 0, caps, 0)
    cont, rank = _continuations(sources, hits, int(caps.max(initial=0)))
    return Continuations(cont, hits.row, rank, caps, length, hits.src, hits.col)


def suffix_copies(own: Source, sources: list[Source], rule: MatchRule, max_tokens: int) -> Copies:
    """The copies for every row of `own` (the rows' own contexts; `sources` holds `own` and any cache)."""
    return chain_copies(matched_continuations(own, sources, rule, max_tokens), rule.threshold)


def chain_copies(c: Continuations, threshold: float) -> Copies:
    """Each row's copy: the continuation of `c` that most occurrences follow, token by token (see `_follow`)."""
    tokens, counts, confidence = _follow(c.tokens, c.row, c.rank, c.caps, threshold)
    return Copies(tokens, counts, confidence, c.match, *_origins(c, tokens, counts))


def _origins(c: Continuations, tokens: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per row, where the most recent occurrence that the whole copy follows continues: (column, source) [B] each
    (-1: no copy)."""
    B, W = len(counts), tokens.shape[1]
    origin, src = np.full(B, -1, dtype=np.int64), np.full(B, -1, dtype=np.int64)
    n = counts[c.row]  # [M]
    agree = (c.tokens[:, :W] == tokens[c.row]) | (np.arange(W)[None, :] >= n[:, None])  # [M, W]
    follows = np.flatnonzero(agree.all(axis=1) & (n > 0))
    order = follows[np.argsort(c.rank[follows], kind="stable")]  # the most recent last: it wins the assignment
    origin[c.row[order]], src[c.row[order]] = c.col[order] + 1, c.src[order]
    return origin, src


def acceptance_estimate(copies: Copies) -> np.ndarray:
    """The chance that each copy's first j+1 tokens are right [B, w]: the share of occurrences that continue so
    (`confidence`), times the chance that the match goes on, (m + i) / (m + i + PRIOR_TOKENS) for its i-th token (the
    match growing as the copy is accepted). A suffix seen once is not a sure thing: on the shipped edit and repeat
    prompts a copy after a 1-token match was right 28% of the time, after 2 tokens 45%, after 4-5 71% (docs/speed.md)."""
    B, W = copies.confidence.shape
    m = copies.match[:, None] + np.arange(W)[None, :]  # [B, w] match length before each copied token
    goes_on = np.cumprod(m / (m + PRIOR_TOKENS), axis=1)  # [B, w]
    return (copies.confidence * goes_on).astype(np.float32)


def _pattern(own: Source, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Each row's latest `width` tokens, newest first [B, W] (-2 before its first token), and how many it has [B]."""
    end = own.hi + 1  # [B] committed lengths
    size = np.minimum(end - own.view.first[own.slots], width)  # [B]
    width = int(size.max(initial=0))
    cols = end[:, None] - 1 - np.arange(width)[None, :]  # [B, W]
    rev = own.view.tokens[own.slots[:, None], np.maximum(cols, 0)]
    return np.where(np.arange(width)[None, :] < size[:, None], rev, -2), size


def _longest_matches(own: Source, sources: list[Source], rule: MatchRule) -> _Hits:
    """Per row, the highest level whose latest g-gram recurs nominates candidates; comparing tokens measures each
    candidate's match (up to 2g - 1, the next level having none, or `max_match` at the top level)."""
    B = len(own.slots)
    rev, size = _pattern(own, rule.max_match)
    usable = int(np.searchsorted(LEVELS, max(1, rule.max_match // 2), "right"))  # levels up to half the cap
    top = np.minimum(np.searchsorted(LEVELS, size, "right"), usable) - 1  # [B] highest level each row can ask
    pattern = own.view.latest_hashes(own.slots, own.hi)  # [levels, B] hash of the latest g tokens
    found = sum(s.view.count(s.slots, pattern, s.hi) for s in sources) > 0  # [levels, B]
    level = np.where(top >= 0, _highest(found, top), -1)  # [B]
    length = np.zeros(B, dtype=np.int64)
    hits = []
    while (level >= 0).any():
        h = _measure(sources, rev, size, level, top, pattern, rule.max_match)
        asked = level >= 0
        short = asked & (h.length < np.array(LEVELS)[np.maximum(level, 0)])  # only hash collisions at that level
        done = asked & ~short
        length[done] = h.length[done]
        hits.append(_keep(h, done[h.row]))
        found[level[short], np.flatnonzero(short)] = False
        level = np.where(short, _highest(found, level - 1), -1)
    empty = np.empty(0, dtype=np.int64)
    return _Hits(*(np.concatenate([empty] + [getattr(h, f) for h in hits]) for f in ("row", "src", "col")), length)


def _highest(found: np.ndarray, top: np.ndarray) -> np.ndarray:
    """Per row b, the highest level <= top[b] with found[level, b] (-1: none). [B]"""
    levels = np.arange(found.shape[0])[:, None]
    ok = found & (levels <= top[None, :])
    return np.where(ok.any(0), found.shape[0] - 1 - np.argmax(ok[::-1], axis=0), -1)


def _measure(sources, rev, size, level, top, pattern, max_match) -> _Hits:
    """Candidates of each row at its level, compared token by token with its pattern; keeps the longest."""
    B = len(level)
    g = np.array(LEVELS)[np.maximum(level, 0)]
    width = np.where(level == top, np.minimum(max_match, size), np.minimum(2 * g - 1, size))  # [B]
    ask = np.flatnonzero(level >= 0)  # [Q] rows with a level to look at
    rows, srcs, cols, lengths = [], [], [], []
    for s_i, s in enumerate(sources):
        q, col = s.view.find(level[ask], s.slots[ask], pattern[level[ask], ask], s.hi[ask])
        row = ask[q]
        rows.append(row), srcs.append(np.full(len(row), s_i)), cols.append(col)
        lengths.append(_match_lengths(s.view, s.slots[row], col, rev[row], width[row]))
    row, src, col, n = (np.concatenate(a) for a in (rows, srcs, cols, lengths))
    best = np.zeros(B, dtype=np.int64)
    np.maximum.at(best, row, n)
    keep = (n == best[row]) & (n > 0)
    return _Hits(row[keep], src[keep], col[keep], best)


def _match_lengths(view: IndexView, slots, cols, rev, width) -> np.ndarray:
    """How many tokens ending at `cols[i]` of row `slots[i]` equal `rev[i]` read backwards (at most width[i]). [M]"""
    W = int(width.max(initial=0))
    rev = rev[:, :W]
    at = cols[:, None] - np.arange(W)[None, :]  # [M, W]
    inside = (at >= view.first[slots][:, None]) & (np.arange(W)[None, :] < width[:, None])
    same = inside & (view.tokens[slots[:, None], np.maximum(at, 0)] == rev)
    return np.cumprod(same, axis=1).sum(axis=1)


def _keep(h: _Hits, mask: np.ndarray) -> _Hits:
    return _Hits(h.row[mask], h.src[mask], h.col[mask], h.length)


def _continuations(sources: list[Source], hits: _Hits, width: int) -> tuple[np.ndarray, np.ndarray]:
    """The `width` tokens after each hit (-1 from its row's end, a separator or an id outside the source's
    vocabulary on) [M, W], and each hit's recency [M]."""
    cont = np.full((len(hits.row), width), -1, dtype=np.int64)
    rank = np.zeros(len(hits.row), dtype=np.int64)
    for s_i, s in enumerate(sources):
        at = np.flatnonzero(hits.src == s_i)
        slots = s.slots[hits.row[at]]
        cols = hits.col[at][:, None] + 1 + np.arange(width)[None, :]  # [m, W]
        end = s.view.lengths[slots][:, None]
        tok = s.view.tokens[slots[:, None], np.minimum(cols, end - 1)]
        known = tok < s.vocab_size if s.vocab_size is not None else True
        ok = np.cumprod((cols < end) & (tok >= 0) & known, axis=1).astype(bool)
        cont[at] = np.where(ok, tok, -1)
        rank[at] = hits.col[at] + s.rank
    return cont, rank


def _follow(cont: np.ndarray, row: np.ndarray, rank: np.ndarray, caps: np.ndarray, threshold: float):
    """Token by token, each row's most frequent continuation among the hits still following it (ties: the most
    recent hit), while count / hits >= threshold and within the row's cap. Returns (tokens, counts, confidence)."""
    B, W = len(caps), cont.shape[1]
    denom = np.bincount(row, minlength=B)  # [B] occurrences of the matched suffix
    tokens = np.zeros((B, W), dtype=np.int64)
    confidence = np.zeros((B, W), dtype=np.float32)
    single = denom[row] == 1  # [M] a row with one occurrence copies it whole (probability 1 throughout)
    copy = np.cumprod((cont[single] >= 0) & (np.arange(W)[None, :] < caps[row[single], None]), axis=1)  # [m, W]
    tokens[row[single]] = np.where(copy > 0, cont[single], 0)
    confidence[row[single]] = copy
    counts = np.zeros(B, dtype=np.int64)
    counts[row[single]] = copy.sum(1)
    alive = ~single
    for j in range(W if alive.any() else 0):
        live = alive & (cont[:, j] >= 0) & (caps[row] > j)  # [M]
        if not live.any():
            break
        best_row, best_tok, best_count = _most_frequent(row[live], cont[live, j], rank[live], B)
        p = best_count / denom[best_row]
        go = p >= threshold
        best_row, best_tok = best_row[go], best_tok[go]
        tokens[best_row, j], confidence[best_row, j], counts[best_row] = best_tok, p[go], j + 1
        chosen = np.full(B, -1)
        chosen[best_row] = best_tok
        alive = live & (cont[:, j] == chosen[row])
    width = int(counts.max(initial=0))
    return tokens[:, :width], counts, confidence[:, :width]


def _most_frequent(row: np.ndarray, tok: np.ndarray, rank: np.ndarray, B: int):
    """Per row present, the token with the most entries (ties: the highest rank): (rows, tokens, counts)."""
    some = np.full(B, -1)
    some[row] = tok  # one entry's token per row
    if (tok == some[row]).all():  # every row's entries agree (the usual case): no sorting
        counts = np.bincount(row, minlength=B)
        present = np.flatnonzero(counts)
        return present, some[present], counts[present]
    order = np.lexsort((rank, tok, row))  # by (row, token), then rank: any int64 ids
    row, tok, rank = row[order], tok[order], rank[order]
    last = np.flatnonzero(np.append((row[1:] != row[:-1]) | (tok[1:] != tok[:-1]), True))  # each group's last entry
    size = np.diff(last, prepend=-1)
    group_row, group_tok, group_rank = row[last], tok[last], rank[last]
    order = np.lexsort((group_rank, size, group_row))  # per row: by count, then recency
    best = order[np.append(group_row[order][1:] != group_row[order][:-1], True)]
    return group_row[best], group_tok[best], size[best]
