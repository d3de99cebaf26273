"""The cost-model lookahead policy on synthetic timings and acceptances (pure host arithmetic, fast)."""

from __future__ import annotations

import random

import pytest
import torch

from speculoos_hf.drafters.base import Proposal, RoundOutcome
from speculoos_hf.pacing.lookahead import CostModelLookahead, Measure, Off, On, ProbeDue
from speculoos_hf.pacing.pacer import CostModelPacer


def flat_then_linear(a=0.12, n0=8, slope=0.015):
    return lambda m: a + slope * max(0, m - n0)


def simulate(policy, rounds, target_time, draft_time, alpha, batch=1, seed=0, noise=0.03, prompt=0,
             prefill_per_token=None, catch_up_per_token=0.0):
    """Run `rounds` rounds against a synthetic pair. alpha(j, r): acceptance of draft position j in round r.
    With `prompt` > 0 the target's prefill is reported and the draft must first read the prompt (and, after rounds
    without drafts, what they committed) at `catch_up_per_token` seconds per token, counted in the time.
    Returns (ks chosen, tokens per second overall)."""
    rng = random.Random(seed)
    ks, tokens, seconds = [], 0, 0.0
    unfed = prompt
    if prompt:
        per_token = prefill_per_token if prefill_per_token is not None else target_time(prompt) / prompt
        policy.observe_prefill(per_token * prompt * batch, prompt * batch, unfed=prompt)
    for r in range(rounds):
        k = policy.choose_k(limit=policy.max_k, remaining=4 * (rounds - r) if prompt else None)  # tokens left, roughly
        ks.append(k)
        if k and unfed > 2:
            c = catch_up_per_token * unfed * batch
            policy.observe_catch_up(c, unfed * batch)
            seconds += c
        unfed = 1 if k else unfed + 1
        for _ in range(k):
            d = draft_time * (1 + noise * rng.uniform(-1, 1))
            policy.observe_draft(d, batch)
            seconds += d
        t = target_time((k + 1) * batch) * (1 + noise * rng.uniform(-1, 1))
        policy.observe_target(t, k + 1, batch)
        seconds += t
        accepted = []
        for _ in range(batch):
            n = 0
            while n < k and rng.random() < alpha(n, r):
                n += 1
            accepted.append(n)
        policy.observe_round([k] * batch, accepted)
        tokens += sum(accepted) + batch
    return ks, tokens / seconds


def test_good_draft_gets_a_long_lookahead():
    T = flat_then_linear()
    ks, rate = simulate(CostModelLookahead(), 120, T, draft_time=0.012, alpha=lambda j, r: 0.9)
    assert sorted(ks[-40:])[20] >= 6 and min(ks[-40:]) >= 4  # the optimum for this pair is 7
    assert rate > 3.0 / T(1)  # more than 3x the target alone


def test_poor_draft_turns_speculation_off_and_costs_a_few_percent():
    T = flat_then_linear()
    policy = CostModelLookahead()
    ks, rate = simulate(policy, 400, T, draft_time=0.045, alpha=lambda j, r: 0.03)
    assert all(k == 0 for k in ks[10:20]) or sum(k > 0 for k in ks[10:40]) <= 3  # off after a few rounds
    assert sum(k > 0 for k in ks[40:]) <= 10  # stays (nearly) off: only sparse probes
    target_alone = 1.0 / T(1)
    assert rate > 0.95 * target_alone, rate / target_alone


def test_probes_switch_speculation_back_on_when_the_draft_improves():
    T = flat_then_linear()
    ks, _ = simulate(CostModelLookahead(), 400, T, draft_time=0.012, alpha=lambda j, r: 0.03 if r < 100 else 0.9)
    assert sum(k > 0 for k in ks[60:100]) <= 5
    assert min(ks[-50:]) >= 4


def test_compute_bound_target_gets_a_shorter_lookahead():
    flat = flat_then_linear(slope=0.002)
    steep = flat_then_linear(n0=2, slope=0.04)  # each token past 2 costs a third of a pass
    ks_flat, _ = simulate(CostModelLookahead(), 150, flat, draft_time=0.012, alpha=lambda j, r: 0.85)
    ks_steep, _ = simulate(CostModelLookahead(), 150, steep, draft_time=0.012, alpha=lambda j, r: 0.85)
    k_flat, k_steep = sorted(ks_flat[-30:])[15], sorted(ks_steep[-30:])[15]
    assert k_steep < k_flat, (k_steep, k_flat)
    assert 1 <= k_steep <= 4


def test_batches_make_the_target_pass_compute_bound_sooner():
    T = flat_then_linear(slope=0.01)
    ks1, _ = simulate(CostModelLookahead(), 150, T, draft_time=0.012, alpha=lambda j, r: 0.8, batch=1)
    ks8, _ = simulate(CostModelLookahead(), 150, T, draft_time=0.02, alpha=lambda j, r: 0.8, batch=8)
    assert sorted(ks8[-30:])[15] < sorted(ks1[-30:])[15]


def test_model_pieces():
    p = CostModelLookahead(max_k=6, prior_acceptance=0.5)
    assert p.choose_k() == 0  # the first round is plain: it times the target alone, no draft needed
    assert p.expected_tokens(0) == 1.0
    assert p.expected_tokens(2) == pytest.approx(1 + 0.5 + 0.25)
    for m, t in [(1, 0.1), (2, 0.1), (4, 0.1), (8, 0.1), (12, 0.14), (16, 0.18)]:
        for _ in range(3):
            p.observe_target(t, m, 1)
    assert p.target_time(1) == pytest.approx(0.1, rel=0.02)
    assert p.target_time(16) == pytest.approx(0.18, rel=0.05)
    assert p.target_time(24) > p.target_time(16)
    for _ in range(200):
        p.observe_round([3, 3], [3, 1])
    alpha = p.acceptance()
    assert alpha[0] == pytest.approx(1.0, abs=0.02) and alpha[1] == pytest.approx(0.5, abs=0.15)
    p.observe_draft(0.02, 1)
    assert p.draft_time(1) == pytest.approx(0.02) and p.draft_time(4) == pytest.approx(0.02)
    assert p.choose_k(limit=0) == 0 and p.choose_k(limit=2) <= 2


def roofline(a=0.234, per_token=0.155):
    """This project's AVX2-only CPU, 1.5B target in bf16: each token from the second costs a token's compute."""
    return lambda m: max(a, a + per_token * (m - 1))


def test_compute_bound_from_the_second_token_never_starts_the_draft():
    """The prefill tells the per-token compute cost; with the plain step it predicts that no k pays, so the
    draft never proposes (and never reads the prompt): generation runs at the target's own speed."""
    T = roofline()
    ks, rate = simulate(CostModelLookahead(prior_catch_up_ratio=0.33), 128, T, draft_time=0.07,
                        alpha=lambda j, r: 0.8, prompt=150, prefill_per_token=0.155, catch_up_per_token=0.05)
    assert sum(ks) == 0, ks
    assert rate > 0.97 / T(1)


def test_prefill_prior_keeps_a_flat_target_speculating():
    """On a memory-bound target (prefill cost per token small against a pass) the draft starts at once."""
    T = flat_then_linear()
    ks, rate = simulate(CostModelLookahead(prior_catch_up_ratio=0.33), 120, T, draft_time=0.012,
                        alpha=lambda j, r: 0.9, prompt=150, prefill_per_token=0.004, catch_up_per_token=0.0015)
    assert ks[0] == 0 and min(ks[1:5]) >= 1
    assert rate > 2.5 / T(1)


def test_poor_draft_with_catch_up_costs_stays_within_five_percent():
    """The draft has to read the prompt and every stretch it skipped: a poor draft still costs under 5%."""
    T = flat_then_linear()
    ks, rate = simulate(CostModelLookahead(prior_catch_up_ratio=0.33), 128, T, draft_time=0.045,
                        alpha=lambda j, r: 0.03, prompt=150, prefill_per_token=0.004, catch_up_per_token=0.0015)
    assert rate > 0.95 / T(1), rate * T(1)


def test_no_start_when_the_tokens_left_cannot_repay_the_catch_up():
    p = CostModelLookahead(prior_catch_up_ratio=0.33)
    p.observe_prefill(0.004 * 2000, 2000, unfed=2000)  # a long prompt
    assert p.choose_k(limit=3) == 0  # plain step
    p.observe_target(0.12, 1)
    p.observe_round([0], [0])
    assert p.choose_k(limit=3) == 0  # 4 tokens left: reading 2000 tokens (~2.6 s) cannot pay
    q = CostModelLookahead(prior_catch_up_ratio=0.33)
    q.observe_prefill(0.004 * 2000, 2000, unfed=2000)
    q.choose_k(limit=12, remaining=500)
    q.observe_target(0.12, 1)
    q.observe_round([0], [0])
    assert q.choose_k(limit=12, remaining=500) > 0  # 500 tokens left (k capped at 12): it pays


def test_offloaded_target_starts_speculating():
    """Measured on the disk-offloaded 1.5B target (this CPU): one-token pass 0.77 s, prefill 0.185 s per token, a
    41-token prompt, 23 tokens left. The k cap (12) must not be taken for the horizon: speculation pays and starts."""
    p = CostModelLookahead(prior_catch_up_ratio=0.32)
    assert p.choose_k(limit=12, remaining=24) == 0
    p.observe_prefill(0.185 * 40, 40, unfed=41)
    p.observe_target(0.77, 1)
    p.observe_round([0], [0])
    assert p.choose_k(limit=12, remaining=23) > 0


def test_a_refused_start_is_reconsidered_after_the_stretch():
    """A start refused for want of tokens left is taken up again at the end of the stretch when it pays then."""
    p = CostModelLookahead(prior_catch_up_ratio=0.32)
    p.choose_k(remaining=100)
    p.observe_prefill(0.185 * 40, 40, unfed=41)
    p.observe_target(0.77, 1)
    p.observe_round([0], [0])
    assert p.choose_k(remaining=3) == 0  # not worth it with 3 tokens left: a stretch begins
    ks = []
    for _ in range(p.off_rounds + 1):
        ks.append(p.choose_k(limit=12, remaining=200))
        if ks[-1] == 0:
            p.observe_target(0.77, 1)
            p.observe_round([0], [0])
    n = p.off_rounds - 1  # the refused round was the stretch's first
    assert ks[:n] == [0] * n and ks[n] > 0


def test_decision_states_plain_step_on_off_probe_and_a_doubled_stretch():
    """The decisions' states, step by step: plain first steps until the target is timed, speculation on, a stretch
    off when the draft stops paying, a probe at its end, and a doubled stretch when the probe changes nothing."""
    p = CostModelLookahead(max_k=4, off_rounds=3, probe_k=1, probe_budget=1.0)
    assert p.phase == Measure() and p.choose_k(limit=4) == 0 and p.phase == Measure()  # the call's first round
    assert p.choose_k(limit=4) == 0 and p.phase == Measure()  # plain until a pass is timed
    p.observe_target(0.1, 1)
    p.observe_round([0], [0])
    assert p.choose_k(limit=4) > 0 and p.phase == On() and p.speculating  # the priors say drafting pays
    for _ in range(60):  # the draft is never right
        p.observe_draft(0.03, 1)
        p.observe_target(0.1, 5)
        p.observe_round([4], [0])
    assert p.choose_k(limit=4) == 0 and p.phase == Off(2) and not p.speculating
    assert [p.choose_k(limit=4) for _ in range(2)] == [0, 0] and p.phase == ProbeDue()
    assert p.choose_k(limit=4) == 1 and p.phase == On(after_probe=True)  # the probe round
    p.observe_round([1], [0])
    assert p.choose_k(limit=4) == 0 and p.phase == Off(5)  # no better: the next stretch is twice as long
    assert p.choose_k(limit=0) == 0 and p.phase == Off(5)  # a round with nothing to draft leaves the stretch alone



# ----------------------------------------------------------------------------------- a cost model that starts right


class GivenSpans:
    """A stopwatch whose spans are given in order (seconds): the pacer's timings, synthetic."""

    def __init__(self):
        self.spans: list[float] = []

    def start(self):
        return None

    def stop(self, mark):
        return self.spans.pop(0)

    def seconds(self, span, work=None):
        return span

    def reported(self, seconds, work=None):
        return seconds


def outcome(accepted: list[int]) -> RoundOutcome:
    B = len(accepted)
    return RoundOutcome(accepted, [a + 1 for a in accepted], [a + 1 for a in accepted], [False] * B,
                        torch.zeros(B, max(accepted) + 1, dtype=torch.long), [0] * B)


def paced_round(pacer, watch, rows, draft_s, target_s, accepted, catch_up=0, catch_up_s=None, remaining=200):
    """One round through the pacer as the loop runs it; returns the (k, limits) it chose."""
    k, limits = pacer.choose_k(rows, remaining=remaining)
    watch.spans += [draft_s(k) if k else 0.0, target_s(k)]
    with pacer.drafting():
        pass
    with pacer.scoring():
        pass
    proposal = Proposal(torch.zeros(len(rows), k, dtype=torch.long), catch_up=catch_up if k else 0,
                        catch_up_seconds=(lambda: catch_up_s) if k and catch_up_s is not None else None)
    pacer.after_round(proposal, outcome([min(a, k) for a in accepted]))
    return k, limits


def test_first_drafting_round_is_short_then_a_measured_step_replaces_the_prior():
    """The first drafting round drafts 1 token (everything it is chosen from is a prior): its only forward reads the
    prompt, a catch-up timed apart. The next round times steps X: the model's step is then X (not averaged with the
    0.3-of-a-pass prior) and the round after is chosen as a model told X from the start would choose."""
    T, X, C, prompt = flat_then_linear(), 0.004, 0.3, 50
    model, watch = CostModelLookahead(prior_catch_up_ratio=0.3), GivenSpans()
    pacer = CostModelPacer(model, watch)
    watch.spans.append(0.004 * prompt)
    with pacer.prefilling(rows=1, prompt_length=prompt):
        pass
    assert paced_round(pacer, watch, [0], None, lambda k: T(k + 1), [0])[0] == 0  # the plain step
    k1, _ = paced_round(pacer, watch, [0], lambda k: C, lambda k: T(k + 1), [12], catch_up=prompt, catch_up_s=C)
    assert k1 == 1 and model.summary()["draft_step_s"] is None
    assert model.summary()["catch_up_s_per_token"] == pytest.approx(C / prompt)
    k2, _ = paced_round(pacer, watch, [0], lambda k: k * X, lambda k: T(k + 1), [12], catch_up=1)
    assert k2 >= 2 and model.draft_time(1) == pytest.approx(X, rel=1e-9)
    informed = CostModelLookahead(prior_catch_up_ratio=0.3)
    informed.observe_prefill(0.004 * prompt, prompt, unfed=prompt)
    for tokens, proposed in [(1, 0), (2, 1), (k2 + 1, k2)]:
        informed.observe_target(T(tokens), tokens)
        informed.observe_round([proposed], [proposed])
    informed.observe_draft(X)
    k3 = model.choose_k(batch=1, limit=12, remaining=200, rows=[0])
    assert k3 == informed.best_k(1, 12)
    prior_step = CostModelLookahead(prior_catch_up_ratio=0.3)  # what keeping the 0.3-of-a-pass prior would give
    for tokens, proposed in [(1, 0), (2, 1), (k2 + 1, k2)]:
        prior_step.observe_target(T(tokens), tokens)
        prior_step.observe_round([proposed], [proposed])
    assert prior_step.draft_time(1) == pytest.approx(0.3 * T(1)) and prior_step.best_k(1, 12) < k3


def test_catch_up_not_timed_apart_is_what_the_steps_leave():
    """A drafter that does not report its catch-up forward: the catch-up is the span less the steps at their
    estimate, and no step is taken from that round."""
    model, watch = CostModelLookahead(), GivenSpans()
    pacer = CostModelPacer(model, watch)
    paced_round(pacer, watch, [0], None, lambda k: 0.1, [0])
    k, _ = paced_round(pacer, watch, [0], lambda k: 0.5 + (k - 1) * 0.01, lambda k: 0.1, [3], catch_up=40)
    assert k >= 1 and model.summary()["draft_step_s"] is None
    assert model.summary()["catch_up_s_per_token"] == pytest.approx((0.5 + (k - 1) * (0.01 - 0.3 * 0.1)) / 40)


# ----------------------------------------------------------------------------------- batches that pay


def test_target_pass_time_is_kept_per_batch_size():
    """Each batch size's passes are fitted on their own; a batch size never timed uses the fit over all."""
    p = CostModelLookahead()
    one = flat_then_linear(a=0.1, n0=4, slope=0.02)
    for _ in range(3):
        for n in (1, 2, 4, 8, 12, 16):
            p.observe_target(one(n), n, 1)
        for n in (1, 2, 3, 4):
            p.observe_target(0.11, n, 4)  # four rows of n tokens: as flat as one pass
    assert p.target_time(16, 4) == pytest.approx(0.11, rel=0.02)
    assert p.target_time(16, 1) == pytest.approx(one(16), rel=0.05)
    assert p.target_time(12, 3) == p.target_time(12)  # no pass over 3 rows yet: the fit over all batch sizes


def test_rows_whose_drafts_do_not_pay_stop_drafting_alone_and_come_back():
    rows = [10, 11, 12, 13]
    p = CostModelLookahead(max_k=4, measure_plain_step=False, per_row_limits=True)  # off by default
    for n in range(1, 6):
        p.observe_target(0.1, n, 4)
    p.observe_draft(0.02, 4)
    for _ in range(30):
        p.observe_round([4] * 4, [4, 4, 0, 0], rows=rows)  # two rows' drafts always right, two never
    k = p.choose_k(batch=4, limit=4, rows=rows)
    assert k == 4 and p.row_limits(k, rows) == [4, 4, 0, 0]
    for _ in range(40):  # rows 12 and 13 draft nothing: their own record fades back to the batch's
        p.observe_round([4, 4, 0, 0], [4, 4, 0, 0], rows=rows)
    assert p.row_limits(4, rows) is None
    assert p.row_limits(4, [10]) is None  # one row is the batch


def test_a_batch_of_four_speculates_where_its_passes_are_flat():
    """Batch 4 on a target whose 4-row passes cost about one up to 4 tokens per row, a good draft: it drafts."""
    ks, rate = simulate(CostModelLookahead(), 100, flat_then_linear(n0=16, slope=0.01), draft_time=0.02,
                        alpha=lambda j, r: 0.85, batch=4)
    assert min(ks[5:]) >= 2
    assert rate > 1.8 * 4 / 0.12


def test_pass_times_are_monotone_in_the_width_and_a_width_timed_once_keeps_its_timing():
    """Noisy timings (a pass over 6 tokens 2.9 s, one over 15 tokens 2.3 s, as measured on an AVX2 CPU): a width
    timed once is predicted by what was measured (15 tokens: 2.26 s), a narrower one never dearer than it (6 tokens:
    2.26 s; one-sided noise), and a width not timed never cheaper than a narrower one timed (a long copy is not
    priced below a short one)."""
    model = CostModelLookahead(max_k=32, prior_draft_ratio=0.0, prior_catch_up_ratio=0.0)
    model.observe_prefill(4.0, 85, unfed=0)
    for seconds, m in [(0.79, 1), (0.79, 1), (1.65, 2), (2.93, 6), (2.26, 15)]:
        model.observe_target(seconds, m)
    times = [model.target_time(m, 1) for m in range(1, 33)]
    assert all(t2 >= t1 for t1, t2 in zip(times, times[1:]))  # monotone in the width
    assert model.target_time(15, 1) == pytest.approx(2.26) and model.target_time(6, 1) == pytest.approx(2.26)
    assert model.target_time(2, 1) == pytest.approx(1.65) and model.target_time(25, 1) >= 2.26
    assert model.target_time(1, 1) == pytest.approx(0.79)


def test_a_width_timed_often_is_predicted_by_its_own_mean():
    """A CPU's one-token pass runs a cheaper kernel than any wider one (a step at m = 2, then flat): no two-piece line
    fits that, so widths timed at least twice are predicted by their own means, and the step makes short drafts lose."""
    model = CostModelLookahead(max_k=8, prior_acceptance=0.3, prior_draft_ratio=0.0, prior_catch_up_ratio=0.0)
    model.observe_prefill(4.0, 40, unfed=0)
    for _ in range(3):
        model.observe_target(0.4, 1)
        for m in (2, 3, 5, 9):
            model.observe_target(0.8 + 0.01 * m, m)
    assert model.target_time(1, 1) == pytest.approx(0.4)
    assert model.target_time(2, 1) == pytest.approx(0.82) and model.target_time(9, 1) == pytest.approx(0.89)
    assert 0.8 < model.target_time(4, 1) < 0.9  # not timed: the fit
    assert model.best_k(1) == 0  # at 30% acceptance no copy repays a pass that costs twice the plain one


def test_a_prefill_over_a_few_tokens_prices_no_token():
    """A 2-token prompt's prefill reads one token: its time is a pass's, not a token's. It must not become the
    roofline's slope (a pass over m tokens priced at m one-token passes, so that no draft ever pays); a prefill over
    many tokens still sets it."""
    from speculoos_hf.pacing.pass_times import TargetPassTimes

    short, long = TargetPassTimes(), TargetPassTimes()
    short.observe_prefill(0.2, 1)
    long.observe_prefill(0.2 * 64 / 8, 64)  # compute-bound: 8 tokens per one-token pass
    for passes in (short, long):
        passes.observe(0.2, 1, 1)
    assert short.prefill_per_token is None and short.predict(4, 1) < 0.25
    assert long.prefill_per_token == pytest.approx(0.025) and long.predict(32, 1) > 0.5
    model = CostModelLookahead()
    model.observe_prefill(0.2, 1, unfed=2)
    model.observe_target(0.2, 1)
    assert model.best_k(1) > 0  # drafting can pay after a short prompt
