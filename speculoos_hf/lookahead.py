"""How many tokens to draft, per round, from a cost model measured as the generation runs.

`CostModelLookahead` is plain host arithmetic on floats (no tensors, no syncs). The decoding loop calls, each round:

    k = policy.choose_k()                       # 0: no speculation this round, the target decodes one token
    ... per draft forward:  policy.observe_draft(seconds, batch)
    ... per target pass:    policy.observe_target(seconds, tokens_per_row, batch)   (not the prompt's prefill)
    policy.observe_round(proposed=[...], accepted=[...])                             (per live row, k=0 rounds too)

The model:
- Target pass time as a function of the tokens it scores, m = tokens_per_row * batch:
  T(m) = a + b * max(0, m - n0). On a CPU a pass is memory-bound (flat) up to a few tokens and compute-bound
  beyond; on a GPU n0 is large. (a, b) are fitted by weighted least squares on the mean time per observed m, for
  the breakpoint n0 among the prior's and the observed m's that fits best; a ridge term pulls b towards a prior
  slope of `prior_slope * a` per token until measurements beyond n0 exist.
- Draft cost per forward: a moving average per batch size (nearest measured batch size otherwise).
- Acceptance by draft position j: alpha_j = P(draft j accepted | drafts < j accepted), exponential moving averages
  over the rows' outcomes, starting from `prior_acceptance`; a position with few observations is shrunk towards the
  one before it.
- Expected new tokens per row with k drafts: E(k) = 1 + sum_{i=1..k} prod_{j<i} alpha_j. The policy picks
  k in 0..max_k maximising batch * E(k) / (k * draft(batch) + T((k+1) * batch) + overhead); k = 0 is the target
  alone, batch / (T(batch) + overhead).
- When k = 0 wins, speculation stays off for a stretch of rounds (`off_rounds`, doubling up to `max_off_rounds`
  while it keeps losing), then one probe round with `probe_k` drafts refreshes the acceptance estimate. A poor draft
  thus costs about (probe round cost - target step) / stretch: a few percent at most, under 1% once the stretch
  has grown.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field


@dataclass
class _Mean:
    """Mean of the first `warm` observations, then an exponential moving average with rate `rate`."""

    rate: float = 0.2
    warm: int = 4
    value: float = 0.0
    count: int = 0

    def add(self, x: float) -> None:
        self.count += 1
        w = max(self.rate, 1.0 / self.count) if self.count <= self.warm else self.rate
        self.value += w * (x - self.value)


@dataclass
class CostModelLookahead:
    """Picks the number of draft tokens per round that maximises expected tokens per second (see module doc).

    max_k:            largest k considered.
    initial_k:        k before any timing is known.
    prior_acceptance: alpha_j before observations.
    acceptance_rate:  EMA rate of the per-position acceptance estimates.
    prior_n0:         tokens per target pass (rows * tokens) up to which a pass costs about the same (CPU: ~8).
    prior_slope:      extra cost per token beyond n0, as a fraction of a one-token pass, before it is measured.
    prior_draft_ratio: draft forward / target pass before the draft is timed.
    off_rounds, max_off_rounds, probe_k: the stretch without speculation when it cannot pay, and the probe after it.
    """

    max_k: int = 12
    initial_k: int = 4
    prior_acceptance: float = 0.6
    acceptance_rate: float = 0.1
    prior_n0: int = 8
    prior_slope: float = 0.1
    prior_draft_ratio: float = 0.3
    off_rounds: int = 8
    max_off_rounds: int = 64
    probe_k: int = 1
    min_gain: float = 1.03  # speculation must beat the target alone by this factor to be chosen
    measure_plain_step: bool = True  # once the target was timed, time one round with no drafts (see choose_k)

    _alpha: list[float] = field(default_factory=list, repr=False)
    _alpha_n: list[int] = field(default_factory=list, repr=False)
    _target: dict[int, _Mean] = field(default_factory=dict, repr=False)
    _draft: dict[int, _Mean] = field(default_factory=dict, repr=False)
    _batch: int = 1
    _off_left: int = 0
    _off_len: int = 0
    _probe_next: bool = False
    _probed: bool = False
    _fit_cache: tuple | None = field(default=None, repr=False)
    last_choice: dict = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self._alpha = [self.prior_acceptance] * self.max_k
        self._alpha_n = [0] * self.max_k
        self._off_len = self.off_rounds

    # ------------------------------------------------------------------ observations

    def observe_draft(self, seconds: float, batch: int = 1) -> None:
        """One draft forward (one token per row, or a catch-up forward) over `batch` rows took `seconds`."""
        self._batch = batch
        self._draft.setdefault(batch, _Mean()).add(seconds)

    def observe_target(self, seconds: float, tokens_per_row: int, batch: int = 1) -> None:
        """One target pass scoring `tokens_per_row` new tokens in each of `batch` rows took `seconds`."""
        self._batch = batch
        self._target.setdefault(tokens_per_row * batch, _Mean()).add(seconds)
        self._fit_cache = None

    def observe_round(self, proposed: list[int], accepted: list[int]) -> None:
        """Per live row: drafts proposed and accepted this round (rows with 0 proposed say nothing)."""
        for n_prop, n_acc in zip(proposed, accepted):
            for j in range(min(n_prop, n_acc + 1, self.max_k)):  # position j was reached
                hit = 1.0 if j < n_acc else 0.0
                self._alpha_n[j] += 1
                w = max(self.acceptance_rate, 1.0 / (self._alpha_n[j] + 2))  # the prior counts as 2 observations
                self._alpha[j] += w * (hit - self._alpha[j])

    # ------------------------------------------------------------------ model

    def acceptance(self) -> list[float]:
        """alpha_j by position, positions with few observations shrunk towards the previous position."""
        out: list[float] = []
        for j in range(self.max_k):
            a, n = self._alpha[j], self._alpha_n[j]
            if j > 0 and n < 8:
                t = n / 8.0
                a = t * a + (1 - t) * out[-1]
            out.append(min(max(a, 0.0), 1.0))
        return out

    def expected_tokens(self, k: int) -> float:
        """Expected new tokens per row in a round with k drafts (accepted + the target's own token)."""
        alpha, total, reach = self.acceptance(), 1.0, 1.0
        for j in range(k):
            reach *= alpha[j]
            total += reach
        return total

    def _fit_target(self) -> tuple[float, float, int] | None:
        """(a, b, n0) of T(m) = a + b * max(0, m - n0), or None before any target pass was timed."""
        if not self._target:
            return None
        if self._fit_cache is not None:
            return self._fit_cache
        pts = sorted((m, s.value, float(min(s.count, 20))) for m, s in self._target.items())
        scale = sum(w * t * t for _, t, w in pts)

        def fit(n0: int) -> tuple[float, float, float]:
            a, b = _ridge_fit(pts, n0, self.prior_slope)
            return sum(w * (t - a - b * max(0, m - n0)) ** 2 for m, t, w in pts), a, b

        sse, a, b = fit(self.prior_n0)
        best = (a, b, self.prior_n0)
        best_sse = sse
        for n0 in sorted({m for m, _, _ in pts} - {self.prior_n0}):
            sse_n, a_n, b_n = fit(n0)
            # another breakpoint must explain the data clearly better than the prior's (noise ~1% of a pass)
            if sse_n < 0.5 * best_sse and best_sse - sse_n > 1e-4 * scale:
                best, best_sse = (a_n, b_n, n0), sse_n
        self._fit_cache = best
        return best

    def target_time(self, tokens: int) -> float | None:
        """Predicted seconds of one target pass scoring `tokens` tokens in all (rows * tokens per row)."""
        fit = self._fit_target()
        if fit is None:
            return None
        a, b, n0 = fit
        return a + b * max(0, tokens - n0)

    def draft_time(self, batch: int) -> float | None:
        if not self._draft:
            t1 = self.target_time(batch)
            return None if t1 is None else self.prior_draft_ratio * t1
        nearest = min(self._draft, key=lambda b: (abs(b - batch), b))
        return self._draft[nearest].value

    def rate(self, k: int, batch: int | None = None) -> float | None:
        """Expected tokens per second (all rows) with k drafts per round; None before the target was timed."""
        batch = batch or self._batch
        t = self.target_time((k + 1) * batch)
        d = self.draft_time(batch) if k else 0.0
        if t is None or d is None:
            return None
        return batch * self.expected_tokens(k) / max(k * d + t, 1e-12)

    # ------------------------------------------------------------------ decision

    def best_k(self, batch: int | None = None, limit: int | None = None) -> int:
        """The k maximising `rate` (0 when no k beats the target alone by `min_gain`), ignoring stretches."""
        kmax = self.max_k if limit is None else max(0, min(self.max_k, limit))
        base = self.rate(0, batch)
        if base is None:
            return min(self.initial_k, kmax)
        best_k, best_rate = 0, base * self.min_gain
        for k in range(1, kmax + 1):
            r = self.rate(k, batch)
            if r is not None and r > best_rate:
                best_k, best_rate = k, r
        self.last_choice = {"k": best_k, "rate": best_rate, "target_alone": base}
        return best_k

    def choose_k(self, batch: int | None = None, limit: int | None = None) -> int:
        """Draft tokens for the next round (0: the target decodes one token alone). `limit` caps k (e.g. by the
        tokens left to generate); `batch` defaults to the last observed batch size."""
        if limit is not None and limit <= 0:
            return 0
        if self._off_left > 0:  # inside a stretch without speculation
            self._off_left -= 1
            return 0
        b = batch or self._batch
        if self._target and b not in self._target and self.measure_plain_step:
            # the plain step (one token per row) has not been timed yet: time it once, so that the target's cost
            # per extra token is measured, not assumed (on a CPU in bf16 it can grow steeply from the first token)
            self.measure_plain_step = False
            return 0
        if self._probe_next:  # the stretch is over: one probe round refreshes the acceptance estimate
            self._probe_next = False
            self._probed = True
            return min(self.probe_k, self.max_k, limit if limit is not None else self.max_k)
        k = self.best_k(batch, limit)
        if k > 0:
            self._probed = False
            self._off_len = self.off_rounds
            return k
        if self._probed:  # the probe did not change the verdict: a longer stretch next time
            self._off_len = min(2 * self._off_len, self.max_off_rounds)
            self._probed = False
        self._off_left = self._off_len - 1
        self._probe_next = self.probe_k > 0
        return 0

    @property
    def speculating(self) -> bool:
        """False inside a stretch without speculation."""
        return self._off_left == 0 and not self._probe_next


def _ridge_fit(pts: list[tuple[int, float, float]], n0: int, prior_slope: float) -> tuple[float, float]:
    """Weighted least squares of t = a + b * max(0, m - n0) with a ridge pulling b to prior_slope * a."""
    # a first estimate of a from points at or below the break (else from the smallest m)
    flat = [(t, w) for m, t, w in pts if m <= n0]
    a0 = sum(t * w for t, w in flat) / sum(w for _, w in flat) if flat else pts[0][1]
    b_prior = prior_slope * a0
    lam = 2.0 * 16.0  # as strong as two observations at 4 tokens past the break
    # normal equations for (a, b) with the ridge term lam * (b - b_prior)^2
    s_w = s_x = s_xx = s_t = s_xt = 0.0
    for m, t, w in pts:
        x = max(0, m - n0)
        s_w += w
        s_x += w * x
        s_xx += w * x * x
        s_t += w * t
        s_xt += w * x * t
    s_xx += lam
    s_xt += lam * b_prior
    det = s_w * s_xx - s_x * s_x
    if det <= 0 or not math.isfinite(det):
        return a0, b_prior
    a = (s_t * s_xx - s_x * s_xt) / det
    b = (s_w * s_xt - s_x * s_t) / det
    return max(a, 1e-9), max(b, 0.0)
