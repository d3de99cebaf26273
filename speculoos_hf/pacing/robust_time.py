"""How long one kind of work takes (a target pass of one width, a draft step, a catch-up token), robust to outliers.

The estimator, and why: timing noise on a shared machine is one-sided (a page fault, another process, a first call
at a new shape only ever add time), and a cost model acts on its estimates at once, so one bad timing must never
decide. Hence:
- a timing more than `HOLD_RATIO` times what is expected of it (the work's own estimate, or the caller's
  prediction for work never timed) is held back: it counts only if the next timing of the same work confirms it
  (two slow timings in a row are the work's real cost, e.g. the machine got busier);
- with one or two timings taken, the estimate is the fastest of them (one-sided noise: the fastest is the best
  guess, and a second timing can always lower an estimate a hiccup raised);
- from `SETTLED` timings on, the median of the last `WINDOW`: one outlier in three cannot move it, and it follows a
  lasting change of speed within half a window.
Not a mean or an exponential average (one 10x timing moves a mean of ten by 90%), and no fixed decay (a width timed
once at the start, such as the one-token pass of a call that then drafts throughout, keeps what was measured).
Non-finite and negative timings are dropped; a coarse clock's 0 is kept (it says "cheap").
"""

from __future__ import annotations

import math
import statistics
from collections import deque
from dataclasses import dataclass, field

HOLD_RATIO = 3.0  # a timing this many times its expectation waits for confirmation
SETTLED = 3  # timings from which the median rules (before: the fastest)
WINDOW = 9  # the median is over this many latest timings


@dataclass
class RobustTime:
    """Seconds of one kind of work from its timings (see the module doc). `value` is None before any is taken."""

    window: int = WINDOW
    count: int = 0  # timings taken (held ones once confirmed)
    _recent: deque = field(default_factory=deque, repr=False)
    _held: float | None = field(default=None, repr=False)
    _value: float | None = field(default=None, repr=False)

    def add(self, seconds: float, expected: float | None = None) -> bool:
        """Take one timing; `expected`: the prediction for this work while it has no timing of its own. Returns
        False when the timing was dropped (not finite, negative) or held back as a likely outlier."""
        if not math.isfinite(seconds) or seconds < 0:
            return False
        held, self._held = self._held, None
        bar = self._value if self._value is not None else expected
        if bar is not None and math.isfinite(bar) and bar > 0 and seconds > HOLD_RATIO * bar:
            if held is None:
                self._held = seconds
                return False
            self._take(held)  # confirmed by a second slow timing
        self._take(seconds)
        return True

    def _take(self, seconds: float) -> None:
        self._recent.append(seconds)
        if len(self._recent) > self.window:
            self._recent.popleft()
        self.count += 1
        few = len(self._recent) < SETTLED
        self._value = min(self._recent) if few else statistics.median(self._recent)

    @property
    def value(self) -> float | None:
        return self._value

    @property
    def settled(self) -> bool:
        """Whether the estimate rests on enough timings (`SETTLED`) that one outlier cannot move it."""
        return self.count >= SETTLED
