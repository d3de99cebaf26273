"""The state of one speculative generate() call, shared by the decoding loop and the drafters.

`DecodeContext` is fixed for the call (processors, sampling mode, id range); `DecodeState` is the live batch:
committed tokens on the device with a host mirror, each row's committed length, and which original row it is.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .processors import BatchProcessors


@dataclass
class DecodeContext:
    """What every step of the call needs and nothing changes: processors, sampling mode, the shared id range."""

    processors: BatchProcessors
    do_sample: bool
    vocab_size: int  # V: both distributions live on ids [0, V) (the larger of the two models' vocabularies)
    device: torch.device  # where the target's inputs and logits live; verification runs there
    end: int  # every row stops at this committed length (prompt and padding included)


@dataclass
class DecodeState:
    """The live rows of the batch. Row i of every tensor is original batch row `rows[i]`.

    seq:      [B, S] committed tokens (`seq[i, :lengths[i]]`), then scratch where the round's proposals go.
    seq_host: [B, S] a CPU copy of the committed tokens, kept in step from the round's one host sync (drafters
              that search the context, as prompt lookup, read it without syncing the device).
    valid:    [B, S] 1 where a committed slot holds a real token (0 for left padding).
    lengths:  host ints, committed length of each row (the last committed token is not yet in any cache).
    """

    seq: torch.Tensor
    seq_host: torch.Tensor
    valid: torch.Tensor
    lengths: list[int]
    rows: list[int]
    finished: list[bool] = field(default_factory=list)  # stopped, kept in the batch only while lockstep needs it

    @property
    def batch_size(self) -> int:
        return len(self.rows)

    def lengths_tensor(self) -> torch.Tensor:
        return torch.tensor(self.lengths, device=self.seq.device)  # [B]

    def select(self, alive: list[int]) -> None:
        """Keep only the rows at positions `alive` (finished rows leave the batch)."""
        idx = torch.tensor(alive, device=self.seq.device)
        self.seq, self.valid = self.seq[idx], self.valid[idx]
        self.seq_host = self.seq_host[torch.tensor(alive)]
        self.lengths = [self.lengths[i] for i in alive]
        self.rows = [self.rows[i] for i in alive]
        self.finished = [self.finished[i] for i in alive]
