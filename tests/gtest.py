"""The G-test method of the exactness tests, shared by test_distribution.py and the other sampling tests.

A tiny target with a V = 4 token vocabulary (conftest.gtest_model): every continuation of T tokens is enumerated
and its target-only probability computed with the same logits processors generate() applies
(`exact_distribution`). N speculative samples (one batched generate call, `_generate`) are compared with a G-test
(`g_test`) at significance ALPHA, with fixed seeds, so the outcome is deterministic. Power: the same test on a
known-wrong sampler (draft-only samples, or `_always_accept`) must reject.
"""

from __future__ import annotations

import itertools
from collections import Counter

import torch
from scipy.stats import power_divergence
from transformers import LogitsProcessorList
from transformers.generation.logits_process import (
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from conftest import GTEST_PAD, GTEST_V, gtest_model, mask_pad

V = GTEST_V  # vocabulary
T = 5  # new tokens: 4**5 = 1024 continuations
N = 12_000  # samples per test
ALPHA = 1e-3  # significance level of every goodness-of-fit test
PAD = GTEST_PAD  # outside the vocabulary, so padded outputs cannot be confused with tokens
PROMPT = [1, 3, 0]
_model = gtest_model  # the target's builder (seed, logit_scale, n_ids), built in conftest like every test model
_mask_pad = mask_pad  # its lm_head hook that keeps PAD from being sampled


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


def _always_accept(draft_tokens, draft_probs, target_probs, uniform, exp_noise, num_proposed=None):
    """A broken rule: every proposed token accepted, bonus token from p at the end of the proposal (p_K when every
    row proposes K tokens)."""
    B, K = draft_tokens.shape
    n = torch.full((B,), K, dtype=torch.long, device=draft_tokens.device) if num_proposed is None else num_proposed
    p_n = target_probs.gather(1, n[:, None, None].expand(B, 1, target_probs.shape[-1])).squeeze(1)
    return n, torch.argmax(p_n / exp_noise, dim=-1)
