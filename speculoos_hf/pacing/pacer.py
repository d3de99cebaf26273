"""How many tokens each round drafts, and the timings that decide it, kept out of the decoding loop.

The loop asks `pacer.choose_k(rows, remaining)` before a round (k, and per-row limits or None), runs its prefill,
draft and target pass inside `pacer.prefilling(...)`, `pacer.drafting()` and `pacer.scoring()`, and reports the
round with `pacer.after_round(proposal, outcome)`. With a given K (`FixedPacer`) nothing is timed; with
`num_draft_tokens="auto"` (`CostModelPacer`) a stopwatch feeds `CostModelLookahead`. The round's proposal comes
from `pacer.propose(drafter, state, k)`: with prompt lookup under the cost model (`CopyPacer`) each copy is cut where
a longer target pass stops paying, and a hybrid copies or asks its model per row by expected gain (gain.py).
"""

from __future__ import annotations

import math
from contextlib import contextmanager, nullcontext
from dataclasses import replace
from typing import Protocol

import torch

from ..drafters.base import Drafter, Proposal, RoundOutcome
from .draft_stop import ConfidenceRecord, DraftStop, draft_stop
from .gain import CopyRecord, RoundCosts, best_copy
from .lookahead import CostModelLookahead, Measure, On
from .memory import Learnt, Slot, slot_for
from ..glue.options import SpeculativeOptions
from ..glue.placement import input_device
from ..loop.state import DecodeState
from .timing import Stopwatch, Work, stopwatch_for


class Pacer(Protocol):
    def choose_k(self, rows: list[int], remaining: int) -> tuple[int, list[int] | None]:
        """(k, limits) for the next round over the live `rows` (original ids): k drafts (0: the target decodes one
        token alone) and, or None, each row's own cap (<= k; 0: the row drafts nothing); `remaining`: tokens left,
        longest row. Decided from earlier rounds' timings and acceptance only, never from this round's output."""

    def propose(self, drafter: Drafter, state: DecodeState, k: int) -> Proposal:
        """The drafter's proposal of up to k tokens per row (k > 0), copies cut by `cap`."""

    def cap(self, proposal: Proposal) -> Proposal:
        """`proposal` with each copy cut where a longer target pass stops paying (or unchanged)."""

    def prefilling(self, rows: int, prompt_length: int):
        """Context around the target's prompt prefill."""

    def drafting(self):
        """Context around the round's proposal."""

    def scoring(self, prefill: int = 0):
        """Context around the round's target pass; `prefill`: prompt tokens per row it reads first (the prompt's
        prefill riding with the first round's pass)."""

    def after_round(self, proposal: Proposal, outcome: RoundOutcome) -> None:
        """The round is over (after its host sync): what it proposed and what was accepted."""

    def summary(self) -> dict | None:
        """What the pacer measured, for `SpeculativeStats.cost_model` (None: nothing)."""

    def cost_model(self) -> CostModelLookahead | None:
        """The cost model it measures with, for the token trees' planner (tree_planner.py); None: none."""

    def finish(self) -> None:
        """The call is over: leave what was measured for the next call on the same models (memory.py)."""


class FixedPacer:
    """A given K: every round drafts K tokens, fewer where fewer are left; nothing is timed."""

    def __init__(self, k: int):
        self.k = k

    def choose_k(self, rows: list[int], remaining: int) -> tuple[int, list[int] | None]:
        return min(self.k, remaining - 1), None

    def propose(self, drafter: Drafter, state: DecodeState, k: int) -> Proposal:
        return drafter.propose(state, k)

    def cap(self, proposal: Proposal) -> Proposal:
        return proposal

    def prefilling(self, rows: int, prompt_length: int):
        return nullcontext()

    def drafting(self):
        return nullcontext()

    def scoring(self, prefill: int = 0):
        return nullcontext()

    def after_round(self, proposal: Proposal, outcome: RoundOutcome) -> None:
        pass

    def summary(self) -> dict | None:
        return None

    def cost_model(self) -> CostModelLookahead | None:
        return None

    def finish(self) -> None:
        pass


class CostModelPacer:
    """num_draft_tokens="auto": `model` picks each round's k (up to its `max_k`) from the times `watch` measures.
    Timings are read in `after_round`, after the round's own host sync has made them complete."""

    def __init__(self, model: CostModelLookahead, watch: Stopwatch, confidence_stop: bool = False,
                 slot: Slot | None = None):
        self.model = model
        self.watch = watch
        self.confidence_stop = confidence_stop  # a model drafter's rounds go on while one more draft pays
        self.confidences = ConfidenceRecord()
        self.slot = slot  # where earlier calls on the same models left their books, and this one leaves its own
        learnt = slot.recall() if slot is not None else None
        if learnt is not None:
            model.start_from(learnt)
            self.confidences = learnt.confidences or self.confidences
        self._prefill = None  # (span, tokens, unfed) until the first round reports it
        self._draft_span = self._target_span = None
        self._merged = 0  # prompt tokens per row the round's pass read first (its prefill)
        self._rows: list[int] | None = None  # the live rows of the round under way
        self._cap = 0  # the most drafts the round under way may take under the confidence stop
        self._stop: DraftStop | None = None  # that round's stop rule, while its books are open

    def choose_k(self, rows: list[int], remaining: int) -> tuple[int, list[int] | None]:
        """The cost model's k; with several rows, rows whose drafts do not pay are capped at 0."""
        model, B = self.model, len(rows)
        self._rows = list(rows)
        started = model.drafting_started()  # the first drafting round is an experiment priced from priors
        limit = min(model.max_k, remaining - 1)
        k = model.choose_k(batch=B, limit=limit, remaining=remaining, rows=self._rows)
        on = model.phase == On()
        alone = B == 1  # in a batch, rows draft in lockstep: there the rule lost a pass on the reference pair
        self._cap = limit if self.confidence_stop and alone and started and k > 0 and on else 0
        return k, (model.row_limits(k, self._rows, B) if on else None)

    def propose(self, drafter: Drafter, state: DecodeState, k: int) -> Proposal:
        """The drafter's proposal; a model drafter's round over one row, once drafting is under way, goes on past k
        while the cost model's `DraftStop` says one more draft pays (up to the round's limit)."""
        self._stop = None
        if self._cap > k and hasattr(drafter, "propose_until"):
            self._stop = draft_stop(self.model, self.confidences, k, self._cap, state.batch_size, state.seq.device)
        if self._stop is None:
            return drafter.propose(state, k)
        return drafter.propose_until(state, self._stop.cap, self._stop)

    def cap(self, proposal: Proposal) -> Proposal:
        return proposal

    @contextmanager
    def prefilling(self, rows: int, prompt_length: int):
        mark = self.watch.start()
        yield
        self._prefill = (self.watch.stop(mark), rows, prompt_length)

    @contextmanager
    def drafting(self):
        mark = self.watch.start()
        yield
        self._draft_span = self.watch.stop(mark)

    @contextmanager
    def scoring(self, prefill: int = 0):
        mark = self.watch.start()
        yield
        self._target_span = self.watch.stop(mark)
        self._merged = prefill

    def after_round(self, proposal: Proposal, outcome: RoundOutcome) -> None:
        """Feed the cost model this round's draft and target times and each row's acceptance."""
        model, B = self.model, len(outcome.accepted)
        if self._prefill is not None:
            self._observe_prefill(proposal.k + 1)
        if proposal.k > 0:
            self._observe_draft(proposal, B)
        if not self._merged:  # a pass that read the prompt too was the prefill's timing
            width = proposal.k + 1
            model.observe_target(self.watch.seconds(self._target_span, Work("target", B, width)), width, B)
        model.observe_round(proposal.counts(), outcome.accepted, rows=self._rows)
        if self._stop is not None:
            self.confidences.observe(self._stop.drafted_bands(proposal.k), proposal.counts(), outcome.accepted)
            self._stop = None

    def _observe_prefill(self, width: int) -> None:
        """The prompt's prefill: a forward of its own (all but the last prompt token), or the first round's pass
        that read those tokens and then its `width` per row."""
        span, rows, prompt_length = self._prefill
        self._prefill = None
        tokens = prompt_length - 1 + (width if self._merged else 0)
        seconds = self.watch.seconds(self._target_span if self._merged else span, Work("prefill", rows, tokens))
        self.model.observe_prefill(seconds, tokens * rows, unfed=prompt_length)

    def _observe_draft(self, proposal: Proposal, B: int) -> None:
        """A proposal whose first forward read many committed tokens (the prompt, a stretch without drafts) is a
        catch-up and then steps: timed apart where the drafter reports the catch-up forward's seconds, else the
        catch-up is what is left after the steps at their estimated cost."""
        model = self.model
        forwards = proposal.forwards if proposal.forwards is not None else proposal.k
        if not forwards:
            return
        seconds = self.watch.seconds(self._draft_span, Work("draft", B, forwards, proposal.catch_up))
        if proposal.catch_up <= 2:
            model.observe_draft(seconds / forwards, B)  # a catch-up of 1-2 tokens costs about a step
            return
        if proposal.catch_up_seconds is None:
            step = model.draft_time(B) or 0.0
            model.observe_catch_up(max(seconds - (forwards - 1) * step, 0.0), proposal.catch_up * B)
            return
        caught = self.watch.reported(proposal.catch_up_seconds(), Work("catch_up", B, proposal.catch_up))
        model.observe_catch_up(caught, proposal.catch_up * B)
        if forwards > 1:
            model.observe_draft(max(seconds - caught, 0.0) / (forwards - 1), B)

    def summary(self) -> dict | None:
        out = self.model.summary()
        if self.confidence_stop:
            alpha = self.model.acceptance()
            out["draft_acceptance_by_confidence"] = self.confidences.summary(sum(alpha) / len(alpha))
        return out

    def cost_model(self) -> CostModelLookahead | None:
        return self.model

    def finish(self) -> None:
        if self.slot is not None:
            self.slot.keep(self.hand_on())

    def hand_on(self) -> Learnt:
        return replace(self.model.hand_on(self.slot.setting if self.slot else None), confidences=self.confidences)


class CopyPacer(CostModelPacer):
    """The cost model for prompt lookup, alone or beside a draft model (`with_model`): a copy is free to draft, so
    every round after the first (a plain one, which times the target) may copy up to `copy_tokens` per row, each
    row's copy cut where a longer pass stops paying (`gain.best_copy`: the matcher's confidences as its acceptance,
    calibrated by how earlier copies fared).
    Beside a model, the model's k comes from the cost model's phases and the hybrid asks it in the rows where it is
    expected to give more tokens per second than the copy (`RoundCosts`). Both use earlier rounds' timings only."""

    def __init__(self, model: CostModelLookahead, watch: Stopwatch, copy_tokens: int, with_model: bool,
                 slot: Slot | None = None):
        super().__init__(model, watch, slot=slot)
        self.copy_tokens = copy_tokens
        self.with_model = with_model
        self._model_k = 0  # the model's drafts this round (0: not offered)
        self.copies = CopyRecord()  # how this call's verified copies fared against their confidences (per prompt)

    def choose_k(self, rows: list[int], remaining: int) -> tuple[int, list[int] | None]:
        """Room for the copy or the model's k, whichever is longer; per row, the copy's cap and the hybrid's choice
        decide (no limits here)."""
        k_model, _ = super().choose_k(rows, remaining)
        self._model_k = k_model if self.with_model else 0
        if isinstance(self.model.phase, Measure) or self.model.target_time(len(rows), len(rows)) is None:
            return 0, None  # the call's first round (the answer's first token), or nothing timed yet: plain
        return max(0, min(max(k_model, self.copy_tokens), remaining - 1)), None

    def propose(self, drafter: Drafter, state: DecodeState, k: int) -> Proposal:
        if self.with_model:  # the hybrid: copy or model per row by expected gain, its copies cut as in `cap`
            return drafter.propose(state, k, self.round_costs(state.batch_size, k))
        return self.cap(drafter.propose(state, k))

    def cap(self, proposal: Proposal) -> Proposal:
        """Per row, the copy's first m tokens, m maximising (1 + sum_{j<m} conf[j]) / T(m+1) (0: no copy; conf
        calibrated by `CopyRecord`)."""
        costs = self.round_costs(proposal.tokens.shape[0], proposal.k)
        if proposal.confidence is None or proposal.k == 0 or costs is None:
            return proposal
        choice = best_copy(proposal.confidence, proposal.counts(), costs.pass_time, costs.copy_ratio)
        return proposal.limited(choice.length.tolist())

    def round_costs(self, batch: int, width: int) -> RoundCosts | None:
        """The next round's costs at `batch` rows: target passes over 1..width+1 tokens per row, and the model's
        round with its k (None before the target was timed)."""
        model, k = self.model, self._model_k
        times = [model.target_time((m + 1) * batch, batch) for m in range(width + 1)]
        if times[0] is None:
            return None
        cost = model.round_time(k, batch) if k else None
        k = k if cost is not None else 0
        return RoundCosts(torch.tensor(times, dtype=torch.float64), copy_ratio=self.copies.ratio(), model_k=k,
                          model_tokens=model.expected_tokens(k), model_time=math.inf if cost is None else cost,
                          model_reach=model.all_accepted(k) if k else 0.0)

    def after_round(self, proposal: Proposal, outcome: RoundOutcome) -> None:
        """As the cost model's, but only the model's own drafts tell its acceptance (a hybrid's copied rows and
        extensions do not); the copied rows' outcomes calibrate the copies' confidences."""
        if proposal.confidence is not None:
            copied = proposal.copied if proposal.copied is not None else [True] * len(outcome.accepted)
            self.copies.observe(proposal.confidence, proposal.counts(), outcome.accepted, copied)
        if proposal.copied is not None:
            drafted = proposal.model_counts()
            proposal = replace(proposal, num_proposed=drafted)
            outcome = replace(outcome, accepted=[min(a, d) for a, d in zip(outcome.accepted, drafted)])
        super().after_round(proposal, outcome)

    def summary(self) -> dict | None:
        return {**(super().summary() or {}), "copy_acceptance_over_confidence": round(self.copies.ratio(), 4)}


def make_pacer(options: SpeculativeOptions, target, draft, setting=None) -> FixedPacer | CostModelPacer | CopyPacer:
    """The pacer `options` ask for; `draft` (a draft model, a drafter, or None) sets the cost model's prior. A cost
    model starts from what the last call on the same target, draft and clock measured (memory.py); `setting`: the
    call's sampling settings (acceptance is carried only between calls with equal ones)."""
    K = options.max_draft_tokens
    if not options.auto_k:
        return FixedPacer(K)
    ratio, copies = draft_size_ratio(target, draft), options.prompt_lookup_num_tokens
    watch = stopwatch_for(input_device(target))
    confident = options.draft_confidence_threshold is None
    slot = slot_for(target, draft, ("copy" if copies is not None else "model", ratio > 0, confident), watch, setting)
    if copies is not None and ratio == 0:  # prompt lookup alone: drafting is free, k up to its N
        model = CostModelLookahead(max_k=copies, prior_catch_up_ratio=0.0, prior_draft_ratio=0.0)
        return CopyPacer(model, watch, copies, with_model=False, slot=slot)
    if copies is not None:  # hybrid: its copies look far from the first round on, the model's k is not held back
        return CopyPacer(CostModelLookahead(max_k=K, prior_catch_up_ratio=ratio, first_k=K), watch, copies,
                         with_model=True, slot=slot)
    return CostModelPacer(CostModelLookahead(max_k=K, prior_catch_up_ratio=ratio), watch, confidence_stop=confident,
                          slot=slot)


def draft_size_ratio(target, draft) -> float:
    """Parameters of the draft's model over the target's (0 for a drafter without one, such as prompt lookup):
    the cost model's prior for what reading a token costs the draft, relative to the target's prefill."""
    model = draft
    while model is not None and not isinstance(model, torch.nn.Module):
        model = getattr(model, "model", None)  # a drafter object around a model (ModelDrafter, HybridDrafter)
    if model is None:
        return 0.0
    return sum(p.numel() for p in model.parameters()) / max(sum(p.numel() for p in target.parameters()), 1)
