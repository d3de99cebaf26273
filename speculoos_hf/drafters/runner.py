"""Running a draft model for a drafter: one KV cache (`KVSlots`) for the whole generation, each proposal's pending
ids fed as one chunk, then one draft token per forward, drawn (greedy: argmax) from the target-id distribution
after the target's logits processors, with the confidence stop. Shared by `ModelDrafter` (the draft's ids are the
target's) and `OtherTokenizerDrafter` (its own ids), which differ only in their `DraftVocab`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import torch

from ..loop.kv_slots import KVSlots
from ..loop.logits import pad_vocab
from ..glue.placement import input_device
from ..glue.processors import apply_processors
from ..loop.state import DecodeContext, DecodeState
from ..pacing.draft_stop import DraftStop
from ..pacing.timing import Stopwatch
from .base import Proposal


class DraftVocab(Protocol):
    """How a draft's logits become scores over the target's ids, and a target id the draft id fed next."""

    def scores(self, logits: torch.Tensor, ctx: DecodeContext) -> torch.Tensor:
        """[B, V_draft] draft logits -> [B, V] scores over the target's ids, on `ctx.device`."""

    def draft_ids(self, tokens: torch.Tensor) -> torch.Tensor:
        """[B] target ids -> [B] the draft's ids for them."""


class SharedVocab:
    """The draft's ids are the target's: logits padded with -inf to the shared id range."""

    def scores(self, logits: torch.Tensor, ctx: DecodeContext) -> torch.Tensor:
        return pad_vocab(logits.to(ctx.device), ctx.vocab_size)

    def draft_ids(self, tokens: torch.Tensor) -> torch.Tensor:
        return tokens


@dataclass
class FedDrafts:
    """The drafts a proposal fed to the draft cache after its pending chunk (a round's last draft is never fed)."""

    first_slot: int  # the cache slot of the first one
    count: int = 0  # drafts fed per row
    host_ids: list[list[int]] = field(default_factory=list)  # per step, each row's draft id, where the feeder gave them

    def row_ids(self, i: int) -> list[int]:
        """Row i's fed draft ids (host), where the feeder gave them."""
        return [step[i] for step in self.host_ids]


class DraftRunner:
    """A draft model over its KV cache: feeds chunks, drafts token by token, keeps what the target accepted.

    confidence_threshold (dynamic lookahead): stop drafting a round once, in every row, the draft gave its latest
    token less than that probability. Costs one host sync per draft token; whether position j is drafted depends
    only on the prefix before j, so the output stays exact.
    """

    def __init__(self, model, cache=None, confidence_threshold: float | None = None):
        self.model = model
        self.cache = cache
        self.confidence_threshold = confidence_threshold
        self.device = input_device(model)
        self.kv: KVSlots | None = None
        self._fed: FedDrafts | None = None
        self.watch = Stopwatch(self.device)
        self._feed_span = None

    @property
    def forward_passes(self) -> int:
        """Draft forwards so far (the prompt is read by the first one)."""
        return self.kv.forward_passes if self.kv is not None else 0

    @property
    def input_tokens(self) -> int:
        """Slots fed to the draft, prefill included: each token is computed once."""
        return self.kv.input_slots if self.kv is not None else 0

    def start(self, batch_size: int, skip_position: torch.Tensor | None = None) -> None:
        """An empty cache. `skip_position` [B] (0/1): rows whose new tokens stock numbers from 1 (all padding)."""
        self.kv = KVSlots(self.model, self.cache)
        self.kv.start(batch_size)
        if skip_position is not None:
            self.kv.skip_position(skip_position)
        self._fed = None

    def feed(self, tokens: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """One forward over a chunk of pending ids `tokens` [B, w] (`valid` [B, w] host 0/1: holes where a row has
        fewer); the drafts fed after it are recorded from here on. Returns the logits at its last slot [B, V_draft]."""
        mark = self.watch.start()
        logits = self.kv.forward(tokens, valid, logits_to_keep=1)[:, -1]
        self._feed_span = self.watch.stop(mark)
        self._fed = FedDrafts(first_slot=self.kv.num_slots)
        return logits

    def feed_seconds(self):
        """A callable giving the seconds of the latest `feed` (read it after the round's sync: no extra sync)."""
        span, watch = self._feed_span, self.watch
        return lambda: watch.seconds(span)

    def step(self, ids: torch.Tensor, host_ids: list[int] | None = None) -> torch.Tensor:
        """Feed one draft id per row, `ids` [B] (`host_ids`: the same on the host, recorded if given). [B, V_draft]"""
        logits = self.kv.forward(ids[:, None], None, 1)[:, -1]
        self._fed.count += 1
        if host_ids is not None:
            self._fed.host_ids.append(list(host_ids))
        return logits

    def draft(self, ctx: DecodeContext, state: DecodeState, k: int, logits: torch.Tensor,
              vocab: DraftVocab, stop: DraftStop | None = None) -> Proposal:
        """Up to k draft tokens per row, the first from `logits` [B, V_draft] (after the pending chunk), one forward
        per further token. Each is drawn from the target-id scores after the target's processors with its own prefix
        (written into `state.seq` as it goes); greedy: the argmax. `stop`: the cost model's rule for going on."""
        C = state.lengths_tensor()  # [B]
        tokens, probs, has_ids = [], [], []
        for j in range(k):
            if j:
                logits = self.step(vocab.draft_ids(tokens[-1]))  # [B, V_draft]
            scores = apply_processors(ctx.processors, state.seq, [n + j for n in state.lengths],
                                      vocab.scores(logits, ctx), state.rows)  # [B, V]
            if ctx.processors.may_ban_all:
                has_ids.append(scores.amax(dim=-1) > float("-inf"))  # [B] the processors left the row some id
            token, q = self._choose(ctx, scores, stop)  # [B], [B, V] or None
            state.seq.scatter_(1, (C + j)[:, None], token[:, None])  # later positions' processors see it
            tokens.append(token)
            if ctx.do_sample:
                probs.append(q)
            if j + 1 < k and self._unsure(q, token):
                break
            if stop is not None and not stop.goes_on(q.gather(1, token[:, None]).squeeze(1), ask=j + 1 < k):
                break
        return _proposal(ctx, state, tokens, probs, _proposable(has_ids))

    def take_fed(self) -> FedDrafts | None:
        """The drafts fed since the last `feed` (None if nothing was fed since the last take)."""
        fed, self._fed = self._fed, None
        return fed

    def keep(self, first_slot: int, n_per_row: list[int]) -> None:
        """Of the slots appended from `first_slot` on, row i keeps the first `n_per_row[i]` (see `KVSlots.keep`)."""
        self.kv.keep(first_slot, n_per_row)

    def keep_first(self, n_per_row: list[int]) -> None:
        """Row i keeps its first `n_per_row[i]` real tokens (see `KVSlots.keep_first`)."""
        self.kv.keep_first(n_per_row)

    def select_rows(self, alive: torch.Tensor, alive_host: list[int]) -> None:
        self.kv.select_rows(alive, alive_host)
        self._fed = None

    def _choose(self, ctx: DecodeContext, scores: torch.Tensor, stop: DraftStop | None = None
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The draft token [B] and, when sampling or stopping on confidence, the q [B, V] it is drawn from. Where the
        processors left no token, q is a one-hot on id 0 (never proposed: see `_proposable`)."""
        q = None
        if ctx.do_sample or self.confidence_threshold is not None or stop is not None:
            nothing_left = scores.amax(dim=-1, keepdim=True) == float("-inf")  # [B, 1]
            first_id = torch.arange(scores.shape[-1], device=scores.device) == 0  # [V]
            q = torch.softmax(torch.where(nothing_left & first_id, 0.0, scores), dim=-1)  # [B, V]
        token = torch.multinomial(q, 1).squeeze(1) if ctx.do_sample else scores.argmax(dim=-1)  # [B]
        return token, q

    def _unsure(self, q: torch.Tensor | None, token: torch.Tensor) -> bool:
        """Every row gave its latest draft less than the confidence threshold (one host sync)."""
        if self.confidence_threshold is None:
            return False
        confidence = q.gather(1, token[:, None]).squeeze(1)  # [B] q(d_{j+1})
        return bool((confidence < self.confidence_threshold).all())


def _proposable(has_ids: list[torch.Tensor]) -> list[int] | None:
    """Per row, the drafts before its first position where the processors left no id at all (as suppress_tokens
    over a reduced head's ids): host ints, the one host sync this takes; None when no processor can ban every id."""
    if not has_ids:
        return None
    return torch.stack(has_ids, dim=1).long().cumprod(dim=1).sum(dim=1).tolist()  # [B, k] -> B ints


def _proposal(ctx: DecodeContext, state: DecodeState, tokens: list, probs: list,
              num_proposed: list[int] | None = None) -> Proposal:
    """The drafted tokens [B, k] (and their q [B, k, V] when sampling) as a Proposal, k possibly 0; row i proposes
    only its first num_proposed[i] (all k if None)."""
    if not tokens:
        empty_probs = torch.zeros(state.batch_size, 0, ctx.vocab_size, device=ctx.device) if ctx.do_sample else None
        return Proposal(state.seq[:, :0], empty_probs)
    return Proposal(torch.stack(tokens, dim=1), torch.stack(probs, dim=1) if probs else None, num_proposed)
