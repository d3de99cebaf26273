"""The user's own logits processors and stopping criteria with per-row state, in batches: they must see what stock
generate() shows them (the whole batch in its own row order), so the output equals stock's (float32 greedy) or its
distribution is the target's (sampling). Also stock's rule for rows stopped early when no EOS id is set."""

from __future__ import annotations

import pytest
import torch
from transformers import LogitsProcessor, LogitsProcessorList, StoppingCriteria, StoppingCriteriaList

from conftest import PAD_ID, left_pad_batch, make_prompt, tiny_tokenizer

# Models: conftest's `pair` fixture (a Llama with vocabulary 64 and its perturbed copy).


def _batch():
    return left_pad_batch([make_prompt(n, seed=300 + n)[0] for n in (3, 6, 4)])


class RowBias(LogitsProcessor):
    """A [B, V] bias, one row per batch row: only right if row i of the scores is batch row i."""

    def __init__(self, bias: torch.Tensor):
        self.bias = bias

    def __call__(self, input_ids, scores):
        return scores + self.bias


class PerRowRule(LogitsProcessor):
    """A loop over the batch with a rule per row index: row i may not emit tokens congruent to i mod 3."""

    def __call__(self, input_ids, scores):
        scores = scores.clone()
        for i in range(scores.shape[0]):
            scores[i, i % 3 :: 3] = -float("inf")
        return scores


class StopTokenPerRow(StoppingCriteria):
    """Row i stops when its last token equals stop_ids[i] (a [B] tensor)."""

    def __init__(self, stop_ids: torch.Tensor):
        self.stop_ids = stop_ids

    def __call__(self, input_ids, scores, **kwargs):
        return input_ids[:, -1] == self.stop_ids


class BudgetPerRow(StoppingCriteria):
    """Row i stops after budgets[i] new tokens."""

    def __init__(self, prompt_len: int, budgets: torch.Tensor):
        self.prompt_len, self.budgets = prompt_len, budgets

    def __call__(self, input_ids, scores, **kwargs):
        return (input_ids.shape[1] - self.prompt_len) >= self.budgets


@pytest.mark.parametrize("K", [1, 4])
def test_row_bias_processor_matches_stock(pair, K):
    target, draft = pair
    ids, mask = _batch()
    bias = torch.zeros(3, 64)
    bias[0, 5], bias[1, 17], bias[2, 33] = 3.0, 3.0, 3.0
    kw = dict(attention_mask=mask, do_sample=False, max_new_tokens=14,
              logits_processor=LogitsProcessorList([RowBias(bias)]))
    ref = target.generate(ids, **kw)
    assert not torch.equal(ref, target.generate(ids, attention_mask=mask, do_sample=False, max_new_tokens=14))
    out = target.generate(ids, draft_model=draft, num_draft_tokens=K, **kw)
    assert torch.equal(out, ref)


def test_per_row_rule_processor_matches_stock(pair):
    target, draft = pair
    ids, mask = _batch()
    kw = dict(attention_mask=mask, do_sample=False, max_new_tokens=12,
              logits_processor=LogitsProcessorList([PerRowRule()]))
    ref = target.generate(ids, **kw)
    out = target.generate(ids, draft_model=draft, num_draft_tokens=3, **kw)
    assert torch.equal(out, ref)
    for i in range(3):
        assert all(t % 3 != i for t in out[i, ids.shape[1]:].tolist())


@pytest.mark.parametrize("with_eos", [False, True])
def test_stop_token_per_row_matches_stock(pair, with_eos):
    """Each row has its own stop token; with no EOS id stock keeps appending a stopped row's real tokens."""
    target, draft = pair
    ids, mask = _batch()
    plain = target.generate(ids, attention_mask=mask, do_sample=False, max_new_tokens=16)
    L = ids.shape[1]
    stop_ids = torch.tensor([plain[0, L + 2], plain[1, L + 9], plain[2, L + 5]])
    kw = dict(attention_mask=mask, do_sample=False, max_new_tokens=16, pad_token_id=PAD_ID)
    if with_eos:
        unused = next(i for i in range(60) if i not in set(plain.flatten().tolist()))
        kw["eos_token_id"] = unused
    crit = lambda: StoppingCriteriaList([StopTokenPerRow(stop_ids)])  # noqa: E731
    ref = target.generate(ids, stopping_criteria=crit(), **kw)
    assert ref.shape[1] < plain.shape[1]  # the criterion really stopped the batch early
    out = target.generate(ids, draft_model=draft, num_draft_tokens=4, stopping_criteria=crit(), **kw)
    assert torch.equal(out, ref)


@pytest.mark.parametrize("K", [2, 5])
def test_budget_per_row_without_eos_matches_stock(pair, K):
    """Item 7: no EOS id, one row stops early: stock keeps its real next tokens (never pad, never token 0)."""
    target, draft = pair
    ids, mask = _batch()
    L = ids.shape[1]
    crit = lambda: StoppingCriteriaList([BudgetPerRow(L, torch.tensor([3, 11, 7]))])  # noqa: E731
    kw = dict(attention_mask=mask, do_sample=False, max_new_tokens=20)
    ref = target.generate(ids, stopping_criteria=crit(), **kw)
    assert ref.shape[1] == L + 11
    out = target.generate(ids, draft_model=draft, num_draft_tokens=K, stopping_criteria=crit(), **kw)
    assert torch.equal(out, ref)


def test_stop_string_one_row_without_eos_matches_stock(pair):
    """Item 7 with a stop string (a built-in criterion, no lockstep): the stopped row runs along as in stock."""
    target, draft = pair
    tok = tiny_tokenizer()
    ids, mask = _batch()
    plain = target.generate(ids, attention_mask=mask, do_sample=False, max_new_tokens=16)
    word = tok.decode(plain[0, ids.shape[1] + 3 : ids.shape[1] + 4])
    kw = dict(attention_mask=mask, do_sample=False, max_new_tokens=16, stop_strings=[word], tokenizer=tok)
    ref = target.generate(ids, **kw)
    out = target.generate(ids, draft_model=draft, num_draft_tokens=3, **kw)
    assert torch.equal(out, ref)


def test_lockstep_sampling_stays_exact(pair, monkeypatch):
    """With a user processor in a batch, rows advance in lockstep; the sampled distribution of the first tokens
    still matches the target's (a quick chi-square on the first new token over many rows)."""
    from scipy.stats import chisquare

    target, draft = pair
    n = 3000
    prompt = make_prompt(4, seed=77)
    ids = prompt.expand(n, -1).clone()
    procs = LogitsProcessorList([RowBias(torch.zeros(n, 64))])
    with torch.no_grad():
        p = torch.softmax(target(ids[:1]).logits[0, -1].float(), -1)
    torch.manual_seed(0)
    out = target.generate(ids, draft_model=draft, num_draft_tokens=3, do_sample=True, top_k=0, max_new_tokens=2,
                          logits_processor=procs)
    second = out[:, -1]  # drawn after a lockstep-truncated round in many rows
    first = out[:, -2]
    counts = torch.bincount(first, minlength=64).double()
    keep = p * n >= 5
    expected = p[keep].double() * n
    stat = chisquare(counts[keep].numpy(), expected.numpy() * counts[keep].sum().item() / expected.sum().item())
    assert stat.pvalue > 1e-3
    assert second.unique().numel() > 1
