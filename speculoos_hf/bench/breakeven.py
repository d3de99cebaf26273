"""`speculoos-bench --profile`, the analysis: from measured pass times, the speedup K drafts per round would give
at per-position acceptance alpha (Leviathan et al., with the measured cost of a target pass over K + 1 tokens
instead of a flat one), the best K, the break-even K (the largest K that still beats the target alone), the
acceptance each K needs to pay, and what speculoos' cost model chooses given the same measurements.

The cost model is used through its public API only: `CostModelLookahead(prior_acceptance=alpha)`,
`observe_prefill`, `observe_target`, `observe_draft`, `best_k(batch=B)` and `rate(k, batch=B)`."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from ..pacing.lookahead import CostModelLookahead
from ..pacing.robust_time import SETTLED


def pass_time(times: dict, m: int) -> float | None:
    """Seconds of a pass over m tokens per row: measured, linearly interpolated between measured m, or None
    beyond the largest measured m."""
    if m in times:
        return times[m]
    below = [x for x in times if x < m]
    above = [x for x in times if x > m]
    if not below or not above:
        return None
    lo, hi = max(below), min(above)
    return times[lo] + (times[hi] - times[lo]) * (m - lo) / (hi - lo)


def expected_tokens(alpha: float, k: int) -> float:
    """New tokens per round with k drafts: 1 + alpha + ... + alpha^k."""
    return float(k + 1) if alpha >= 1.0 else (1 - alpha ** (k + 1)) / (1 - alpha)


def round_cost(times: dict, draft_s: float, k: int) -> float | None:
    """Seconds of a round with k drafts, over the one-token pass: k draft steps and a pass over k + 1 tokens."""
    tk = pass_time(times, k + 1)
    return None if tk is None else (k * draft_s + tk) / times[1]


def predicted_speedup(alpha: float, k: int, times: dict, draft_s: float) -> float | None:
    cost = round_cost(times, draft_s, k)
    return None if cost is None else expected_tokens(alpha, k) / cost


def alpha_needed(k: int, times: dict, draft_s: float) -> float | None:
    """The acceptance at which k drafts per round just pay for themselves; None where none does (cost > k + 1)."""
    cost = round_cost(times, draft_s, k)
    if cost is None or cost > k + 1:
        return None
    lo, hi = 0.0, 1.0
    for _ in range(50):  # expected_tokens rises with alpha
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if expected_tokens(mid, k) < cost else (lo, mid)
    return hi


@dataclass(frozen=True)
class Verdict:
    """What the profile says at one batch size."""
    batch_size: int
    target_pass_s: dict  # {m: seconds}
    cost_ratio: dict  # {m: T(m) / T(1)}
    draft_step_s: float
    c: float  # draft step / one-token target pass
    speedup_by_k: dict  # {K: predicted speedup at alpha}
    alpha_needed_by_k: dict  # {K: acceptance needed to break even, None: none does}
    best_k: int  # 0: no K beats the target alone
    best_speedup: float
    break_even_k: int  # the largest K with a predicted speedup >= 1 (0: none)
    cost_model_k: int
    cost_model_speedup: float | None  # the cost model's own prediction for its choice


def cost_model_choice(times: dict, draft_s: float, batch: int, alpha: float, prefill: tuple[float, int] | None):
    """(k, predicted speedup) of speculoos' cost model fed these measurements; `prefill`: (seconds, tokens)."""
    policy = CostModelLookahead(prior_acceptance=alpha)
    if prefill is not None:
        policy.observe_prefill(prefill[0], prefill[1], unfed=prefill[1])
    for _ in range(SETTLED):  # medians of repeats: trusted as settled figures
        for m, seconds in sorted(times.items()):
            policy.observe_target(seconds, tokens_per_row=m, batch=batch)
        policy.observe_draft(draft_s, batch=batch)
    k = policy.best_k(batch=batch)
    r0, rk = policy.rate(0, batch=batch), policy.rate(k, batch=batch)
    return k, (rk / r0 if r0 and rk else None)


def verdict(batch: int, times: dict, draft_s: float, alpha: float, prefill: tuple[float, int] | None) -> Verdict:
    ks = range(1, max(times))  # K + 1 tokens must lie within the measured m
    speedups = {k: predicted_speedup(alpha, k, times, draft_s) for k in ks}
    best_k = max(speedups, key=speedups.get, default=0)
    best = speedups.get(best_k, 1.0)
    if best < 1.0:
        best_k, best = 0, 1.0
    paying = [k for k, s in speedups.items() if s >= 1.0]
    k_model, s_model = cost_model_choice(times, draft_s, batch, alpha, prefill)
    return Verdict(
        batch_size=batch,
        target_pass_s=dict(times),
        cost_ratio={m: t / times[1] for m, t in times.items()},
        draft_step_s=draft_s,
        c=draft_s / times[1],
        speedup_by_k=speedups,
        alpha_needed_by_k={k: alpha_needed(k, times, draft_s) for k in ks},
        best_k=best_k,
        best_speedup=best,
        break_even_k=max(paying, default=0),
        cost_model_k=k_model,
        cost_model_speedup=s_model,
    )


def verdicts(passes, alpha: float) -> list[dict]:
    """One `Verdict` (as a dict) per batch size of a `PassTimes`."""
    prefill = (passes.prefill_s, passes.context)  # its cost per token: the cost model's prior for longer passes
    return [asdict(verdict(B, passes.target[B], passes.draft[B], alpha, prefill)) for B in passes.target]
