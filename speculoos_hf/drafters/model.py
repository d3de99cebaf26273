"""A draft model that shares the target's tokenizer: it samples each draft token from its own distribution after
the same logits processors as the target, one token per forward, over a KV cache kept for the whole generation
(the model-running half is `DraftRunner`'s).

Cache bookkeeping per row (host ints, so nothing here syncs the device): `cached_len[i]` committed positions of
`state.seq[i]` are in the draft cache (real slots or padding). The committed tokens after them are pending: the
next proposal feeds them first, as one chunk (rows with fewer pending tokens get masked holes at the front of the
chunk), then drafts one token per forward. The prompt itself is pending until the first proposal (its left padding
becomes holes): a draft that the cost model never asks for costs nothing, not even its prefill. After a round, the
drafts that were kept stay in the cache, the others become holes.
So the draft never recomputes a token, whatever proposed the committed ones (itself, or prompt lookup in a hybrid).
"""

from __future__ import annotations

from dataclasses import replace

import torch

from ..loop.state import DecodeContext, DecodeState
from ..pacing.draft_stop import DraftStop
from .base import Proposal, RoundOutcome
from .runner import DraftRunner, SharedVocab


class ModelDrafter:
    """Proposes with a transformers causal LM that shares the target's token ids: what `draft_model=<model>` builds.

    Args:
        model (`PreTrainedModel`): the draft, a causal LM whose token ids are the target's (padded embeddings of a
            different size are fine). Each draft token is drawn from its processed distribution q (greedy: its
            argmax), which the accept/reject rule takes into account: the output is exact whatever the draft.
        cache (`Cache`, *optional*): the draft's KV cache for the call (default: a fresh `DynamicCache`). It is kept
            for the whole generation; rejected drafts become masked holes, never recomputed.
        confidence_threshold (`float`, *optional*): dynamic lookahead: stop drafting a round once, in every row,
            the draft gave its latest token less than this probability. Exact; costs one host sync per draft token.

    What it costs: one draft forward per drafted token, and one forward over the tokens it did not propose itself
    (the prompt, read lazily with the first proposal, and the target's bonus or replacement tokens).
    """

    def __init__(self, model, cache=None, confidence_threshold: float | None = None):
        self.model = model
        self.confidence_threshold = confidence_threshold
        self.runner = DraftRunner(model, cache, confidence_threshold)
        self.vocab = SharedVocab()
        self.cached_len: list[int] = []

    # -- the Drafter interface ---------------------------------------------------------------------------------

    def start(self, ctx: DecodeContext, state: DecodeState) -> None:
        """An empty draft cache: the prompt is fed with the first proposal."""
        self.ctx = ctx
        P = state.lengths[0]
        self.runner.start(state.batch_size, skip_position=torch.tensor([int(f >= P) for f in state.first_valid]))
        self.cached_len = [0] * state.batch_size

    def propose(self, state: DecodeState, k: int) -> Proposal:
        """Feed the pending committed tokens, then draft up to k tokens per row from the processed distribution."""
        return self.propose_until(state, k, None)

    def propose_until(self, state: DecodeState, k: int, stop: DraftStop | None) -> Proposal:
        """`propose`, going on past each draft only while the cost model's `stop` says one more pays (up to k)."""
        catch_up = max(c - f for c, f in zip(state.lengths, self.cached_len))
        logits = self.runner.feed(*self._pending(state))  # [B, V_draft]
        return replace(self.runner.draft(self.ctx, state, k, logits, self.vocab, stop), catch_up=catch_up,
                       catch_up_seconds=self.runner.feed_seconds())

    def commit(self, state: DecodeState, outcome: RoundOutcome, used: list[bool] | None = None) -> None:
        """Keep the drafts that were committed (at most k-1 of them were fed); the rest become holes.

        `used[i]` False: row i's proposal came from elsewhere (a hybrid drafter), so none of its drafts count.
        """
        fed = self.runner.take_fed()
        if fed is None:
            return
        B = state.batch_size
        own = [min(outcome.cached_drafts(i), fed.count) if (used is None or used[i]) else 0 for i in range(B)]
        self.runner.keep(fed.first_slot, own)
        self.cached_len = [outcome.old_lengths[i] + own[i] for i in range(B)]

    @property
    def forward_passes(self) -> int:
        """Draft forwards (the prompt is read by the first one)."""
        return self.runner.forward_passes

    @property
    def input_tokens(self) -> int:
        """Slots fed to the draft, prefill included: each committed token is computed once."""
        return self.runner.input_tokens

    def select_rows(self, alive: torch.Tensor, alive_host: list[int]) -> None:
        self.runner.select_rows(alive, alive_host)
        self.cached_len = [self.cached_len[i] for i in alive_host]

    # -- steps ------------------------------------------------------------------------------------------------------

    def _pending(self, state: DecodeState) -> tuple[torch.Tensor, torch.Tensor]:
        """Each row's pending committed tokens, right-aligned: (chunk [B, w] on the device, valid [B, w] host)."""
        width = max(c - f for c, f in zip(state.lengths, self.cached_len))
        starts = torch.tensor([c - width for c in state.lengths])  # [B] host
        positions = starts[:, None] + torch.arange(width)[None, :]  # [B, w] host
        cached = torch.tensor(self.cached_len)[:, None]  # [B, 1]
        valid = (positions >= cached) & state.valid_host.gather(1, positions.clamp(min=0)).bool()  # [B, w]
        chunk = state.seq.gather(1, positions.clamp(min=0).to(state.seq.device))  # [B, w]
        return chunk, valid.long()
