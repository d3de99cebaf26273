"""A model plus its KV cache, kept for the whole generation, with per-row "holes"; it keeps its own books.

Rows of a batch accept different numbers of drafts per round. Rather than re-feeding tokens, a rejected draft's
key/value slot stays in the cache as a hole: its attention-mask entry is 0 and positions are given explicitly
(each row counts only its real slots), so no token is ever computed twice. Holes and the left padding of the
prompt are the same thing to the model: masked slots with explicit `position_ids`. This matches a clean run with
both sdpa and eager attention and holds for absolute (GPT-2) and rotary positions alike, and for ALiBi built from
the attention mask's cumsum (Bloom, Falcon).

The books: `KVSlots` records which slots are real from what it is fed (`forward(tokens, valid)`), on the host, so
callers only say what to keep (`keep(first_slot, n_per_row)`: a prefix of the slots appended since `first_slot`;
`keep_first(n_per_row)`: a prefix of each row's real tokens). Everything else (positions, the attention mask,
which trailing or leading slots can go, whether rows must move) is derived from those books.

Two layouts behind that one interface:
  - `AppendLayout` (models that see positions): holes stay where they are; trailing slots that are holes in every
    row are cropped at the end of each round, so with batch size 1 there are never holes at all.
  - `CompactLayout` (models that count slots): sliding-window and chunked attention (Mistral, Mixtral, Qwen2/3
    with their window on, Gemma 2/3, Phi-3, Starcoder2, Cohere2, OLMo 3, ...) keep the last `window` *slots*, and
    MPT's ALiBi and GPT-Neo's local attention measure slot distances: a hole in the middle of a row would shorten
    its window or stretch its distances (`cache_layout.slot_distance_reason`). So every row's real tokens are kept
    *contiguous and right-aligned*: a row that rejected drafts has its slots moved right by a per-row gather on
    every layer's keys/values, its holes end up on the left, where they look exactly like left padding, and the
    sliding layers see what the stock batched generate() shows them. Leading and trailing columns that are holes
    in every row are cropped, so the cache is never longer than the longest row. Sliding layers keep their past
    recorded during a round (transformers' `activate_past_recording`, which its assisted generation uses to roll
    sliding layers back) and are trimmed back to `window - 1` slots at the round's end, as transformers' crop does.
    A chunk fed with holes inside a row is fed with the row's real tokens first (an empty row: its holes first);
    positions are explicit, so only slot order changes; logits come back in the caller's order, and slot indices
    given to `keep` are the caller's ("logical") ones, which the layout maps to where the slots now are.

Why compaction rather than lockstep (crop every row to the shortest acceptance and re-feed: up to K recomputed
tokens per row per round in both models) or per-layer-type 4D masks (wrong for MPT's ALiBi and GPT-Neo's local
buffer, and full-length sliding layers): one index_select per layer, only when rows accepted different counts,
only for the models above. Nothing moves with batch size 1 or when every row accepted the same number.

Host syncs: none. The books live on the host; pass `valid` as a host (CPU) tensor (a device tensor is copied to
the host, which syncs).
"""

from __future__ import annotations

import torch
from transformers import DynamicCache

from .cache_layout import check_movable, crop_slots, permute_slots, select_cache_rows, slice_slots, slot_distance_reason
from ..glue.placement import input_device
from .recurrent_state import MAX_ROLLBACK, RecurrentStates, has_attention


class KVSlots:
    """Runs one model over a growing cache whose slots are real tokens or holes. Tensors live on the model's device.

    compact: True for models that see slot distances (see the module docstring); None = decide from the model.
    forward_passes, input_slots: counters (input_slots: slots fed, i.e. tokens computed; nothing is recomputed).
    """

    def __init__(self, model, cache=None, compact: bool | None = None):
        self.model = model
        self.device = input_device(model)
        self.cache = cache if cache is not None else DynamicCache(config=model.config)
        embeddings = model.get_input_embeddings()
        self.max_id = getattr(embeddings, "num_embeddings", None)
        supports_keep = getattr(model, "_supports_logits_to_keep", None)
        self.keep_kwarg = bool(supports_keep()) if callable(supports_keep) else False
        self.compact_reason = slot_distance_reason(model, self.cache)
        compact = bool(self.compact_reason) if compact is None else bool(compact)
        self.recurrent = RecurrentStates(self.cache)  # per-row rollback of recurrent layers (recurrent_state.py)
        self.chunk_mask = not has_attention(self.cache)  # recurrent-only models take the fed chunk's mask alone
        layout = CompactLayout if compact else AppendLayout
        self.layout = layout(self.cache, self.device, real_first=bool(self.recurrent))
        self.forward_passes = 0
        self.input_slots = 0
        self._offset = torch.zeros(0, dtype=torch.long)  # [B] host, added to real tokens' positions (skip_position)
        self._held: tuple[torch.Tensor, torch.Tensor] | None = None  # tokens [B, n] and valid [B, n] host (defer)

    @property
    def max_drafts(self) -> int | float:
        """The most drafts one forward may verify: bounded where recurrent state records a state per token."""
        return MAX_ROLLBACK if self.recurrent else float("inf")

    @property
    def compact(self) -> bool:
        return isinstance(self.layout, CompactLayout)

    @property
    def num_slots(self) -> int:
        """Slots in the cache, the held tokens' included (they take the next slots, see `defer`)."""
        return self.layout.num_slots + self.held_tokens

    @property
    def held_tokens(self) -> int:
        """Tokens per row held by `defer` until the next forward (0: none)."""
        return 0 if self._held is None else self._held[0].shape[1]

    @property
    def can_defer(self) -> bool:
        """Whether `defer` may hold tokens: not where a forward records a state per token (recurrent layers) or
        the layout moves slots (compact), whose rounds assume a short chunk."""
        return not self.recurrent and not self.compact

    @property
    def compactions(self) -> int:
        """Per-row gathers of the whole cache so far (compact layout only)."""
        return self.layout.compactions

    def real_tokens(self) -> list[int]:
        """Real tokens per row in the cache (host ints)."""
        return self.layout.counts().tolist()

    def start(self, batch_size: int) -> None:
        self.layout.start(batch_size)
        self.recurrent.start(batch_size)
        self._offset = torch.zeros(batch_size, dtype=torch.long)

    def defer(self, tokens: torch.Tensor, valid: torch.Tensor) -> None:
        """Hold `tokens` [B, n] (valid [B, n] host 0/1) to be fed in front of the next forward's: a prompt's prefill
        rides with the first round's pass, one forward fewer. Their slots count in `num_slots` from now on."""
        if not self.can_defer:
            raise ValueError("this model's cache cannot hold tokens for a later forward")
        self._held = (tokens, valid.cpu().bool())

    def flush(self) -> None:
        """Feed the held tokens now (before a forward that cannot take them in front, such as a tree's)."""
        if self._held is not None:
            self.forward(self._held[0][:, :0], None, logits_to_keep=1)

    def skip_position(self, rows: torch.Tensor) -> None:
        """Rows [B] (0/1) whose prompt is all padding: stock numbers their new tokens from 1, not 0."""
        self._offset = self._offset + rows.cpu().long()

    def forward(self, tokens: torch.Tensor, valid: torch.Tensor | None, logits_to_keep: int) -> torch.Tensor:
        """Feed `tokens` [B, n] (valid [B, n] host 0/1, None = all real) and append their slots.
        Returns logits [B, keep, V] (float32) for the last `logits_to_keep` of the fed tokens, in the caller's order."""
        tokens = tokens.to(self.device)
        B, n = tokens.shape
        valid = torch.ones(B, n, dtype=torch.bool) if valid is None else valid.cpu().bool()  # [B, n] host
        if self._held is not None:  # the held tokens go first (defer)
            (held, held_valid), self._held = self._held, None
            tokens, valid = torch.cat([held.to(self.device), tokens], 1), torch.cat([held_valid, valid], 1)
            B, n = tokens.shape
        if self.max_id is not None:
            # An id only the other model has (padded vocabularies) is fed as a stand-in: the target always rejects
            # such a draft (p = 0) so its slot becomes a hole; for the draft it can cost acceptance, never exactness.
            tokens = tokens.clamp(max=self.max_id - 1)
        order = self.layout.feed_order(valid)  # [B, n] host, or None: as given
        if order is not None:
            tokens, valid = tokens.gather(1, order.to(self.device)), valid.gather(1, order)
        positions = self._positions(valid)  # [B, n] host
        cache_empty = not bool(self.layout.real.any())
        attention_mask = self.layout.append(valid, order)  # [B, L+n] device
        if self.recurrent:
            self.recurrent.before_forward(n, cache_empty)
        out = self.model(
            input_ids=tokens,
            attention_mask=valid.long().to(self.device) if self.chunk_mask else attention_mask,
            position_ids=positions.to(self.device),
            cache=self.cache,
            use_cache=True,
            return_dict=True,
            **({"logits_to_keep": n if order is not None else logits_to_keep} if self.keep_kwarg else {}),
        )
        if self.recurrent:
            self.recurrent.after_forward(valid)  # each row's state: after its own last real token
        logits = out.logits
        if order is not None:  # back to the caller's order
            inverse = order.argsort(dim=1).to(logits.device)[:, :, None].expand(-1, -1, logits.shape[-1])
            logits = logits[:, -n:].gather(1, inverse)
        self.forward_passes += 1
        self.input_slots += tokens.numel()
        return logits[:, -logits_to_keep:].float()

    def _positions(self, valid: torch.Tensor) -> torch.Tensor:
        """[B, n] host: each real token's position (the row's real tokens so far, plus its offset)."""
        v = valid.long()
        positions = (self.layout.counts()[:, None] + v.cumsum(dim=1) - 1).clamp(min=0)
        return positions + self._offset[:, None] * v

    def keep(self, first_slot: int, n_per_row: list[int]) -> None:
        """Roll back after a round: of the slots appended from `first_slot` on (the caller's slot indices), row i
        keeps the first `n_per_row[i]`; the later ones become holes (a slot fed as a hole stays one). Then the
        round ends: slots that are holes in every row are cropped (and, compact, rows are right-aligned).
        Slot indices are only meaningful until the next keep/select_rows: read `num_slots` afresh each round."""
        bound = first_slot + torch.tensor(n_per_row, dtype=torch.long)  # [B] host
        slots = torch.arange(self.num_slots)[None, :]  # [1, L]
        self._drop(slots >= bound[:, None])

    def keep_first(self, n_per_row: list[int]) -> None:
        """Row i keeps its first `n_per_row[i]` real tokens (in the caller's order); its later ones become holes.
        Then the round ends, as in `keep`."""
        real = self.layout.caller_view()  # [B, L] host bool
        bound = torch.tensor(n_per_row, dtype=torch.long)[:, None]  # [B, 1]
        self._drop(real & (real.long().cumsum(dim=1) > bound))

    def _drop(self, caller_slots: torch.Tensor) -> None:
        """Slots marked in `caller_slots` [B, L] become holes; recurrent layers forget as many real tokens per row
        (always the row's latest ones: callers keep a prefix). The round ends."""
        before = self.layout.counts()  # [B]
        self.layout.drop(caller_slots)
        self.layout.settle()
        if self.recurrent:
            self.recurrent.settle(before - self.layout.counts(), self.num_slots)

    def select_rows(self, rows: torch.Tensor, rows_host: list[int]) -> None:
        """Keep only `rows` of the batch (finished rows leave, so they cost no more compute)."""
        rows = rows.to(self.device)
        select_cache_rows(self.cache, rows)
        if self.recurrent:
            self.recurrent.select_rows(rows, rows_host)
        self.layout.select_rows(rows, rows_host)
        self._offset = self._offset[rows_host]
        self.layout.settle()

    # -- token trees (tree.py): one forward over trees of tokens, then one path kept per row ---------------------

    def tree_reason(self) -> str | None:
        """Why this model cannot take trees of tokens in one forward (None: it can). A tree needs a custom 4D mask,
        which a model that counts slots cannot take, and one recurrent state per branch."""
        if self.compact:
            return f"its attention counts slots ({self.compact_reason})"
        if self.recurrent:
            return "it has recurrent layers"
        return None

    def forward_tree(self, tokens: torch.Tensor, valid: torch.Tensor, steps: torch.Tensor, sees: torch.Tensor,
                     since: int) -> torch.Tensor:
        """Feed `tokens` [B, n] arranged as trees and append their slots: token j of row i attends to the row's real
        slots before `since` and, of the slots from `since` on (those appended since, then these n), to the ones
        `sees[i, j]` marks ([B, n, L - since + n] bool, host or device: the mask is built where it lies); its
        position is the row's real tokens before `since` plus `steps[i, j]` ([B, n] host). `valid` [B, n] host:
        padding is fed as holes. One forward with a 4D mask (see `tree_reason`). Returns logits [B, n, V] float32."""
        reason = self.tree_reason()
        if reason is not None:
            raise ValueError(f"this model cannot score a token tree in one pass: {reason}")
        self.flush()  # held tokens are fed first, in a forward of their own
        tokens = tokens.to(self.device)
        if self.max_id is not None:
            tokens = tokens.clamp(max=self.max_id - 1)  # as in `forward`
        B, n = tokens.shape
        valid = valid.cpu().bool()  # [B, n]
        before = self.layout.real[:, :since]  # [B, since] host
        positions = before.sum(1, keepdim=True) + steps.cpu() + self._offset[:, None] * valid.long()  # [B, n]
        self.layout.append(valid, None)
        sees = sees.bool()
        allowed = torch.cat([before[:, None, :].expand(B, n, since).to(sees.device), sees], dim=2)  # [B, n, L+n]
        dtype = self.model.dtype
        mask = torch.zeros(allowed.shape, dtype=dtype, device=sees.device)
        mask = mask.masked_fill_(~allowed, torch.finfo(dtype).min)[:, None]
        out = self.model(
            input_ids=tokens,
            attention_mask=mask.to(self.device),  # [B, 1, n, L+n] additive
            position_ids=positions.to(self.device),
            cache=self.cache,
            use_cache=True,
            return_dict=True,
            **({"logits_to_keep": n} if self.keep_kwarg else {}),
        )
        self.forward_passes += 1
        self.input_slots += tokens.numel()
        return out.logits[:, -n:].float()

    def keep_marked(self, first_slot: int, kept: torch.Tensor) -> None:
        """Roll back after a tree round: of the slots appended from `first_slot` on, row i keeps slot first_slot + j
        where `kept[i, j]` ([B, m] host bool); the others (and any after the m) become holes. Then the round ends,
        as in `keep`."""
        drop = torch.zeros(self.layout.real.shape, dtype=torch.bool)  # [B, L]
        drop[:, first_slot:] = True
        drop[:, first_slot : first_slot + kept.shape[1]] = ~kept.cpu().bool()
        self.layout.drop(drop)
        self.layout.settle()


class AppendLayout:
    """Slots stay where they were fed; holes stay holes. For models that see positions, not slot distances.

    real:        [B, L] host bool, the books: slot j of row i holds a real token.
    device_mask: [B, L] long on the model's device, the same as the attention mask of the cache.
    """

    def __init__(self, cache, device, real_first: bool = False):
        self.cache = cache
        self.device = device
        self.real_first = real_first  # recurrent layers: a row with tokens gets a chunk's real tokens first
        self.compactions = 0
        self.real = torch.zeros(0, 0, dtype=torch.bool)
        self.device_mask = torch.zeros(0, 0, dtype=torch.long, device=device)

    @property
    def num_slots(self) -> int:
        return self.real.shape[1]

    def start(self, batch_size: int) -> None:
        self.real = torch.zeros(batch_size, 0, dtype=torch.bool)
        self.device_mask = torch.zeros(batch_size, 0, dtype=torch.long, device=self.device)

    def counts(self) -> torch.Tensor:
        """[B] host long, real tokens per row."""
        return self.real.sum(dim=1)

    def feed_order(self, valid: torch.Tensor) -> torch.Tensor | None:
        """The order in which to feed a chunk's slots (None: as given). With `real_first`, rows with tokens cached
        get the chunk's real tokens first (its holes trail); an empty row gets its holes first (left padding)."""
        if not self.real_first:
            return None
        has_tokens = self.real.any(dim=1, keepdim=True)  # [B, 1]
        later = torch.where(has_tokens, ~valid, valid).long()  # [B, n] 1 = fed after the 0s
        order = later.argsort(dim=1, stable=True)  # [B, n]
        return None if bool((order == torch.arange(valid.shape[1])).all()) else order

    def append(self, valid: torch.Tensor, order: torch.Tensor | None) -> torch.Tensor:
        """Record a fed chunk (valid [B, n] host bool, in feeding order); returns the attention mask [B, L+n]."""
        self.real = torch.cat([self.real, valid], dim=1)
        self.device_mask = torch.cat([self.device_mask, valid.long().to(self.device)], dim=1)
        return self.device_mask

    def caller_view(self) -> torch.Tensor:
        """[B, L] host bool, `real` in the caller's slot order."""
        return self.real

    def drop(self, caller_slots: torch.Tensor) -> None:
        """Slots marked in `caller_slots` [B, L] (host bool, the caller's order) become holes."""
        self.real = self.real & ~caller_slots
        self.device_mask = self.real.long().to(self.device)

    def end(self) -> int:
        """1 + the last slot that is real in some row (0: none)."""
        columns = self.real.any(dim=0).nonzero()
        return int(columns[-1]) + 1 if len(columns) else 0

    def settle(self) -> None:
        """The round's end: crop trailing slots that are holes in every row."""
        end = self.end()
        remove = self.num_slots - end
        if remove > 0:
            crop_slots(self.cache, remove)
            self.real, self.device_mask = self.real[:, :end], self.device_mask[:, :end]

    def select_rows(self, rows: torch.Tensor, rows_host: list[int]) -> None:
        """Keep rows `rows` (on the device) = `rows_host`."""
        self.real = self.real[rows_host]
        self.device_mask = self.device_mask[rows]


class CompactLayout(AppendLayout):
    """Each row's real tokens contiguous and right-aligned between rounds (see the module docstring).

    logical: [B, L] host long, the caller's index of each slot (slots move within a round; after `settle` the
             caller's order and the cache's are the same again).
    """

    def __init__(self, cache, device, real_first: bool = False):
        super().__init__(cache, device, real_first=True)
        self.logical = torch.zeros(0, 0, dtype=torch.long)
        if hasattr(cache, "activate_past_recording"):
            cache.activate_past_recording()  # sliding layers keep a round's states until settle() trims them

    def start(self, batch_size: int) -> None:
        if batch_size > 1:
            check_movable(self.cache)
        super().start(batch_size)
        self.logical = torch.zeros(batch_size, 0, dtype=torch.long)

    def feed_order(self, valid: torch.Tensor) -> torch.Tensor | None:
        """Rows with tokens cached get the chunk's real tokens first (its holes trail, to be moved before the next
        forward); an empty row gets its holes first (they look like left padding)."""
        if not self._aligned(self.num_slots):
            self._compact()
        return super().feed_order(valid)

    def append(self, valid: torch.Tensor, order: torch.Tensor | None) -> torch.Tensor:
        L, n = self.num_slots, valid.shape[1]
        fed = torch.arange(L, L + n).expand(valid.shape[0], n)  # [B, n] the caller's indices of the new slots
        self.logical = torch.cat([self.logical, fed if order is None else fed.gather(1, order)], dim=1)
        return super().append(valid, order)

    def caller_view(self) -> torch.Tensor:
        return torch.zeros_like(self.real).scatter(1, self.logical, self.real)

    def drop(self, caller_slots: torch.Tensor) -> None:
        super().drop(caller_slots.gather(1, self.logical))

    def settle(self) -> None:
        """The round's end: rows right-aligned (moved only if they are not), leading and trailing all-hole slots
        cropped, sliding layers trimmed to their window, the caller's slot order = the cache's."""
        end = self.end()
        if not self._aligned(end):
            self._compact()
            end = self.num_slots
        longest = int(self.counts().max()) if len(self.real) else 0
        slice_slots(self.cache, self.num_slots, end - longest, end)
        self.real = self.real[:, end - longest : end]
        self.device_mask = self.device_mask[:, end - longest : end]
        self.logical = torch.arange(longest).expand(len(self.real), longest)

    def select_rows(self, rows: torch.Tensor, rows_host: list[int]) -> None:
        super().select_rows(rows, rows_host)
        self.logical = self.logical[rows_host]

    def _aligned(self, end: int) -> bool:
        """Every row's real tokens are contiguous and end at slot `end - 1` (or the row has none)."""
        tail = torch.arange(end)[None, :] >= end - self.counts()[:, None]  # [B, end]
        return bool((self.real[:, :end] == tail).all()) and not bool(self.real[:, end:].any())

    def _compact(self) -> None:
        """Right-align every row's real tokens (holes move left, in order), without changing L."""
        order = self.real.long().argsort(dim=1, stable=True)  # [B, L] holes first, then real tokens, in slot order
        permute_slots(self.cache, order.to(self.device), self.num_slots)
        self.real, self.logical = self.real.gather(1, order), self.logical.gather(1, order)
        self.device_mask = self.real.long().to(self.device)
        self.compactions += 1
