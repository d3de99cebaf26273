"""How many tokens each round drafts, and the timings that decide it, kept out of the decoding loop.

The loop asks `pacer.choose_k(rows, remaining)` before a round (k, and per-row limits or None), runs its prefill, draft and target pass inside
`pacer.prefilling(...)`, `pacer.drafting()` and `pacer.scoring()`, and reports the round with
`pacer.after_round(proposal, outcome)`. With a given K (`FixedPacer`) nothing is timed; with
`num_draft_tokens="auto"` (`CostModelPacer`) a stopwatch feeds `CostModelLookahead`.
"""

from __future__ import annotations

from contextlib import contextmanager, nullcontext
from typing import Protocol

import torch

from .drafters.base import Proposal, RoundOutcome
from .lookahead import CostModelLookahead, On
from .options import SpeculativeOptions
from .placement import input_device
from .timing import Stopwatch


class Pacer(Protocol):
    def choose_k(self, rows: list[int], remaining: int) -> tuple[int, list[int] | None]:
        """(k, limits) for the next round over the live `rows` (original ids): k drafts (0: the target decodes one
        token alone) and, or None, each row's own cap (<= k; 0: the row drafts nothing); `remaining`: tokens left,
        longest row. Decided from earlier rounds' timings and acceptance only, never from this round's output."""

    def prefilling(self, rows: int, prompt_length: int):
        """Context around the target's prompt prefill."""

    def drafting(self):
        """Context around the round's proposal."""

    def scoring(self):
        """Context around the round's target pass."""

    def after_round(self, proposal: Proposal, outcome: RoundOutcome) -> None:
        """The round is over (after its host sync): what it proposed and what was accepted."""

    def summary(self) -> dict | None:
        """What the pacer measured, for `SpeculativeStats.cost_model` (None: nothing)."""


class FixedPacer:
    """A given K: every round drafts K tokens, fewer where fewer are left; nothing is timed."""

    def __init__(self, k: int):
        self.k = k

    def choose_k(self, rows: list[int], remaining: int) -> tuple[int, list[int] | None]:
        return min(self.k, remaining - 1), None

    def prefilling(self, rows: int, prompt_length: int):
        return nullcontext()

    def drafting(self):
        return nullcontext()

    def scoring(self):
        return nullcontext()

    def after_round(self, proposal: Proposal, outcome: RoundOutcome) -> None:
        pass

    def summary(self) -> dict | None:
        return None


class CostModelPacer:
    """num_draft_tokens="auto": `model` picks each round's k (up to its `max_k`) from the times `watch` measures.
    Timings are read in `after_round`, after the round's own host sync has made them complete."""

    def __init__(self, model: CostModelLookahead, watch: Stopwatch):
        self.model = model
        self.watch = watch
        self._prefill = None  # (span, tokens, unfed) until the first round reports it
        self._draft_span = self._target_span = None
        self._rows: list[int] | None = None  # the live rows of the round under way

    def choose_k(self, rows: list[int], remaining: int) -> tuple[int, list[int] | None]:
        """The cost model's k; with several rows, rows whose drafts do not pay are capped at 0."""
        model, B = self.model, len(rows)
        self._rows = list(rows)
        k = model.choose_k(batch=B, limit=min(model.max_k, remaining - 1), remaining=remaining, rows=self._rows)
        return k, (model.row_limits(k, self._rows, B) if model.phase == On() else None)

    @contextmanager
    def prefilling(self, rows: int, prompt_length: int):
        mark = self.watch.start()
        yield
        self._prefill = (self.watch.stop(mark), (prompt_length - 1) * rows, prompt_length)

    @contextmanager
    def drafting(self):
        mark = self.watch.start()
        yield
        self._draft_span = self.watch.stop(mark)

    @contextmanager
    def scoring(self):
        mark = self.watch.start()
        yield
        self._target_span = self.watch.stop(mark)

    def after_round(self, proposal: Proposal, outcome: RoundOutcome) -> None:
        """Feed the cost model this round's draft and target times and each row's acceptance."""
        model, B = self.model, len(outcome.accepted)
        if self._prefill is not None:
            span, tokens, unfed = self._prefill
            model.observe_prefill(self.watch.seconds(span), tokens, unfed=unfed)
            self._prefill = None
        if proposal.k > 0:
            self._observe_draft(proposal, self.watch.seconds(self._draft_span), B)
        model.observe_target(self.watch.seconds(self._target_span), proposal.k + 1, B)
        model.observe_round(proposal.counts(), outcome.accepted, rows=self._rows)

    def _observe_draft(self, proposal: Proposal, seconds: float, B: int) -> None:
        """A proposal whose first forward read many committed tokens (the prompt, a stretch without drafts) is a
        catch-up and then steps: timed apart where the drafter reports the catch-up forward's seconds, else the
        catch-up is what is left after the steps at their estimated cost."""
        model = self.model
        forwards = proposal.forwards if proposal.forwards is not None else proposal.k
        if not forwards:
            return
        if proposal.catch_up <= 2:
            model.observe_draft(seconds / forwards, B)  # a catch-up of 1-2 tokens costs about a step
            return
        caught = proposal.catch_up_seconds() if proposal.catch_up_seconds is not None else None
        if caught is None:
            step = model.draft_time(B) or 0.0
            model.observe_catch_up(max(seconds - (forwards - 1) * step, 0.0), proposal.catch_up * B)
            return
        model.observe_catch_up(caught, proposal.catch_up * B)
        if forwards > 1:
            model.observe_draft(max(seconds - caught, 0.0) / (forwards - 1), B)

    def summary(self) -> dict | None:
        return self.model.summary()


def make_pacer(options: SpeculativeOptions, target, draft) -> FixedPacer | CostModelPacer:
    """The pacer `options` ask for; `draft` (a draft model, a drafter, or None) sets the cost model's prior."""
    K = options.max_draft_tokens
    if not options.auto_k:
        return FixedPacer(K)
    model = CostModelLookahead(max_k=K, prior_catch_up_ratio=draft_size_ratio(target, draft))
    return CostModelPacer(model, Stopwatch(input_device(target)))


def draft_size_ratio(target, draft) -> float:
    """Parameters of the draft's model over the target's (0 for a drafter without one, such as prompt lookup):
    the cost model's prior for what reading a token costs the draft, relative to the target's prefill."""
    model = draft
    while model is not None and not isinstance(model, torch.nn.Module):
        model = getattr(model, "model", None)  # a drafter object around a model (ModelDrafter, HybridDrafter)
    if model is None:
        return 0.0
    return sum(p.numel() for p in model.parameters()) / max(sum(p.numel() for p in target.parameters()), 1)
