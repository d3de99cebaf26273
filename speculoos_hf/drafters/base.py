"""What a source of draft tokens must do. The decoding loop knows drafters only through this interface.

A round: `propose(state, k)` returns up to k tokens per live row with the distribution each was drawn from (or
`probs=None` when the proposal is deterministic, as a copy from the context is); the target verifies them; then
`commit(state, outcome)` tells the drafter how much of its proposal was kept so it can roll back the rest, and
`select_rows` drops rows that finished. `forward_passes` and `input_tokens` count the drafter's model work for the
stats (0 for a drafter without a model). Exactness never depends on the drafter: it needs only that a proposed
token was drawn from the `probs` it reports, and that whether and what it proposes depends only on the prefix.

A user's drafter needs only the four methods: `with_counters` gives it the counters at 0.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Callable, Protocol, runtime_checkable

import torch

from ..loop.state import DecodeContext, DecodeState


@dataclass
class Proposal:
    """Draft tokens for one round.

    tokens:       [B, k] long target ids; row i proposes `tokens[i, :num_proposed[i]]` (the rest is ignored).
    probs:        [B, k, V] q_j, the distribution token j was sampled from, or None for deterministic proposals
                  (q = one-hot: accepted with probability p(d), replaced from norm(max(0, p - onehot(d)))).
    num_proposed: host ints [B], or None when every row proposes k tokens.
    forwards:     draft forwards the proposal took (0 for a copy), for the cost model of `num_draft_tokens=None`.
    catch_up:     committed tokens per row (at most) the draft read before drafting (the prompt, on its first
                  proposal), for the same cost model.
    copied:       host bools [B]: True where the row's tokens were copied from the context instead of drafted by
                  the model (a hybrid's choice, per row), or None when the proposal does not mix the two.
    confidence:   [B, k] CPU float, a copy's estimated chance that its first j+1 tokens are right (the share of the
                  matched suffix's occurrences that continued so, discounted for a short match:
                  `suffix_match.acceptance_estimate`), or None (prompt lookup sets it).
    catch_up_seconds: None, or a callable giving the seconds of the proposal's first forward (the one that read
                  the pending committed tokens), called by the cost model after the round's host sync, so the
                  catch-up is timed apart from the draft's per-token steps.
    extension:    host ints [B]: how many of a model row's last tokens were copied after the model's drafts (a
                  hybrid's extension; 0 in rows without one), or None.
    """

    tokens: torch.Tensor
    probs: torch.Tensor | None = None
    num_proposed: list[int] | None = None
    forwards: int | None = None  # draft-model forwards it took (for the cost model; None: one per token)
    catch_up: int = 0
    copied: list[bool] | None = None
    confidence: torch.Tensor | None = None
    catch_up_seconds: Callable[[], float] | None = field(default=None, repr=False)
    extension: list[int] | None = None

    @property
    def k(self) -> int:
        return self.tokens.shape[1]

    def counts(self) -> list[int]:
        return self.num_proposed if self.num_proposed is not None else [self.k] * self.tokens.shape[0]

    def model_counts(self) -> list[int]:
        """Per row, the tokens the draft model proposed (0 in copied rows; a model row's extension left out)."""
        copied = self.copied or [False] * self.tokens.shape[0]
        extension = self.extension or [0] * self.tokens.shape[0]
        return [0 if c else n - e for n, c, e in zip(self.counts(), copied, extension)]

    def limited(self, per_row: list[int]) -> "Proposal":
        """Row i keeps at most `per_row[i]` of its drafts (the first ones); columns no row keeps are dropped. The
        forwards it took are kept as they were (they were spent)."""
        counts = [min(n, cap) for n, cap in zip(self.counts(), per_row)]
        k = max(counts, default=0)
        return replace(
            self,
            forwards=self.k if self.forwards is None else self.forwards,
            tokens=self.tokens[:, :k],  # [B, k]
            probs=None if self.probs is None else self.probs[:, :k],  # [B, k, V]
            num_proposed=None if all(n == k for n in counts) else counts,
            confidence=None if self.confidence is None else self.confidence[:, :k],  # [B, k]
        )


@dataclass(frozen=True)
class RoundOutcome:
    """What one round did to each live row (row i of the batch before stopped rows leave). The words, used everywhere:

    accepted:    host ints, the drafts verification accepted (a prefix of the row's proposal).
    committed:   host ints, the tokens appended to the row this round: its accepted drafts and the target's token,
                 cut by its stop or the length budget; in lockstep the same number for every row (pad ids after a
                 row's stop, or a stopped row's own next tokens when no EOS id is set: it runs along, as in stock).
    own:         host ints, how many of the committed tokens are the row's output (up to and including its stop;
                 0 for a row that had stopped before the round).
    stopped:     host bools, the row reached its stop this round (EOS, budget, a stop string or a criterion).
    tokens:      [B, k+1] CPU, row i committed `tokens[i, :committed[i]]` (pad ids already in place).
    old_lengths: host ints, committed lengths before the round (the committed tokens start there in `state.seq`).
    """

    accepted: list[int]
    committed: list[int]
    own: list[int]
    stopped: list[bool]
    tokens: torch.Tensor
    old_lengths: list[int]

    def cached_drafts(self, i: int) -> int:
        """How many of row i's drafts a cache that ran over them keeps: accepted and committed ones, but never the
        last committed token (it is fed next round, as every round's first token)."""
        return max(0, min(self.accepted[i], self.committed[i] - 1))


@runtime_checkable
class Drafter(Protocol):
    """Any source of draft tokens. See `speculoos_hf.drafters.model.ModelDrafter` for the full example and
    `speculoos_hf.drafters.prompt_lookup.PromptLookupDrafter` for a deterministic one."""

    forward_passes: int  # draft-model forwards so far in this generation (0 without a model)
    input_tokens: int  # tokens (cache slots) fed to the draft model so far, its prompt read included

    def start(self, ctx: DecodeContext, state: DecodeState) -> None:
        """Begin a generation from the prompt in `state` (`state.seq[:, :state.lengths[i]]`, left-padded)."""

    def propose(self, state: DecodeState, k: int) -> Proposal:
        """Up to k draft tokens per live row, continuing `state.seq[i, :state.lengths[i]]`."""

    def commit(self, state: DecodeState, outcome: RoundOutcome) -> None:
        """Roll back to what was accepted. Called after the loop wrote the round's new tokens into `state.seq` and
        moved `state.lengths` on (`outcome.old_lengths` has the lengths before the round)."""

    def select_rows(self, alive: torch.Tensor, alive_host: list[int]) -> None:
        """Keep only rows `alive` (positions in the current live batch)."""


DRAFTER_METHODS = ("start", "propose", "commit", "select_rows")


def is_drafter(obj) -> bool:
    """Whether `obj` has the four methods of a drafter (the counters may be missing: see `with_counters`)."""
    return all(callable(getattr(obj, name, None)) for name in DRAFTER_METHODS)


def with_counters(drafter) -> Drafter:
    """`drafter` as a whole `Drafter`: itself when it counts its model work, else behind `Uncounted`."""
    if hasattr(drafter, "forward_passes") and hasattr(drafter, "input_tokens"):
        return drafter
    return Uncounted(drafter)


class Uncounted:
    """A drafter that does not count model work (a user's own, a copy from the context): the counters read 0."""

    forward_passes = 0
    input_tokens = 0

    def __init__(self, drafter):
        self.drafter = drafter

    def start(self, ctx: DecodeContext, state: DecodeState) -> None:
        self.drafter.start(ctx, state)

    def propose(self, state: DecodeState, k: int) -> Proposal:
        return self.drafter.propose(state, k)

    def commit(self, state: DecodeState, outcome: RoundOutcome) -> None:
        self.drafter.commit(state, outcome)

    def select_rows(self, alive: torch.Tensor, alive_host: list[int]) -> None:
        self.drafter.select_rows(alive, alive_host)
