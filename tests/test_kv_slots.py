"""KVSlots keeps its own books: callers say which slots to keep (`keep`, `keep_first`) and which rows stay
(`select_rows`), and every real token's logits must equal those of a clean forward of its row alone, in both
layouts (compact for sliding windows, append for the others). Plus the sliding-window batch in which a row that is
all padding is left alone when another row ends on its first new token: the output must equal the target's own
generate(), with every kind of drafter.
"""

from __future__ import annotations

import random

import pytest
import torch

from conftest import PAD_ID, left_pad_batch, make_prompt, perturbed_copy
from speculoos_hf import enable_speculative
from speculoos_hf.loop.kv_slots import KVSlots
from test_architectures import tiny_arch

DRAFTERS = {
    "draft_model": lambda draft: dict(draft_model=draft, num_draft_tokens=3),
    "prompt_lookup": lambda draft: dict(prompt_lookup_num_tokens=3),
    "hybrid": lambda draft: dict(draft_model=draft, num_draft_tokens=3, prompt_lookup_num_tokens=3),
}


@pytest.fixture(scope="module")
def mistral_w3():
    """A tiny Mistral with a window of 3 slots (the speculative generate() on) and a perturbed-copy draft."""
    target = enable_speculative(tiny_arch("mistral", window=3))
    return target, perturbed_copy(target, noise=0.1, seed=1)


def _prompts(lengths) -> tuple[torch.Tensor, torch.Tensor]:
    rows = [make_prompt(n, seed=n)[0] if n else torch.zeros(0, dtype=torch.long) for n in lengths]
    return left_pad_batch(rows)


@pytest.mark.parametrize("lengths", [(0, 3), (0, 0, 4), (0, 5, 2)])
@pytest.mark.parametrize("drafter", list(DRAFTERS))
def test_all_padding_row_while_another_ends_on_its_first_token(mistral_w3, drafter, lengths):
    """Once the row with tokens ends on EOS in the first round, only rows without a real token in the cache may be
    left: the sliding cache is cropped to nothing (it used to raise "rolled back past its recorded states")."""
    target, draft = mistral_w3
    ids, mask = _prompts(lengths)
    P = ids.shape[1]
    free = target.generate(ids, attention_mask=mask, do_sample=False, max_new_tokens=6)
    eos = int(free[lengths.index(max(lengths)), P])  # the longest prompt's first greedy token
    ref = target.generate(ids, attention_mask=mask, do_sample=False, max_new_tokens=6, eos_token_id=eos)
    assert int(ref[lengths.index(max(lengths)), P]) == eos
    spec = target.generate(ids, attention_mask=mask, do_sample=False, max_new_tokens=6, eos_token_id=eos,
                           **DRAFTERS[drafter](draft))
    assert torch.equal(spec, ref), f"\n{spec.tolist()}\n!= target alone\n{ref.tolist()}"


def _clean_logits(model, row: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=torch.tensor([row])).logits[0].float()  # [n, V]


@pytest.mark.parametrize("name", ["mistral", "llama"])
def test_only_rows_without_tokens_left(name):
    """A row that is all padding stays alone after the others leave: the cache crops to nothing, then the row's
    first tokens see exactly what a clean forward sees."""
    model = tiny_arch(name, window=3)
    kv = KVSlots(model)
    kv.start(2)
    prompt = make_prompt(7, seed=2)[0].tolist()
    ids = torch.tensor([[PAD_ID] * 7, prompt])
    kv.forward(ids, (torch.arange(2)[:, None] > 0).long().expand(2, 7), logits_to_keep=1)
    kv.keep(kv.num_slots, [0, 0])
    kv.select_rows(torch.tensor([0]), [0])
    assert kv.real_tokens() == [0] and kv.num_slots == 0
    row = make_prompt(5, seed=3)[0].tolist()
    logits = kv.forward(torch.tensor([row]), None, logits_to_keep=5)
    torch.testing.assert_close(logits[0], _clean_logits(model, row), atol=1e-4, rtol=1e-4)


def _round(kv: KVSlots, rng: random.Random, rows: list[list[int]]) -> tuple[list[list[int]], list[list]]:
    """Feed a chunk of pending tokens (holes in front, a row may have none) and 0-3 single tokens per row.
    Returns the fed rows and each row's logits per fed real token (None for holes)."""
    B = len(rows)
    pending = [rng.randrange(0, 4) for _ in range(B)]
    w = max(max(pending), 1)
    chunk = [[PAD_ID] * (w - p) + [rng.randrange(60) for _ in range(p)] for p in pending]
    tokens = torch.tensor(chunk)
    logits = kv.forward(tokens, (tokens != PAD_ID).long(), logits_to_keep=w)
    fed, outs = [list(r) for r in rows], [[] for _ in range(B)]
    for b in range(B):
        for j in range(w - pending[b], w):
            fed[b].append(chunk[b][j])
            outs[b].append(logits[b, j])
    for _ in range(rng.randrange(0, 4)):
        new = torch.tensor([[rng.randrange(60)] for _ in range(B)])
        out = kv.forward(new, None, 1)
        for b in range(B):
            fed[b].append(int(new[b, 0]))
            outs[b].append(out[b, -1])
    return fed, outs


@pytest.mark.parametrize("name", ["mistral", "gemma2", "llama"])
def test_books_match_clean_rows(name):
    """Random rounds: a chunk with holes, single tokens, then a prefix kept either by slots (`keep`, as the target
    and the draft model) or by real tokens (`keep_first`, as the other-tokenizer draft), and rows leaving. One row
    starts all padding. Every real token's logits equal a clean forward of its row."""
    model = tiny_arch(name)
    rng = random.Random(1)
    kv = KVSlots(model)
    kv.start(4)
    rows = [[], *[[rng.randrange(60) for _ in range(n)] for n in (2, 7, 5)]]
    width = max(map(len, rows))
    ids = torch.tensor([[PAD_ID] * (width - len(r)) + r for r in rows])
    kv.forward(ids, (ids != PAD_ID).long(), logits_to_keep=1)
    checked = 0
    for step in range(10):
        first = kv.num_slots
        fed, outs = _round(kv, rng, rows)
        for b in range(len(rows)):
            if outs[b]:
                clean = _clean_logits(model, fed[b])[len(rows[b]):]
                torch.testing.assert_close(torch.stack(outs[b]), clean, atol=1e-4, rtol=1e-4)
                checked += len(outs[b])
        if step % 2:  # (a sliding layer keeps no states from before the round: compact rows keep those tokens)
            n_real = [rng.randrange(max(len(r) - (0 if kv.compact else 2), 0), len(f) + 1) for r, f in zip(rows, fed)]
            kv.keep_first(n_real)
            rows = [f[:n] for f, n in zip(fed, n_real)]
        else:  # keep a prefix of the slots appended this round (`first` and on; the chunk's holes stay holes)
            appended = kv.num_slots - first
            n_slots = [rng.randrange(0, appended + 1) for _ in rows]
            kv.keep(first, n_slots)
            rows = [f[: len(r) + max(0, n - (appended - (len(f) - len(r))))] for r, f, n in zip(rows, fed, n_slots)]
        if step == 6:
            kv.select_rows(torch.tensor([0, 2, 3]), [0, 2, 3])
            rows = [rows[i] for i in (0, 2, 3)]
        assert kv.real_tokens() == [len(r) for r in rows]
        assert kv.num_slots == max(map(len, rows)) or not kv.compact
        for layer in kv.cache.layers:  # sliding layers stay bounded by their window
            if hasattr(layer, "sliding_window") and layer.keys is not None:
                assert layer.keys.shape[-2] <= layer.sliding_window - 1
    assert checked > 60
