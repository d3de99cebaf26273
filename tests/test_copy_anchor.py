"""Prompt lookup's anchor rule (drafters/copy_anchor.py): after a copy breaks, it resumes where it broke. Replayed on
a synthetic rename (fewer target passes than the suffix rule alone), greedy equality with stock generate(), and a
G-test with power in which anchored copies are proposed."""

from __future__ import annotations

import numpy as np
import torch

import speculoos_hf.drafters.copy_anchor as copy_anchor
import speculoos_hf.loop.decoding as decoding
from conftest import tiny_model
from gtest import ALPHA, _always_accept, _generate, _processors, exact_distribution, g_test
from speculoos_hf import enable_speculative
from speculoos_hf.bench.lookup_replay import replay_lookup
from speculoos_hf.drafters.prompt_lookup import PromptLookupDrafter


def _renamed(seed: int = 0, length: int = 120, old: int = 7, new: int = 8):
    """(prompt, output): a random 'code' of ids 10..40 with `old` at every 6th place, and the same with `new`."""
    rng = np.random.default_rng(seed)
    code = rng.integers(10, 40, size=length)
    code[::6] = old
    renamed = np.where(code == old, new, code)
    return [1, 2, 3] + code.tolist(), renamed.tolist()


def test_a_rename_resumes_past_each_renamed_token():
    """Each renamed token costs the suffix rule a copy from the wrong place (the new id matches nothing, the
    one-token matches after it are ambiguous); anchored, the copy resumes one source token past the old id."""
    prompt, output = _renamed()
    plain = replay_lookup(prompt, output, PromptLookupDrafter(16, anchored=False))
    anchored = replay_lookup(prompt, output, PromptLookupDrafter(16))
    assert anchored.tokens_per_pass > 1.5 * plain.tokens_per_pass, (anchored.tokens_per_pass, plain.tokens_per_pass)
    assert anchored.tokens_per_pass > 3.5


def test_an_anchored_copy_is_what_followed_the_renamed_token():
    """Every fifth token of the rename is new: an anchored copy (priced as a match of ANCHOR_MATCH) that resumes
    past the old id keeps the five source tokens up to the next one."""
    prompt, output = _renamed(seed=1)
    rounds = replay_lookup(prompt, output, PromptLookupDrafter(16)).rounds
    anchored = [r for r in rounds if r.match == copy_anchor.ANCHOR_MATCH]
    assert len(anchored) > 10
    assert sum(r.accepted >= 4 for r in anchored) >= 0.8 * len(anchored)


def test_anchored_copies_greedy_equal_stock(monkeypatch):
    used = _count_anchored(monkeypatch)
    target = enable_speculative(tiny_model("llama", logit_scale=2.0))
    prompt, _ = _renamed(length=60)
    ids = torch.tensor([prompt[:40], prompt[10:50]]) % 60
    ref = target.generate(ids, do_sample=False, max_new_tokens=40)
    for tree in ("auto", False):
        out = target.generate(ids, do_sample=False, max_new_tokens=40, prompt_lookup_num_tokens=8, draft_tree=tree)
        assert torch.equal(out, ref), tree
    assert sum(used) > 0


def test_anchored_copies_sampling_exact(gtest_pair, monkeypatch):
    """A G-test with lookup alone where anchors steer copies (counted); power: an always-accept rule rejects."""
    target, _ = gtest_pair
    used = _count_anchored(monkeypatch)
    prompt = [1, 3, 0, 2, 1, 3, 2, 0, 1, 3, 0]
    expected = exact_distribution(target, prompt, _processors(temperature=0.9))
    kw = dict(prompt_lookup_num_tokens=3, num_draft_tokens=3, temperature=0.9, draft_tree=False)
    (spec,) = _generate(target, [prompt], 12_000, seed=5, **kw)
    assert sum(used) > 100
    assert g_test(spec, expected) > ALPHA
    monkeypatch.setattr(decoding, "speculative_verify", _always_accept)
    (broken,) = _generate(target, [prompt], 12_000, seed=6, **kw)
    assert g_test(broken, expected) < ALPHA


def _count_anchored(monkeypatch) -> list[int]:
    """Records how many rows each call of the anchor rule steered."""
    used, original = [], copy_anchor.CopyAnchors._resumed

    def resumed(self, *args):
        out, rows = original(self, *args)
        used.append(int(rows.sum()))
        return out, rows

    monkeypatch.setattr(copy_anchor.CopyAnchors, "_resumed", resumed)
    return used


def test_an_anchor_points_into_the_cache_too():
    """A second request whose answer is the first one's with a rename: its copies come from the SuffixCache, and
    so do its anchors (the rename breaks copies from the cache as it does copies from the prompt)."""
    from speculoos_hf import SuffixCache

    prompt, first = _renamed(seed=2, old=7, new=8)
    second = [9 if t == 8 else t for t in first]  # the first answer again, renamed once more
    request = [1, 2, 4, 5]  # no code in the second prompt: only the cache holds it
    tokens_per_pass = {}
    for anchored in (False, True):
        cache = SuffixCache()
        replay_lookup(prompt, first, PromptLookupDrafter(16, cache=cache, anchored=anchored))
        again = replay_lookup(request, second, PromptLookupDrafter(16, cache=cache, anchored=anchored))
        tokens_per_pass[anchored] = again.tokens_per_pass
    assert tokens_per_pass[True] > 1.5 * tokens_per_pass[False], tokens_per_pass
