"""Dynamic lookahead priced by the cost model: a draft model's round goes on while one more draft is worth its cost.

Each draft's chance of being accepted (given the drafts before it were) is the acceptance model's alpha at its
position, lifted or lowered by the probability the draft gave it, q(d_j) (greedy: the argmax's): `ConfidenceRecord`
keeps, per band of q, how often drafts in that band were accepted against all drafts (a draft whose q says nothing,
as a tiny random model's, lifts nothing: the cost model's own k then). After j drafts, row i's chance that all are
accepted is the product s_i(j) of those estimates.
One more draft is expected to add about sum_i s_i(j) accepted tokens and costs a draft step and a pass one token
wider per row; at the round's expected tokens per second r (the cost model's rate for its k) it pays while
sum_i s_i(j) >= r * (step + T(j + 2) - T(j + 1)). Where passes are flat and the draft is sure, rounds run long;
where a wider pass costs (AVX2 float32), they stop early. Whether position j + 1 is drafted depends only on the
drafts before it, so the output stays exact. The pacer (pacer.py) applies the rule to chain rounds over one row.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

BANDS = (0.3, 0.6, 0.8, 0.9, 0.97)  # edges of the bands of q(d_j) whose acceptance is counted apart


@dataclass
class ConfidenceRecord:
    """Per band of q(d_j), the drafts accepted over the drafts reached (each round's counts forgotten at `forget`),
    shrunk towards a prior with `pseudo` observations."""

    hits: torch.Tensor = field(default_factory=lambda: torch.zeros(len(BANDS) + 1, dtype=torch.float64))
    trials: torch.Tensor = field(default_factory=lambda: torch.zeros(len(BANDS) + 1, dtype=torch.float64))
    pseudo: float = 2.0
    forget: float = 0.97

    def observe(self, bands: torch.Tensor, counts: list[int], accepted: list[int]) -> None:
        """One round: `bands` [B, n] CPU long, the band of each row's drafts; row i proposed `counts[i]`, kept
        `accepted[i]` (draft j was reached where j <= accepted)."""
        n = bands.shape[1]
        j = torch.arange(n)[None, :]  # [1, n]
        acc = torch.tensor(accepted)[:, None]  # [B, 1]
        reached = (j < torch.tensor(counts).clamp(max=n)[:, None]) & (j <= acc)  # [B, n]
        size = len(self.hits)
        self.trials = self.forget * self.trials + torch.bincount(bands[reached], minlength=size).double()
        self.hits = self.forget * self.hits + torch.bincount(bands[reached & (j < acc)], minlength=size).double()

    def table(self, prior: float) -> torch.Tensor:
        """[bands] float64 CPU: each band's acceptance estimate."""
        return (self.hits + self.pseudo * prior) / (self.trials + self.pseudo)

    def lift(self, prior: float) -> torch.Tensor:
        """[bands] float64 CPU: each band's acceptance over all drafts' (1 where nothing sets a band apart)."""
        pooled = (float(self.hits.sum()) + self.pseudo * prior) / (float(self.trials.sum()) + self.pseudo)
        return self.table(prior) / pooled

    def summary(self, prior: float) -> dict:
        return {f"q>={lo:g}": round(float(a), 4) for lo, a in zip((0.0, *BANDS), self.table(prior))}


@dataclass
class DraftStop:
    """One round's stop rule (see the module doc). `worth[j]`: the accepted tokens (all rows) that draft j + 2 must
    be expected to add to pay for itself; `lift` [bands] and `alpha` [cap] on the draft's device: the record's lift
    by band of q and the acceptance model's alpha by position; `cap`: the most drafts the round may take. Keeps the
    bands of the drafts it was shown, for the record."""

    worth: tuple[float, ...]
    lift: torch.Tensor
    alpha: torch.Tensor
    cap: int
    edges: torch.Tensor
    survival: torch.Tensor | None = None  # [B] s_i(j)
    bands: list[torch.Tensor] = field(default_factory=list)  # per draft, [B] long

    def goes_on(self, confidence: torch.Tensor, ask: bool) -> bool:
        """Draft j + 1 was drawn with probability `confidence` [B]; `ask`: whether draft j + 2 is possible. Whether it
        pays (one host sync when asked)."""
        band = torch.bucketize(confidence.to(self.edges.dtype), self.edges)  # [B]
        self.bands.append(band)
        chance = (self.alpha[len(self.bands) - 1] * self.lift[band]).clamp(max=1.0)  # [B]
        self.survival = chance if self.survival is None else self.survival * chance  # [B]
        j = len(self.bands) - 1
        return ask and j < len(self.worth) and float(self.survival.sum()) >= self.worth[j]

    def drafted_bands(self, k: int) -> torch.Tensor:
        """[B, k] CPU long: the bands of the round's first k drafts (read after the round's host sync)."""
        return torch.stack(self.bands[:k], dim=1).cpu()


def draft_stop(cost_model, record: ConfidenceRecord, k: int, cap: int, batch: int, device) -> DraftStop | None:
    """The rule for a round the cost model gave k drafts, allowed up to `cap` (None: nothing to price it with)."""
    rate, step = cost_model.rate(k, batch), cost_model.draft_time(batch)
    if rate is None or step is None or cap < 2:
        return None
    widths = [cost_model.target_time(m * batch, batch) for m in range(2, cap + 2)]  # T(m) per row, m = 2..cap+1
    if any(t is None for t in widths):
        return None
    worth = tuple(rate * (step + max(wider - narrower, 0.0)) for narrower, wider in zip(widths, widths[1:]))
    alpha = cost_model.acceptance(cap)
    lift = record.lift(sum(alpha) / len(alpha)).to(device=device, dtype=torch.float32)  # [bands]
    return DraftStop(worth, lift, torch.tensor(alpha, dtype=torch.float32, device=device), cap,
                     torch.tensor(BANDS, dtype=torch.float32, device=device))

