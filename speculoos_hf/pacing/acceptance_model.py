"""The acceptance model: how many of k drafts a row is expected to keep, from the rounds verified so far.

- By draft position j: alpha_j = P(draft j accepted | drafts < j accepted), an exponential moving average over the
  rows' outcomes (the prior counts as 2 observations), starting from `prior` (position 0) or from the estimate of
  the position before when position j is first reached; a position with few observations is shrunk towards the
  one before it, and a position never reached takes the last one's. Kept only for positions reached, so its cost
  follows what was drafted, never the largest k allowed.
- E(k) = 1 + sum_{i=1..k} prod_{j<i} alpha_j, expected new tokens per row with k drafts.
- Per row (batch > 1): a row's accepted over reached drafts, shrunk towards the batch's with a few
  pseudo-observations and forgotten slowly while the row drafts nothing; a row with no record takes alpha_j. The
  batch's rate is itself shrunk towards the mean alpha_j, so one round in which every row rejected its first draft
  (an answer's opening word) cannot make every row's drafts look worthless for the rest of the call.
"""

from __future__ import annotations

from dataclasses import dataclass, field

SHRINK_SEEN = 8  # a position observed fewer times is shrunk towards the position before


@dataclass
class RowAcceptance:
    """One row's drafts accepted over drafts reached, forgotten at rate `forget` per round in which the row drafts
    nothing, so a row that stopped drafting drifts back to the batch's."""

    hits: float = 0.0
    trials: float = 0.0
    forget: float = 0.9
    pseudo: float = 2.0  # observations the batch's rate counts for in `shrunk`

    def add(self, proposed: int, accepted: int) -> None:
        if proposed == 0:
            self.hits, self.trials = self.hits * self.forget, self.trials * self.forget
            return
        self.hits += min(accepted, proposed)
        self.trials += min(proposed, accepted + 1)

    def rate(self) -> float | None:
        return self.hits / self.trials if self.trials else None

    def shrunk(self, pooled: float | None) -> float:
        """The row's acceptance, shrunk towards the batch's with `pseudo` observations."""
        prior = self.hits / self.trials if pooled is None else pooled
        return (self.hits + self.pseudo * prior) / (self.trials + self.pseudo)


@dataclass
class AcceptanceModel:
    """Acceptance by draft position and by row (see the module doc). max_k: positions past it are never counted."""

    prior: float = 0.6
    rate: float = 0.1
    max_k: int = 12
    _alpha: list[float] = field(default_factory=list, repr=False)  # positions reached so far
    _seen: list[int] = field(default_factory=list, repr=False)
    _rows: dict[int, RowAcceptance] = field(default_factory=dict, repr=False)  # by the caller's row id
    _pool: RowAcceptance = field(default_factory=lambda: RowAcceptance(forget=1.0), repr=False)
    _shrunk: list[float] | None = field(default=None, repr=False)

    @property
    def observed(self) -> bool:
        """Whether any draft was verified yet."""
        return bool(self._seen)

    def observe(self, proposed: list[int], accepted: list[int], rows: list[int] | None = None) -> None:
        """Per live row, drafts proposed and accepted this round; `rows`: the caller's stable ids of those rows."""
        for n_prop, n_acc in zip(proposed, accepted):
            for j in range(min(n_prop, n_acc + 1, self.max_k)):  # position j was reached
                if j == len(self._alpha):  # first visit: start from the position before, not the fixed prior
                    self._alpha.append(self._alpha[j - 1] if j else self.prior)
                    self._seen.append(0)
                self._seen[j] += 1
                w = max(self.rate, 1.0 / (self._seen[j] + 2))  # the prior counts as 2 observations
                self._alpha[j] += w * ((1.0 if j < n_acc else 0.0) - self._alpha[j])
        self._shrunk = None
        if rows is not None:
            for row, n_prop, n_acc in zip(rows, proposed, accepted):
                self._rows.setdefault(row, RowAcceptance()).add(n_prop, n_acc)
                self._pool.add(n_prop, n_acc)

    def by_position_only(self, max_k: int | None = None) -> "AcceptanceModel":
        """A copy with the acceptance by position and none of the rows' records (for another call's rows)."""
        return AcceptanceModel(prior=self.prior, rate=self.rate, max_k=self.max_k if max_k is None else max_k,
                               _alpha=list(self._alpha), _seen=list(self._seen))

    def by_position(self, k: int) -> list[float]:
        """alpha_0..alpha_{k-1} (k at most max_k), positions with few observations shrunk to the one before."""
        if self._shrunk is None:
            out = []
            for j, (a, n) in enumerate(zip(self._alpha, self._seen)):
                if j and n < SHRINK_SEEN:
                    a = (n * a + (SHRINK_SEEN - n) * out[-1]) / SHRINK_SEEN
                out.append(min(max(a, 0.0), 1.0))
            self._shrunk = out or [min(max(self.prior, 0.0), 1.0)]
        k = min(k, self.max_k)
        known = self._shrunk[:k]
        return known + [self._shrunk[-1]] * (k - len(known))

    def token_curve(self, k: int) -> list[float]:
        """[E(0), ..., E(k)]: expected new tokens per row with 0..k drafts."""
        curve, reach = [1.0], 1.0
        for a in self.by_position(k):
            reach *= a
            curve.append(curve[-1] + reach)
        return curve + [curve[-1]] * (k + 1 - len(curve))  # past max_k nothing more is drafted

    def expected_tokens(self, k: int) -> float:
        return self.token_curve(k)[k]

    def all_accepted(self, k: int) -> float:
        """The chance that all k drafts of a row's round are accepted."""
        out = 1.0
        for a in self.by_position(k):
            out *= a
        return out

    def row_curves(self, rows: list[int] | None, k: int) -> list[list[float]] | None:
        """Per row, [E_row(0..k)]: the batch's alpha_j for a row with no record yet, else the row's own acceptance
        at every position (its record shrunk towards the batch's); None for fewer than two rows."""
        if rows is None or len(rows) < 2:
            return None
        batch_curve = self.token_curve(k)
        alpha = self.by_position(max(1, len(self._alpha)))
        pooled = self._pool.shrunk(sum(alpha) / len(alpha))  # the rows' rate, with the positions' as its prior
        curves = []
        for row in rows:
            record = self._rows.get(row)
            if record is None or not record.trials:
                curves.append(batch_curve)
                continue
            own, reach, curve = record.shrunk(pooled), 1.0, [1.0]
            for _ in range(min(k, self.max_k)):
                reach *= own
                curve.append(curve[-1] + reach)
            curves.append(curve + [curve[-1]] * (k + 1 - len(curve)))
        return curves

    def summary(self) -> list[float]:
        """alpha_j by position, for the positions reached (at least position 0)."""
        return [round(a, 4) for a in self.by_position(max(1, len(self._alpha)))]
