"""SuffixCache robustness (issue 25, cases 14-17): ids outside the target's vocabulary are never proposed, ids of any
size are counted in their own row, every malformed file raises ValueError (before allocating what it claims), and
load() indexes all sequences together."""

from __future__ import annotations

import io
import tracemalloc
import zipfile

import numpy as np
import pytest
import torch

import speculoos_hf.drafters.lookup_tree as lookup_tree
import speculoos_hf.drafters.suffix_match as suffix_match
from conftest import tiny_pair
from speculoos_hf import SuffixCache
from speculoos_hf.drafters.suffix_index import SuffixIndex
from speculoos_hf.drafters.suffix_match import MatchRule, Source, suffix_copies

V = 64  # the tiny models' vocabulary
FORMAT = np.array("speculoos-suffix-cache-1")


# ------------------------------------------------------------------- 14. ids outside the target's vocabulary


@pytest.fixture
def foreign_cache():
    """A cache written with a larger vocabulary: after "5 6 7" it continues with ids the target has not."""
    cache = SuffixCache()
    cache.add_all([[5, 6, 7, 100, 101, 102, 8], [5, 6, 7, 100, 3], [1, 2, 3, 4, V, 9]])
    return cache


@pytest.mark.parametrize("with_draft", [False, True])
@pytest.mark.parametrize("do_sample", [True, False])
def test_ids_outside_the_vocabulary_are_never_proposed(monkeypatch, foreign_cache, with_draft, do_sample):
    """Lookup alone and hybrid, sampling and greedy: the copies stop before a foreign id (the call runs, greedy is
    stock's), and no continuation the matcher returns holds one."""
    target, draft = tiny_pair(layers=1)
    seen = []
    original = suffix_match.matched_continuations

    def spy(*args, **kwargs):
        found = original(*args, **kwargs)
        seen.append(found.tokens)
        return found

    monkeypatch.setattr(suffix_match, "matched_continuations", spy)
    monkeypatch.setattr(lookup_tree, "matched_continuations", spy)
    ids = torch.tensor([[9, 1, 5, 6, 7]])  # only the cache knows what followed "5 6 7": an id the target has not
    kw = dict(do_sample=do_sample, max_new_tokens=10, suffix_cache=foreign_cache, num_draft_tokens=4)
    torch.manual_seed(0)
    out = target.generate(ids, draft_model=draft if with_draft else None, **kw)
    assert out.shape == (1, 15) and int(out.max()) < V
    if not do_sample:
        assert torch.equal(out, target.generate(ids, do_sample=False, max_new_tokens=10))
    assert seen and all(int(t.max(initial=-1)) < V for t in seen)


def test_copies_stop_before_a_foreign_id():
    cache = SuffixCache()
    cache.add_all([[5, 6, 7, 8, 100, 9]])
    index = SuffixIndex(1, 8)
    index.append(np.zeros(3, dtype=np.int64), np.arange(3), np.array([5, 6, 7]))
    own = Source(index.view(), np.zeros(1, dtype=np.int64), np.array([2]), 1 << 40)
    view = cache.view()
    for vocab, expected in ((None, [8, 100, 9]), (V, [8])):
        theirs = Source(view, np.zeros(1, dtype=np.int64), np.array([int(view.lengths[0])]), 0, vocab_size=vocab)
        found = suffix_copies(own, [own, theirs], MatchRule(), 8)
        assert found.tokens[0, : found.counts[0]].tolist() == expected


# --------------------------------------------------------------------------------------- 15. ids of any size


def test_most_frequent_counts_large_ids_in_their_own_row():
    big = 2**32 + 1
    rows, toks = np.array([0, 0, 0, 1, 1]), np.array([big, big, 5, 2**33, 7])
    best_row, best_tok, count = suffix_match._most_frequent(rows, toks, np.arange(5), 2)
    assert best_row.tolist() == [0, 1] and best_tok.tolist() == [big, 7] and count.tolist() == [2, 1]


def test_cache_ids_beyond_32_bits_copy_whole():
    cache = SuffixCache()
    big = [2**32 + 7, 2**40 + 1, 2**62]
    cache.add_all([[1, 2, *big], [1, 2, 2**33, 4], [1, 2, *big]])  # "1 2" then big (2 of 3) or 2**33
    index = SuffixIndex(2, 8)
    index.append(np.array([0, 0, 1, 1]), np.array([0, 1, 0, 1]), np.array([1, 2, 1, 2]))
    own = Source(index.view(), np.arange(2), np.array([1, 1]), 1 << 40)
    view = cache.view()
    theirs = Source(view, np.zeros(2, dtype=np.int64), np.full(2, int(view.lengths[0])), 0)
    found = suffix_copies(own, [own, theirs], MatchRule(), 3)
    assert [found.tokens[b, : found.counts[b]].tolist() for b in range(2)] == [big, big]


def test_ids_beyond_int64_are_refused():
    with pytest.raises(ValueError, match="2\\*\\*63"):
        SuffixCache().add(np.array([1, 2**63 + 5], dtype=np.uint64))


# ------------------------------------------------------------------------------ 16. every malformed file: ValueError


def _npz(path, compressed: bool = False, **arrays):
    fields = dict(format=FORMAT, max_tokens=np.array(100), tokens=np.array([1, 2, 3]), lengths=np.array([2, 1]))
    fields.update(arrays)
    (np.savez_compressed if compressed else np.savez)(path, **fields)
    return path


def _claiming(path, shape):
    """An .npz whose tokens member's header claims `shape` int64 elements but holds three."""
    members = {"format": FORMAT, "max_tokens": np.array(100), "lengths": np.array([2, 1])}
    with zipfile.ZipFile(path, "w") as archive:
        for name, array in members.items():
            buffer = io.BytesIO()
            np.save(buffer, array)
            archive.writestr(f"{name}.npy", buffer.getvalue())
        header = io.BytesIO()
        np.lib.format.write_array_header_1_0(header, {"descr": "<i8", "fortran_order": False, "shape": shape})
        archive.writestr("tokens.npy", header.getvalue() + np.arange(3).tobytes())
    return path


def _damaged(path):
    """A compressed cache file with bytes in the middle of its tokens' deflate stream overwritten."""
    _npz(path, compressed=True, tokens=np.arange(20000) % 977, lengths=np.array([20000]))
    raw = bytearray(path.read_bytes())
    start = raw.index(b"tokens.npy") + 200
    raw[start : start + 64] = bytes(range(64))
    path.write_bytes(bytes(raw))
    return path


MALFORMED = {
    "lengths overflowing into the token count": lambda p: _npz(p, lengths=np.array([2**63 - 1, 2**63 - 1, 5])),
    "damaged compressed file": _damaged,
    "non-scalar max_tokens": lambda p: _npz(p, max_tokens=np.array([10, 20])),
    "max_tokens beyond any cache": lambda p: _npz(p, max_tokens=np.array(2**40)),
    "header claiming 2**40 elements": lambda p: _claiming(p, (2**40,)),
    "header claiming more than it holds": lambda p: _claiming(p, (1000,)),
    "tokens beyond int64": lambda p: _npz(p, tokens=np.array([1, 2, 2**63 + 1], dtype=np.uint64)),
    "2-d lengths": lambda p: _npz(p, lengths=np.array([[2, 1]])),
    "float tokens": lambda p: _npz(p, tokens=np.array([1.0, 2.0, 3.0])),
    "format as a number": lambda p: _npz(p, format=np.array(7)),
    "a member missing": lambda p: np.savez(p, format=FORMAT, tokens=np.array([1])),
    "not a zip at all": lambda p: p.write_bytes(b"PK\x03\x04 truncated") or p,
}


@pytest.mark.parametrize("make", MALFORMED.values(), ids=MALFORMED.keys())
def test_every_malformed_file_raises_value_error(tmp_path, make):
    path = tmp_path / "cache.npz"
    make(path)
    with pytest.raises(ValueError, match="speculoos suffix cache file"):
        SuffixCache.load(path)


# ------------------------------------------------------------------------------- 17. load indexes all at once


def test_load_indexes_every_sequence_in_one_update(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    cache = SuffixCache(max_tokens=5000)
    cache.add_all([rng.integers(0, 50, size=n) for n in rng.integers(5, 40, size=400)])
    path = tmp_path / "cache.npz"
    cache.save(path)
    appends = []
    append = SuffixIndex.append
    monkeypatch.setattr(SuffixIndex, "append", lambda self, *a: appends.append(len(a[2])) or append(self, *a))
    loaded = SuffixCache.load(path)
    assert len(appends) == 1
    assert [s.tolist() for s in loaded.sequences()] == [s.tolist() for s in cache.sequences()]
    appends.clear()
    smaller = SuffixCache.load(path, max_tokens=100)  # only what stays is indexed
    assert smaller.num_tokens <= 100 and appends == [smaller.num_tokens + len(smaller)]
    assert [s.tolist() for s in smaller.sequences()] == [s.tolist() for s in cache.sequences()[-len(smaller):]]


def test_a_loaded_cache_holds_at_most_64_bytes_per_token(tmp_path):
    """What a loaded cache keeps (traced numpy and Python allocations): its tokens, six 32-bit keys and their
    columns, 56 bytes per token plus the sequences' books; before, 152 to 208."""
    rng = np.random.default_rng(1)
    cache = SuffixCache()
    cache.add_all([rng.integers(0, 5000, size=n) for n in rng.integers(100, 400, size=160)])
    path = tmp_path / "cache.npz"
    cache.save(path)
    del cache
    tracemalloc.start()
    try:
        loaded = SuffixCache.load(path)
        held, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert loaded.num_tokens > 30000 and held / loaded.num_tokens <= 64
