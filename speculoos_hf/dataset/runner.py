"""One batch through generate(): left-padded prompts in, one output record per prompt out."""

from __future__ import annotations

import time

import torch

from ..glue.generation import speculative_generate
from ..glue.placement import input_device
from .ends import RowEnds
from .inputs import InputRecord


class BatchRunner:
    """Generates batches for a job with the target alone (plain generate()) or through speculoos (a draft model,
    prompt lookup or a suffix cache, as the job asks)."""
    def __init__(self, target, draft, tokenizer, job, suffix_cache=None):
        self.target, self.draft, self.tokenizer = target, draft, tokenizer
        self.max_new_tokens = job.max_new_tokens
        self.options = job.record_options()  # written in every record
        self.pad_id = _pad_id(tokenizer)
        self.generate_kwargs = job.generate_kwargs(tokenizer, self.pad_id)
        self.ends = RowEnds.build(tokenizer, _eos_ids(target, self.generate_kwargs), job.stop_strings)
        self.speculative_kwargs = job.speculative_kwargs(suffix_cache) if job.speculative(draft) else None

    def run(self, batch: list[InputRecord], seed: int) -> list[dict]:
        """One record per item of `batch`, generated with `seed` (raises where the batch as a whole fails)."""
        ids, mask = _pad_left(batch, self.pad_id, input_device(self.target))  # [B, T], [B, T]
        torch.manual_seed(seed)
        started = time.perf_counter()
        sequences, per_row = self._generate(ids, mask)
        seconds = (time.perf_counter() - started) / len(batch)
        new = sequences[:, ids.shape[1] :]  # [B, N]
        stops = self.ends.first_stops(ids, new)  # [B]
        new, stops = new.tolist(), stops.tolist()  # the host copies of the batch
        return [self._record(item, new[r], stops[r], None if per_row is None else per_row[r], seconds)
                for r, item in enumerate(batch)]

    def _generate(self, ids, mask):
        """(sequences [B, T + new], per-row stats or None)."""
        if self.speculative_kwargs is None:
            out = self.target.generate(ids, attention_mask=mask, **self.generate_kwargs)
            return getattr(out, "sequences", out), None

        out = speculative_generate(self.target, ids, attention_mask=mask, draft_model=self.draft,
                                   **self.speculative_kwargs, **self.generate_kwargs)
        return getattr(out, "sequences", out), self.target.speculative_stats.per_row

    def _record(self, item: InputRecord, tokens: list[int], stop: int, row, seconds: float) -> dict:
        """The record of one row; `stop` counts its tokens up to its first EOS or stop string (more: none). Plain
        generate() pads (or goes on generating for) a row that has stopped; speculoos reports the row's length."""
        n = row.new_tokens if row is not None else min(stop, len(tokens))
        rec = {
            "id": item.id,
            "index": item.index,
            "prompt": item.prompt,
            "completion": self.tokenizer.decode(tokens[:n], skip_special_tokens=True),
            "finish_reason": "stop" if stop <= n or n < self.max_new_tokens else "length",
            "prompt_tokens": len(item.input_ids),
            "new_tokens": n,
        }
        if row is not None:
            rec.update(
                draft_tokens_proposed=row.draft_tokens_proposed,
                draft_tokens_accepted=row.draft_tokens_accepted,
                acceptance_rate=row.acceptance_rate if row.draft_tokens_proposed else None,
                target_passes=row.target_forward_passes,
            )
        rec.update(seconds=seconds, options=self.options)
        return rec

    def error_record(self, item: InputRecord, error: str | None = None) -> dict:
        """The record of an input that cannot be generated (its own error, or `error`)."""
        return {**item.error_record(error), "options": self.options}


def _pad_left(batch: list[InputRecord], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded ids and attention mask, both [B, T]."""
    width = max(len(it.input_ids) for it in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    mask = torch.zeros(len(batch), width, dtype=torch.long)
    for r, it in enumerate(batch):
        n = len(it.input_ids)
        ids[r, width - n :] = torch.tensor(it.input_ids, dtype=torch.long)
        mask[r, width - n :] = 1
    return ids.to(device), mask.to(device)


def _pad_id(tokenizer) -> int:
    if tokenizer.pad_token_id is not None:
        return tokenizer.pad_token_id
    return tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0


def _eos_ids(target, generate_kwargs: dict) -> set[int]:
    """The EOS ids generate() stops on: the call's, else the target's generation config's (none: rows run on)."""
    eos = generate_kwargs.get("eos_token_id", target.generation_config.eos_token_id)
    if eos is None:
        return set()
    return {int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos])}
