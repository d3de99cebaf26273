"""A model plus its KV cache, kept for the whole generation, with per-row "holes".

Rows of a batch accept different numbers of drafts per round. Rather than re-feeding tokens, a rejected draft's
key/value slot stays in the cache as a hole: its attention-mask entry is 0 and positions are given explicitly
(each row counts only its valid slots), so no token is ever computed twice. Trailing slots that are holes in every
row are cropped off after each round, so with batch size 1 there are never holes at all. Holes and the left
padding of the prompt are the same thing to the model: masked slots with explicit `position_ids`. This matches a
clean run with both sdpa and eager attention and holds for absolute (GPT-2) and rotary positions alike.
"""

from __future__ import annotations

import torch
from transformers import DynamicCache

from .placement import input_device


class KVSlots:
    """Runs one model over a growing, croppable cache. Tensors live on the model's device.

    slot_mask: [B, L] 1 where a cache slot holds a real token of that row, 0 for padding and holes.
    next_pos:  [B]    position of the row's next token (= number of valid slots).
    last_valid: B host ints, index of each row's last valid slot (for cropping without a sync).
    """

    def __init__(self, model, cache=None):
        self.model = model
        self.device = input_device(model)
        self.cache = cache if cache is not None else DynamicCache(config=model.config)
        embeddings = model.get_input_embeddings()
        self.max_id = getattr(embeddings, "num_embeddings", None)
        supports_keep = getattr(model, "_supports_logits_to_keep", None)
        self.keep_kwarg = bool(supports_keep()) if callable(supports_keep) else False
        self.slot_mask: torch.Tensor | None = None
        self.next_pos: torch.Tensor | None = None
        self.last_valid: list[int] = []
        self.forward_passes = 0
        self.input_slots = 0  # total slots fed, i.e. tokens computed (the proof that nothing is recomputed)

    @property
    def num_slots(self) -> int:
        return 0 if self.slot_mask is None else self.slot_mask.shape[1]

    def start(self, batch_size: int) -> None:
        self.slot_mask = torch.zeros(batch_size, 0, dtype=torch.long, device=self.device)
        self.next_pos = torch.zeros(batch_size, dtype=torch.long, device=self.device)
        self.last_valid = [-1] * batch_size

    def forward(self, tokens: torch.Tensor, valid: torch.Tensor, logits_to_keep: int) -> torch.Tensor:
        """Feed `tokens` [B, n] (valid [B, n] in {0,1}) and append their slots. Returns logits [B, keep, V] (float32)."""
        tokens = tokens.to(self.device)
        if self.max_id is not None:
            # An id only the other model has (padded vocabularies) is fed as a stand-in: the target always rejects
            # such a draft (p = 0) so its slot becomes a hole; for the draft it can cost acceptance, never exactness.
            tokens = tokens.clamp(max=self.max_id - 1)
        valid = valid.to(self.device, torch.long)
        position_ids = self.next_pos[:, None] + valid.cumsum(dim=1) - 1  # [B, n]
        position_ids = position_ids.clamp(min=0)
        attention_mask = torch.cat([self.slot_mask, valid], dim=1)  # [B, L+n]
        out = self.model(
            input_ids=tokens,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=self.cache,
            use_cache=True,
            return_dict=True,
            **({"logits_to_keep": logits_to_keep} if self.keep_kwarg else {}),
        )
        self.slot_mask = attention_mask
        self.next_pos = self.next_pos + valid.sum(dim=1)
        self.forward_passes += 1
        self.input_slots += tokens.numel()
        return out.logits[:, -logits_to_keep:].float()

    def invalidate_tail(self, first_slot: int, valid: torch.Tensor) -> None:
        """Overwrite the validity of slots [first_slot, first_slot + n) with `valid` [B, n] (rejected drafts -> holes)."""
        valid = valid.to(self.device, torch.long)
        n = valid.shape[1]
        before = self.slot_mask[:, first_slot : first_slot + n].sum(dim=1)
        self.slot_mask = torch.cat(
            [self.slot_mask[:, :first_slot], valid, self.slot_mask[:, first_slot + n :]], dim=1
        )
        self.next_pos = self.next_pos - before + valid.sum(dim=1)

    def keep(self, first_slot: int, valid: torch.Tensor, last_valid: list[int]) -> None:
        """Roll back after a round: of the slots appended from `first_slot`, keep those marked in `valid` [B, n]
        (the rest become holes), record each row's last valid slot (host ints) and crop trailing holes."""
        if valid.shape[1]:
            self.invalidate_tail(first_slot, valid)
        self.last_valid = list(last_valid)
        self.crop_to_last_valid()

    def crop_to_last_valid(self) -> None:
        """Drop trailing slots that are holes in every row (host-known, so no sync)."""
        keep = max(self.last_valid) + 1 if self.last_valid else 0
        remove = self.num_slots - keep
        if remove > 0:
            self.cache.crop(-remove)
            self.slot_mask = self.slot_mask[:, :keep]

    def select_rows(self, rows: torch.Tensor, rows_host: list[int]) -> None:
        """Keep only `rows` of the batch (finished rows leave, so they cost no more compute)."""
        rows = rows.to(self.device)
        self.cache.batch_select_indices(rows)
        self.slot_mask = self.slot_mask[rows]
        self.next_pos = self.next_pos[rows]
        self.last_valid = [self.last_valid[r] for r in rows_host]
        self.crop_to_last_valid()
