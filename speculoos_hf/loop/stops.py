"""How a round ends for each row: the one place where the length budget, EOS ids, stop strings, the user's stopping
criteria and lockstep decide how many tokens each row commits, which of them are its own output, and whether it
stopped (the words are `RoundOutcome`'s, drafters/base.py).

The rule replays stock generate()'s `_sample` steps over the round's candidate tokens. Per step stock appends one
token to every row (the pad id for a row that has stopped, but only when a criterion has an `eos_token_id`), then
`unfinished &= ~criteria(input_ids)`, and the loop ends when no row is unfinished. Without lockstep each row is on
its own: it commits its candidates up to its stop. In lockstep (the user's own objects in a batch) every row commits
the same number of tokens, the criteria see the whole batch at every step (pad ids after a row's stop), and the
round ends where a row that still needs a real token has no candidate left, or where the last row stops.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers.generation.stopping_criteria import EosTokenCriteria, MaxLengthCriteria, StoppingCriteriaList

from ..drafters.base import RoundOutcome
from .state import DecodeState

NEVER = 1 << 30  # "no stop in this round", as a number of steps


@dataclass(frozen=True)
class Stops:
    """How rows end besides the length budget: EOS ids (vectorised) and the criteria called once per committed token
    (stop strings, the user's own)."""

    eos: torch.Tensor  # [E] long
    criteria: StoppingCriteriaList
    pad: int
    pad_after_stop: bool  # stock writes the pad id after a row's stop (some criterion has an `eos_token_id`)
    lockstep: bool  # the user's objects in a batch: rows advance together and stay in the batch

    @classmethod
    def build(cls, criteria: StoppingCriteriaList, eos_ids: list[int], pad_token_id: int | None, lockstep: bool,
              device) -> "Stops":
        pad_after_stop = bool(eos_ids) or any(hasattr(c, "eos_token_id") for c in criteria)
        pad = pad_token_id if pad_token_id is not None else (eos_ids[0] if eos_ids else 0)
        return cls(torch.tensor(eos_ids, dtype=torch.long, device=device), criteria, pad, pad_after_stop, lockstep)


def split_stopping_criteria(stopping_criteria, max_length: int, eos_token_id):
    """(max_length, EOS ids, the other criteria): max length and EOS are handled in vectorised form; anything else is
    called once per committed token."""
    eos_ids = [] if eos_token_id is None else torch.as_tensor(eos_token_id).flatten().tolist()
    others = StoppingCriteriaList()
    for criterion in stopping_criteria or []:
        if isinstance(criterion, MaxLengthCriteria):
            max_length = min(max_length, criterion.max_length)
        elif isinstance(criterion, EosTokenCriteria):
            eos_ids += criterion.eos_token_id.flatten().tolist()
        else:
            others.append(criterion)
    return max_length, sorted(set(int(e) for e in eos_ids)), others


def needs_lockstep(batch_size: int, criteria, processors) -> bool:
    """Objects of the user's own (not built by transformers' generate()) may hold per-row state: in a batch they must
    see it whole, in its own row order, at one length, as stock shows it."""
    return batch_size > 1 and any(map(_is_users, [*criteria, *processors]))


def _is_users(obj) -> bool:
    return not type(obj).__module__.startswith("transformers.")


def apply_stops(stops: Stops, state: DecodeState, accepted: torch.Tensor, candidates: torch.Tensor,
                ends: list[int]) -> RoundOutcome:
    """Each row's share of the round: its `accepted` [B] drafts then the target's token are its `candidates`
    [B, k+1] (written after its committed prefix); `ends` (host ints) is the committed length where each row ends at
    the latest. Budget and EOS on the device, the round's one host sync, then the criteria token by token."""
    width = candidates.shape[1]
    steps = torch.arange(width, device=candidates.device)  # [k+1]
    budget = torch.tensor(ends, device=candidates.device) - state.lengths_tensor().to(candidates.device)  # [B]
    available = torch.minimum(accepted + 1, budget)  # [B] candidates the row may commit
    stop = torch.full_like(available, NEVER)  # [B] steps up to and including the row's stop
    if stops.eos.numel():
        is_eos = torch.isin(candidates, stops.eos) & (steps[None] < available[:, None])  # [B, k+1]
        stop = torch.where(is_eos.any(1), is_eos.int().argmax(1) + 1, stop)
    stop = torch.where(available == budget, torch.minimum(stop, budget), stop)
    state.write_ahead(candidates)
    synced = torch.cat([accepted[:, None], available[:, None], stop[:, None], candidates], 1).cpu()  # the one sync
    decision = _Decision(stops, state, *(synced[:, c].tolist() for c in range(3)), synced[:, 3:])
    decision.show(state)
    if len(stops.criteria):
        decision.call_criteria(state)
    return decision.outcome()


class _Decision:
    """One round's stop decision in the making, per live row (host ints): `stop` moves in as criteria fire."""

    def __init__(self, stops: Stops, state: DecodeState, accepted: list[int], available: list[int],
                 stop: list[int], candidates: torch.Tensor):
        self.stops, self.accepted, self.available = stops, accepted, available
        self.candidates = candidates  # [B, k+1] CPU
        self.old_lengths = list(state.lengths)
        self.stopped_before = list(state.stopped)  # rows that stopped in an earlier round (they run along)
        self.stop = [0 if s0 else s for s0, s in zip(self.stopped_before, stop)]  # steps up to its stop
        self.committed = self._committed()

    def _committed(self) -> list[int]:
        """Tokens each row commits under the stops known so far."""
        rows = list(zip(self.available, self.stop, self.stopped_before))
        if not self.stops.lockstep:  # a stopped row still here runs along with its real tokens (stock, no EOS id)
            return [a if s0 else min(a, s) for a, s, s0 in rows]
        pads = self.stops.pad_after_stop
        needs_real = [a for a, s, _ in rows if not (pads and s <= a)]  # a real token at every step
        return [min(needs_real + [max(self.stop)])] * len(rows)  # at most until every row has stopped

    def tokens(self) -> torch.Tensor:
        """[B, k+1] CPU: the candidates, with the pad id after each row's stop where stock writes it."""
        width = self.candidates.shape[1]
        if not self.stops.pad_after_stop:
            return self.candidates
        pad_from = torch.tensor([min(s, width) for s in self.stop])
        return torch.where(torch.arange(width)[None] >= pad_from[:, None], self.stops.pad, self.candidates)

    def show(self, state: DecodeState) -> None:
        """In lockstep the whole batch is seen at one length: put the pad ids in place on the device."""
        if self.stops.lockstep and self.stops.pad_after_stop:
            state.write_ahead(self.tokens())

    def call_criteria(self, state: DecodeState) -> None:
        """Call the criteria after every committed token, grouped by length (in lockstep: the whole batch in its own
        row order, as stock calls them); where one fires the row stops there."""
        t = 0
        while t < max(self.committed):
            rows = [i for i, n in enumerate(self.committed)
                    if t < n and (self.stops.lockstep or not self.stopped_before[i])]
            fired = []
            for length, group in _by_length(rows, self.old_lengths, t + 1).items():
                index = torch.tensor(group, device=state.seq.device)
                hits = self.stops.criteria(state.seq[index, :length], None).tolist()  # stock passes no scores
                fired += [i for i, hit in zip(group, hits) if hit and t + 1 < self.stop[i]]
            for i in fired:
                self.stop[i] = t + 1
            if fired:
                self.committed = self._committed()
                self.show(state)
            t += 1

    def outcome(self) -> RoundOutcome:
        own = [min(s, n) for s, n in zip(self.stop, self.committed)]
        stopped = [not s0 and s <= n for s, n, s0 in zip(self.stop, self.committed, self.stopped_before)]
        return RoundOutcome(accepted=self.accepted, committed=self.committed, own=own, stopped=stopped,
                            tokens=self.tokens(), old_lengths=self.old_lengths)


def _by_length(rows: list[int], lengths: list[int], step: int) -> dict[int, list[int]]:
    """Rows grouped by their length after `step` more tokens, each group in row order."""
    groups: dict[int, list[int]] = {}
    for i in rows:
        groups.setdefault(lengths[i] + step, []).append(i)
    return groups
