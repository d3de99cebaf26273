"""A draft model that shares the target's tokenizer: it samples each draft token from its own distribution after
the same logits processors as the target, one token per forward, over a KV cache kept for the whole generation.

Cache bookkeeping per row (all host ints, so nothing here syncs the device):
  `fed[i]`: how many committed positions of `state.seq[i]` are in the draft cache (valid slots or padding).
  The committed tokens after that, `seq[i, fed[i]:lengths[i]]`, are pending: the next proposal feeds them first,
  as one chunk (rows with fewer pending tokens get masked holes at the front of the chunk), then drafts one token
  per forward. The prompt itself is pending until the first proposal (its left padding becomes holes): a draft
  that the cost model never asks for costs nothing, not even its prefill. After a round, the drafts that were kept
  stay in the cache, the others become holes.
So the draft never recomputes a token, whatever proposed the committed ones (itself, or prompt lookup in a hybrid).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..kv_slots import KVSlots
from ..processors import apply_processors
from ..state import DecodeContext, DecodeState
from .base import Proposal, RoundOutcome


def pad_vocab(logits: torch.Tensor, size: int) -> torch.Tensor:
    """Pad logits `[..., V]` to `[..., size]` with -inf: ids a model lacks get probability 0 (and processors that
    index scores by token id stay in range when the other model's ids appear in the prefix)."""
    extra = size - logits.shape[-1]
    return logits if extra <= 0 else torch.nn.functional.pad(logits, (0, extra), value=float("-inf"))


@dataclass
class _Round:
    """What the last proposal appended to the draft cache."""

    first_draft_slot: int  # slot of d_1's key/value (d_1..d_{k-1} are fed; d_k never is)
    k: int
    chunk_last_valid: list[int]  # per row: last valid slot after the pending chunk (or the previous last valid)


class ModelDrafter:
    """Proposes with a transformers causal LM that shares the target's token ids.

    `confidence_threshold` (dynamic lookahead): stop drafting a round once, in every row, the draft gave its latest
    token less than that probability. Costs one host sync per draft token; whether position j is drafted depends
    only on the prefix before j, so the output stays exact.
    """

    def __init__(self, model, cache=None, confidence_threshold: float | None = None):
        self.model = model
        self.cache = cache
        self.confidence_threshold = confidence_threshold
        self.kv: KVSlots | None = None
        self.fed: list[int] = []
        self._round: _Round | None = None

    # -- the Drafter interface ---------------------------------------------------------------------------------

    def start(self, ctx: DecodeContext, state: DecodeState) -> None:
        """An empty draft cache: the prompt is fed with the first proposal."""
        self.ctx = ctx
        self.kv = KVSlots(self.model, self.cache)
        self.kv.start(state.batch_size)
        P = state.lengths[0]
        self.fed = [0] * state.batch_size
        self.kv.skip_position(torch.tensor([int(f >= P) for f in state.first_valid]))
        self._round = None

    def propose(self, state: DecodeState, k: int) -> Proposal:
        """Feed the pending committed tokens, then draft up to k tokens per row from the processed distribution."""
        ctx, kv = self.ctx, self.kv
        B = state.batch_size
        catch_up = max(c - f for c, f in zip(state.lengths, self.fed))
        logits = self._feed_pending(state)  # [B, V_draft]
        chunk_last_valid = list(kv.last_valid)
        first_draft_slot = kv.num_slots
        C = state.lengths_tensor()  # [B]
        tokens, probs = [], []
        for j in range(k):
            if j:
                logits = kv.forward(tokens[-1][:, None], None, 1)[:, -1]  # [B, V_d]
            logits = pad_vocab(logits.to(ctx.device), ctx.vocab_size)  # [B, V]
            scores = apply_processors(ctx.processors, state.seq, [n + j for n in state.lengths], logits, state.rows)
            q = torch.softmax(scores, dim=-1) if ctx.do_sample or self.confidence_threshold is not None else None
            token = torch.multinomial(q, 1).squeeze(1) if ctx.do_sample else scores.argmax(dim=-1)  # [B]
            state.seq.scatter_(1, (C + j)[:, None], token[:, None])  # later positions' processors see it
            tokens.append(token)
            if ctx.do_sample:
                probs.append(q)
            if self.confidence_threshold is not None and j + 1 < k:
                confidence = q.gather(1, token[:, None]).squeeze(1)  # [B] q(d_{j+1})
                if bool((confidence < self.confidence_threshold).all()):
                    break
        k = len(tokens)
        self._round = _Round(first_draft_slot, k, chunk_last_valid)
        draft_tokens = torch.stack(tokens, dim=1) if tokens else state.seq[:, :0]  # [B, k]
        draft_probs = torch.stack(probs, dim=1) if probs else None  # [B, k, V]
        if ctx.do_sample and draft_probs is None:
            draft_probs = torch.zeros(B, 0, ctx.vocab_size, device=ctx.device)
        return Proposal(draft_tokens, draft_probs, catch_up=catch_up)

    def commit(self, state: DecodeState, outcome: RoundOutcome, used: list[bool] | None = None) -> None:
        """Keep the drafts that were committed (at most k-1 of them were fed); the rest become holes.

        `used[i]` False: row i's proposal came from elsewhere (a hybrid drafter), so none of its drafts count.
        """
        r = self._round
        if r is None:
            return
        self._round = None
        B = state.batch_size
        own = [min(outcome.cached_drafts(i), r.k - 1) if (used is None or used[i]) else 0 for i in range(B)]
        last_valid = [r.first_draft_slot + n - 1 if n else r.chunk_last_valid[i] for i, n in enumerate(own)]
        steps = torch.arange(max(r.k - 1, 0), device=self.kv.device)  # [k-1]
        valid = steps[None, :] < torch.tensor(own, device=self.kv.device)[:, None]  # [B, k-1]
        self.kv.keep(r.first_draft_slot, valid, last_valid)
        self.fed = [outcome.old_lengths[i] + own[i] for i in range(B)]

    @property
    def forward_passes(self) -> int:
        """Draft forwards (the prompt is read by the first one)."""
        return self.kv.forward_passes if self.kv else 0

    @property
    def input_tokens(self) -> int:
        """Slots fed to the draft, prefill included: each committed token is computed once."""
        return self.kv.input_slots if self.kv else 0

    def select_rows(self, alive: torch.Tensor, alive_host: list[int]) -> None:
        self.kv.select_rows(alive, alive_host)
        self.fed = [self.fed[i] for i in alive_host]
        self._round = None

    # -- steps ------------------------------------------------------------------------------------------------------

    def _feed_pending(self, state: DecodeState) -> torch.Tensor:
        """One forward over each row's pending committed tokens, right-aligned; logits at the last one. [B, V_d]"""
        kv = self.kv
        pending = [c - f for c, f in zip(state.lengths, self.fed)]
        width = max(pending)
        first_slot = kv.num_slots
        starts = torch.tensor([c - width for c in state.lengths])  # [B] host
        positions = starts[:, None] + torch.arange(width)[None, :]  # [B, w] host
        fed = torch.tensor(self.fed)[:, None]
        valid_host = (positions >= fed) & state.valid_host.gather(1, positions.clamp(min=0)).bool()  # [B, w]
        index = positions.clamp(min=0).to(state.seq.device)
        chunk = state.seq.gather(1, index)  # [B, w]
        logits = kv.forward(chunk, valid_host.long(), 1)[:, -1]  # a host mask: no sync in compact mode
        row_last = _last_valid(valid_host.long())
        kv.last_valid = [first_slot + j if j >= 0 else old for j, old in zip(row_last, kv.last_valid)]
        return logits


def _last_valid(valid: torch.Tensor) -> list[int]:
    """Index of each row's last 1 in a host `[B, n]` 0/1 tensor, -1 where there is none."""
    n = valid.shape[1]
    if n == 0:
        return [-1] * valid.shape[0]
    idx = torch.arange(n)[None, :].expand_as(valid)
    return torch.where(valid.bool(), idx, torch.full_like(idx, -1)).max(dim=1).values.tolist()
