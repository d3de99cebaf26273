"""What a source of draft tokens must do. The decoding loop knows drafters only through this interface.

A round: `propose(state, k)` returns up to k tokens per live row with the distribution each was drawn from (or
`probs=None` when the proposal is deterministic, as a copy from the context is); the target verifies them; then
`commit(state, outcome)` tells the drafter how much of its proposal was kept so it can roll back the rest, and
`select_rows` drops rows that finished. Exactness never depends on the drafter: it needs only that a proposed
token was drawn from the `probs` it reports, and that whether and what it proposes depends only on the prefix.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import torch

from ..state import DecodeContext, DecodeState


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
    """

    tokens: torch.Tensor
    probs: torch.Tensor | None = None
    num_proposed: list[int] | None = None
    forwards: int | None = None  # draft-model forwards it took (for the cost model; None: one per token)
    catch_up: int = 0

    @property
    def k(self) -> int:
        return self.tokens.shape[1]

    def counts(self) -> list[int]:
        return self.num_proposed if self.num_proposed is not None else [self.k] * self.tokens.shape[0]


@dataclass
class RoundOutcome:
    """What verification kept of a proposal, per live row (before finished rows leave).

    num_accepted: [B] device, accepted proposal tokens (0..num_proposed[i]).
    accepted:     host ints, the same on the host.
    kept:         host ints, new tokens committed this round (accepted + 1, or fewer where a stop cut the row).
    old_lengths:  host ints, committed lengths before the round (the new tokens start there in `state.seq`).
    done:         host bools, the row stopped this round.
    new_tokens:   [B, k+1] CPU, the round's candidate new tokens (row i committed `new_tokens[i, :kept[i]]`).
    """

    num_accepted: torch.Tensor
    accepted: list[int]
    kept: list[int]
    old_lengths: list[int]
    done: list[bool] = field(default_factory=list)
    new_tokens: torch.Tensor | None = None
    eos_at: list[int] = field(default_factory=list)
    ended: list[int] = field(default_factory=list)  # host ints: tokens of the round that are the row's own output

    def cached_drafts(self, i: int) -> int:
        """How many of row i's proposed tokens a cache that ran over them keeps: committed ones, but never the last
        committed token (it is fed next round, as every round's first token)."""
        return max(0, min(self.accepted[i], self.kept[i] - 1))


@runtime_checkable
class Drafter(Protocol):
    """Any source of draft tokens. See `speculoos_hf.drafters.model.ModelDrafter` for the full example and
    `speculoos_hf.drafters.prompt_lookup.PromptLookupDrafter` for a deterministic one."""

    def start(self, ctx: DecodeContext, state: DecodeState) -> None:
        """Begin a generation from the prompt in `state` (`state.seq[:, :state.lengths[i]]`, left-padded)."""

    def propose(self, state: DecodeState, k: int) -> Proposal:
        """Up to k draft tokens per live row, continuing `state.seq[i, :state.lengths[i]]`."""

    def commit(self, state: DecodeState, outcome: RoundOutcome) -> None:
        """Roll back to what was accepted. Called after the loop wrote the round's new tokens into `state.seq` and
        moved `state.lengths` on (`outcome.old_lengths` has the lengths before the round)."""

    def select_rows(self, alive: torch.Tensor, alive_host: list[int]) -> None:
        """Keep only rows `alive` (positions in the current live batch)."""
