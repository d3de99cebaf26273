"""The policy that chooses each round's k from the costs it is given (pass times and acceptance, see `Costs`).

k maximises batch x E(k) / (k x draft(batch) + T((k+1) x batch)); k = 0 is the target alone and wins unless some
k beats it by `min_gain`. With several rows and `per_row_limits` (off by default: a capped row's slots are drafted
and scored anyway), a row whose own gain E_row(k) T_round(0) / T_round(k) is below 1 drafts nothing while the
others draft k (`row_limits`). The decisions form a small state machine (`phase`):

    Measure --the first round, then until a pass is timed: plain steps--> as On
    On --k > 0 pays--> On            On --no k pays--> Off(n)  (n = stretch - 1; none left: ProbeDue)
    Off(n) --a plain round--> Off(n - 1) ... --> ProbeDue
    ProbeDue --k > 0 pays--> On      ProbeDue --else, a probe round--> On(after_probe)
    On(after_probe) --still no k pays--> Off with a doubled stretch

Catching the draft up: it must read every committed token it has not seen (the prompt before its first proposal,
the stretch after rounds without drafts); (re)starting pays only where the time it is expected to save over the
tokens left exceeds that catch-up. A probe is skipped (the stretch doubles) when it would cost more than
`probe_budget` of the stretch it ends; while the draft's step rests on too few timings to trust, a probe drafts 2
tokens so that a step is timed (its first forward may read the catch-up), and the figures it is priced with are
never above their priors or predictions while they rest on too few timings (pass_times.py): one slow timing never
keeps drafting off for good.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True)
class Measure:
    """Before the first decision: a plain step (no drafts) times the target alone, so a draft that never pays is
    never even started. The call's first round is always plain: its pass may read the prompt too (a prefill's
    timing), and an answer's first token is where a draft agrees least (a chat's opening words)."""


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


class Costs(Protocol):
    """What the policy is told (the pass-time and acceptance models behind one object)."""

    def target_time(self, tokens: int, batch: int | None = None) -> float | None: ...  # None: nothing timed
    def draft_time(self, batch: int) -> float | None: ...
    def catch_up_time(self, tokens: int) -> float: ...
    def token_curve(self, k: int) -> list[float]: ...  # [E(0..k)]
    def row_curves(self, rows: list[int] | None, k: int) -> list[list[float]] | None: ...
    def target_timed(self, batch: int) -> bool: ...  # a pass over `batch` rows was timed
    def drafting_started(self) -> bool: ...  # a draft step was timed or a draft verified
    def draft_provisional(self) -> bool: ...  # a draft figure rests on too few timings to trust
    def plain_suspect(self, batch: int) -> bool: ...  # the one-token pass's timing looks like a slow moment
    def probe_pass_time(self, tokens: int, batch: int) -> float: ...  # priced from settled timings (pass_times)
    def timed_once(self, tokens: int, batch: int) -> bool: ...  # that pass has a single timing


@dataclass
class KPolicy:
    """Chooses k per round (see the module doc). `costs`: any `Costs`; the rest are the policy's settings."""

    costs: Costs
    max_k: int = 12
    initial_k: int = 4
    off_rounds: int = 8
    max_off_rounds: int = 64
    probe_k: int = 1
    min_gain: float = 1.03
    measure_plain_step: bool = True
    probe_budget: float = 0.05
    per_row_limits: bool = False
    first_k: int = 1  # drafts of the first drafting round
    phase: Phase = field(default_factory=On)
    batch: int = 1  # the last batch size seen
    unfed: int = 0  # committed tokens per row the draft has not read
    last_choice: dict = field(default_factory=dict, repr=False)
    _stretch: int = 0
    _experimented: bool = False  # the first drafting round was chosen
    _begun: bool = False  # the call's first round was chosen

    def __post_init__(self) -> None:
        self._stretch = self.off_rounds
        self.phase = Measure() if self.measure_plain_step else On()

    @property
    def stretch(self) -> int:
        """Plain rounds in the next stretch without drafts."""
        return self._stretch

    def carry_stretch(self, stretch: int) -> None:
        """An earlier call's stretch without drafts (doubled by its failed probes) stands for this one."""
        self._stretch = max(self.off_rounds, min(stretch, self.max_off_rounds))

    def after_round(self, proposed: list[int]) -> None:
        """A round is over: a round with drafts left the draft one token behind, a plain one one more."""
        self.unfed = 1 if any(proposed) else self.unfed + 1

    # ------------------------------------------------------------------ rates

    def round_time(self, k: int, batch: int, settled_only: bool = False) -> float | None:
        """Predicted seconds of a round with k drafts over `batch` rows: k draft steps and the target's pass
        (`settled_only`: the pass priced from settled timings only, see `Costs.probe_pass_time`)."""
        pass_time = self.costs.probe_pass_time if settled_only else self.costs.target_time
        t = pass_time((k + 1) * batch, batch)
        d = self.costs.draft_time(batch) if k else 0.0
        return None if t is None or d is None else k * d + t

    def rates(self, kmax: int, batch: int, rows: list[int] | None = None, settled_only: bool = False
              ) -> list[float | None]:
        """Expected tokens per second (all rows) for k = 0..kmax (None where nothing is timed); with `rows`, a row
        whose drafts do not pay counts 1 token (it drafts nothing)."""
        curve, curves = self.costs.token_curve(kmax), self.costs.row_curves(rows, kmax)
        base, trim = self.round_time(0, batch), self.per_row_limits
        out = []
        for k in range(kmax + 1):
            cost = self.round_time(k, batch, settled_only)
            if cost is None:
                out.append(None)
            elif curves is None or k == 0:
                out.append(batch * curve[k] / max(cost, 1e-12))
            else:
                out.append(sum(c[k] if not trim or c[k] * base >= cost else 1.0 for c in curves) / max(cost, 1e-12))
        return out

    def rate(self, k: int, batch: int | None = None) -> float | None:
        return self.rates(k, batch or self.batch)[k]

    def best_k(self, batch: int | None = None, limit: int | None = None, rows: list[int] | None = None) -> int:
        """The k maximising the rate (0 when no k beats the target alone by `min_gain`), ignoring stretches."""
        b = batch or self.batch
        kmax = self.max_k if limit is None else max(0, min(self.max_k, limit))
        rates = self.rates(kmax, b, rows)
        if rates[0] is None:
            return min(self.initial_k, kmax)
        best_k, best_rate = 0, rates[0] * self.min_gain
        for k, r in enumerate(rates[1:], start=1):
            if r is not None and r > best_rate:
                best_k, best_rate = k, r
        self.last_choice = {"k": best_k, "rate": best_rate, "target_alone": rates[0]}
        return best_k

    def row_limits(self, k: int, rows: list[int] | None, batch: int | None = None) -> list[int] | None:
        """Per-row drafts for a round of k: 0 for rows whose own gain is below 1, k for the others; None when every
        row drafts k (or for fewer than two rows)."""
        curves = self.costs.row_curves(rows, k) if k > 0 and self.per_row_limits else None
        if curves is None:
            return None
        b = batch or len(rows)
        base, cost = self.round_time(0, b), self.round_time(k, b)
        if base is None or cost is None:
            return None
        limits = [k if c[k] * base >= cost else 0 for c in curves]
        return None if all(n == k for n in limits) or not any(limits) else limits

    # ------------------------------------------------------------------ decisions

    def choose_k(self, batch: int | None = None, limit: int | None = None, remaining: int | None = None,
                 rows: list[int] | None = None) -> int:
        """Drafts for the next round (0: the target decodes one token alone). `limit` caps k; `remaining`: tokens
        left per row (the horizon that must repay the draft's catch-up; default limit + 1)."""
        if limit is not None and limit <= 0:
            return 0
        b = batch or self.batch
        self.batch = b
        phase = self.phase
        if isinstance(phase, Off):
            self.phase = Off(phase.left - 1) if phase.left > 1 else self._after_stretch()
            return 0
        if isinstance(phase, Measure) and not (self._begun and self.costs.target_timed(b)):
            self._begun = True  # the call's first round, then until a pass is timed: plain rounds
            return 0
        if isinstance(phase, On) and self.costs.plain_suspect(b):
            return 0  # a plain round times the one-token pass again: one slow timing must not price the target alone
        if remaining is None:
            remaining = limit + 1 if limit is not None else 4 * self.max_off_rounds
        k = self.best_k(b, limit, rows)
        if k > 0 and self._worth_catching_up(k, b, b * remaining):  # as far as the model knows, speculation pays
            self.phase = On()
            self._stretch = self.off_rounds
            return self._first_experiment(self._retimed(k, b, limit, rows))
        if isinstance(phase, ProbeDue):
            k = min(self._probe_k(), self.max_k, limit if limit is not None else self.max_k)
            if self._probe_allowed(k, b):
                self.phase = On(after_probe=True)
                return k  # one probe round refreshes the estimates
            # too dear to look: counts as a failed probe (the next stretch is longer)
        return self._switch_off(after_probe=isinstance(phase, ProbeDue) or phase == On(after_probe=True))

    def _retimed(self, k: int, batch: int, limit: int | None, rows: list[int] | None) -> int:
        """k, or a wider k whose pass was timed once and would pay at its price from settled timings: one slow
        moment there must not cap k for good, so it is timed once more (the fastest of two then stands)."""
        kmax = self.max_k if limit is None else max(0, min(self.max_k, limit))
        if not any(self.costs.timed_once((j + 1) * batch, batch) for j in range(k + 1, kmax + 1)):
            return k  # nothing wider rests on a single timing
        rates = self.rates(kmax, batch, rows, settled_only=True)
        best = max(range(kmax + 1), key=lambda j: rates[j] if rates[j] is not None else -1.0)
        return best if best > k and self.costs.timed_once((best + 1) * batch, batch) else k

    def _first_experiment(self, k: int) -> int:
        """k, but at most `first_k` in the first drafting round: everything it is chosen from is a prior (the wider
        pass, the draft's step, acceptance), and a short first round costs least where the priors are wrong (a CPU
        whose pass over 2 tokens costs two: float32 on an AVX2-only EPYC)."""
        if self._experimented or self.costs.drafting_started():
            return k
        self._experimented = True  # once: a hybrid's model may not be asked in that round (its rows copy)
        return min(k, self.first_k)

    def _switch_off(self, after_probe: bool) -> int:
        """Start a stretch without speculation (longer when a probe just failed to change the verdict)."""
        if after_probe:
            self._stretch = min(2 * self._stretch, self.max_off_rounds)
        left = self._stretch - 1
        self.phase = Off(left) if left > 0 else self._after_stretch()
        return 0

    def _after_stretch(self) -> Phase:
        return ProbeDue() if self.probe_k > 0 else On()

    def _probe_k(self) -> int:
        """The probe's drafts: `probe_k`, or 2 while the draft's figures are provisional (its first forward may be a
        catch-up: the second is a step, timed)."""
        return max(self.probe_k, 2) if self.costs.draft_provisional() else self.probe_k

    def _probe_allowed(self, k: int, batch: int) -> bool:
        """A probe within `probe_budget` of the stretch's target-alone time."""
        return self._probe_cost(k, batch) <= self.probe_budget * self._stretch * (
            self.costs.target_time(batch, batch) or 0.0)

    def _probe_cost(self, k: int, batch: int) -> float:
        """Extra seconds a probe round with k drafts costs over a plain step: catch-up, drafts, a longer pass."""
        plain, probe = self.round_time(0, batch), self.round_time(k, batch)
        if plain is None or probe is None:
            return 0.0
        wider = self.costs.probe_pass_time((k + 1) * batch, batch)  # its unsettled timing at most the prediction
        return self.costs.catch_up_time(self.unfed * batch) + probe - plain - (self.costs.target_time(
            (k + 1) * batch, batch) - wider)

    def _worth_catching_up(self, k: int, batch: int, horizon: int) -> bool:
        """Whether k drafts per round save more over the `horizon` tokens left than the draft's catch-up costs."""
        if self.unfed <= 2:
            return True
        rates = self.rates(k, batch)
        r0, rk = rates[0], rates[k]
        if r0 is None or rk is None:
            return True
        return horizon * (1.0 / r0 - 1.0 / rk) > self.costs.catch_up_time(self.unfed * batch)

    @property
    def speculating(self) -> bool:
        """False inside a stretch without speculation."""
        return not isinstance(self.phase, (Off, ProbeDue))
