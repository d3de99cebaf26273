"""Per-row rollback of recurrent state (SSM, gated delta-net, short convolutions) in a transformers cache.

Recurrent layers (`LinearAttentionCacheLayerMixin`: Mamba, Mamba-2 beside attention, gated delta-net, LFM2's short
convolutions) keep a fixed-size state that every fed input moves, masked or not (a masked input is zeroed, and a
zero input still decays the state and shifts the convolution window). So a hole cannot stand in for a rejected
draft as it does in attention layers. The invariant, kept by `KVSlots` with this class:

    each row's recurrent layers have seen exactly that row's real tokens, in order.

How: within a fed chunk, each row's real tokens form one contiguous block: first when the row already has tokens
(its holes trail, and trailing inputs never reach earlier outputs), last when it has none (leading holes look like
left padding, which is exact: a zero input leaves a zero state at zero). transformers records, per layer, the state
before the forward and after each fed token (`activate_past_recording(recurrent_states_to_keep=n)`), and lets the
convolution window grow by the fed inputs. After each forward this class sets every row's state to the one after
its own last real token, and keeps a per-row tape of the states after each real token since the last rollback point;
`settle(dropped)` rolls row i back by `dropped[i]` real tokens from that tape. No second forward, for any row.

transformers' own `crop(-n)` applies one n to the whole batch and keeps one history per layer; the tape here is per
row. The layer's cache objects are used as transformers means them: recording is switched on through its API, and
only the tensors it exposes (`conv_states`, `recurrent_states`) are read and set.

Memory: a forward over n tokens records n + 1 states per recurrent layer (transformers' recording); the tape holds
at most the states since the last rollback point (one round).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers.cache_utils import DynamicLayer, LinearAttentionCacheLayerMixin

# A forward over an empty cache (a prefill) longer than this records no intermediate states: its tokens are
# committed ones, never rolled back; shorter ones record all (a first round may verify drafts with no prefill).
UNRECORDED_PREFILL = 64
# The deepest rollback: a round verifies at most this many drafts on a recurrent model (the loop caps k), and the
# tape keeps at most this many latest states per row (a long catch-up chunk's early states are never needed).
MAX_ROLLBACK = 32


def recurrent_layers(cache) -> list:
    """The layers of `cache` that hold recurrent or convolution state."""
    return [layer for layer in getattr(cache, "layers", ()) if isinstance(layer, LinearAttentionCacheLayerMixin)]


def has_attention(cache) -> bool:
    """Whether some layer of `cache` stores keys/values (pure Mamba-like models have none)."""
    layers = getattr(cache, "layers", ())
    return any(not isinstance(layer, LinearAttentionCacheLayerMixin) or isinstance(layer, DynamicLayer)
               for layer in layers) or not layers


class StateTape:
    """One state of one layer (a convolution window and/or a recurrent state), per row, since the last rollback point.

    rec:  [B, T+1, *S] recurrent states after 0..T real tokens (row i valid up to counts[i]), or None (conv only).
    conv: [B, C, K+T] the window at the rollback point then each row's real inputs (row i valid up to K+counts[i]).
    """

    def __init__(self, layer, index: int):
        self.layer, self.index = layer, index
        self.kernel = layer.conv_kernel_size[index] if layer.is_conv_states_initialized[index] else None
        self.rec = None
        self.conv = None

    def record(self, blocks: "Blocks", continuing: bool) -> None:
        """Append each row's real tokens of the latest forward to the tape, then set the layer's state to the tape's
        last entry per row. `continuing`: the forward recorded every state (else it was an unrecorded prefill)."""
        layer, i = self.layer, self.index
        if layer.is_recurrent_states_initialized[i]:
            snaps = self._snapshots(blocks.n, continuing)  # [B, n+1, *S]
            self.rec = _append(self.rec, snaps, blocks, continuing)
            layer.recurrent_states[i] = _take(self.rec, blocks.counts)  # [B, *S]
        if self.kernel is not None:
            full = layer.conv_states[i]  # [B, C, W]: the window before the forward (W - n of it), then n inputs
            self.conv = _append_inputs(self.conv, full, self.kernel, blocks, continuing)
            layer.conv_states[i] = _window(self.conv, blocks.counts, self.kernel)  # [B, C, K]
        if not continuing:  # an unrecorded prefill: the tape restarts after it
            self._restart()

    def forget_before(self, shift: torch.Tensor, width: int) -> None:
        """Row i drops its first `shift[i]` entries (they can no longer be rolled back to); `width` entries stay."""
        if self.rec is not None:
            index = (shift[:, None] + torch.arange(width)[None, :]).clamp(max=self.rec.shape[1] - 1)  # [B, W]
            index = index.to(self.rec.device).view(*index.shape, *([1] * (self.rec.dim() - 2)))
            self.rec = self.rec.gather(1, index.expand(-1, -1, *self.rec.shape[2:]))
        if self.conv is not None:
            index = (shift[:, None] + torch.arange(self.kernel + width - 1)[None, :]).clamp(max=self.conv.shape[-1] - 1)
            self.conv = self.conv.gather(-1, index.to(self.conv.device)[:, None, :].expand(-1, self.conv.shape[1], -1))

    def roll_back(self, counts: torch.Tensor) -> None:
        """Set each row's state to the tape's entry after `counts[i]` real tokens; the tape restarts there."""
        layer, i = self.layer, self.index
        if self.rec is not None:
            layer.recurrent_states[i] = _take(self.rec, counts)
        if self.conv is not None:
            layer.conv_states[i] = _window(self.conv, counts, self.kernel)
        self._restart()

    def _restart(self) -> None:
        """The tape restarts at the layer's state: copies, since transformers updates recurrent states in place."""
        layer, i = self.layer, self.index
        self.rec = None if self.rec is None else layer.recurrent_states[i][:, None].clone()
        self.conv = None if self.conv is None else layer.conv_states[i].clone()

    def select_rows(self, rows: torch.Tensor) -> None:
        if self.rec is not None:
            self.rec = self.rec.index_select(0, rows.to(self.rec.device))
        if self.conv is not None:
            self.conv = self.conv.index_select(0, rows.to(self.conv.device))

    def _snapshots(self, n: int, continuing: bool) -> torch.Tensor:
        """[B, n+1, *S] the states before the forward and after each of its n tokens (transformers' history, then
        the current state); an unrecorded prefill has only the first and the last: the others are left as the last."""
        layer, i = self.layer, self.index
        history = layer.recurrent_states_history[i]
        layer.recurrent_states_history[i] = []
        current = layer.recurrent_states[i]
        if continuing:
            if len(history) != n:
                raise RuntimeError(f"recurrent layer recorded {len(history)} states for {n} tokens")
            return torch.stack([*history, current], dim=1)
        first = history[0] if history else torch.zeros_like(current)
        return torch.stack([first] + [current] * n, dim=1)


class Blocks:
    """Where each row's real tokens sit in a fed chunk: one contiguous block [start, end) per row (host ints)."""

    def __init__(self, real: torch.Tensor, previous: torch.Tensor):
        n = real.shape[1]
        count = real.sum(dim=1)  # [B]
        idx = torch.arange(n)[None, :]
        first = torch.where(real, idx, n).amin(dim=1)  # [B]
        end = torch.where(real, idx + 1, 0).amax(dim=1)  # [B]
        if bool(((count > 0) & (end - first != count)).any()):
            raise RuntimeError("a recurrent layer was fed a row whose real tokens are not contiguous")
        self.n = n
        self.start = end - count  # [B]
        self.count = count  # [B]
        self.previous = previous  # [B] tape entries before this chunk
        self.counts = previous + count  # [B] tape entries after it


class RecurrentStates:
    """The recurrent layers of one cache, rolled back per row (see the module docstring). Host books: `counts`."""

    def __init__(self, cache):
        self.layers = recurrent_layers(cache)
        self.tapes: list[StateTape] = []
        self.counts = torch.zeros(0, dtype=torch.long)  # [B] real tokens since the rollback point
        self._continuing = True

    def __bool__(self) -> bool:
        return bool(self.layers)

    def start(self, batch_size: int) -> None:
        self.counts = torch.zeros(batch_size, dtype=torch.long)
        self.tapes = []

    def before_forward(self, n: int, cache_empty: bool) -> None:
        """Switch recording on for a forward over n tokens (an empty cache with a long chunk records nothing)."""
        self._continuing = not (cache_empty and n > UNRECORDED_PREFILL)
        for layer in self.layers:
            layer.activate_past_recording(recurrent_states_to_keep=n if self._continuing else 0)
            layer.recurrent_states_history = {i: [] for i in range(layer.number_of_states)}  # one list per state

    def after_forward(self, real: torch.Tensor) -> None:
        """Each row's state := after its last real token of the chunk (`real` [B, n] host bool, in feeding order)."""
        blocks = Blocks(real, self.counts)
        if not self.tapes:
            self.tapes = [StateTape(layer, i) for layer in self.layers for i in range(layer.number_of_states)
                          if layer.is_conv_states_initialized[i] or layer.is_recurrent_states_initialized[i]]
        for tape in self.tapes:
            tape.record(blocks, self._continuing)
        # nothing before an unrecorded prefill can be rolled back to: the tapes restarted after it
        self.counts = blocks.counts if self._continuing else torch.zeros_like(blocks.counts)
        if self.counts.numel() and int(self.counts.max()) > MAX_ROLLBACK:  # a long catch-up: keep the latest states only
            shift = (self.counts - MAX_ROLLBACK).clamp(min=0)  # [B]
            for tape in self.tapes:
                tape.forget_before(shift, MAX_ROLLBACK + 1)
            self.counts = self.counts - shift

    def settle(self, dropped: torch.Tensor, slots: int) -> None:
        """The round's end: row i forgets its last `dropped[i]` real tokens; the tape restarts (a rollback point)."""
        target = self.counts - dropped  # [B]
        if bool((target < 0).any()):
            raise RuntimeError("recurrent state rolled back past its recorded states")
        for tape in self.tapes:
            tape.roll_back(target)
        for layer in self.layers:
            layer.cumulative_length_linear = torch.tensor(slots, device=layer.cumulative_length_linear.device)
        self.counts = torch.zeros_like(self.counts)

    def select_rows(self, rows: torch.Tensor, rows_host: list[int]) -> None:
        """Keep only `rows` of the batch, in every layer's state and in the tapes."""
        for layer in self.layers:
            LinearAttentionCacheLayerMixin.reorder_cache(layer, rows)
        for tape in self.tapes:
            tape.select_rows(rows)
        self.counts = self.counts[rows_host]


def _take(tape: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """[B, T+1, *S] -> [B, *S]: row i's entry `counts[i]`."""
    index = counts.to(tape.device).view(-1, *([1] * (tape.dim() - 1))).expand(-1, 1, *tape.shape[2:])
    return tape.gather(1, index).squeeze(1)


def _append(tape: torch.Tensor | None, snaps: torch.Tensor, blocks: Blocks, continuing: bool) -> torch.Tensor:
    """The tape [B, T+1, *S] with each row's states after its real tokens of the chunk (from `snaps` [B, n+1, *S])
    appended after its own last entry."""
    if tape is None or not continuing:
        tape, previous = snaps[:, :1], torch.zeros_like(blocks.previous)  # the state before the chunk
    else:
        previous = blocks.previous
    T1 = tape.shape[1]
    width = int((previous + blocks.count).max()) + 1
    j = torch.arange(width)[None, :]  # [1, W]
    from_chunk = T1 + blocks.start[:, None] + (j - previous[:, None])  # [B, W] snapshot index, offset
    index = torch.where(j <= previous[:, None], j, from_chunk).clamp(max=T1 + blocks.n)  # [B, W]
    both = torch.cat([tape, snaps], dim=1)  # [B, T1+n+1, *S]
    index = index.to(both.device).view(*index.shape, *([1] * (both.dim() - 2))).expand(-1, -1, *both.shape[2:])
    return both.gather(1, index)


def _append_inputs(conv: torch.Tensor | None, full: torch.Tensor, kernel: int, blocks: Blocks,
                   continuing: bool) -> torch.Tensor:
    """The convolution tape [B, C, K+T]: the window at the rollback point, then each row's real inputs in order."""
    n = blocks.n
    inputs = full[..., -n:]  # [B, C, n]
    if conv is None or not continuing:
        before = full[..., :-n] if full.shape[-1] > n else full[..., :0]
        conv = F.pad(before, (max(kernel - before.shape[-1], 0), 0))[..., -kernel:] if kernel else before
        previous = torch.zeros_like(blocks.previous)
    else:
        previous = blocks.previous
    T = conv.shape[-1] - kernel
    width = kernel + int((previous + blocks.count).max())
    j = torch.arange(width)[None, :]  # [1, W]
    from_chunk = kernel + T + blocks.start[:, None] + (j - kernel - previous[:, None])  # [B, W]
    index = torch.where(j < kernel + previous[:, None], j, from_chunk).clamp(max=kernel + T + n - 1)
    both = torch.cat([conv, inputs], dim=-1)  # [B, C, K+T+n]
    return both.gather(-1, index.to(both.device)[:, None, :].expand(-1, both.shape[1], -1))


def _window(conv: torch.Tensor, counts: torch.Tensor, kernel: int) -> torch.Tensor:
    """[B, C, K+T] -> [B, C, K]: row i's window after `counts[i]` real inputs."""
    index = counts[:, None] + torch.arange(kernel)[None, :]  # [B, K]
    return conv.gather(-1, index.to(conv.device)[:, None, :].expand(-1, conv.shape[1], -1))
