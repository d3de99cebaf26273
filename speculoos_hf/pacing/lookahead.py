"""How many tokens to draft, per round, from a cost model measured as the generation runs.

`CostModelLookahead` joins three parts, each in its own module and testable alone:
- the pass-time model (pass_times.py): target passes by width and batch size, draft steps, the draft's catch-up,
  every timing through the robust estimator of robust_time.py (held outliers, fastest of few, median of many);
- the acceptance model (acceptance_model.py): acceptance by draft position and by row;
- the policy (k_policy.py): k maximising expected tokens per second, per-row limits, and the states measure, on,
  off for a stretch, probe.
It is plain host arithmetic on floats (no tensors, no syncs). Its pacer (`pacer.CostModelPacer`) calls, each round:

    policy.observe_prefill(seconds, tokens, unfed)  # once: the target's prompt prefill (tokens: all rows)
    k = policy.choose_k(batch, limit, remaining, rows)  # 0: no speculation this round, the target decodes one token
    ... per draft step:     policy.observe_draft(seconds, batch)
    ... a draft catch-up:   policy.observe_catch_up(seconds, tokens)   (committed tokens the draft had not seen)
    ... per target pass:    policy.observe_target(seconds, tokens_per_row, batch)   (not the prompt's prefill)
    policy.observe_round(proposed=[...], accepted=[...], rows=[...])                 (per live row, k=0 rounds too)
    limits = policy.row_limits(k, rows)        # per-row k (batch > 1): rows whose drafts do not pay get 0

The policy reads every cost through this object (`target_time`, `draft_time`, `catch_up_time`, ...), so a test can
replace any of them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .acceptance_model import AcceptanceModel
from .k_policy import KPolicy, Measure, Off, On, Phase, ProbeDue
from .memory import Learnt
from .pass_times import DraftTimes, TargetPassTimes

__all__ = ["CostModelLookahead", "MEASURED_PASSES", "Measure", "Off", "On", "Phase", "ProbeDue"]

MEASURED_PASSES = 1  # a pass width timed this often is predicted by what was measured, not by the fit
SUMMARY_K = 12  # the summary predicts widths up to this k (or the widest timed, if wider)


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
    per_row_limits:   with several rows, cap at 0 the rows whose own expected gain is below 1. Off by default: a
                      round drafts and scores every row of the batch anyway (one [B, k] draft forward, one [B, k+1]
                      pass), so a capped row saves nothing and loses the drafts it would have had accepted (and
                      lags, while the batch lasts as long as its slowest row).
    first_k:          drafts of the first drafting round, whose every input is a prior.
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
    per_row_limits: bool = False  # batch > 1: rows whose drafts do not pay draft nothing while the others draft
    first_k: int = 1  # drafts of the first drafting round (chosen from priors only)

    passes: TargetPassTimes = field(init=False, repr=False)
    drafts: DraftTimes = field(init=False, repr=False)
    accept: AcceptanceModel = field(init=False, repr=False)
    policy: KPolicy = field(init=False, repr=False)

    def __post_init__(self) -> None:
        ratio = self.prior_draft_ratio if self.prior_catch_up_ratio is None else self.prior_catch_up_ratio
        self.passes = TargetPassTimes(prior_n0=self.prior_n0, prior_slope=self.prior_slope)
        self.drafts = DraftTimes(prior_catch_up_ratio=ratio)
        self.accept = AcceptanceModel(prior=self.prior_acceptance, rate=self.acceptance_rate, max_k=self.max_k)
        self.policy = KPolicy(self, max_k=self.max_k, initial_k=self.initial_k, off_rounds=self.off_rounds,
                              max_off_rounds=self.max_off_rounds, probe_k=self.probe_k, min_gain=self.min_gain,
                              measure_plain_step=self.measure_plain_step, probe_budget=self.probe_budget,
                              per_row_limits=self.per_row_limits, first_k=self.first_k)

    # ------------------------------------------------------------------ across calls (memory.py)

    def start_from(self, learnt: Learnt) -> None:
        """Take what an earlier call measured (memory.py): its timings, and its acceptance by position when carried;
        no plain round then times the target alone, no short first drafting round tests the priors."""
        self.passes, self.drafts = learnt.passes, learnt.drafts
        if learnt.accept is not None:
            self.accept = learnt.accept.by_position_only(max_k=self.max_k)
        self.policy.carry_stretch(learnt.stretch)

    def hand_on(self, setting=None) -> Learnt:
        """What the next call may start from (memory.Slot.keep; a later call recalls a copy)."""
        return Learnt(self.passes, self.drafts, self.accept.by_position_only(), self.policy.stretch, setting)

    # ------------------------------------------------------------------ observations

    def observe_prefill(self, seconds: float, tokens: int, unfed: int) -> None:
        """The target's prompt prefill scored `tokens` tokens (all rows) in `seconds`; the draft has `unfed`
        tokens per row to read before its first proposal."""
        self.passes.observe_prefill(seconds, tokens)
        self.policy.unfed = unfed

    def observe_draft(self, seconds: float, batch: int = 1) -> None:
        """One draft forward (one token per row) over `batch` rows took `seconds`."""
        self.policy.batch = batch
        self.drafts.observe_step(seconds, batch)

    def observe_catch_up(self, seconds: float, tokens: int) -> None:
        """The draft read `tokens` committed tokens (all rows) it had not seen, in `seconds`."""
        self.drafts.observe_catch_up(seconds, tokens)

    def observe_target(self, seconds: float, tokens_per_row: int, batch: int = 1) -> None:
        """One target pass scoring `tokens_per_row` new tokens in each of `batch` rows took `seconds`."""
        self.policy.batch = batch
        self.passes.observe(seconds, tokens_per_row, batch)

    def observe_round(self, proposed: list[int], accepted: list[int], rows: list[int] | None = None) -> None:
        """Per live row: drafts proposed and accepted this round (rows with 0 proposed say nothing about the
        draft). `rows`: the caller's ids of those rows (stable while rows leave the batch), for per-row limits."""
        self.policy.after_round(proposed)
        self.accept.observe(proposed, accepted, rows)

    # ------------------------------------------------------------------ costs (what the policy reads)

    def target_time(self, tokens: int, batch: int | None = None) -> float | None:
        """Predicted seconds of one target pass scoring `tokens` tokens in all (rows * tokens per row) over `batch`
        rows (None: from the passes of every batch size); None before any pass was timed."""
        return self.passes.predict(tokens, batch)

    def draft_time(self, batch: int) -> float | None:
        """Predicted seconds of one draft step over `batch` rows: measured (nearest batch size), else the prior."""
        t1 = self.target_time(batch, batch)
        prior = None if t1 is None else self.prior_draft_ratio * t1
        step = self.drafts.step(batch, prior)
        return step if step is not None else prior

    def catch_up_time(self, tokens: int) -> float:
        """Predicted seconds for the draft to read `tokens` tokens (all rows) it has not seen."""
        return self.drafts.catch_up_per_token(self.passes.prefill_per_token) * tokens

    def token_curve(self, k: int) -> list[float]:
        return self.accept.token_curve(k)

    def row_curves(self, rows: list[int] | None, k: int) -> list[list[float]] | None:
        return self.accept.row_curves(rows, k)

    def target_timed(self, batch: int) -> bool:
        return self.passes.timed(batch)

    def drafting_started(self) -> bool:
        return self.drafts.step(1) is not None or self.accept.observed

    def draft_provisional(self) -> bool:
        return self.drafts.provisional()

    def plain_suspect(self, batch: int) -> bool:
        return self.passes.suspect(batch, batch)

    def timed_once(self, tokens: int, batch: int) -> bool:
        return self.passes.timings(tokens, batch) == 1

    def probe_pass_time(self, tokens: int, batch: int) -> float:
        return self.passes.predict(tokens, batch, settled_only=True)

    # ------------------------------------------------------------------ the model's answers

    def acceptance(self, k: int | None = None) -> list[float]:
        """alpha_j for positions 0..k-1 (default: up to max_k, at most `SUMMARY_K` or the positions reached)."""
        reached = len(self.accept.summary())
        return self.accept.by_position(k if k is not None else min(self.max_k, max(SUMMARY_K, reached)))

    def expected_tokens(self, k: int) -> float:
        """Expected new tokens per row in a round with k drafts (accepted + the target's own token)."""
        return self.accept.expected_tokens(k)

    def all_accepted(self, k: int) -> float:
        """The chance that all k drafts of a row's round are accepted."""
        return self.accept.all_accepted(k)

    def round_time(self, k: int, batch: int) -> float | None:
        return self.policy.round_time(k, batch)

    def rate(self, k: int, batch: int | None = None) -> float | None:
        """Expected tokens per second (all rows) with k drafts per round; None before the target was timed."""
        return self.policy.rate(k, batch)

    def best_k(self, batch: int | None = None, limit: int | None = None, rows: list[int] | None = None) -> int:
        return self.policy.best_k(batch, limit, rows)

    def choose_k(self, batch: int | None = None, limit: int | None = None, remaining: int | None = None,
                 rows: list[int] | None = None) -> int:
        """Draft tokens for the next round (see `KPolicy.choose_k`)."""
        return self.policy.choose_k(batch, limit, remaining, rows)

    def row_limits(self, k: int, rows: list[int] | None, batch: int | None = None) -> list[int] | None:
        return self.policy.row_limits(k, rows, batch)

    @property
    def phase(self) -> Phase:
        return self.policy.phase

    @property
    def speculating(self) -> bool:
        return self.policy.speculating

    @property
    def last_choice(self) -> dict:
        return self.policy.last_choice

    def summary(self) -> dict:
        """What the model measured and predicts: seconds per target pass by tokens scored (measured where it was,
        else predicted), per draft step and per catch-up token, acceptance by position, and its choice now."""
        b = self.policy.batch
        measured = self.passes.measured(None)
        widest = max([m // b for m in self.passes.measured(b)] + [SUMMARY_K + 1])
        kmax = min(self.max_k, widest - 1)
        predicted = {m: round(t, 6) for m in range(b, (kmax + 1) * b + 1, b)
                     if (t := self.target_time(m, b)) is not None}
        best = self.best_k(b, kmax) if measured else None
        r0, rb = (self.rate(0, b), self.rate(best, b)) if best else (None, None)
        return {
            "target_pass_s_measured": {m: round(t, 6) for m, t in measured.items()},
            "target_pass_s_predicted": predicted,
            "prefill_s_per_token": self.passes.prefill_per_token,
            "draft_step_s": self.draft_time(b) if self.drafts.step(b) is not None else None,
            "catch_up_s_per_token": self.drafts.catch_up_measured,
            "acceptance_by_position": self.accept.summary(),
            "best_k_now": best,
            "rate_best_over_target_alone": rb / r0 if r0 and rb else 1.0,
        }
