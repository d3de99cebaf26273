"""The state of one speculative generate() call, shared by the decoding loop and the drafters.

`DecodeContext` is fixed for the call (processors, sampling mode, id range); `DecodeState` is the live batch:
committed tokens on the device with a host mirror, each row's committed length, and which original row it is.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..glue.processors import BatchProcessors


@dataclass
class DecodeContext:
    """What every step of the call needs and nothing changes: processors, sampling mode, the shared id range."""

    processors: BatchProcessors
    do_sample: bool
    vocab_size: int  # V: both distributions live on ids [0, V) (the larger of the two models' vocabularies)
    device: torch.device  # where the target's inputs and logits live; verification runs there
    end: int  # every row stops at this committed length (prompt and padding included)
    block_verification: bool = False  # sampling: verify each block jointly (Sun et al. 2024) instead of token-wise


@dataclass
class DecodeState:
    """The live rows of the batch. Row i of every tensor is original batch row `rows[i]`.

    seq:      [B, S] committed tokens (`seq[i, :lengths[i]]`), then scratch where the round's proposals go.
    seq_host: [B, S] a CPU copy of the committed tokens, kept in step from the round's one host sync (drafters
              that search the context, as prompt lookup, read it without syncing the device).
    valid:    [B, S] 1 where a committed slot holds a real token (0 for left padding); `valid_host` its CPU copy.
    lengths:  host ints, committed length of each row (the last committed token is not yet in any cache).
    """

    seq: torch.Tensor
    seq_host: torch.Tensor
    valid: torch.Tensor
    valid_host: torch.Tensor
    lengths: list[int]
    rows: list[int]
    first_valid: list[int]  # index of each row's first real prompt token (P for a row that is all padding)
    stopped: list[bool] = field(default_factory=list)  # reached its stop; still here while it must run along

    def __post_init__(self):
        self.stopped = self.stopped or [False] * len(self.rows)

    @property
    def batch_size(self) -> int:
        return len(self.rows)

    def lengths_tensor(self) -> torch.Tensor:
        return torch.tensor(self.lengths, device=self.seq.device)  # [B]

    def write_ahead(self, tokens: torch.Tensor) -> None:
        """Write `tokens` [B, W] after each row's committed prefix (not committed until `advance`)."""
        C = self.lengths_tensor()  # [B]
        steps = torch.arange(tokens.shape[1], device=C.device)  # [W]
        self.seq.scatter_(1, C[:, None] + steps[None], tokens.to(self.seq.device))

    def advance(self, tokens: torch.Tensor, committed: list[int], stopped: list[bool]) -> None:
        """Commit the first `committed[i]` of `tokens` [B, W] (CPU, as written ahead): the host mirror and the
        lengths move on; rows that `stopped` are marked."""
        C = torch.tensor(self.lengths)[:, None] + torch.arange(tokens.shape[1])[None]  # [B, W] host positions
        keep = torch.arange(tokens.shape[1])[None] < torch.tensor(committed)[:, None]  # [B, W]
        self.seq_host.scatter_(1, C, torch.where(keep, tokens, self.seq_host.gather(1, C)))
        self.lengths = [n + c for n, c in zip(self.lengths, committed)]
        self.stopped = [s or now for s, now in zip(self.stopped, stopped)]

    def reserve(self, width: int, pad: int) -> None:
        """At least `width` columns (committed tokens, then a round's scratch), growing by doubling (new columns:
        `pad`, valid): the books follow what the call generated, never what max_new_tokens would allow."""
        B, S = self.seq.shape
        if width <= S:
            return
        more = max(width, 2 * S) - S
        self.seq = torch.cat([self.seq, self.seq.new_full((B, more), pad)], dim=1)
        self.valid = torch.cat([self.valid, self.valid.new_ones((B, more))], dim=1)
        self.seq_host = torch.cat([self.seq_host, self.seq_host.new_full((B, more), pad)], dim=1)
        self.valid_host = torch.cat([self.valid_host, self.valid_host.new_ones((B, more))], dim=1)

    def select(self, alive: list[int]) -> None:
        """Keep only the rows at positions `alive` (finished rows leave the batch)."""
        idx = torch.tensor(alive, dtype=torch.long, device=self.seq.device)
        host_idx = torch.tensor(alive, dtype=torch.long)
        self.seq, self.valid = self.seq[idx], self.valid[idx]
        self.seq_host, self.valid_host = self.seq_host[host_idx], self.valid_host[host_idx]
        for name in ("lengths", "rows", "first_valid", "stopped"):
            setattr(self, name, [getattr(self, name)[i] for i in alive])
