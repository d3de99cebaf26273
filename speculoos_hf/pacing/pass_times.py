"""The pass-time model: what a target pass over m tokens, a draft step and a draft catch-up cost, from this call's
timings (host floats: no tensors, no syncs). Every timing goes through `RobustTime` (robust_time.py).

Target pass over m = rows x tokens-per-row tokens, at a batch size (each batch size from its own passes once one
was timed, else from the passes of every batch size):
- a width timed, even once, is predicted by its own estimate: kernels' speed depends on the shape (a CPU's one-token
  pass runs a cheaper kernel than any wider one: float32 on an AVX2-only EPYC has T(2) = 2 T(1), then nearly flat to
  12 tokens), a step no line fits;
- a width not timed: T(m) = a + b max(0, m - n0), fitted by weighted least squares to the widths timed (the
  narrowest left out: it is its own), with a ridge pulling b to the prior slope. The prior: the prefill is
  compute-bound, so its cost per token b_pre and the one-token pass a give the roofline max(a, b_pre m), i.e.
  n0 = floor(a / b_pre), slope b_pre; without a usable prefill timing (0 s on a coarse clock, inf, NaN, or a
  prefill over fewer than 4 tokens: a pass's cost, not a token's) the CPU default n0. The width one token per row
  past the widest timed is priced flat: the policy looks one step further;
- monotone in the width: never dearer than a wider width timed, never cheaper than a narrower one timed.
Draft step (one token per row): per batch size (the nearest one timed); catch-up (committed tokens the draft had not
read) per token. Before they are timed, and at most until three timings are in, the priors: a share of a one-token
target pass, the prefill's cost per token times the draft/target size ratio.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from .robust_time import RobustTime

MAX_PRIOR_N0 = 256
MIN_PREFILL_TOKENS = 4  # a prefill over fewer tokens prices nothing per token
SUSPECT_RATIO = 1.5  # an unsettled width this much dearer than a wider one is timed again


def _finite_positive(x: float | None) -> float | None:
    return x if x is not None and math.isfinite(x) and x > 0 else None


@dataclass
class TargetPassTimes:
    """Seconds of a target pass by tokens scored in all (rows x tokens per row) and batch size."""

    prior_n0: int = 8  # tokens per pass up to which a pass costs about the same, before anything says otherwise
    prior_slope: float = 0.1  # extra cost per token beyond n0, as a share of a one-token pass, without a prefill
    prefill_per_token: float | None = None  # the prefill's seconds per token (None: not timed, or unusable)
    _all: dict[int, RobustTime] = field(default_factory=dict, repr=False)  # tokens -> seconds, every batch size
    _by_batch: dict[int, dict[int, RobustTime]] = field(default_factory=dict, repr=False)
    _fits: dict = field(default_factory=dict, repr=False)  # batch size (None: all) -> (a, b, n0)

    def observe_prefill(self, seconds: float, tokens: int) -> None:
        """The prompt's prefill scored `tokens` tokens (all rows) in `seconds`. A prefill over fewer than
        `MIN_PREFILL_TOKENS` says what a pass costs, not what a token costs (it is not compute-bound): unusable as
        the roofline's slope (a 2-token prompt would price a pass over m tokens at m one-token passes)."""
        usable = tokens >= MIN_PREFILL_TOKENS
        self.prefill_per_token = _finite_positive(seconds / tokens) if usable else None
        self._fits = {}

    def observe(self, seconds: float, tokens_per_row: int, batch: int = 1) -> None:
        """One pass scoring `tokens_per_row` tokens in each of `batch` rows took `seconds`."""
        m = tokens_per_row * batch
        own = self._by_batch.setdefault(batch, {})
        expected = self.predict(m, batch)
        own.setdefault(m, RobustTime()).add(seconds, expected)
        self._all.setdefault(m, RobustTime()).add(seconds, expected)
        self._fits = {}

    def timed(self, batch: int) -> bool:
        """Whether a pass over `batch` rows was timed."""
        return any(t.value is not None for t in self._by_batch.get(batch, {}).values())

    def predict(self, tokens: int, batch: int | None = None, settled_only: bool = False) -> float | None:
        """Seconds of a pass over `tokens` tokens in all at `batch` rows (None: from every batch size's passes);
        None before any pass was timed. Monotone in the width: a width is never predicted dearer than a wider width
        timed (a dearer narrow timing next to a cheaper wide one is a slow moment, the noise being one-sided: this
        is what keeps one slow one-token pass from looking like the target alone's speed), nor an untimed width
        cheaper than a narrower one timed. `settled_only`: from the widths timed often enough to outvote an outlier
        (and the narrowest), what a probe is priced with so that it can time an unsettled width again."""
        timed = self.measured(batch)
        if settled_only:
            passes, narrowest = self._passes(batch), min(timed, default=None)
            timed = {m: t for m, t in timed.items() if passes[m].settled or m == narrowest}
        if not timed:
            return None
        cap = min((t for m, t in timed.items() if m >= tokens), default=math.inf)
        return cap if tokens in timed else self._untimed(tokens, batch, timed, cap)

    def _untimed(self, tokens: int, batch: int | None, timed: dict[int, float], cap: float) -> float:
        """The line between the narrower width timed (floor) and the wider ones (cap)."""
        a, b, n0 = self._fit(batch)
        below = max((m for m in timed if m < tokens), default=None)
        floor = 0.0 if below is None else min(timed[below], cap)
        line = a + b * max(0, tokens - n0)
        rows = batch or 1
        if below is not None and below > rows and tokens <= below + rows:  # one more token per row than the widest
            line = floor  # timed: priced as flat, so the policy looks one step further than its prior would
        return min(max(line, floor), cap)

    def suspect(self, tokens: int, batch: int) -> bool:
        """Whether the width's own estimate looks like a slow moment: it rests on too few timings to outvote one
        and is `SUSPECT_RATIO` times dearer than a wider width timed (a narrower pass is never dearer)."""
        own = self._by_batch.get(batch, {}).get(tokens)
        if own is None or own.value is None or own.settled:
            return False
        wider = [t for m, t in self.measured(batch).items() if m > tokens]
        return bool(wider) and own.value > SUSPECT_RATIO * min(wider)

    def timings(self, tokens: int, batch: int) -> int:
        """How many timings the width's estimate at `batch` rows rests on."""
        own = self._by_batch.get(batch, {}).get(tokens)
        return 0 if own is None else own.count

    def measured(self, batch: int | None = None) -> dict[int, float]:
        """{tokens: estimated seconds} of the widths timed at `batch` rows (None: every batch size)."""
        return {m: t.value for m, t in sorted(self._passes(batch).items()) if t.value is not None}

    def _passes(self, batch: int | None) -> dict[int, RobustTime]:
        """That batch size's own timed passes once one was timed, else the passes of every batch size."""
        return self._by_batch[batch] if batch is not None and self.timed(batch) else self._all

    def _fit(self, batch: int | None) -> tuple[float, float, int]:
        passes = self._passes(batch)
        key = batch if passes is not self._all else None
        if key not in self._fits:
            self._fits[key] = self._fit_line({m: t for m, t in passes.items() if t.value is not None})
        return self._fits[key]

    def _fit_line(self, passes: dict[int, RobustTime]) -> tuple[float, float, int]:
        """(a, b, n0) fitted to the estimates by width (at least one), the breakpoint kept at the prior's unless
        another explains the data clearly better."""
        narrowest = min(passes)
        prior_n0 = self._prior_n0(passes[narrowest].value)
        if len(passes) >= 3:  # the narrowest is predicted by its own estimate: the line fits the wider passes
            passes = {m: t for m, t in passes.items() if m != narrowest}
        pts = sorted((m, t.value, float(min(t.count, 20))) for m, t in passes.items())
        scale = sum(w * t * t for _, t, w in pts)

        def fit(n0: int) -> tuple[float, float, float]:
            a, b = _ridge_fit(pts, n0, self.prior_slope, self.prefill_per_token)
            return sum(w * (t - a - b * max(0, m - n0)) ** 2 for m, t, w in pts), a, b

        best_sse, a, b = fit(prior_n0)
        best = (a, b, prior_n0)
        for n0 in sorted({m for m, _, _ in pts} - {prior_n0}):
            sse_n, a_n, b_n = fit(n0)
            # another breakpoint must explain the data clearly better than the prior's (noise ~1% of a pass)
            if sse_n < 0.5 * best_sse and best_sse - sse_n > 1e-4 * scale:
                best, best_sse = (a_n, b_n, n0), sse_n
        return best

    def _prior_n0(self, plain: float) -> int:
        """The roofline's breakpoint a / b_pre from the prefill, or the default without a usable prefill timing."""
        if self.prefill_per_token is None or not plain > 0:
            return self.prior_n0
        return int(min(max(plain // self.prefill_per_token, 1), MAX_PRIOR_N0))


def _ridge_fit(pts: list[tuple[int, float, float]], n0: int, prior_slope: float,
               slope: float | None = None) -> tuple[float, float]:
    """Weighted least squares of t = a + b * max(0, m - n0) with a ridge pulling b to `slope` (seconds per token,
    from the prefill) or else prior_slope * a."""
    flat = [(t, w) for m, t, w in pts if m <= n0]  # a first estimate of a: points at or below the break
    a0 = sum(t * w for t, w in flat) / sum(w for _, w in flat) if flat else pts[0][1]
    b_prior = slope if slope is not None else prior_slope * a0
    lam = 2.0 * 16.0  # as strong as two observations at 4 tokens past the break
    s_w = s_x = s_xx = s_t = s_xt = 0.0  # normal equations for (a, b) with the ridge lam * (b - b_prior)^2
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


@dataclass
class DraftTimes:
    """Seconds of a draft step by batch size, and of the draft's catch-up per token."""

    prior_catch_up_ratio: float = 0.3  # catch-up per token / the target's prefill per token, before it is timed
    _steps: dict[int, RobustTime] = field(default_factory=dict, repr=False)
    _catch_up: RobustTime = field(default_factory=RobustTime, repr=False)  # seconds per token

    def observe_step(self, seconds: float, batch: int) -> None:
        """One draft forward of one token per row over `batch` rows (held against its own timings only: against
        the prior a slow first timing is kept, but priced at most at the prior until settled, see `step`)."""
        self._steps.setdefault(batch, RobustTime()).add(seconds)

    def step(self, batch: int, prior: float | None = None) -> float | None:
        """The step of the nearest batch size timed (None: none yet); while it rests on fewer timings than an
        outlier needs to be outvoted, at most `prior`: one slow first step cannot switch drafting off."""
        timed = [b for b, t in self._steps.items() if t.value is not None]
        if not timed:
            return None
        step = self._steps[min(timed, key=lambda b: (abs(b - batch), b))]
        return _provisional_at_most(step, prior)

    def observe_catch_up(self, seconds: float, tokens: int) -> None:
        """The draft read `tokens` committed tokens (all rows) it had not seen, in `seconds`."""
        if tokens > 0:
            self._catch_up.add(seconds / tokens)

    def catch_up_per_token(self, prefill_per_token: float | None) -> float:
        """Seconds per token: measured (at most the prior while provisional), else the prior."""
        prior = self.prior_catch_up_ratio * (prefill_per_token or 0.0)
        measured = _provisional_at_most(self._catch_up, prior if prefill_per_token is not None else None)
        return measured if measured is not None else prior

    @property
    def catch_up_measured(self) -> float | None:
        """Seconds per token as timed (None: not yet)."""
        return self._catch_up.value

    def provisional(self) -> bool:
        """Whether a draft step was timed, but too few times for an outlier to be outvoted."""
        timed = [t for t in self._steps.values() if t.value is not None]
        return bool(timed) and not any(t.settled for t in timed)


def _provisional_at_most(estimate: RobustTime, prior: float | None) -> float | None:
    """The estimate, but at most `prior` while it is not settled."""
    if estimate.value is None or estimate.settled or prior is None:
        return estimate.value
    return min(estimate.value, prior)
