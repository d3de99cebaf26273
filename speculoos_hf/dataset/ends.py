"""Where each generated row ends: its first EOS or completed stop string, found on the whole batch at once.

Plain generate() pads a row that has stopped (with an EOS id set) or goes on generating (without one) until the
batch ends; speculoos reports each row's length. A record counts the row's own tokens, up to and including its
stop, either way."""

from __future__ import annotations

import torch

NO_TOKEN = torch.iinfo(torch.long).max  # StopStringCriteria maps ids past its vocabulary to a token matching nothing


class RowEnds:
    """The stop rule of a job's generate() calls: EOS ids and stop strings, as stock generate() applies them."""

    def __init__(self, eos_ids: set[int], stop_criteria=None):
        self.eos_ids = sorted(eos_ids)
        self.stop_criteria = stop_criteria  # transformers' StopStringCriteria, or None

    @classmethod
    def build(cls, tokenizer, eos_ids: set[int], stop_strings) -> RowEnds:
        if not stop_strings:
            return cls(eos_ids)
        from transformers.generation.stopping_criteria import StopStringCriteria

        return cls(eos_ids, StopStringCriteria(tokenizer, list(stop_strings)))

    def first_stops(self, ids: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
        """Per row of `new` [B, N] (generated after `ids` [B, T]), the count of new tokens up to and including its
        first EOS or completed stop string; N + 1 where the row has none. Returns [B] long."""
        n = new.shape[1]
        ends = torch.zeros_like(new, dtype=torch.bool)  # [B, N]
        if self.eos_ids:
            ends |= torch.isin(new, torch.tensor(self.eos_ids, device=new.device))
        if self.stop_criteria is not None and n:
            ends |= self._stop_string_ends(ids, new)
        first = ends.int().argmax(dim=1) + 1  # [B]: argmax gives the first of equal maxima
        return torch.where(ends.any(dim=1), first, n + 1)  # [B]

    def _stop_string_ends(self, ids: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
        """[B, N] bool: the sequence up to this new token ends with a stop string (every prefix scored at once)."""
        width, n = self.stop_criteria.maximum_token_len, new.shape[1]
        full = torch.cat([ids, new], dim=1)  # [B, T + N]
        if full.shape[1] < width + n - 1:  # short prompts: pad with an id past the vocabulary, which matches nothing
            full = torch.cat([full.new_full((full.shape[0], width + n - 1 - full.shape[1]), NO_TOKEN), full], dim=1)
        windows = full[:, -(width + n - 1):].unfold(1, width, 1)  # [B, N, W]: the W tokens up to each new token
        return self.stop_criteria(windows.reshape(-1, width), None).reshape(new.shape)  # [B, N]
