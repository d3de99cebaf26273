"""Exactness of speculative sampling, proven statistically against distributions computed exactly.

A tiny target with a 4-token vocabulary: every continuation of T tokens is enumerated and its target-only
probability computed with the same logits processors generate() applies. Thousands of speculative samples
(one batched generate call) are compared with a G-test at a fixed significance level, with fixed seeds, so
the outcome is deterministic. Each case also shows the test's power: the same test on a known-wrong sampler
(draft-only samples, or a rule that accepts every draft) must reject.
"""

from __future__ import annotations

import itertools
from collections import Counter

import pytest
import torch
from scipy.stats import power_divergence
from transformers import LlamaConfig, LlamaForCausalLM, LogitsProcessorList
from transformers.generation.logits_process import (
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

import speculoos_hf.decoding as decoding
from speculoos_hf import enable_speculative

V = 4  # vocabulary
T = 5  # new tokens: 4**5 = 1024 continuations
N = 12_000  # samples per test
ALPHA = 1e-3  # significance level of every goodness-of-fit test
PAD = V  # outside the vocabulary, so padded outputs cannot be confused with tokens


def _model(seed: int, logit_scale: float = 6.0, n_ids: int = V + 1) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=n_ids,  # V tokens + the pad id, never produced (its logit is pushed to -inf below)
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        bos_token_id=None,
        eos_token_id=None,
        pad_token_id=PAD if n_ids > PAD else None,
    )
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(logit_scale)
    if n_ids <= PAD:
        return model
    # The pad id must never be sampled: a processor-free way is a huge negative bias on its logit.
    model.lm_head.register_forward_hook(_mask_pad)
    return model


def _mask_pad(module, inputs, output):
    output[..., PAD] = -1e9
    return output


@pytest.fixture(scope="module")
def target():
    return enable_speculative(_model(0))


@pytest.fixture(scope="module")
def draft(target):
    """The target with noisy weights: acceptance well between 0 and 1, distribution visibly different."""
    d = _model(0)
    torch.manual_seed(123)
    with torch.no_grad():
        for p in d.parameters():
            p.add_(0.6 * p.std() * torch.randn_like(p))
    return d


def _processors(temperature=1.0, top_k=None, top_p=None, repetition_penalty=None) -> LogitsProcessorList:
    """The list generate() builds for these arguments, in generate()'s order."""
    procs = LogitsProcessorList()
    if repetition_penalty is not None:
        procs.append(RepetitionPenaltyLogitsProcessor(repetition_penalty))
    if temperature != 1.0:
        procs.append(TemperatureLogitsWarper(temperature))
    if top_k is not None:
        procs.append(TopKLogitsWarper(top_k))
    if top_p is not None:
        procs.append(TopPLogitsWarper(top_p))
    return procs


@torch.no_grad()
def exact_distribution(model, prompt: list[int], processors, eos: int | None = None) -> dict[tuple, float]:
    """P(continuation) under target-only sampling: enumerate all V**T continuations, truncate at EOS."""
    conts = torch.tensor(list(itertools.product(range(V), repeat=T)))  # [V**T, T]
    P = len(prompt)
    seqs = torch.cat([torch.tensor(prompt).expand(len(conts), P), conts], dim=1)  # [V**T, P+T]
    logits = model(input_ids=seqs).logits[:, P - 1 : P + T - 1].float()  # [V**T, T, V+1]
    logp = torch.zeros(len(conts), dtype=torch.float64)
    for j in range(T):
        scores = processors(seqs[:, : P + j], logits[:, j].clone())
        probs = torch.softmax(scores, dim=-1).double()
        logp += probs.gather(1, conts[:, j : j + 1]).squeeze(1).log()
    dist: dict[tuple, float] = Counter()
    for cont, lp in zip(conts.tolist(), logp.exp().tolist()):
        dist[_outcome(cont, eos)] += lp  # continuations after EOS sum to 1, so summing is exact
    return dict(dist)


def _outcome(tokens: list[int], eos: int | None) -> tuple:
    out = []
    for t in tokens:
        if t == PAD:
            break
        out.append(t)
        if t == eos:
            break
    return tuple(out)


def g_test(samples: list[tuple], expected: dict[tuple, float]) -> float:
    """G-test p-value of observed outcomes against exact probabilities (bins with expected < 5 pooled)."""
    counts = Counter(samples)
    impossible = [o for o in counts if expected.get(o, 0.0) == 0.0]
    if impossible:
        return 0.0  # an outcome of probability zero was sampled: certainly wrong
    n = len(samples)
    obs, exp, pool_obs, pool_exp = [], [], 0, 0.0
    for outcome, p in expected.items():
        if n * p >= 5:
            obs.append(counts.get(outcome, 0))
            exp.append(n * p)
        else:
            pool_obs += counts.get(outcome, 0)
            pool_exp += n * p
    if pool_exp > 0:
        obs.append(pool_obs)
        exp.append(pool_exp)
    scale = n / sum(exp)  # float rounding of the exact probabilities
    return float(power_divergence(obs, [e * scale for e in exp], lambda_="log-likelihood").pvalue)


def _generate(model, prompts: list[list[int]], n_each: int, seed: int, **kwargs) -> list[list[tuple]]:
    """n_each samples for each prompt, all in one left-padded batch; returns outcomes per prompt."""
    width = max(map(len, prompts))
    ids = torch.tensor([[PAD] * (width - len(p)) + p for p in prompts for _ in range(n_each)])
    mask = (ids != PAD).long()
    torch.manual_seed(seed)
    out = model.generate(
        ids, attention_mask=mask, do_sample=True, max_new_tokens=T, pad_token_id=PAD, top_k=kwargs.pop("top_k", 0), **kwargs
    )
    new = out[:, width:].tolist()
    eos = kwargs.get("eos_token_id")
    outcomes = [_outcome(row, eos) for row in new]
    return [outcomes[i * n_each : (i + 1) * n_each] for i in range(len(prompts))]


def _always_accept(draft_tokens, draft_probs, target_probs, uniform, exp_noise):
    """A broken rule: every draft accepted, bonus token from p_K."""
    B, K = draft_tokens.shape
    n = torch.full((B,), K, dtype=torch.long, device=draft_tokens.device)
    return n, torch.argmax(target_probs[:, K] / exp_noise, dim=-1)


CASES = {
    "plain_T1": dict(settings={}, K=4),
    "temperature": dict(settings=dict(temperature=0.6), K=3),
    "top_k": dict(settings=dict(top_k=2), K=3),
    "top_p": dict(settings=dict(top_p=0.7), K=3),
    "repetition_penalty": dict(settings=dict(repetition_penalty=1.8), K=3),
    "K1": dict(settings={}, K=1),
    "K5_temperature_top_p": dict(settings=dict(temperature=1.3, top_p=0.9), K=5),
    "eos_in_block": dict(settings={}, K=4, eos=2),
    "adaptive_lookahead": dict(settings=dict(temperature=0.8), K=5, extra=dict(draft_confidence_threshold=0.7)),
}
PROMPT = [1, 3, 0]


@pytest.mark.parametrize("name", list(CASES))
def test_speculative_matches_exact_distribution(name, target, draft, monkeypatch):
    case = CASES[name]
    settings, K, eos = case["settings"], case["K"], case.get("eos")
    procs = _processors(**settings)
    expected = exact_distribution(target, PROMPT, procs, eos)
    gen_kwargs = dict(settings, eos_token_id=eos) if eos is not None else dict(settings)

    extra = case.get("extra", {})
    (spec,) = _generate(target, [PROMPT], N, seed=1, draft_model=draft, num_draft_tokens=K, **gen_kwargs, **extra)
    stats = target.speculative_stats
    assert 0.05 < stats.acceptance_rate < 0.98, "the draft must be neither useless nor perfect for a meaningful test"
    if extra:  # the threshold really shortened some rounds
        row_rounds = sum(r.target_forward_passes for r in stats.per_row)
        assert stats.draft_tokens_proposed < K * row_rounds
    p_spec = g_test(spec, expected)
    assert p_spec > ALPHA, f"{name}: speculative samples deviate from the exact target distribution (p={p_spec:.2e})"

    # power 1: samples from the draft alone must be rejected by the same test
    (draft_only,) = _generate(enable_speculative(draft), [PROMPT], N, seed=2, **gen_kwargs)
    p_draft = g_test(draft_only, expected)
    assert p_draft < ALPHA, f"{name}: the test cannot tell draft-only samples apart (p={p_draft:.2e})"

    # power 2: a rule that accepts every draft must be rejected too
    monkeypatch.setattr(decoding, "speculative_verify", _always_accept)
    (broken,) = _generate(target, [PROMPT], N, seed=3, draft_model=draft, num_draft_tokens=K, **gen_kwargs, **extra)
    p_broken = g_test(broken, expected)
    assert p_broken < ALPHA, f"{name}: the test cannot detect an always-accept rule (p={p_broken:.2e})"

    if eos is not None:  # EOS really happened inside draft blocks
        assert any(len(o) < T for o in spec)


def test_batched_rows_with_different_prompt_lengths(target, draft, monkeypatch):
    """One left-padded batch, prompts of lengths 1, 3 and 6: each row group has its own exact distribution."""
    prompts = [[2], [1, 3, 0], [3, 3, 1, 0, 2, 1]]
    settings = dict(temperature=0.8, repetition_penalty=1.3)
    procs = _processors(**settings)
    groups = _generate(target, prompts, N // 2, seed=4, draft_model=draft, num_draft_tokens=4, **settings)
    per_row = target.speculative_stats.per_row
    assert len(per_row) == 3 * (N // 2)
    for prompt, samples in zip(prompts, groups):
        p = g_test(samples, exact_distribution(target, prompt, procs))
        assert p > ALPHA, f"prompt {prompt}: batched speculative samples deviate (p={p:.2e})"

    monkeypatch.setattr(decoding, "speculative_verify", _always_accept)
    groups = _generate(target, prompts, N // 2, seed=5, draft_model=draft, num_draft_tokens=4, **settings)
    worst = max(g_test(s, exact_distribution(target, pr, procs)) for pr, s in zip(prompts, groups))
    assert worst < ALPHA, "the batched test cannot detect an always-accept rule"


class _LenOnly:
    """Stands for a tokenizer shared by both models: generate() only needs its length for the vocabulary check."""

    def __init__(self, n: int):
        self.n = n

    def __len__(self) -> int:
        return self.n


@pytest.mark.parametrize("draft_ids", [V, V + 3], ids=["draft_lacks_pad_id", "draft_has_ids_target_lacks"])
def test_vocab_size_mismatch_stays_exact(draft_ids, target, monkeypatch):
    """Padded-embedding pairs: ids only one model has get probability 0 there; the output is still exactly p."""
    draft = _model(7, n_ids=draft_ids)
    expected = exact_distribution(target, PROMPT, _processors(temperature=0.9))
    kwargs = dict(draft_model=draft, num_draft_tokens=3, temperature=0.9, tokenizer=_LenOnly(V))
    (spec,) = _generate(target, [PROMPT], N, seed=6, **kwargs)
    assert 0.05 < target.speculative_stats.acceptance_rate < 0.98
    p = g_test(spec, expected)
    assert p > ALPHA, f"vocab {draft_ids} vs {V + 1}: speculative samples deviate (p={p:.2e})"
    monkeypatch.setattr(decoding, "speculative_verify", _always_accept)
    (broken,) = _generate(target, [PROMPT], N, seed=7, **kwargs)
    if draft_ids == V:  # the always-accept rule keeps the draft's choices: detectable
        assert g_test(broken, expected) < ALPHA
    else:  # ...and it would even emit ids the target does not have
        assert any(t >= V for o in broken for t in o) or g_test(broken, expected) < ALPHA
