"""Expected tokens per second of a round's drafts, row by row: a copy from the context against the draft model.

A copy is free to draft, and the matcher's confidences (`Proposal.confidence`: the chance that the copy's first j+1
tokens are right) give its expected new tokens, E_copy(m) = 1 + sum_{j<m} conf[j], for a target pass over m+1
tokens per row, T(m+1). A model round with k drafts gives E_model(k) (its measured acceptance by position) for k
draft steps and T(k+1). Once copies were verified, the confidences are calibrated by how the copies fared
(`CopyRecord`: a matcher that saw a suffix once is sure of what followed it). Every input depends only on the
committed prefix and on earlier rounds' measurements, so any choice made from them keeps the output exact.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

_TIE = 1e-9  # rates closer than this (relative) are equal: rounding never makes a longer copy win a tie


@dataclass(frozen=True)
class RoundCosts:
    """The cost model's view of the next round at the live batch size (earlier rounds' measurements only).

    pass_time:    [W+1] float64 CPU, seconds of a target pass over m drafts and the target's token per row, m = 0..W.
    copy_ratio:   the copies' measured acceptance over their confidences' (`CopyRecord.ratio`; 1: none yet).
    model_k:      drafts the model would propose this round (0: the model is not offered).
    model_tokens: E_model(model_k), expected new tokens per row of a model round.
    model_time:   seconds of that round: model_k draft steps and the pass over model_k + 1 tokens per row.
    model_reach:  the chance that all model_k drafts of a row are accepted (what a copy after them needs).
    """

    pass_time: torch.Tensor
    copy_ratio: float = 1.0
    model_k: int = 0
    model_tokens: float = 1.0
    model_time: float = math.inf
    model_reach: float = 0.0

    def model_rate(self) -> float:
        """Expected tokens per second of a row that asks the model (-inf when the model is not offered)."""
        if self.model_k <= 0 or not self.model_time > 0:
            return -math.inf
        return self.model_tokens / self.model_time


@dataclass(frozen=True)
class CopyChoice:
    """Per row, the copy length that maximises expected tokens per second, and that rate."""

    length: torch.Tensor  # [B] long, 0: copying nothing pays best
    rate: torch.Tensor  # [B] float64, E_copy(length) / T(length + 1)


@dataclass
class CopyRecord:
    """How the copies verified so far fared against what their confidences promised, per copied token reached:
    `ratio()` is their acceptance over the matcher's (each token's chance given the ones before, conf[j] /
    conf[j-1]), shrunk towards 1 with `pseudo` tokens and forgotten at rate `forget` per round."""

    hits: float = 0.0
    predicted: float = 0.0
    pseudo: float = 4.0
    forget: float = 0.98

    def observe(self, confidence: torch.Tensor, counts: list[int], accepted: list[int], rows: list[bool]) -> None:
        """One round: copies `confidence` [B, W] CPU of `counts` tokens, `accepted` of them, in `rows` (host)."""
        W = confidence.shape[1]
        n = torch.tensor(counts, dtype=torch.long).clamp(max=W)  # [B]
        a = torch.minimum(torch.tensor(accepted, dtype=torch.long), n)  # [B]
        use = torch.tensor(rows, dtype=torch.bool)  # [B]
        reached = (torch.arange(W)[None, :] < torch.minimum(n, a + 1)[:, None]) & use[:, None]  # [B, W]
        self.hits = self.forget * self.hits + float(a[use].sum())
        self.predicted = self.forget * self.predicted + float((conditional(confidence) * reached).sum())

    def ratio(self) -> float:
        return (self.hits + self.pseudo) / (self.predicted + self.pseudo)


def conditional(confidence: torch.Tensor) -> torch.Tensor:
    """Each copied token's chance given the ones before: conf[j] / conf[j-1] (conf[-1] = 1). [B, W] float64"""
    conf = confidence.to(torch.float64)
    before = torch.cat([torch.ones_like(conf[:, :1]), conf[:, :-1]], dim=1)  # [B, W]
    return torch.where(before > 0, conf / before.clamp(min=1e-12), torch.zeros_like(conf))


def calibrated(confidence: torch.Tensor, ratio: float) -> torch.Tensor:
    """The confidences with each token's conditional chance scaled by `ratio` (at most 1). [B, W] float64"""
    return (conditional(confidence) * ratio).clamp(max=1.0).cumprod(dim=1)


def copy_tokens(confidence: torch.Tensor) -> torch.Tensor:
    """E_copy(m) = 1 + sum_{j<m} confidence[:, j] for m = 0..W: [B, W] -> [B, W+1] float64."""
    B = confidence.shape[0]
    ones = torch.ones(B, 1, dtype=torch.float64)  # [B, 1]
    return torch.cat([ones, 1.0 + confidence.to(torch.float64).cumsum(dim=1)], dim=1)  # [B, W+1]


def best_copy(confidence: torch.Tensor, counts: list[int], pass_time: torch.Tensor, ratio: float = 1.0
              ) -> CopyChoice:
    """Per row, the m <= counts[b] (and <= len(pass_time) - 1) maximising E_copy(m) / T(m+1), the confidences
    `calibrated` by `ratio`; ties (within rounding) go to the shorter copy. confidence [B, W] CPU, counts host ints
    [B], pass_time [W'+1] CPU seconds."""
    W = min(confidence.shape[1], pass_time.shape[0] - 1)
    conf = confidence[:, :W] if ratio == 1.0 else calibrated(confidence[:, :W], ratio)  # [B, W]
    rate = copy_tokens(conf) / pass_time[None, : W + 1].to(torch.float64)  # [B, W+1]
    return _best(rate, torch.tensor(counts, dtype=torch.long))


def _best(rate: torch.Tensor, offered: torch.Tensor) -> CopyChoice:
    """Per row, the length (column) of the highest rate among the first offered[b] + 1 [B, L] (ties, within
    rounding, go to the shorter) and that rate."""
    rate = rate.masked_fill(torch.arange(rate.shape[1])[None, :] > offered[:, None], -math.inf)  # [B, L]
    top = rate.max(dim=1, keepdim=True).values  # [B, 1]
    best = (rate >= top - _TIE * top.abs()).to(torch.uint8).argmax(dim=1)  # [B]
    return CopyChoice(best, rate.gather(1, best[:, None]).squeeze(1))


def best_extension(confidence: torch.Tensor, counts: list[int], costs: RoundCosts) -> CopyChoice:
    """Per row, how many of its copy's tokens past the model's `costs.model_k` drafts to append to them (a model
    row's extension), maximising (E_model + reach * sum_{k<=j<m} conf[j]) / (k draft steps + T(m+1)) over m, and
    that rate (the model's own, `model_rate`, for no extension): copy token j is accepted where the model's k drafts
    all were (`model_reach`) and the copy's first j+1 tokens are right (conf[j], calibrated). A copied token is a
    function of the committed prefix, so appending it keeps the output exact whatever the model drafted.
    confidence [B, W] CPU, counts host ints [B]."""
    k, B = costs.model_k, confidence.shape[0]
    W = min(confidence.shape[1], costs.pass_time.shape[0] - 1)
    if k <= 0 or W <= k or costs.model_reach <= 0:
        return CopyChoice(torch.zeros(B, dtype=torch.long), torch.full((B,), costs.model_rate(), dtype=torch.float64))
    conf = calibrated(confidence[:, :W], costs.copy_ratio)  # [B, W]
    extra = costs.model_reach * torch.cat([torch.zeros(B, 1, dtype=torch.float64), conf[:, k:].cumsum(dim=1)], 1)
    steps = costs.model_time - float(costs.pass_time[k])  # the model's k draft steps
    rate = (costs.model_tokens + extra) / (steps + costs.pass_time[None, k: W + 1])  # [B, W-k+1]
    return _best(rate, (torch.tensor(counts, dtype=torch.long) - k).clamp(min=0))


def prefers_copy(choice: CopyChoice, costs: RoundCosts, model: CopyChoice | None = None) -> torch.Tensor:
    """[B] bool: the row's best copy is expected to give at least the model's tokens per second (`model`: per row,
    the model's drafts with their best extension, `best_extension`; a free copy wins ties; a row without a copy then
    proposes nothing)."""
    return choice.rate >= (costs.model_rate() if model is None else model.rate)
