"""The stop decision (speculoos_hf/loop/stops.py) against the target's own generate(), float32 greedy.

A matrix over the stop causes (the length budget, always on; an EOS id; a stop string; a criterion of the user's own;
lockstep forced by a processor of the user's own that does nothing), each alone and in pairs, batch 1 and 3 (lockstep
on where a user object is present, off otherwise), K = 1 and K > the tokens left, an identical draft (every draft
accepted: stops fall inside rounds that also reach the budget) and a perturbed one (rounds accept and reject). Where
the user's criterion is present, it must also see exactly what stock shows it, call by call. Then issue 16's cases
1-3 by name, and the sampling shape of case 2.
"""

from __future__ import annotations

from itertools import combinations

import pytest
import torch
from transformers import LogitsProcessor, LogitsProcessorList, StoppingCriteria, StoppingCriteriaList

from conftest import PAD_ID, left_pad_batch, make_prompt, perturbed_copy, tiny_pair, tiny_tokenizer

CAUSES = ("eos", "stop_string", "criterion", "processor")
COMBOS = [()] + [(c,) for c in CAUSES] + list(combinations(CAUSES, 2))
MAX_NEW = 6


class Nothing(LogitsProcessor):
    """A processor of the user's own that changes nothing: in a batch it only forces lockstep."""

    def __call__(self, input_ids, scores):
        return scores


class RowBudgets(StoppingCriteria):
    """Row i stops after budgets[i] new tokens; every call's input_ids is recorded."""

    def __init__(self, prompt_len: int, budgets: list[int]):
        self.prompt_len, self.budgets, self.calls = prompt_len, torch.tensor(budgets), []

    def __call__(self, input_ids, scores, **kwargs):
        self.calls.append(input_ids.clone())
        return (input_ids.shape[1] - self.prompt_len) >= self.budgets


@pytest.fixture(scope="module")
def models():
    """(target, {"identical": an exact copy, "perturbed": conftest's perturbed copy, partial acceptance})."""
    target, perturbed = tiny_pair()
    return target, {"identical": perturbed_copy(target, noise=0.0), "perturbed": perturbed}


def _prompts(batch: int):
    if batch == 1:
        return make_prompt(5, seed=4), None  # greedy continuation 20 18 51 52 49 57: no repeats
    return left_pad_batch([make_prompt(n, seed=300 + n)[0] for n in (3, 6, 4)])


class Case:
    """One cell of the matrix: generate() keywords built from the plain greedy continuation, so every stop lands."""

    def __init__(self, target, combo: tuple, batch: int):
        self.ids, self.mask = _prompts(batch)
        L = self.ids.shape[1]
        plain = target.generate(self.ids, attention_mask=self.mask, do_sample=False, max_new_tokens=MAX_NEW)
        self.plain, self.combo, self.budgets = plain, combo, [3] if batch == 1 else [2, 99, 4]
        self.kw = dict(attention_mask=self.mask, do_sample=False, max_new_tokens=MAX_NEW, pad_token_id=PAD_ID)
        if "eos" in combo:  # row 0's 4th new token (and row 1's 5th in a batch)
            self.kw["eos_token_id"] = sorted({int(plain[0, L + 3]), int(plain[min(1, batch - 1), L + 4])})
        if "stop_string" in combo:  # the last row's 2nd new token
            self.kw.update(stop_strings=[tiny_tokenizer().decode(plain[-1, L + 1 : L + 2])], tokenizer=tiny_tokenizer())
        if "processor" in combo:
            self.kw["logits_processor"] = LogitsProcessorList([Nothing()])

    def run(self, target, **extra):
        """(sequences, the calls the user's criterion saw, or None)."""
        kw = dict(self.kw, **extra)
        criterion = RowBudgets(self.ids.shape[1], self.budgets) if "criterion" in self.combo else None
        if criterion is not None:
            kw["stopping_criteria"] = StoppingCriteriaList([criterion])
        out = target.generate(self.ids, **kw)
        return out, None if criterion is None else criterion.calls


@pytest.fixture(scope="module")
def stock(models):
    """Stock generate()'s result per (combo, batch), computed once."""
    target, _ = models
    done: dict = {}

    def get(combo, batch):
        if (combo, batch) not in done:
            case = Case(target, combo, batch)
            done[combo, batch] = case, *case.run(target)
        return done[combo, batch]

    return get


@pytest.mark.parametrize("draft", ["identical", "perturbed"])
@pytest.mark.parametrize("K", [1, 8])
@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("combo", COMBOS, ids=lambda c: "+".join(c) or "budget")
def test_stop_matrix_matches_stock(models, stock, combo, batch, K, draft):
    target, drafts = models
    case, ref, ref_calls = stock(combo, batch)
    out, calls = case.run(target, draft_model=drafts[draft], num_draft_tokens=K)
    assert torch.equal(out, ref)
    if ref_calls is not None:  # the user's criterion saw what stock showed it, call by call
        assert len(calls) == len(ref_calls)
        assert all(torch.equal(a, b) for a, b in zip(calls, ref_calls))


@pytest.mark.parametrize("cause", ["eos", "stop_string", "criterion"])
def test_each_stop_cause_bites(models, stock, cause):
    """The matrix is not vacuous: alone, each cause ends the single row before the budget."""
    case, ref, _ = stock((cause,), 1)
    assert ref.shape[1] < case.plain.shape[1]


# ------------------------------------------------------------------------------------ issue 16, cases 1 to 3


def _one_row(models):
    """Batch 1, greedy continuation 20 18 51 52 ... (no repeats), its 2nd and 4th new tokens."""
    target, drafts = models
    ids = make_prompt(5, seed=4)
    plain = target.generate(ids, do_sample=False, max_new_tokens=5)
    return target, drafts["identical"], ids, int(plain[0, 6]), int(plain[0, 8])


@pytest.mark.parametrize("stop", ["stop_string", "eos_after_stop_string", "criterion"])
def test_case1_stop_inside_a_round_that_reaches_the_budget(models, stop):
    """Identical draft, K=4, max_new_tokens=5: one round reaches the budget; the stop on the 2nd new token wins."""
    target, same, ids, second, fourth = _one_row(models)
    tok = tiny_tokenizer()
    kw = dict(do_sample=False, max_new_tokens=5, pad_token_id=PAD_ID)
    if stop == "criterion":
        make = lambda: dict(stopping_criteria=StoppingCriteriaList([RowBudgets(5, [2])]))  # noqa: E731
    else:
        make = lambda: dict(stop_strings=[tok.decode([second])], tokenizer=tok)  # noqa: E731
        if stop == "eos_after_stop_string":
            kw["eos_token_id"] = fourth
    ref = target.generate(ids, **kw, **make())
    assert ref.shape[1] == 5 + 2
    assert torch.equal(target.generate(ids, draft_model=same, num_draft_tokens=4, **kw, **make()), ref)


@pytest.mark.parametrize("user_object", ["criterion", "processor"])
def test_case2_lockstep_last_round_is_not_cut(models, user_object):
    """B=2 with a user object that never acts, identical draft, K=4, max_new_tokens=5: 5 new tokens per row."""
    target, drafts = models
    ids = make_prompt(5, seed=1, batch=2)
    make = {
        "criterion": lambda: dict(stopping_criteria=StoppingCriteriaList([RowBudgets(5, [99, 99])])),
        "processor": lambda: dict(logits_processor=LogitsProcessorList([Nothing()])),
    }[user_object]
    kw = dict(do_sample=False, max_new_tokens=5)
    ref = target.generate(ids, **kw, **make())
    assert ref.shape[1] == 5 + 5
    assert torch.equal(target.generate(ids, draft_model=drafts["identical"], num_draft_tokens=4, **kw, **make()), ref)


def test_case3_lockstep_pads_after_a_criterion_stop(models):
    """Lockstep with an EOS id: the criterion stops row 0 after 2 tokens mid-round while row 1 runs on; stock writes
    the pad id after row 0's stop."""
    target, drafts = models
    ids = make_prompt(5, seed=1, batch=2)
    plain = target.generate(ids, do_sample=False, max_new_tokens=8)
    unused = next(i for i in range(60) if i not in set(plain.flatten().tolist()))
    kw = dict(do_sample=False, max_new_tokens=8, eos_token_id=unused, pad_token_id=PAD_ID)
    make = lambda: StoppingCriteriaList([RowBudgets(5, [2, 99])])  # noqa: E731
    ref = target.generate(ids, stopping_criteria=make(), **kw)
    assert ref[0, 7:].eq(PAD_ID).all() and not ref[1].eq(PAD_ID).any()
    for draft in drafts.values():
        out = target.generate(ids, draft_model=draft, num_draft_tokens=4, stopping_criteria=make(), **kw)
        assert torch.equal(out, ref)


def test_case3_criterion_sees_pad_after_eos(models):
    """Lockstep: row 0 ends on EOS inside a round; the criterion called in that round sees the pad id after the
    EOS (as stock shows it), not the row's sampled tokens."""
    target, drafts = models
    ids = make_prompt(5, seed=4, batch=2)
    plain = target.generate(ids, do_sample=False, max_new_tokens=8)
    eos = int(plain[0, 6])  # row 0's 2nd new token; row 1 never emits it
    assert eos not in plain[1, 5:].tolist()
    kw = dict(do_sample=False, max_new_tokens=8, eos_token_id=eos, pad_token_id=PAD_ID)
    seen = RowBudgets(5, [99, 99])
    ref = target.generate(ids, stopping_criteria=StoppingCriteriaList([seen]), **kw)
    assert any(c[0, -1] == PAD_ID for c in seen.calls)
    for draft in drafts.values():
        ours = RowBudgets(5, [99, 99])
        criteria = StoppingCriteriaList([ours])
        out = target.generate(ids, draft_model=draft, num_draft_tokens=4, stopping_criteria=criteria, **kw)
        assert torch.equal(out, ref)
        assert len(ours.calls) == len(seen.calls) and all(map(torch.equal, ours.calls, seen.calls))


class BanPad(LogitsProcessor):
    """A user processor (so: lockstep) that keeps the pad id from being sampled: a pad then only means padding."""

    def __call__(self, input_ids, scores):
        scores = scores.clone()
        scores[:, PAD_ID] = -float("inf")
        return scores


@pytest.mark.parametrize("draft", ["identical", "perturbed"])
@pytest.mark.parametrize("with_eos", [False, True])
def test_case2_sampling_lockstep_rows_keep_their_length_and_eos(models, with_eos, draft):
    """Sampling, T=3, lockstep (a user criterion that never fires): no EOS id, every row gets max_new_tokens real
    tokens; with EOS ids, every row runs the whole budget or ends on an EOS followed by pads. The identical draft
    has every draft accepted, so rounds reach the budget; the perturbed one has rounds that reject."""
    target, drafts = models
    B, T = 200, 10
    ids = make_prompt(4, seed=77).expand(B, -1).clone()
    eos = list(range(8)) if with_eos else None
    torch.manual_seed(0)
    out = target.generate(ids, draft_model=drafts[draft], num_draft_tokens=4, do_sample=True, temperature=3.0,
                          top_k=0, max_new_tokens=T, eos_token_id=eos, pad_token_id=PAD_ID,
                          logits_processor=LogitsProcessorList([BanPad()]),
                          stopping_criteria=StoppingCriteriaList([RowBudgets(4, [T + 1] * B)]))
    new = out[:, 4:]  # [B, <= T]
    is_pad = new.eq(PAD_ID)
    if not with_eos:
        assert new.shape[1] == T and not is_pad.any()
        return
    is_eos = torch.isin(new, torch.tensor(eos))
    ended = is_eos.any(1)
    first_eos = torch.where(ended, is_eos.int().argmax(1), new.shape[1])  # [B]
    after = torch.arange(new.shape[1])[None] > first_eos[:, None]  # [B, n]
    assert torch.equal(is_pad, after)  # pads exactly after each row's first EOS, nowhere else
    assert 0.2 * B < int(ended.sum()) < B  # both kinds of rows are there
    assert new.shape[1] == T or ended.all()
