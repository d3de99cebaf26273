"""Hybrid drafting: per row and round, copy a continuation from the context or ask the draft model.

With the cost model's `RoundCosts` (num_draft_tokens not given), a row copies where its copy is expected to give at
least the model's tokens per second (`speculoos_hf.pacing.gain`), its copy cut where a longer pass stops paying; without
them (a given K), a row copies wherever the lookup finds a continuation. Either way the choice depends only on the
committed prefix and earlier rounds' measurements, so the output stays exact: copied tokens are proposed with a
one-hot q, the model's with its own q. The proposal records the choice (`Proposal.copied`). A model row may also
carry its copy's tokens past the model's drafts (`Proposal.extension`): free to draft, accepted where the model's
drafts and the copy agree, exact either way (a copied token is a function of the committed prefix). When every row
copies, the draft model does not run at all; its cache catches up on the copied tokens in one chunk the next time it
is asked (see `ModelDrafter`).
"""

from __future__ import annotations

from dataclasses import replace

import torch

from ..pacing.gain import RoundCosts, best_copy, best_extension, prefers_copy
from ..loop.state import DecodeContext, DecodeState
from .base import Drafter, Proposal, RoundOutcome
from .prompt_lookup import PromptLookupDrafter


class HybridDrafter:
    """Per row and round, prompt lookup's copy or the draft model's drafts: what `draft_model=` together with
    `prompt_lookup_num_tokens=` builds.

    Args:
        lookup (`PromptLookupDrafter`): the copies.
        model (`Drafter`): the draft model's drafter (`ModelDrafter` or `OtherTokenizerDrafter`).
        num_model_tokens (`int`): the most drafts the model proposes per round.

    With the cost model (`num_draft_tokens="auto"`, the pacer passes `RoundCosts`) each row takes whichever is
    expected to give more tokens per second, and a row that asks the model carries its copy past the model's drafts
    where the wider pass pays; with a fixed `num_draft_tokens`, a row copies wherever the lookup finds a match. The
    model does not run in a round where every row copies. Exact: copies are one-hot proposals, the model's drafts
    carry their q.
    """

    def __init__(self, lookup: PromptLookupDrafter, model: Drafter, num_model_tokens: int):
        self.lookup = lookup
        self.model = model
        self.num_model_tokens = num_model_tokens
        self._copied: list[bool] | None = None  # the last proposal's choice per row

    def start(self, ctx: DecodeContext, state: DecodeState) -> None:
        self.ctx = ctx
        self.lookup.start(ctx, state)
        self.model.start(ctx, state)

    def propose(self, state: DecodeState, k: int, costs: RoundCosts | None = None) -> Proposal:
        """Up to k tokens per row: the copy or the model's drafts (up to `costs.model_k` with costs, each model row
        then extended by its copy's tokens past the drafts where that is expected to pay)."""
        offered = self.lookup.propose(state, k)
        extension = None
        if costs is None:
            copied, use_copy, k_model = offered, [n > 0 for n in offered.counts()], min(k, self.num_model_tokens)
        else:
            choice = best_copy(offered.confidence, offered.counts(), costs.pass_time, costs.copy_ratio)
            copied = offered.limited(choice.length.tolist())  # each copy cut where a longer pass stops paying
            extension = best_extension(offered.confidence, offered.counts(), costs)
            use_copy = prefers_copy(choice, costs, extension).tolist()
            k_model = min(k, self.num_model_tokens, costs.model_k)
        self._copied = use_copy
        if all(use_copy):
            return replace(copied, copied=use_copy)
        drafted = self.model.propose(state, k_model)
        appended = None if extension is None or drafted.k != costs.model_k else [
            0 if c or d < drafted.k else e for e, c, d in zip(extension.length.tolist(), use_copy, drafted.counts())]
        return _merge(copied, drafted, use_copy, self.ctx.vocab_size, offered, appended)

    def commit(self, state: DecodeState, outcome: RoundOutcome) -> None:
        if self._copied is not None:  # the model still reads the committed tokens when it did not draft
            # as the model's own proposal saw the round: in rows that copied, none of its drafts was accepted
            accepted = [0 if c else a for a, c in zip(outcome.accepted, self._copied)]
            self.model.commit(state, replace(outcome, accepted=accepted))
        self._copied = None
        self.lookup.commit(state, outcome)  # its index grows; finished rows go to the suffix cache

    @property
    def forward_passes(self) -> int:
        return self.model.forward_passes

    @property
    def input_tokens(self) -> int:
        return self.model.input_tokens

    def select_rows(self, alive: torch.Tensor, alive_host: list[int]) -> None:
        self.model.select_rows(alive, alive_host)
        self.lookup.select_rows(alive, alive_host)


def _merge(copied: Proposal, drafted: Proposal, use_copy: list[bool], V: int, offered: Proposal,
           extension: list[int] | None = None) -> Proposal:
    """One proposal: the copy in rows `use_copy`, the model's drafts elsewhere, followed in model row b by the
    `extension[b]` tokens of its `offered` copy past the drafts (`copied` is a prefix of `offered`; sampling: one-hot
    q for every copied token)."""
    B, k, device = len(use_copy), drafted.k, drafted.tokens.device
    extension = extension or [0] * B
    width = max(copied.k, k + max(extension, default=0))
    positions = torch.arange(width)[None, :]  # [1, w]
    ext_end = k + torch.tensor(extension)[:, None]  # [B, 1]
    from_copy = (torch.tensor(use_copy)[:, None] | ((positions >= k) & (positions < ext_end))).to(device)  # [B, w]
    tokens = torch.zeros(B, width, dtype=torch.long, device=device)  # [B, w]
    tokens[:, :k] = drafted.tokens
    copy = torch.zeros(B, width, dtype=torch.long, device=device)  # [B, w]
    copy[:, : min(offered.k, width)] = offered.tokens[:, :width]
    tokens = torch.where(from_copy, copy, tokens)
    counts = [c if u else d + e for u, c, d, e in zip(use_copy, copied.counts(), drafted.counts(), extension)]
    probs = None
    if drafted.probs is not None:  # sampling: drafted tokens keep their q, copied ones get one-hot q
        probs = torch.zeros(B, width, V, device=device, dtype=drafted.probs.dtype)  # [B, w, V]
        probs[:, :k] = drafted.probs
        one_hot = torch.nn.functional.one_hot(tokens, V).to(probs.dtype)  # [B, w, V]
        probs = torch.where(from_copy[:, :, None], one_hot, probs)
    confidence = None
    if copied.confidence is not None:  # the copied rows' (0 in the model's rows)
        confidence = torch.zeros(B, width)  # [B, w] CPU
        confidence[:, : copied.k] = copied.confidence * torch.tensor(use_copy)[:, None]
    forwards = drafted.k if drafted.forwards is None else drafted.forwards
    return Proposal(tokens, probs, counts, forwards=forwards, catch_up=drafted.catch_up, copied=use_copy,
                    confidence=confidence, catch_up_seconds=drafted.catch_up_seconds,
                    extension=extension if any(extension) else None)
