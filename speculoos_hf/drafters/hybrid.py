"""Hybrid drafting: where a row's context holds an n-gram match, copy its continuation; elsewhere ask the model.

The choice is made per row and per round from the committed prefix alone (does the lookup find a continuation?),
so the output stays exact: copied tokens are proposed with a one-hot q, the model's with its own q. The proposal
records the choice (`Proposal.copied`). When every row copies, the draft model does not run at all; its cache catches
up on the copied tokens in one chunk the next time it is asked (see `ModelDrafter`).
"""

from __future__ import annotations

from dataclasses import replace

import torch

from ..state import DecodeContext, DecodeState
from .base import Drafter, Proposal, RoundOutcome
from .prompt_lookup import PromptLookupDrafter


class HybridDrafter:
    """Prompt lookup first, the draft model (up to `num_model_tokens` per round) where the lookup has nothing."""

    def __init__(self, lookup: PromptLookupDrafter, model: Drafter, num_model_tokens: int):
        self.lookup = lookup
        self.model = model
        self.num_model_tokens = num_model_tokens
        self._copied: list[bool] | None = None  # the last proposal's choice per row

    def start(self, ctx: DecodeContext, state: DecodeState) -> None:
        self.ctx = ctx
        self.lookup.start(ctx, state)
        self.model.start(ctx, state)

    def propose(self, state: DecodeState, k: int) -> Proposal:
        copied = self.lookup.propose(state, k)
        use_copy = [n > 0 for n in copied.counts()]
        self._copied = use_copy
        if all(use_copy):
            return replace(copied, copied=use_copy)
        drafted = self.model.propose(state, min(k, self.num_model_tokens))
        return _merge(copied, drafted, use_copy, self.ctx.vocab_size)

    def commit(self, state: DecodeState, outcome: RoundOutcome) -> None:
        if self._copied is not None:  # the model still reads the committed tokens when it did not draft
            # as the model's own proposal saw the round: in rows that copied, none of its drafts was accepted
            accepted = [0 if c else a for a, c in zip(outcome.accepted, self._copied)]
            self.model.commit(state, replace(outcome, accepted=accepted))
        self._copied = None

    @property
    def forward_passes(self) -> int:
        return self.model.forward_passes

    @property
    def input_tokens(self) -> int:
        return self.model.input_tokens

    def select_rows(self, alive: torch.Tensor, alive_host: list[int]) -> None:
        self.model.select_rows(alive, alive_host)


def _merge(copied: Proposal, drafted: Proposal, use_copy: list[bool], V: int) -> Proposal:
    """One proposal: the copy in rows `use_copy`, the model's drafts elsewhere (sampling: one-hot q for copies)."""
    B, width, device = len(use_copy), max(copied.k, drafted.k), drafted.tokens.device
    tokens = torch.zeros(B, width, dtype=torch.long, device=device)  # [B, k]
    mask = torch.tensor(use_copy, device=device)[:, None]  # [B, 1]
    tokens[:, : drafted.k] = drafted.tokens
    tokens[:, : copied.k] = torch.where(mask, copied.tokens, tokens[:, : copied.k])
    counts = [c if u else d for u, c, d in zip(use_copy, copied.counts(), drafted.counts())]
    probs = None
    if drafted.probs is not None:  # sampling: model rows keep their q, copied rows get one-hot q
        probs = torch.zeros(B, width, V, device=device, dtype=drafted.probs.dtype)  # [B, k, V]
        probs[:, : drafted.k] = drafted.probs
        one_hot = torch.nn.functional.one_hot(tokens, V).to(probs.dtype)  # [B, k, V]
        probs = torch.where(mask[:, :, None], one_hot, probs)
    return Proposal(tokens, probs, counts, forwards=drafted.k, catch_up=drafted.catch_up, copied=use_copy)
