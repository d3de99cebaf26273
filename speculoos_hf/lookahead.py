"""How many tokens to draft, per round, from a cost model measured as the generation runs.

`CostModelLookahead` is plain host arithmetic on floats (no tensors, no syncs). Its pacer (`pacer.CostModelPacer`)
calls, each round:

    policy.observe_prefill(seconds, tokens, unfed)  # once: the target's prompt prefill (tokens: all rows)
    k = policy.choose_k(batch, limit, remaining, rows)  # 0: no speculation this round, the target decodes one token
    ... per draft step:     policy.observe_draft(seconds, batch)
    ... a draft catch-up:   policy.observe_catch_up(seconds, tokens)   (committed tokens the draft had not seen)
    ... per target pass:    policy.observe_target(seconds, tokens_per_row, batch)   (not the prompt's prefill)
    policy.observe_round(proposed=[...], accepted=[...], rows=[...])                 (per live row, k=0 rounds too)
    limits = policy.row_limits(k, rows)        # per-row k (batch > 1): rows whose drafts do not pay get 0

The model:
- Target pass time as a function of the tokens it scores, m = tokens_per_row * batch:
  T(m) = a + b * max(0, m - n0). On a CPU a pass is memory-bound (flat) up to a few tokens and compute-bound
  beyond; on a GPU n0 is large; on a CPU without fast bf16 matrix kernels (AVX2 only) a bf16 pass costs about
  one more token's compute for every token from the second. The prior comes from the prompt's prefill, a
  compute-bound pass: its cost per token b_pre and the one-token pass a give the roofline T(m) = max(a, b_pre m),
  i.e. n0 = floor(a / b_pre) (rounded down: small passes run below the prefill's efficiency) and slope b_pre.
  The first round is always a plain one (no drafts) to time a. (a, b) are then fitted by weighted least squares
  on the mean time per observed m, for the breakpoint n0 among the prior's and the observed m's that fits best;
  a ridge term pulls b towards the prior slope until measurements beyond n0 exist. Each batch size B gets its own
  fit from its own passes once one was timed; before that the fit over all batch sizes (m = B * tokens per row)
  is its prior. A width timed at least `MEASURED_PASSES` times is predicted by its own mean instead: on a CPU the
  one-token pass runs a cheaper kernel than any wider one (float32 on an AVX2-only EPYC: T(2) = 2.0 T(1), then
  nearly flat to 12 tokens), a step no two-piece line fits.
- Draft cost per step (one token per row): a moving average per batch size (nearest measured batch size
  otherwise); the first measured step replaces the prior outright. The catch-up forward (the prompt read) is timed
  apart and never counts as a step; the first speculative round drafts at least 2 tokens so a step is timed at once.
- Acceptance by draft position j: alpha_j = P(draft j accepted | drafts < j accepted), exponential moving averages
  over the rows' outcomes, starting from `prior_acceptance` (position 0) or from the position before's estimate
  when position j is first reached; a position with few observations is shrunk towards the one before it.
- Expected new tokens per row with k drafts: E(k) = 1 + sum_{i=1..k} prod_{j<i} alpha_j. The policy picks
  k in 0..max_k maximising batch * E(k) / (k * draft(batch) + T((k+1) * batch) + overhead); k = 0 is the target
  alone, batch / (T(batch) + overhead).
- Per row (batch > 1): each row's own acceptance (its accepted over reached drafts, shrunk towards the batch's
  with a few pseudo-observations, forgotten slowly while the row does not draft) at every position; a row with no
  record yet takes the batch's alpha_j. With `per_row_limits`, a row whose own gain E_row(k) * T_round(0) /
  T_round(k) is below 1 drafts nothing (limit 0) while the others draft k; the k chosen maximises the batch's
  expected tokens with those limits over the round's cost.
- Catching the draft up: the draft has to read every committed token it has not seen (the whole prompt before
  its first proposal, the stretch after rounds without drafts) before it proposes. The model drafter does that
  lazily, so a draft that is never used costs nothing. Its cost per token is measured (prior: the target's prefill
  cost per token times `prior_catch_up_ratio`, the draft/target size ratio); speculation (re)starts only where the
  time it is expected to save over the tokens left exceeds the catch-up. At the end of a stretch such a start is
  taken if it pays; else a probe, unless it would cost more than `probe_budget` of the stretch it ends (then the
  stretch doubles without one).
- When k = 0 wins, speculation stays off for a stretch of rounds (`off_rounds`, doubling up to `max_off_rounds`
  while it keeps losing), then one probe round with `probe_k` drafts refreshes the acceptance estimate. A poor draft
  thus costs about (probe round cost - target step) / stretch: a few percent at most, under 1% once the stretch
  has grown.

The decisions form a small state machine (`CostModelLookahead.phase`):

    Measure --first round: a plain step--> On
    On --k > 0 pays--> On            On --no k pays--> Off(n)  (n = stretch - 1; none left: ProbeDue)
    Off(n) --a plain round--> Off(n - 1) ... --> ProbeDue
    ProbeDue --k > 0 pays--> On      ProbeDue --else, a probe round--> On(after_probe)
    On(after_probe) --still no k pays--> Off with a doubled stretch
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

MEASURED_PASSES = 2  # a pass width timed this often is predicted by its own mean, not the fit


@dataclass(frozen=True)
class Measure:
    """Before the first decision: a plain step (no drafts) times the target alone, so a draft that never pays is
    never even started."""


@dataclass(frozen=True)
class On:
    """Each round's k comes from the model. `after_probe`: the last round was a probe, so a verdict of "off" now
    doubles the stretch."""

    after_probe: bool = False


@dataclass(frozen=True)
class Off:
    """Inside a stretch without speculation: `left` more plain rounds."""

    left: int


@dataclass(frozen=True)
class ProbeDue:
    """The stretch is over: speculation restarts if it pays as far as the model knows, else one probe round."""


Phase = Measure | On | Off | ProbeDue


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
class _RowAcceptance:
    """One row's drafts accepted over drafts reached (each position a draft was verified at), forgotten at rate
    `forget` per round in which the row drafts nothing, so a row that stopped drafting drifts back to the batch's."""

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
    prior_catch_up_ratio: draft catch-up cost per token / target prefill cost per token before it is measured
                      (the draft/target parameter ratio for a model draft, 0 for a copy such as prompt lookup).
    probe_budget:     a probe may cost at most this fraction of the target-alone time of the stretch it ends.
    per_row_limits:   with several rows, cap at 0 the rows whose own expected gain is below 1.
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
    measure_plain_step: bool = True  # the first round is a plain one (unless its batch size was timed already)
    prior_catch_up_ratio: float | None = None
    probe_budget: float = 0.05
    per_row_limits: bool = True  # batch > 1: rows whose drafts do not pay draft nothing while the others draft

    phase: Phase = field(default_factory=On, init=False)  # where the decisions stand (see the module doc)
    _alpha: list[float] = field(default_factory=list, repr=False)
    _alpha_n: list[int] = field(default_factory=list, repr=False)
    _target: dict[int, _Mean] = field(default_factory=dict, repr=False)  # by tokens per pass, all batch sizes
    _by_batch: dict[int, dict[int, _Mean]] = field(default_factory=dict, repr=False)  # batch -> tokens -> seconds
    _rows: dict[int, "_RowAcceptance"] = field(default_factory=dict, repr=False)  # by the caller's row id
    _pool: "_RowAcceptance" = field(default_factory=lambda: _RowAcceptance(forget=1.0), repr=False)  # all rows
    _draft: dict[int, _Mean] = field(default_factory=dict, repr=False)
    _batch: int = 1
    _stretch: int = 0  # rounds the next stretch without speculation lasts
    _fit_cache: dict = field(default_factory=dict, repr=False)  # batch size (None: all) -> (a, b, n0)
    _prefill_per_token: float | None = None
    _catch_up: _Mean | None = field(default=None, repr=False)  # seconds per token the draft catches up
    _unfed: int = 0  # committed tokens per row the draft has not seen yet
    last_choice: dict = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self._alpha = [self.prior_acceptance] * self.max_k
        self._alpha_n = [0] * self.max_k
        self._stretch = self.off_rounds
        self.phase = Measure() if self.measure_plain_step else On()

    # ------------------------------------------------------------------ observations

    def observe_draft(self, seconds: float, batch: int = 1) -> None:
        """One draft forward (one token per row, or a catch-up forward) over `batch` rows took `seconds`."""
        self._batch = batch
        self._draft.setdefault(batch, _Mean()).add(seconds)

    def observe_prefill(self, seconds: float, tokens: int, unfed: int) -> None:
        """The target's prompt prefill scored `tokens` tokens (all rows) in `seconds`; the draft has `unfed`
        tokens per row to read before its first proposal."""
        if tokens > 0:
            self._prefill_per_token = seconds / tokens
        self._unfed = unfed
        self._fit_cache = {}

    def observe_catch_up(self, seconds: float, tokens: int) -> None:
        """The draft read `tokens` committed tokens (all rows) it had not seen, in `seconds`."""
        if tokens > 0:
            self._catch_up = self._catch_up or _Mean()
            self._catch_up.add(seconds / tokens)

    def observe_target(self, seconds: float, tokens_per_row: int, batch: int = 1) -> None:
        """One target pass scoring `tokens_per_row` new tokens in each of `batch` rows took `seconds`."""
        self._batch = batch
        m = tokens_per_row * batch
        self._target.setdefault(m, _Mean()).add(seconds)
        self._by_batch.setdefault(batch, {}).setdefault(m, _Mean()).add(seconds)
        self._fit_cache = {}

    def observe_round(self, proposed: list[int], accepted: list[int], rows: list[int] | None = None) -> None:
        """Per live row: drafts proposed and accepted this round (rows with 0 proposed say nothing about the
        draft). `rows`: the caller's ids of those rows (stable while rows leave the batch), for per-row limits."""
        self._unfed = 1 if any(proposed) else self._unfed + 1  # a plain round commits one token the draft lacks
        for n_prop, n_acc in zip(proposed, accepted):
            for j in range(min(n_prop, n_acc + 1, self.max_k)):  # position j was reached
                hit = 1.0 if j < n_acc else 0.0
                if j and not self._alpha_n[j]:  # first visit: start from the position before, not the fixed prior
                    self._alpha[j] = self.acceptance()[j - 1]
                self._alpha_n[j] += 1
                w = max(self.acceptance_rate, 1.0 / (self._alpha_n[j] + 2))  # the prior counts as 2 observations
                self._alpha[j] += w * (hit - self._alpha[j])
        if rows is not None:
            for row, n_prop, n_acc in zip(rows, proposed, accepted):
                self._rows.setdefault(row, _RowAcceptance()).add(n_prop, n_acc)
                self._pool.add(n_prop, n_acc)

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

    def all_accepted(self, k: int) -> float:
        """The chance that all k drafts of a row's round are accepted (the product of alpha_j, j < k)."""
        return math.prod(self.acceptance()[:k])

    def expected_tokens(self, k: int) -> float:
        """Expected new tokens per row in a round with k drafts (accepted + the target's own token)."""
        alpha, total, reach = self.acceptance(), 1.0, 1.0
        for j in range(k):
            reach *= alpha[j]
            total += reach
        return total

    def _fit_target(self, batch: int | None = None) -> tuple[float, float, int] | None:
        """(a, b, n0) of T(m) = a + b * max(0, m - n0) for passes over `batch` rows (from that batch size's own
        passes once one was timed, else from all), or None before any target pass was timed."""
        key, passes = self._passes(batch)
        if key not in self._fit_cache:
            self._fit_cache[key] = self._fit(passes)
        return self._fit_cache[key]

    def _passes(self, batch: int | None) -> tuple[int | None, dict[int, _Mean]]:
        """(batch, its own timed passes) once one was timed at `batch`, else (None, the passes of every batch size)."""
        own = self._by_batch.get(batch) if batch is not None else None
        return (batch, own) if own else (None, self._target)

    def _fit(self, passes: dict[int, _Mean]) -> tuple[float, float, int] | None:
        """(a, b, n0) fitted to mean seconds by tokens per pass, the breakpoint kept at the prior's unless another
        explains the data clearly better."""
        if not passes:
            return None
        narrowest = min(passes)
        if len(passes) >= 3 and passes[narrowest].count >= MEASURED_PASSES:  # predicted by its own mean: the line
            passes = {m: s for m, s in passes.items() if m != narrowest}  # fits the wider passes only
        pts = sorted((m, s.value, float(min(s.count, 20))) for m, s in passes.items())
        scale = sum(w * t * t for _, t, w in pts)

        def fit(n0: int) -> tuple[float, float, float]:
            a, b = _ridge_fit(pts, n0, self.prior_slope, self._prefill_per_token)
            return sum(w * (t - a - b * max(0, m - n0)) ** 2 for m, t, w in pts), a, b

        prior_n0 = self._prior_n0(passes)
        best_sse, a, b = fit(prior_n0)
        best = (a, b, prior_n0)
        for n0 in sorted({m for m, _, _ in pts} - {prior_n0}):
            sse_n, a_n, b_n = fit(n0)
            # another breakpoint must explain the data clearly better than the prior's (noise ~1% of a pass)
            if sse_n < 0.5 * best_sse and best_sse - sse_n > 1e-4 * scale:
                best, best_sse = (a_n, b_n, n0), sse_n
        return best

    def _prior_n0(self, passes: dict[int, _Mean]) -> int:
        """Breakpoint before passes of several tokens are timed: the roofline a / b_pre from the prefill, or the
        CPU default."""
        plain = passes.get(min(passes)) if passes else None
        if self._prefill_per_token is None or plain is None:
            return self.prior_n0
        return int(min(max(plain.value // self._prefill_per_token, 1), 256))

    def catch_up_time(self, tokens: int) -> float:
        """Predicted seconds for the draft to read `tokens` tokens (all rows) it has not seen."""
        if self._catch_up is not None:
            return self._catch_up.value * tokens
        ratio = self.prior_draft_ratio if self.prior_catch_up_ratio is None else self.prior_catch_up_ratio
        return ratio * (self._prefill_per_token or 0.0) * tokens

    def target_time(self, tokens: int, batch: int | None = None) -> float | None:
        """Predicted seconds of one target pass scoring `tokens` tokens in all (rows * tokens per row) over `batch`
        rows (None: from the passes of every batch size)."""
        fit = self._fit_target(batch)
        if fit is None:
            return None
        seen = self._measured(tokens, batch)
        if seen is not None:  # a width timed often enough: its own mean (on CPU a one-token pass is a cheaper kernel)
            return seen
        a, b, n0 = fit
        return max(a + b * max(0, tokens - n0), self._narrower(tokens, batch))

    def _narrower(self, tokens: int, batch: int | None) -> float:
        """The dearest mean of the passes timed over fewer tokens: a width not timed is never predicted cheaper
        (over noisy timings the line can run below them; a width timed often keeps its own mean, since kernels'
        speed does depend on the shape)."""
        return max((s.value for m, s in self._passes(batch)[1].items() if m < tokens), default=0.0)

    def _measured(self, tokens: int, batch: int | None) -> float | None:
        """The mean seconds of passes over exactly `tokens` tokens at `batch` rows, once timed `MEASURED_PASSES` times."""
        seen = self._passes(batch)[1].get(tokens)
        return seen.value if seen is not None and seen.count >= MEASURED_PASSES else None

    def draft_time(self, batch: int) -> float | None:
        """Predicted seconds of one draft step over `batch` rows: measured (nearest batch size), else the prior."""
        if not self._draft:
            t1 = self.target_time(batch, batch)
            return None if t1 is None else self.prior_draft_ratio * t1
        nearest = min(self._draft, key=lambda b: (abs(b - batch), b))
        return self._draft[nearest].value

    def round_time(self, k: int, batch: int) -> float | None:
        """Predicted seconds of a round with k drafts over `batch` rows: k draft steps and the target's pass."""
        t = self.target_time((k + 1) * batch, batch)
        d = self.draft_time(batch) if k else 0.0
        return None if t is None or d is None else k * d + t

    def rate(self, k: int, batch: int | None = None, curves: list[list[float]] | None = None) -> float | None:
        """Expected tokens per second (all rows) with k drafts per round; None before the target was timed.
        `curves`: per row, E_row(0..max_k) (see `_row_curves`); rows whose drafts do not pay then count 1 token."""
        batch = batch or self._batch
        cost = self.round_time(k, batch)
        if cost is None:
            return None
        if curves is None or k == 0:
            return batch * self.expected_tokens(k) / max(cost, 1e-12)
        base = self.round_time(0, batch)
        trim = self.per_row_limits
        return sum(c[k] if not trim or c[k] * base >= cost else 1.0 for c in curves) / max(cost, 1e-12)

    def _row_curves(self, rows: list[int] | None) -> list[list[float]] | None:
        """Per row, E_row(k) for k = 0..max_k: the batch's alpha_j for a row with no record yet, else the row's own
        acceptance at every position (its record shrunk towards the batch's); None for fewer than two rows."""
        if rows is None or len(rows) < 2:
            return None
        alpha, pooled = self.acceptance(), self._pool.rate()
        curves = []
        for row in rows:
            record = self._rows.get(row)
            own = None if record is None or not record.trials else record.shrunk(pooled)
            reach, curve = 1.0, [1.0]
            for a in alpha:
                reach *= a if own is None else own
                curve.append(curve[-1] + reach)
            curves.append(curve)
        return curves

    def row_limits(self, k: int, rows: list[int] | None, batch: int | None = None) -> list[int] | None:
        """Per-row drafts for a round of k: 0 for rows whose own gain E_row(k) * T_round(0) / T_round(k) is below
        1, k for the others; None when every row drafts k (or for fewer than two rows)."""
        curves = self._row_curves(rows) if k > 0 and self.per_row_limits else None
        if curves is None:
            return None
        batch = batch or len(rows)
        base, cost = self.round_time(0, batch), self.round_time(k, batch)
        if base is None or cost is None:
            return None
        limits = [k if c[k] * base >= cost else 0 for c in curves]
        return None if all(n == k for n in limits) or not any(limits) else limits

    # ------------------------------------------------------------------ decision

    def best_k(self, batch: int | None = None, limit: int | None = None, rows: list[int] | None = None) -> int:
        """The k maximising `rate` (0 when no k beats the target alone by `min_gain`), ignoring stretches; with
        `rows` (batch > 1) rows whose drafts do not pay are counted as drafting nothing."""
        kmax = self.max_k if limit is None else max(0, min(self.max_k, limit))
        base = self.rate(0, batch)
        if base is None:
            return min(self.initial_k, kmax)
        curves = self._row_curves(rows)
        best_k, best_rate = 0, base * self.min_gain
        for k in range(1, kmax + 1):
            r = self.rate(k, batch, curves)
            if r is not None and r > best_rate:
                best_k, best_rate = k, r
        self.last_choice = {"k": best_k, "rate": best_rate, "target_alone": base}
        return best_k

    def choose_k(self, batch: int | None = None, limit: int | None = None, remaining: int | None = None,
                 rows: list[int] | None = None) -> int:
        """Draft tokens for the next round (0: the target decodes one token alone). `limit` caps k; `remaining`:
        tokens left to generate per row (the horizon that must repay the draft's catch-up; default limit + 1);
        `batch` defaults to the last observed batch size; `rows`: the live rows' ids (per-row acceptance)."""
        if limit is not None and limit <= 0:
            return 0
        b = batch or self._batch
        phase = self.phase
        if isinstance(phase, Off):
            self.phase = Off(phase.left - 1) if phase.left > 1 else self._after_stretch()
            return 0
        if isinstance(phase, Measure) and b not in self._by_batch:
            self.phase = On()
            return 0
        if remaining is None:
            remaining = limit + 1 if limit is not None else 4 * self.max_off_rounds
        horizon = b * remaining  # tokens left, all rows
        k = self.best_k(batch, limit, rows)
        if k > 0 and self._worth_catching_up(k, b, horizon):  # as far as the model knows, speculation pays now
            self.phase = On()
            self._stretch = self.off_rounds
            return self._timing_a_step(k, limit)
        if isinstance(phase, ProbeDue):
            k = min(self.probe_k, self.max_k, limit if limit is not None else self.max_k)
            if self._probe_cost(k, b) <= self.probe_budget * self._stretch * (self.target_time(b, b) or 0.0):
                self.phase = On(after_probe=True)
                return k  # one probe round refreshes the acceptance estimate
            # too dear to look: counts as a failed probe (the next stretch is longer)
        return self._switch_off(after_probe=isinstance(phase, ProbeDue) or phase == On(after_probe=True))

    def _timing_a_step(self, k: int, limit: int | None) -> int:
        """k, but at least 2 in the first drafting round (no draft step timed, no draft verified yet): its first
        forward reads the catch-up, the second is a step, so the next round is chosen with a measured step."""
        first = not self._draft and not any(self._alpha_n)
        if not first or k >= 2 or (limit is not None and limit < 2) or self.max_k < 2:
            return k
        return 2

    def _switch_off(self, after_probe: bool) -> int:
        """Start a stretch without speculation (longer when a probe just failed to change the verdict)."""
        if after_probe:
            self._stretch = min(2 * self._stretch, self.max_off_rounds)
        left = self._stretch - 1
        self.phase = Off(left) if left > 0 else self._after_stretch()
        return 0

    def _after_stretch(self) -> Phase:
        return ProbeDue() if self.probe_k > 0 else On()

    def _probe_cost(self, k: int, batch: int) -> float:
        """Extra seconds a probe round with k drafts costs over a plain step: catch-up, drafts, a longer pass."""
        t1, tk = self.target_time(batch, batch), self.target_time((k + 1) * batch, batch)
        d = self.draft_time(batch)
        if t1 is None or tk is None or d is None:
            return 0.0
        return self.catch_up_time(self._unfed * batch) + k * d + tk - t1

    def _worth_catching_up(self, k: int, batch: int, horizon: int) -> bool:
        """Whether k drafts per round save more over the `horizon` tokens left than the draft's catch-up costs."""
        if self._unfed <= 2:
            return True
        r0, rk = self.rate(0, batch), self.rate(k, batch)
        if r0 is None or rk is None:
            return True
        return horizon * (1.0 / r0 - 1.0 / rk) > self.catch_up_time(self._unfed * batch)

    def summary(self) -> dict:
        """What the model measured and predicts: seconds per target pass by tokens scored (measured where it was,
        else predicted), per draft step and per catch-up token, acceptance by position, and its choice now."""
        b = self._batch
        passes = {m: round(s.value, 6) for m, s in sorted(self._target.items())}
        predicted = {m: round(t, 6) for m in range(b, (self.max_k + 1) * b + 1, b)
                     if (t := self.target_time(m, b)) is not None}
        best = self.best_k(b) if self._target else None
        return {
            "target_pass_s_measured": passes,
            "target_pass_s_predicted": predicted,
            "prefill_s_per_token": self._prefill_per_token,
            "draft_step_s": self.draft_time(b) if self._draft else None,
            "catch_up_s_per_token": self._catch_up.value if self._catch_up else None,
            "acceptance_by_position": [round(a, 4) for a in self.acceptance()],
            "best_k_now": best,
            "rate_best_over_target_alone": (self.rate(best, b) / self.rate(0, b)) if best else 1.0,
        }

    @property
    def speculating(self) -> bool:
        """False inside a stretch without speculation."""
        return not isinstance(self.phase, (Off, ProbeDue))


def _ridge_fit(pts: list[tuple[int, float, float]], n0: int, prior_slope: float,
               slope: float | None = None) -> tuple[float, float]:
    """Weighted least squares of t = a + b * max(0, m - n0) with a ridge pulling b to `slope` (seconds per token,
    from the prefill) or else prior_slope * a."""
    # a first estimate of a from points at or below the break (else from the smallest m)
    flat = [(t, w) for m, t, w in pts if m <= n0]
    a0 = sum(t * w for t, w in flat) / sum(w for _, w in flat) if flat else pts[0][1]
    b_prior = slope if slope is not None else prior_slope * a0
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
