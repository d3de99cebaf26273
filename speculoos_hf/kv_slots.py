"""A model plus its KV cache, kept for the whole generation, with per-row "holes".

Rows of a batch accept different numbers of drafts per round. Rather than re-feeding tokens, a rejected draft's
key/value slot stays in the cache as a hole: its attention-mask entry is 0 and positions are given explicitly
(each row counts only its valid slots), so no token is ever computed twice. Trailing slots that are holes in every
row are cropped off after each round, so with batch size 1 there are never holes at all. Holes and the left
padding of the prompt are the same thing to the model: masked slots with explicit `position_ids`. This matches a
clean run with both sdpa and eager attention and holds for absolute (GPT-2) and rotary positions alike, and for
ALiBi built from the attention mask's cumsum (Bloom, Falcon).

Models that count slots instead of positions ("compact" mode)
----------------------------------------------------------------
Sliding-window and chunked attention (Mistral, Mixtral, Qwen2/3 with their window on, Gemma 2/3, Phi-3,
Starcoder2, Cohere2, OLMo 3, ...) keep the last `window` *slots*, and MPT's ALiBi and GPT-Neo's local attention
measure slot distances: a hole in the middle of a row would shorten its window or stretch its distances, and
the output would silently differ from the target alone (or transformers' sliding cache would crash). For these
models (`cache_layout.slot_distance_reason`) KVSlots keeps every row's real tokens *contiguous and right-aligned*:
after each round (`keep`) a row that rejected drafts has its slots moved right by a per-row gather on every
layer's keys/values, so its holes end up on the left, where they look exactly like left padding. Then slot
distance equals position distance for every real token, as in the stock batched generate(), and the sliding
layers see what stock sees. Leading columns that are holes in every row are cropped too, so the cache is never
longer than the longest row. Sliding layers keep their past recorded during a round (transformers'
`activate_past_recording`, which its assisted generation uses to roll sliding layers back) and are trimmed back
to `window - 1` slots after each round, as transformers' own crop does.

A chunk fed with holes inside a row (say a draft fed [d_k, x0] where d_k was rejected in that row) is fed with the
row's real tokens first, in order, and its holes last (positions are explicit, so only slot order changes); the
logits come back in the caller's order and the slots are compacted before the next forward. Slot indices given to
`keep` are the caller's ("logical") indices; KVSlots maps them to where the slots now are.

Why compaction rather than the alternatives:
  - Lockstep (crop every row to the shortest acceptance, re-feed the others' accepted tokens next round)
    recomputes up to K tokens per row per round in both models; with partial acceptance that is nearly every
    round, and on a compute-bound device (CPU, float32: 2+ tokens cost about twice 1) it is close to an extra
    forward per round. It would also change the loop, which compaction does not.
  - Per-layer-type 4D masks (window counted in positions) would leave MPT's ALiBi and GPT-Neo's local buffer wrong,
    work only for models that accept mask dicts, and need full-length sliding layers (O(L) memory and attention).
  - Compaction moves bytes instead: one index_select per layer (as fast as a copy; torch.gather with an expanded
    index was ~50x slower on CPU) when rows accepted different counts, for the models above only. Sliding layers hold
    window - 1 + K slots, so for them the cost does not grow with the length; full layers next to them (Gemma 2/3)
    and MPT/GPT-Neo move their whole cache.
Measured (2 shared CPU cores, float32, Mistral-shaped target and perturbed-copy draft, 4 layers, hidden 256, batch 4,
prompt 64 + 192 new tokens, K = 4): window 32, 233 compactions (target and draft) took 3.6% of the generation;
compaction forced on full-attention layers (the MPT / GPT-Neo / Gemma full-layer case, up to 260 slots), 3.5%.
One gather of a 4-layer hidden-512 batch-4 cache: 0.7 ms with window 64 against ~95 ms for the 4-token verify
forward over it; 17 ms for a 512-slot full cache (~15% of that forward), 115 ms at 2048 slots (~45%).
With batch size 1, or when every row accepted the same number of drafts, nothing moves (a plain crop).

Host syncs: a `valid` tensor passed to `forward` in compact mode is read on the host, so pass a CPU tensor (free)
or `valid=None` when every token is real; `keep` in compact mode reads one int (the longest row) when it compacts,
and `select_rows` when rows leave.
"""

from __future__ import annotations

import torch
from transformers import DynamicCache

from .cache_layout import check_movable, permute_slots, slice_slots, slot_distance_reason
from .placement import input_device


class KVSlots:
    """Runs one model over a growing, croppable cache. Tensors live on the model's device.

    slot_mask: [B, L] 1 where a cache slot holds a real token of that row, 0 for padding and holes.
    next_pos:  [B]    position of the row's next token (= number of valid slots).
    last_valid: B host ints, index of each row's last valid slot (for cropping without a sync); -1 for an empty row.
    compact:   True for models that see slot distances (see the module docstring); None = decide from the model.
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
        self.compact = bool(self.compact_reason) if compact is None else bool(compact)
        if self.compact and hasattr(self.cache, "activate_past_recording"):
            # sliding layers keep everything fed until we trim them in keep() (we may have to roll a round back)
            self.cache.activate_past_recording()
        self.slot_mask: torch.Tensor | None = None
        self.next_pos: torch.Tensor | None = None
        self.last_valid: list[int] = []
        self.forward_passes = 0
        self.input_slots = 0  # total slots fed, i.e. tokens computed (the proof that nothing is recomputed)
        self.compactions = 0  # per-row gathers of the whole cache (compact mode only)
        # compact mode: logical (caller's) slot index of each physical slot, and the layout's state since last keep
        self._logical: torch.Tensor | None = None
        self._nonempty: list[bool] = []  # host: row has at least one real token in the cache
        self._dirty = False  # some row has holes after its last real token (compact before the next forward)
        self._moved = False  # slots were reordered since the last keep (logical != physical)

    @property
    def num_slots(self) -> int:
        return 0 if self.slot_mask is None else self.slot_mask.shape[1]

    def start(self, batch_size: int) -> None:
        if self.compact and batch_size > 1:
            check_movable(self.cache)
        self.slot_mask = torch.zeros(batch_size, 0, dtype=torch.long, device=self.device)
        self.next_pos = torch.zeros(batch_size, dtype=torch.long, device=self.device)
        self.position_offset = torch.zeros(batch_size, dtype=torch.long, device=self.device)  # see skip_position
        self.last_valid = [-1] * batch_size
        self._logical = torch.zeros(batch_size, 0, dtype=torch.long, device=self.device)
        self._nonempty = [False] * batch_size
        self._dirty = self._moved = False

    def forward(self, tokens: torch.Tensor, valid: torch.Tensor | None, logits_to_keep: int) -> torch.Tensor:
        """Feed `tokens` [B, n] (valid [B, n] in {0,1}, None = all real) and append their slots.
        Returns logits [B, keep, V] (float32) for the last `logits_to_keep` of the fed tokens, in the caller's order."""
        tokens = tokens.to(self.device)
        B, n = tokens.shape
        if self.max_id is not None:
            # An id only the other model has (padded vocabularies) is fed as a stand-in: the target always rejects
            # such a draft (p = 0) so its slot becomes a hole; for the draft it can cost acceptance, never exactness.
            tokens = tokens.clamp(max=self.max_id - 1)
        if valid is None:
            valid = torch.ones(B, n, dtype=torch.long, device=self.device)
            valid_host = None
        else:
            valid_host = valid.tolist() if self.compact else None  # (a host tensor, as the loop's, costs no sync)
            valid = valid.to(self.device, torch.long)
        order = None
        if self.compact:
            if self._dirty:
                self._compact_rows()
            order = self._chunk_order(valid_host, n)
            if order is not None:
                tokens, valid = tokens.gather(1, order), valid.gather(1, order)
        position_ids = self.next_pos[:, None] + valid.cumsum(dim=1) - 1  # [B, n]
        position_ids = position_ids.clamp(min=0) + self.position_offset[:, None] * valid  # offset real tokens only
        attention_mask = torch.cat([self.slot_mask, valid], dim=1)  # [B, L+n]
        keep = n if order is not None else logits_to_keep
        out = self.model(
            input_ids=tokens,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=self.cache,
            use_cache=True,
            return_dict=True,
            **({"logits_to_keep": keep} if self.keep_kwarg else {}),
        )
        logits = out.logits
        if order is not None:  # back to the caller's order
            inverse = order.argsort(dim=1)[:, :, None].expand(-1, -1, logits.shape[-1])
            logits = logits[:, -n:].gather(1, inverse)
        if self.compact:
            fed = torch.arange(self.num_slots, self.num_slots + n, device=self.device).expand(B, n)
            self._logical = torch.cat([self._logical, fed if order is None else fed.gather(1, order)], dim=1)
        self.slot_mask = attention_mask
        self.next_pos = self.next_pos + valid.sum(dim=1)
        self.forward_passes += 1
        self.input_slots += tokens.numel()
        return logits[:, -logits_to_keep:].float()

    def _chunk_order(self, valid_host, n: int) -> torch.Tensor | None:
        """Compact mode: the slot order in which to feed a chunk so that each row's real tokens stay contiguous
        (None: as given). A row with tokens already cached gets its chunk's real tokens first (holes trail, to be
        compacted before the next forward); an empty row gets its holes first (they look like left padding)."""
        B = len(self._nonempty)
        if valid_host is None or all(map(all, valid_host)):
            self._nonempty = [True] * B
            return None
        rows, changed = [], False
        for b, v in enumerate(valid_host):
            has = any(v)
            if self._nonempty[b]:
                row = [j for j in range(n) if v[j]] + [j for j in range(n) if not v[j]]
                if not all(v):
                    self._dirty = True  # holes now trail this row's last real token
            else:
                row = [j for j in range(n) if not v[j]] + [j for j in range(n) if v[j]]
            changed |= row != list(range(n))
            rows.append(row)
            self._nonempty[b] = self._nonempty[b] or has
        if not changed:
            return None
        self._moved = True
        return torch.tensor(rows, dtype=torch.long, device=self.device)

    def _compact_rows(self) -> None:
        """Compact mode: right-align every row's real tokens (holes move left, in order), without changing L."""
        order = self.slot_mask.argsort(dim=1, stable=True)  # holes first, then real tokens, each in slot order
        permute_slots(self.cache, order, self.num_slots)
        self.slot_mask = self.slot_mask.gather(1, order)
        self._logical = self._logical.gather(1, order)
        self.compactions += 1
        self._dirty = False
        self._moved = True

    def caller_slot_mask(self) -> torch.Tensor:
        """[B, L] the slot mask in the caller's slot order (compact mode may move slots within a round; between
        rounds, after `keep`/`select_rows`, both orders are the same)."""
        if not self.compact or self._logical is None or self._logical.shape != self.slot_mask.shape:
            return self.slot_mask
        return torch.zeros_like(self.slot_mask).scatter(1, self._logical, self.slot_mask)

    def invalidate_tail(self, first_slot: int, valid: torch.Tensor) -> None:
        """Overwrite the validity of slots [first_slot, first_slot + n) with `valid` [B, n] (rejected drafts -> holes).
        Slots are the caller's indices; a slot fed as a hole stays one."""
        valid = valid.to(self.device, torch.long)
        n = valid.shape[1]
        if self.compact:
            rel = self._logical - first_slot  # [B, L] where each logical slot now is
            inside = (rel >= 0) & (rel < n)
            kept = valid.gather(1, rel.clamp(0, max(n - 1, 0)))
            self.slot_mask = torch.where(inside, self.slot_mask * kept, self.slot_mask)
            self.next_pos = self.slot_mask.sum(dim=1)
            return
        before = self.slot_mask[:, first_slot : first_slot + n].sum(dim=1)
        self.slot_mask = torch.cat(
            [self.slot_mask[:, :first_slot], valid, self.slot_mask[:, first_slot + n :]], dim=1
        )
        self.next_pos = self.next_pos - before + valid.sum(dim=1)

    def skip_position(self, rows: torch.Tensor) -> None:
        """Rows [B] (0/1) whose prompt is all padding: stock numbers their new tokens from 1, not 0."""
        self.position_offset = self.position_offset + rows.to(self.device, torch.long)

    def keep(self, first_slot: int, valid: torch.Tensor, last_valid: list[int]) -> None:
        """Roll back after a round: of the slots appended from `first_slot`, keep those marked in `valid` [B, n]
        (the rest become holes), record each row's last valid slot (host ints) and crop trailing holes.
        In each row, the slots dropped must be the row's last real tokens (rejections are suffixes): compact mode
        relies on it to know, from `last_valid` alone, when the rows stay right-aligned.
        Slot indices are only meaningful until the next keep/select_rows: read `num_slots` afresh each round."""
        if valid.shape[1]:
            self.invalidate_tail(first_slot, valid)
        self.last_valid = list(last_valid)
        self.crop_to_last_valid()

    def crop_to_last_valid(self) -> None:
        """Drop trailing slots that are holes in every row (host-known, so no sync). In compact mode, also
        right-align the rows (holes to the left) and drop leading all-hole slots: the round's end."""
        if self.compact:
            self._finish_round()
            return
        keep = max(self.last_valid) + 1 if self.last_valid else 0
        remove = self.num_slots - keep
        if remove > 0:
            self.cache.crop(-remove)
            self.slot_mask = self.slot_mask[:, :keep]

    def _finish_round(self, crop_leading: bool = False) -> None:
        """Compact mode: canonical layout (each row's real tokens contiguous, ending at the last slot), sliding
        layers trimmed to their window, logical slot indices = physical ones again."""
        L = self.num_slots
        nonempty = [lv >= 0 for lv in self.last_valid]
        ends = {lv for lv in self.last_valid if lv >= 0}
        if not self._moved and not self._dirty and len(ends) <= 1:
            # rows agree on their last slot and nothing was reordered: trailing crop only (batch size 1 always)
            end = (max(ends) + 1) if ends else 0
            new_len = int(self.slot_mask.sum(dim=1).max()) if crop_leading and end else end  # (one host sync)
            slice_slots(self.cache, L, end - new_len, end)
            self.slot_mask = self.slot_mask[:, end - new_len : end]
        else:
            self._compact_rows()
            new_len = int(self.slot_mask.sum(dim=1).max()) if L else 0  # the longest row (one host sync)
            slice_slots(self.cache, L, L - new_len, L)
            self.slot_mask = self.slot_mask[:, L - new_len :]
        self._logical = torch.arange(new_len, device=self.device).expand(len(nonempty), new_len)
        self.last_valid = [new_len - 1 if ne else -1 for ne in nonempty]
        self._nonempty = nonempty
        self._dirty = self._moved = False

    def select_rows(self, rows: torch.Tensor, rows_host: list[int]) -> None:
        """Keep only `rows` of the batch (finished rows leave, so they cost no more compute)."""
        rows = rows.to(self.device)
        self.cache.batch_select_indices(rows)
        self.slot_mask = self.slot_mask[rows]
        self.next_pos = self.next_pos[rows]
        self.position_offset = self.position_offset[rows]
        self.last_valid = [self.last_valid[r] for r in rows_host]
        if self.compact:
            self._logical = self._logical[rows]
            self._nonempty = [self._nonempty[r] for r in rows_host]
            self._finish_round(crop_leading=True)  # the longest row may have left: crop leading all-hole slots
            return
        self.crop_to_last_valid()
