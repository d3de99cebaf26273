"""Hybrid drafting: where a row's context holds an n-gram match, copy its continuation; elsewhere ask the model.

The choice is made per row and per round from the committed prefix alone (does the lookup find a continuation?),
so the output stays exact: copied tokens are proposed with a one-hot q, the model's with its own q. When every row
copies, the draft model does not run at all; its cache catches up on the copied tokens in one chunk the next time
it is asked (see `ModelDrafter`).
"""

from __future__ import annotations

import torch

from ..state import DecodeContext, DecodeState
from .base import Proposal, RoundOutcome
from .model import ModelDrafter
from .prompt_lookup import PromptLookupDrafter


class HybridDrafter:
    """Prompt lookup first, the draft model where the lookup has nothing (1-gram matches are left to the model
    when n-grams of 2 or more are searched: a single recurring token predicts little)."""

    def __init__(self, lookup: PromptLookupDrafter, model: ModelDrafter, num_model_tokens: int):
        if lookup.max_ngram_size >= 2:
            lookup.min_ngram_size = max(lookup.min_ngram_size, 2)
        self.lookup = lookup
        self.model = model
        self.num_model_tokens = num_model_tokens
        self._used_lookup: list[bool] | None = None

    def start(self, ctx: DecodeContext, state: DecodeState) -> None:
        self.ctx = ctx
        self.lookup.start(ctx, state)
        self.model.start(ctx, state)

    def propose(self, state: DecodeState, k: int) -> Proposal:
        copied = self.lookup.propose(state, k)
        use_copy = [n > 0 for n in copied.counts()]
        self._used_lookup = use_copy
        if all(use_copy):
            return copied
        drafted = self.model.propose(state, min(k, self.num_model_tokens))
        B, V = state.batch_size, self.ctx.vocab_size
        width = max(copied.k, drafted.k)
        device = state.seq.device
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
        return Proposal(tokens, probs, counts, forwards=drafted.k, catch_up=drafted.catch_up)

    def commit(self, state: DecodeState, outcome: RoundOutcome) -> None:
        if self._used_lookup is not None:
            self.model.commit(state, outcome, used=[not u for u in self._used_lookup])
        self._used_lookup = None

    @property
    def forward_passes(self) -> int:
        return self.model.forward_passes

    @property
    def input_tokens(self) -> int:
        return self.model.input_tokens

    def select_rows(self, alive: torch.Tensor, alive_host: list[int]) -> None:
        self.model.select_rows(alive, alive_host)
